#include "storage/codebook_registry.h"

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "storage/fault_injection_fs.h"
#include "storage/rocksdb_tier.h"
#include "tests/unit/storage/storage_test_util.h"

namespace vqkv::storage {
namespace {

using testing::TempDir;

std::unique_ptr<RocksDbTier> OpenTier(
    const TempDir& dir, std::shared_ptr<rocksdb::FileSystem> fs = nullptr) {
  RocksDbTierOptions o;
  o.path = dir.Sub("db");
  o.verify_blocks = false;
  o.file_system = std::move(fs);
  auto tier = RocksDbTier::Open(std::move(o));
  EXPECT_TRUE(tier.ok()) << tier.status();
  return tier.ok() ? std::move(*tier) : nullptr;
}

CodebookRegistryOptions WithDisk(RocksDbTier* disk, uint64_t cache_bytes) {
  CodebookRegistryOptions o;
  o.disk = disk;
  o.cache_bytes = cache_bytes;
  return o;
}

TEST(CodebookRegistryTest, ValidatesAndIsIdempotent) {
  CodebookRegistry registry{CodebookRegistryOptions()};
  EXPECT_EQ(registry.Put(0, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Put(5, "").code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(registry.Put(5, "five").ok());
  ASSERT_TRUE(registry.Put(5, "five").ok());
  EXPECT_EQ(registry.size(), 1u);
  EXPECT_TRUE(registry.Has(5));
  EXPECT_FALSE(registry.Has(6));
  EXPECT_EQ(**registry.Get(5), "five");
  EXPECT_EQ(registry.Get(6).status().code(), absl::StatusCode::kNotFound);
}

TEST(CodebookRegistryTest, WithoutDiskEverythingStaysCached) {
  CodebookRegistryOptions o;
  o.cache_bytes = 4;  // ignored without a disk tier
  CodebookRegistry registry(std::move(o));
  ASSERT_TRUE(registry.Put(1, "0123456789").ok());
  ASSERT_TRUE(registry.Put(2, "abcdefghij").ok());
  EXPECT_TRUE(registry.IsCached(1));
  EXPECT_TRUE(registry.IsCached(2));
  EXPECT_EQ(registry.cached_bytes(), 20u);
}

TEST(CodebookRegistryTest, EvictsTheLeastRecentlyUsedFirst) {
  TempDir dir;
  auto disk = OpenTier(dir);
  ASSERT_NE(disk, nullptr);
  const std::string a(10, 'a'), b(10, 'b'), c(10, 'c');
  CodebookRegistry registry(WithDisk(disk.get(), 20));
  ASSERT_TRUE(registry.Put(1, a).ok());
  ASSERT_TRUE(registry.Put(2, b).ok());
  // Use 1: now 2 is the least recently used.
  EXPECT_EQ(**registry.Get(1), a);
  ASSERT_TRUE(registry.Put(3, c).ok());
  EXPECT_TRUE(registry.IsCached(1));
  EXPECT_FALSE(registry.IsCached(2));
  EXPECT_TRUE(registry.IsCached(3));
  // 2 is still registered; a Get reads it from disk and caches it, which
  // evicts 1 (used before 3).
  EXPECT_EQ(**registry.Get(2), b);
  EXPECT_TRUE(registry.IsCached(2));
  EXPECT_FALSE(registry.IsCached(1));
  EXPECT_TRUE(registry.IsCached(3));
  EXPECT_EQ(registry.size(), 3u);
}

TEST(CodebookRegistryTest, CachedBytesStayWithinTheBound) {
  TempDir dir;
  auto disk = OpenTier(dir);
  ASSERT_NE(disk, nullptr);
  constexpr uint64_t kBound = 100;
  CodebookRegistryOptions o = WithDisk(disk.get(), kBound);
  o.quota = CodebookQuota{0, 0};  // 40 sets: more than the default quota
  CodebookRegistry registry(o);
  std::vector<std::string> files;
  std::mt19937 rng(1);
  for (uint64_t h = 1; h <= 40; ++h) {
    files.push_back(std::string(7 + (h * 13) % 40, static_cast<char>('a' + h)));
    ASSERT_TRUE(registry.Put(h, files.back()).ok());
    EXPECT_LE(registry.cached_bytes(), kBound);
    // Read back an older one now and then (a miss reads the disk).
    const uint64_t old = 1 + rng() % h;
    EXPECT_EQ(**registry.Get(old), files[old - 1]);
    EXPECT_LE(registry.cached_bytes(), kBound);
  }
  // A file larger than the whole cache is served but never cached.
  const std::string huge(kBound + 1, 'z');
  ASSERT_TRUE(registry.Put(99, huge).ok());
  EXPECT_EQ(**registry.Get(99), huge);
  EXPECT_FALSE(registry.IsCached(99));
  EXPECT_LE(registry.cached_bytes(), kBound);
}

TEST(CodebookRegistryTest, KnowsWhatTheDiskHoldsAfterReopen) {
  TempDir dir;
  {
    auto disk = OpenTier(dir);
    CodebookRegistry registry(WithDisk(disk.get(), 1 << 20));
    ASSERT_TRUE(registry.Put(7, "seven").ok());
  }
  auto disk = OpenTier(dir);
  CodebookRegistry registry(WithDisk(disk.get(), 1 << 20));
  EXPECT_TRUE(registry.Has(7));
  EXPECT_FALSE(registry.IsCached(7));
  EXPECT_EQ(**registry.Get(7), "seven");
  EXPECT_TRUE(registry.IsCached(7));
}

TEST(CodebookRegistryTest, ReportsDiskFaults) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  auto disk = OpenTier(dir, fs);
  ASSERT_NE(disk, nullptr);
  std::vector<std::string> faults;
  CodebookRegistryOptions o = WithDisk(disk.get(), 1 << 20);
  o.on_disk_fault = [&](const absl::Status&, absl::string_view what) {
    faults.emplace_back(what);
  };
  CodebookRegistry registry(std::move(o));
  fs->SetFailWrites(true);
  EXPECT_FALSE(registry.Put(1, "one").ok());
  EXPECT_FALSE(registry.Has(1));
  EXPECT_EQ(faults, std::vector<std::string>({"put codebook"}));
  fs->SetFailWrites(false);
}

}  // namespace
}  // namespace vqkv::storage
