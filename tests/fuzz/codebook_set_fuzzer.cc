// Fuzz target: the codebook-set file (kernels/codebook_set.h,
// docs/CODEBOOK_FORMAT.md), as the service and `vqkv --codebooks` load it.
//
// Each input is deserialized as it is, then again with its trailing content
// hash recomputed (XXH3-64 of the rest; a mutated file almost never keeps
// it, and the parser behind the check is what needs the fuzzing). A set that
// loads must: serialize back to exactly the input (one set, one encoding:
// the hash is a content address), hash to the trailer, and, when small,
// build a VQ codec that encodes and decodes a block of its layout.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/block.h"
#include "kernels/codec_factory.h"
#include "tests/fuzz/fuzz_common.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace vqkv::fuzz {
namespace {

void CheckLoaded(const CodebookSet& set, std::string_view file) {
  absl::StatusOr<std::string> again = set.Serialize();
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == file);
  absl::StatusOr<uint64_t> hash = set.Hash();
  FUZZ_CHECK(hash.ok());
  uint64_t trailer;
  std::memcpy(&trailer, file.data() + file.size() - 8, 8);
  FUZZ_CHECK(*hash == trailer);

  // Use it: a one-token block through a VQ codec, when the layout is small.
  const KvLayout& layout = set.config().layout;
  if (layout.ElementsPerToken() > 4096) return;
  absl::StatusOr<std::unique_ptr<Codec>> codec =
      MakeCodec("vq", layout, &set, 1, 0);
  if (!codec.ok()) return;
  std::vector<float> k(static_cast<size_t>(layout.ElementsPerToken()));
  std::vector<float> v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<float>(i % 7) - 3.0f;
    v[i] = static_cast<float>(i % 5) * 0.5f;
  }
  absl::StatusOr<std::vector<uint8_t>> block =
      EncodeBlock(**codec, k.data(), v.data(), 1, BlockOptions{});
  if (!block.ok()) return;
  FUZZ_CHECK(
      DecodeBlock(**codec, block->data(), block->size(), 1, k.data(), v.data())
          .ok());
}

}  // namespace
}  // namespace vqkv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vqkv;
  const std::string_view raw(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<CodebookSet> set = CodebookSet::Deserialize(raw);
  if (set.ok()) fuzz::CheckLoaded(*set, raw);
  if (size < 8) return 0;

  std::string fixed(raw);
  const uint64_t hash = XXH3_64bits(fixed.data(), size - 8);
  std::memcpy(fixed.data() + size - 8, &hash, 8);
  set = CodebookSet::Deserialize(fixed);
  if (set.ok()) fuzz::CheckLoaded(*set, fixed);
  return 0;
}
