// Helpers shared by the storage tests: real sealed blocks (built with a tiny
// lossless test codec), keys, a fake clock and self-cleaning temp dirs.
#ifndef VQKV_TESTS_UNIT_STORAGE_STORAGE_TEST_UTIL_H_
#define VQKV_TESTS_UNIT_STORAGE_STORAGE_TEST_UTIL_H_

#include <malloc.h>
#include <stdlib.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "base/malloc.h"
#include "gtest/gtest.h"
#include "kernels/block.h"
#include "kernels/codec.h"
#include "storage/keys.h"
#include "tests/testing/raw_float_codec.h"

namespace vqkv::storage::testing {

// Payload = K then V as raw float32: blocks of exactly known size.
using ::vqkv::testing::RawFloatCodec;

// Whether HeapInUse sees this process's allocations: not under a sanitizer,
// whose allocator glibc's statistics do not cover; tests that measure heap
// skip there.
inline constexpr bool kHeapMeasurable = ::vqkv::base::kGlibcMalloc;

// Heap bytes in use (glibc: all arenas, mmapped chunks included).
inline uint64_t HeapInUse() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

inline constexpr KvLayout kTestLayout{
    .layers = 1, .kv_heads = 1, .head_dim = 4};
// Bytes of a block with `tokens` tokens: 64-byte header + 32 bytes a token.
inline size_t BlockBytes(int tokens) { return 64 + 32 * tokens; }

// A sealed block whose payload is derived from `seed`.
inline std::string MakeBlock(uint32_t seed, int tokens = 4,
                             uint64_t codebook_hash = 0) {
  RawFloatCodec codec(kTestLayout, codebook_hash);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> k(tokens * kTestLayout.ElementsPerToken());
  std::vector<float> v(k.size());
  for (float& x : k) x = dist(rng);
  for (float& x : v) x = dist(rng);
  auto block = EncodeBlock(codec, k.data(), v.data(), tokens, BlockOptions());
  EXPECT_TRUE(block.ok()) << block.status();
  return std::string(block->begin(), block->end());
}

inline NamespaceId Ns(uint64_t n) { return NamespaceId::FromPair(n, ~n); }
inline BlockHash Hash(uint64_t n) { return BlockHash::FromPair(n * 7 + 1, n); }
inline BlockKey Key(uint64_t ns, uint64_t h) {
  return BlockKey{Ns(ns), Hash(h)};
}

// A manually advanced clock for TTL tests.
class FakeClock {
 public:
  absl::Time Now() const { return absl::FromUnixMicros(micros_.load()); }
  void Advance(absl::Duration d) {
    micros_.fetch_add(absl::ToInt64Microseconds(d));
  }
  std::function<absl::Time()> AsFunction() {
    return [this] { return Now(); };
  }

 private:
  std::atomic<int64_t> micros_{1'700'000'000'000'000};
};

// A unique directory under /tmp, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/vqkv-storage-test-XXXXXX";
    char* made = ::mkdtemp(tmpl);
    EXPECT_NE(made, nullptr);
    path_ = made != nullptr ? made : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace vqkv::storage::testing

#endif  // VQKV_TESTS_UNIT_STORAGE_STORAGE_TEST_UTIL_H_
