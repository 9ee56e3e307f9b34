#include "storage/tiered_store.h"

#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <latch>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "base/logging.h"
#include "gtest/gtest.h"
#include "kernels/codebook_set.h"
#include "kernels/rvq.h"
#include "storage/fault_injection_fs.h"
#include "storage/keys.h"
#include "storage/memory_tier.h"
#include "storage/rocksdb_tier.h"
#include "tests/unit/storage/storage_test_util.h"

namespace vqkv::storage {
namespace {

using testing::BlockBytes;
using testing::FakeClock;
using testing::Hash;
using testing::Key;
using testing::MakeBlock;
using testing::Ns;
using testing::TempDir;

constexpr char kAlice[] = "alice";
constexpr char kBob[] = "bob";

std::unique_ptr<TieredStore> OpenStore(TieredStoreOptions o) {
  auto store = TieredStore::Open(std::move(o));
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

// What the memory budget charges for a block of `tokens` tokens.
uint64_t MemCost(int tokens) {
  return BlockBytes(tokens) + kEntryOverheadBytes;
}

// Memory for `blocks` blocks of 4 tokens (one shard: a tiny budget).
TieredStoreOptions SmallOptions(int blocks, const std::string& data_dir = "") {
  TieredStoreOptions o;
  o.memory_bytes = blocks * MemCost(4);
  o.data_dir = data_dir;
  o.disk_bytes = 1 << 20;
  return o;
}

// Captures the log lines emitted while it lives.
class LogCapture {
 public:
  LogCapture() {
    previous_ =
        base::SetLogSink([this](base::LogSeverity, absl::string_view line) {
          absl::MutexLock lock(&mu_);
          lines_.emplace_back(line);
        });
  }
  ~LogCapture() { base::SetLogSink(std::move(previous_)); }
  std::vector<std::string> lines() const {
    absl::MutexLock lock(&mu_);
    return lines_;
  }

 private:
  base::LogSink previous_;
  mutable absl::Mutex mu_;
  std::vector<std::string> lines_;
};

absl::Status Put(TieredStore& s, absl::string_view tenant, BlockKey key,
                 const std::string& block, uint32_t pos = 0) {
  return s.PutBlock(tenant, BlockPut{key, pos, block});
}

TEST(TieredStoreTest, ValidatesBlocksOnPut) {
  auto store = OpenStore(SmallOptions(8));
  // Not a block: wrong magic.
  EXPECT_EQ(Put(*store, kAlice, Key(1, 1), std::string(200, 'z')).code(),
            absl::StatusCode::kInvalidArgument);
  // Shorter than a header: truncation.
  EXPECT_EQ(Put(*store, kAlice, Key(1, 1), "short").code(),
            absl::StatusCode::kDataLoss);
  std::string block = MakeBlock(1);
  EXPECT_EQ(
      Put(*store, kAlice, Key(1, 1), block.substr(0, block.size() - 4)).code(),
      absl::StatusCode::kDataLoss);
  std::string flipped = block;
  flipped[100] ^= 1;
  EXPECT_EQ(Put(*store, kAlice, Key(1, 1), flipped).code(),
            absl::StatusCode::kDataLoss);
  const std::string coded = MakeBlock(2, 4, /*codebook_hash=*/0xc0deb00c);
  EXPECT_EQ(Put(*store, kAlice, Key(1, 2), coded).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->Stats().puts_rejected, 5u);
  EXPECT_EQ(store->Stats().memory.blocks, 0u);
  ASSERT_TRUE(store->PutCodebooks(0xc0deb00c, "codebook file").ok());
  EXPECT_TRUE(Put(*store, kAlice, Key(1, 2), coded).ok());
  EXPECT_TRUE(Put(*store, kAlice, Key(1, 1), block).ok());
  EXPECT_EQ(**store->GetBlock(kAlice, Key(1, 1)), block);
}

TEST(TieredStoreTest, DuplicatePutsAreIdempotent) {
  TempDir dir;
  TieredStoreOptions o = SmallOptions(8, dir.Sub("db"));
  o.write_policy = WritePolicy::kWriteThrough;
  auto store = OpenStore(o);
  const std::string block = MakeBlock(1);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, 1), block).ok());
  }
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.puts, 1u);
  EXPECT_EQ(stats.duplicate_puts, 2u);
  EXPECT_EQ(stats.memory.blocks, 1u);
  EXPECT_EQ(stats.disk.blocks, 1u);
  EXPECT_EQ(store->TenantUsage(kAlice), block.size());
  EXPECT_EQ(store->GetNamespaceInfo(Ns(1))->blocks, 1u);
}

TEST(TieredStoreTest, LookupCountsLeadingPresentBlocksAcrossTiers) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(2, dir.Sub("db")));
  // Chain positions 0, 1, 2 and 4 (3 missing); memory holds only two, so
  // the older ones are on disk.
  for (uint32_t pos : {0u, 1u, 2u, 4u}) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, pos), MakeBlock(pos), pos).ok());
  }
  EXPECT_GT(store->Stats().spills, 0u);
  std::vector<BlockHash> chain;
  for (int i = 0; i < 6; ++i) chain.push_back(Hash(i));
  LookupResult r = store->Lookup(kAlice, Ns(1), chain);
  EXPECT_EQ(r.prefix_blocks, 3);
  EXPECT_EQ(r.present,
            std::vector<bool>({true, true, true, false, true, false}));
  // Partial hit in a batch get: one result per hash.
  auto got = store->GetBlocks(kAlice, Ns(1), chain);
  ASSERT_EQ(got.size(), 6u);
  for (int i : {0, 1, 2, 4}) {
    ASSERT_TRUE(got[i].ok()) << i << got[i].status();
    EXPECT_EQ(**got[i], MakeBlock(i));
  }
  EXPECT_EQ(got[3].status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(got[5].status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Lookup(kAlice, Ns(1), {}).prefix_blocks, 0);
  EXPECT_EQ(store->Lookup(kAlice, Ns(9), chain).prefix_blocks, 0);
}

TEST(TieredStoreTest, SpillsEvictedBlocksAndPromotesDiskHits) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(3, dir.Sub("db")));
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i)).ok());
  }
  StoreStats s = store->Stats();
  EXPECT_EQ(s.memory.blocks, 3u);
  EXPECT_LE(s.memory.bytes, 3 * BlockBytes(4));
  EXPECT_EQ(s.memory_evictions, 3u);
  EXPECT_EQ(s.spills, 3u);
  EXPECT_EQ(s.disk.blocks, 3u);
  EXPECT_EQ(s.dropped, 0u);
  // Nothing acknowledged is lost, and every block is served bit-exact.
  for (int i = 0; i < 6; ++i) {
    auto got = store->GetBlock(kAlice, Key(1, i));
    ASSERT_TRUE(got.ok()) << i << got.status();
    EXPECT_EQ(**got, MakeBlock(i));
  }
  s = store->Stats();
  EXPECT_GE(s.disk_hits, 3u);
  EXPECT_GE(s.promotions, 3u);
  EXPECT_EQ(s.misses, 0u);
  EXPECT_EQ(store->TenantUsage(kAlice), 6 * BlockBytes(4));
  // A promoted block is served from memory next time.
  const uint64_t memory_hits = s.memory_hits;
  ASSERT_TRUE(store->GetBlock(kAlice, Key(1, 5)).ok());
  EXPECT_EQ(store->Stats().memory_hits, memory_hits + 1);
}

TEST(TieredStoreTest, MemoryOnlyEvictionDropsBlocksAndTheirUsage) {
  auto store = OpenStore(SmallOptions(3));
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i)).ok());
  }
  const StoreStats s = store->Stats();
  EXPECT_FALSE(s.has_disk);
  EXPECT_EQ(s.dropped, 2u);
  EXPECT_EQ(store->TenantUsage(kAlice), 3 * BlockBytes(4));
  EXPECT_EQ(store->GetNamespaceInfo(Ns(1))->blocks, 3u);
}

// --- Leases (LookupRequest.lease_ms) ---------------------------------------

std::vector<BlockHash> Chain(int n) {
  std::vector<BlockHash> chain;
  for (int i = 0; i < n; ++i) chain.push_back(Hash(i));
  return chain;
}

TEST(TieredStoreTest, LookupLeaseKeepsThePrefixThroughEvictionMemoryOnly) {
  FakeClock clock;
  TieredStoreOptions o = SmallOptions(8);
  o.clock = clock.AsFunction();
  auto store = OpenStore(o);
  // The same chain in namespaces 1 and 2; only namespace 1's is leased.
  for (uint32_t pos = 0; pos < 4; ++pos) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, pos), MakeBlock(pos), pos).ok());
    ASSERT_TRUE(Put(*store, kAlice, Key(2, pos), MakeBlock(pos), pos).ok());
  }
  const std::vector<BlockHash> chain = Chain(4);
  EXPECT_EQ(store->Lookup(kAlice, Ns(1), chain, absl::Seconds(5)).prefix_blocks,
            4);
  EXPECT_EQ(store->Lookup(kAlice, Ns(2), chain).prefix_blocks, 4);
  EXPECT_EQ(store->Stats().leases, 4u);
  // Enough other blocks to evict the whole memory tier several times.
  for (uint32_t i = 0; i < 24; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(3, i), MakeBlock(100 + i)).ok());
  }
  auto leased = store->GetBlocks(kAlice, Ns(1), chain);
  auto plain = store->GetBlocks(kAlice, Ns(2), chain);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(leased[i].ok()) << i << leased[i].status();
    EXPECT_EQ(**leased[i], MakeBlock(i));
    EXPECT_EQ(plain[i].status().code(), absl::StatusCode::kNotFound) << i;
  }
  // When the lease ends the blocks are evictable again.
  clock.Advance(absl::Seconds(5));
  for (uint32_t i = 0; i < 24; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(4, i), MakeBlock(200 + i)).ok());
  }
  const LookupResult after = store->Lookup(kAlice, Ns(1), chain);
  EXPECT_EQ(after.present, std::vector<bool>(4, false));
  EXPECT_EQ(store->Stats().leases, 0u);  // expired leases were dropped
}

TEST(TieredStoreTest, LookupLeasesOnlyThePrefixAndAnswersWhenLeasesAreFull) {
  FakeClock clock;
  TieredStoreOptions o = SmallOptions(16);
  o.clock = clock.AsFunction();
  auto store = OpenStore(o);
  for (uint32_t pos : {0u, 1u, 3u}) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, pos), MakeBlock(pos), pos).ok());
  }
  LookupResult r = store->Lookup(kAlice, Ns(1), Chain(4), absl::Seconds(5));
  EXPECT_EQ(r.prefix_blocks, 2);
  EXPECT_EQ(r.present, std::vector<bool>({true, true, false, true}));
  EXPECT_EQ(store->Stats().leases, 2u);  // block 3 is past the prefix
  // Another tenant's lookup leases nothing.
  EXPECT_EQ(
      store->Lookup(kBob, Ns(1), Chain(4), absl::Seconds(5)).prefix_blocks, 0);
  EXPECT_EQ(store->Stats().leases, 2u);
  // A lease is a hint: with the lease table full the lookup still answers.
  o.max_leases = 1;
  auto small = OpenStore(o);
  for (uint32_t pos = 0; pos < 4; ++pos) {
    ASSERT_TRUE(Put(*small, kAlice, Key(1, pos), MakeBlock(pos), pos).ok());
  }
  r = small->Lookup(kAlice, Ns(1), Chain(4), absl::Seconds(5));
  EXPECT_EQ(r.prefix_blocks, 4);
  EXPECT_EQ(small->Stats().leases, 1u);
}

TEST(TieredStoreTest, PutThatCouldOnlyEvictLeasedBlocksIsResourceExhausted) {
  FakeClock clock;
  TieredStoreOptions o = SmallOptions(4);
  o.clock = clock.AsFunction();
  auto store = OpenStore(o);
  for (uint32_t pos = 0; pos < 4; ++pos) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, pos), MakeBlock(pos), pos).ok());
  }
  ASSERT_EQ(
      store->Lookup(kAlice, Ns(1), Chain(4), absl::Seconds(10)).prefix_blocks,
      4);
  const absl::Status s = Put(*store, kAlice, Key(2, 0), MakeBlock(20));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  StoreStats stats = store->Stats();
  EXPECT_EQ(stats.puts_rejected, 1u);
  EXPECT_EQ(stats.dropped, 0u);
  EXPECT_EQ(stats.memory.blocks, 4u);
  // The refused put is not charged to the tenant.
  EXPECT_EQ(store->TenantUsage(kAlice), 4 * BlockBytes(4));
  for (auto& got : store->GetBlocks(kAlice, Ns(1), Chain(4))) {
    EXPECT_TRUE(got.ok()) << got.status();
  }
  clock.Advance(absl::Seconds(10));
  EXPECT_TRUE(Put(*store, kAlice, Key(2, 0), MakeBlock(20)).ok());
}

TEST(TieredStoreTest, DeleteRemovesLeasedBlocksAndTheirLeases) {
  FakeClock clock;
  TieredStoreOptions o = SmallOptions(4);
  o.clock = clock.AsFunction();
  auto store = OpenStore(o);
  for (uint32_t pos = 0; pos < 4; ++pos) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, pos), MakeBlock(pos), pos).ok());
  }
  ASSERT_EQ(
      store->Lookup(kAlice, Ns(1), Chain(4), absl::Seconds(10)).prefix_blocks,
      4);
  ASSERT_TRUE(store->DeleteBlock(kAlice, Key(1, 0)).ok());
  EXPECT_EQ(store->GetBlock(kAlice, Key(1, 0)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Stats().leases, 3u);
  auto removed = store->DeleteNamespace(kAlice, Ns(1));
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(removed->blocks, 3u);
  EXPECT_EQ(store->Stats().leases, 0u);
  // A block put again after its delete is not leased: memory evicts it
  // (the tail of a chain goes first).
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 1), MakeBlock(1), 9).ok());
  for (uint32_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(2, i), MakeBlock(20 + i)).ok());
  }
  EXPECT_EQ(store->GetBlock(kAlice, Key(1, 1)).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(TieredStoreTest, LeasedBlocksSurviveDiskBudgetEviction) {
  FakeClock clock;
  TempDir dir;
  TieredStoreOptions o = SmallOptions(2, dir.Sub("db"));
  o.disk_bytes = 6 * BlockBytes(4);
  o.clock = clock.AsFunction();
  auto store = OpenStore(o);
  // A chain of 4: two blocks in memory, two spilled to disk.
  for (uint32_t pos = 0; pos < 4; ++pos) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, pos), MakeBlock(pos), pos).ok());
  }
  ASSERT_EQ(store->Stats().disk.blocks, 2u);
  ASSERT_EQ(
      store->Lookup(kAlice, Ns(1), Chain(4), absl::Seconds(10)).prefix_blocks,
      4);
  // Many more blocks than both tiers hold: memory is all leased, so they go
  // to disk, whose budget evicts every unleased record in turn.
  // (The clock ticks so that the disk's oldest-first order is defined.)
  for (uint32_t i = 0; i < 20; ++i) {
    clock.Advance(absl::Milliseconds(1));
    ASSERT_TRUE(Put(*store, kAlice, Key(2, i), MakeBlock(100 + i)).ok()) << i;
  }
  StoreStats stats = store->Stats();
  EXPECT_GT(stats.dropped, 0u);
  EXPECT_LE(stats.disk.bytes, 6 * BlockBytes(4));
  auto got = store->GetBlocks(kAlice, Ns(1), Chain(4));
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(got[i].ok()) << i << got[i].status();
    EXPECT_EQ(**got[i], MakeBlock(i));
  }
  // Without the lease the same pressure loses them.
  clock.Advance(absl::Seconds(10));
  for (uint32_t i = 0; i < 20; ++i) {
    clock.Advance(absl::Milliseconds(1));
    ASSERT_TRUE(Put(*store, kAlice, Key(3, i), MakeBlock(200 + i)).ok()) << i;
  }
  EXPECT_EQ(store->Lookup(kAlice, Ns(1), Chain(4)).present,
            std::vector<bool>(4, false));
}

TEST(TieredStoreTest, TenantsOwnTheirNamespaces) {
  auto store = OpenStore(SmallOptions(8));
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 1), MakeBlock(1)).ok());
  EXPECT_EQ(Put(*store, kBob, Key(1, 2), MakeBlock(2)).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Put(*store, kBob, Key(1, 1), MakeBlock(1)).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(store->GetBlock(kBob, Key(1, 1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Lookup(kBob, Ns(1), {Hash(1)}).present,
            std::vector<bool>({false}));
  EXPECT_EQ(store->DeleteBlock(kBob, Key(1, 1)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->DeleteNamespace(kBob, Ns(1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(store->GetBlock(kAlice, Key(1, 1)).ok());
  EXPECT_EQ(store->GetNamespaceInfo(Ns(1))->tenant, kAlice);
  ASSERT_TRUE(Put(*store, kBob, Key(2, 1), MakeBlock(3)).ok());
  EXPECT_EQ(store->Stats().namespaces, 2u);
  EXPECT_EQ(store->TenantUsage(kBob), BlockBytes(4));
}

TEST(TieredStoreTest, TenantQuotasRejectPutsOverTheLimit) {
  TempDir dir;
  TieredStoreOptions o = SmallOptions(16, dir.Sub("db"));
  o.tenant_quotas[kAlice] = 3 * BlockBytes(4);
  {
    auto store = OpenStore(o);
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i)).ok());
    }
    EXPECT_EQ(Put(*store, kAlice, Key(2, 9), MakeBlock(9)).code(),
              absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(store->Stats().quota_rejections, 1u);
    // A duplicate is not a new byte: still fine at the limit.
    EXPECT_TRUE(Put(*store, kAlice, Key(1, 0), MakeBlock(0)).ok());
    // Other tenants are not limited by alice's quota.
    EXPECT_TRUE(Put(*store, kBob, Key(3, 0), MakeBlock(30)).ok());
    ASSERT_TRUE(store->DeleteBlock(kAlice, Key(1, 0)).ok());
    EXPECT_EQ(store->TenantUsage(kAlice), 2 * BlockBytes(4));
    EXPECT_TRUE(Put(*store, kAlice, Key(2, 9), MakeBlock(9)).ok());
    store->SetTenantQuota(kBob, BlockBytes(4));
    EXPECT_EQ(Put(*store, kBob, Key(3, 1), MakeBlock(31)).code(),
              absl::StatusCode::kResourceExhausted);
    ASSERT_TRUE(store->Flush().ok());
  }
  // Usage is recomputed from disk after a restart.
  auto store = OpenStore(o);
  EXPECT_EQ(store->TenantUsage(kAlice), 3 * BlockBytes(4));
  EXPECT_EQ(Put(*store, kAlice, Key(2, 10), MakeBlock(10)).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Put(*store, kBob, Key(1, 5), MakeBlock(5)).code(),
            absl::StatusCode::kPermissionDenied);  // owners persisted
}

TEST(TieredStoreTest, TenantQuotaReportsSetTenantQuota) {
  TieredStoreOptions o = SmallOptions(16);
  o.default_tenant_quota = 10 * BlockBytes(4);
  o.tenant_quotas[kAlice] = 3 * BlockBytes(4);
  auto store = OpenStore(o);
  EXPECT_EQ(store->TenantQuota(kAlice), 3 * BlockBytes(4));
  EXPECT_EQ(store->TenantQuota(kBob), 10 * BlockBytes(4));
  store->SetTenantQuota(kBob, BlockBytes(4));
  store->SetTenantQuota(kAlice, 0);  // unlimited
  EXPECT_EQ(store->TenantQuota(kBob), BlockBytes(4));
  EXPECT_EQ(store->TenantQuota(kAlice), 0u);
  // The options stay as given; the store enforces what it reports.
  EXPECT_EQ(store->options().tenant_quotas.at(kAlice), 3 * BlockBytes(4));
  ASSERT_TRUE(Put(*store, kBob, Key(2, 0), MakeBlock(0)).ok());
  EXPECT_EQ(Put(*store, kBob, Key(2, 1), MakeBlock(1)).code(),
            absl::StatusCode::kResourceExhausted);
  for (int i = 0; i < 5; ++i) {
    EXPECT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i)).ok());
  }
}

TEST(TieredStoreTest, FlushPersistsMemoryOnlyBlocksInSpillMode) {
  TempDir dir;
  TieredStoreOptions o = SmallOptions(8, dir.Sub("db"));
  {
    auto store = OpenStore(o);
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i), i).ok());
    }
    EXPECT_EQ(store->Stats().disk.blocks, 0u);  // all still in memory
    ASSERT_TRUE(store->Flush().ok());
    EXPECT_EQ(store->Stats().disk.blocks, 5u);
  }
  auto store = OpenStore(o);
  EXPECT_EQ(store->Stats().memory.blocks, 0u);
  std::vector<BlockHash> chain;
  for (int i = 0; i < 5; ++i) chain.push_back(Hash(i));
  EXPECT_EQ(store->Lookup(kAlice, Ns(1), chain).prefix_blocks, 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(**store->GetBlock(kAlice, Key(1, i)), MakeBlock(i));
  }
}

TEST(TieredStoreTest, WriteThroughPersistsWithoutFlush) {
  TempDir dir;
  TieredStoreOptions o = SmallOptions(8, dir.Sub("db"));
  o.write_policy = WritePolicy::kWriteThrough;
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(Put(*store, kAlice, Key(1, 1), MakeBlock(1)).ok());
    EXPECT_EQ(store->Stats().disk.blocks, 1u);
  }
  auto store = OpenStore(o);
  EXPECT_EQ(**store->GetBlock(kAlice, Key(1, 1)), MakeBlock(1));
}

TEST(TieredStoreTest, CodebookRegistryPersistsAndIsCached) {
  TempDir dir;
  TieredStoreOptions o = SmallOptions(8, dir.Sub("db"));
  o.codebook_cache_bytes = 16;
  // Stand-in bytes, not codebook files: accept them on read.
  o.codebook_verifier = [](uint64_t, absl::string_view) {
    return absl::OkStatus();
  };
  const std::string big(100, 'x');
  {
    auto store = OpenStore(o);
    EXPECT_EQ(store->PutCodebooks(0, "x").code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store->PutCodebooks(5, "").code(),
              absl::StatusCode::kInvalidArgument);
    ASSERT_TRUE(store->PutCodebooks(0x11, "small").ok());
    ASSERT_TRUE(store->PutCodebooks(0x22, big).ok());  // over the cache size
    ASSERT_TRUE(store->PutCodebooks(0x22, big).ok());  // idempotent
    EXPECT_TRUE(store->HasCodebook(0x11));
    EXPECT_FALSE(store->HasCodebook(0x33));
    EXPECT_EQ(**store->GetCodebooks(0x22), big);
    EXPECT_EQ(store->GetCodebooks(0x33).status().code(),
              absl::StatusCode::kNotFound);
    EXPECT_EQ(store->Stats().codebooks, 2u);
  }
  auto store = OpenStore(o);
  EXPECT_TRUE(store->HasCodebook(0x11));
  EXPECT_EQ(**store->GetCodebooks(0x11), "small");
  EXPECT_EQ(**store->GetCodebooks(0x22), big);
  // A block using a registered codebook is accepted after the restart.
  EXPECT_TRUE(Put(*store, kAlice, Key(1, 1), MakeBlock(1, 4, 0x22)).ok());
}

TEST(TieredStoreTest, DeleteBlockAndNamespace) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(2, dir.Sub("db")));
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i)).ok());
  }
  ASSERT_TRUE(store->DeleteBlock(kAlice, Key(1, 0)).ok());  // on disk
  ASSERT_TRUE(store->DeleteBlock(kAlice, Key(1, 3)).ok());  // in memory
  EXPECT_EQ(store->DeleteBlock(kAlice, Key(1, 3)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetBlock(kAlice, Key(1, 0)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->TenantUsage(kAlice), 2 * BlockBytes(4));
  auto removed = store->DeleteNamespace(kAlice, Ns(1));
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(removed->blocks, 2u);
  EXPECT_EQ(removed->tenant, kAlice);
  EXPECT_EQ(store->TenantUsage(kAlice), 0u);
  const StoreStats s = store->Stats();
  EXPECT_EQ(s.memory.blocks + s.disk.blocks, 0u);
  EXPECT_EQ(store->GetNamespaceInfo(Ns(1)).status().code(),
            absl::StatusCode::kNotFound);
  // The namespace is free again.
  EXPECT_TRUE(Put(*store, kBob, Key(1, 7), MakeBlock(7)).ok());
}

TEST(TieredStoreTest, CorruptDiskRecordIsDataLossThenNotFound) {
  TempDir dir;
  TieredStoreOptions o = SmallOptions(8, dir.Sub("db"));
  o.write_policy = WritePolicy::kWriteThrough;
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(Put(*store, kAlice, Key(1, 1), MakeBlock(1)).ok());
    ASSERT_TRUE(Put(*store, kAlice, Key(1, 2), MakeBlock(2)).ok());
  }
  {
    RocksDbTierOptions raw;
    raw.path = o.data_dir;
    auto tier = RocksDbTier::Open(raw);
    ASSERT_TRUE(tier.ok()) << tier.status();
    std::string bad = MakeBlock(1);
    bad[bad.size() - 1] ^= 0x80;
    ASSERT_TRUE((*tier)->TEST_OverwriteBlockValue(Key(1, 1), bad).ok());
  }
  auto store = OpenStore(o);
  auto got = store->GetBlock(kAlice, Key(1, 1));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_EQ(store->GetBlock(kAlice, Key(1, 1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Lookup(kAlice, Ns(1), {Hash(1), Hash(2)}).present,
            std::vector<bool>({false, true}));
  const StoreStats s = store->Stats();
  EXPECT_EQ(s.corrupt_dropped, 1u);
  EXPECT_FALSE(s.disk_fault);  // corruption is not an I/O fault
  EXPECT_EQ(store->TenantUsage(kAlice), BlockBytes(4));
  EXPECT_EQ(**store->GetBlock(kAlice, Key(1, 2)), MakeBlock(2));
}

TEST(TieredStoreTest, TtlExpiresDiskRecords) {
  TempDir dir;
  FakeClock clock;
  TieredStoreOptions o = SmallOptions(2, dir.Sub("db"));
  o.ttl = absl::Hours(1);
  o.clock = clock.AsFunction();
  auto store = OpenStore(o);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i), i).ok());
  }
  ASSERT_EQ(store->Stats().disk.blocks, 2u);
  clock.Advance(absl::Minutes(61));
  std::vector<BlockHash> chain = {Hash(0), Hash(1), Hash(2), Hash(3)};
  LookupResult r = store->Lookup(kAlice, Ns(1), chain);
  // The two spilled blocks expired on disk; the two in memory remain.
  EXPECT_EQ(std::count(r.present.begin(), r.present.end(), true), 2);
  EXPECT_EQ(store->SweepExpired(), 2u);
  EXPECT_EQ(store->Stats().expired, 2u);
  EXPECT_EQ(store->TenantUsage(kAlice), 2 * BlockBytes(4));
}

TEST(TieredStoreTest, KeepsServingFromMemoryWhenDiskWritesFail) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  TieredStoreOptions o = SmallOptions(4, dir.Sub("db"));
  o.write_policy = WritePolicy::kWriteThrough;
  o.file_system = fs;
  LogCapture log;
  auto store = OpenStore(o);
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 0), MakeBlock(0)).ok());
  EXPECT_TRUE(log.lines().empty());
  fs->SetFailWrites(true);
  for (int i = 1; i < 3; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i)).ok());
  }
  fs->SetFailWrites(false);
  fs->SetDiskFull(true);
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 3), MakeBlock(3)).ok());
  for (int i = 0; i < 4; ++i) {
    auto got = store->GetBlock(kAlice, Key(1, i));
    ASSERT_TRUE(got.ok()) << i << got.status();
    EXPECT_EQ(**got, MakeBlock(i));
  }
  StoreStats s = store->Stats();
  EXPECT_TRUE(s.disk_fault);
  EXPECT_GE(s.disk_faults, 3u);
  EXPECT_NE(s.last_disk_error.find("injected"), std::string::npos)
      << s.last_disk_error;
  EXPECT_EQ(s.puts, 4u);
  // Only the first fault is logged.
  const std::vector<std::string> lines = log.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("disk tier fault"), std::string::npos) << lines[0];
  // A spill that fails drops the evicted block (counted) and the store goes
  // on: memory keeps its newest blocks.
  for (int i = 4; i < 8; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i)).ok());
  }
  s = store->Stats();
  EXPECT_GT(s.dropped, 0u);
  EXPECT_EQ(**store->GetBlock(kAlice, Key(1, 7)), MakeBlock(7));
  // Once the disk recovers, writes reach it again.
  fs->SetDiskFull(false);
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 20), MakeBlock(20)).ok());
  const uint64_t faults = store->Stats().disk_faults;
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 21), MakeBlock(21)).ok());
  EXPECT_EQ(store->Stats().disk_faults, faults);
}

TEST(TieredStoreTest, DiskReadFaultsAreUnavailableAndMemoryStillServes) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  TieredStoreOptions o = SmallOptions(2, dir.Sub("db"));
  // Blocks big enough that each sits in its own blob file region (no
  // shared cached data block), so every disk read touches the file system.
  o.memory_bytes = 2 * MemCost(200);
  o.file_system = fs;
  {
    auto store = OpenStore(o);
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i, 200)).ok());
    }
    ASSERT_TRUE(store->Flush().ok());
  }
  auto store = OpenStore(o);
  ASSERT_TRUE(store->GetBlock(kAlice, Key(1, 0)).ok());  // promoted
  fs->SetFailReads(true);
  EXPECT_EQ(store->GetBlock(kAlice, Key(1, 1)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(**store->GetBlock(kAlice, Key(1, 0)), MakeBlock(0, 200));
  EXPECT_TRUE(store->Stats().disk_fault);
  fs->SetFailReads(false);
  EXPECT_EQ(**store->GetBlock(kAlice, Key(1, 1)), MakeBlock(1, 200));
}

TEST(TieredStoreTest, SyncModeFailsPutsThatCannotBeMadeDurable) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  TieredStoreOptions o = SmallOptions(4, dir.Sub("db"));
  o.durability = Durability::kSync;  // implies write-through
  o.file_system = fs;
  auto store = OpenStore(o);
  EXPECT_EQ(store->options().write_policy, WritePolicy::kWriteThrough);
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 0), MakeBlock(0)).ok());
  EXPECT_EQ(store->Stats().disk.blocks, 1u);
  fs->SetFailWrites(true);
  absl::Status s = Put(*store, kAlice, Key(1, 1), MakeBlock(1));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(store->GetBlock(kAlice, Key(1, 1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->TenantUsage(kAlice), BlockBytes(4));
  EXPECT_EQ(**store->GetBlock(kAlice, Key(1, 0)), MakeBlock(0));
}

TEST(TieredStoreTest, SyncBatchIsOneWalSyncAndSurvivesPowerLoss) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  TieredStoreOptions o = SmallOptions(64, dir.Sub("db"));
  o.durability = Durability::kSync;
  o.file_system = fs;
  constexpr int kBlocks = 16;
  std::vector<std::string> blocks;
  std::vector<BlockPut> puts;
  for (int i = 0; i < kBlocks; ++i) blocks.push_back(MakeBlock(i));
  for (int i = 0; i < kBlocks; ++i) {
    puts.push_back(BlockPut{Key(1, i), static_cast<uint32_t>(i), blocks[i]});
  }
  // The last entry repeats the first key: stored once, acknowledged OK.
  puts.push_back(puts[0]);
  {
    auto store = OpenStore(o);
    // Claim the namespace first so only block writes are counted below.
    ASSERT_TRUE(Put(*store, kAlice, Key(1, 100), MakeBlock(100)).ok());
    const uint64_t before = fs->syncs();
    std::vector<absl::Status> results = store->PutBlocks(kAlice, puts);
    ASSERT_EQ(results.size(), puts.size());
    for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
    const uint64_t batch_syncs = fs->syncs() - before;
    EXPECT_GE(batch_syncs, 1u);
    EXPECT_LT(batch_syncs, static_cast<uint64_t>(kBlocks));
    EXPECT_EQ(store->Stats().disk.blocks, kBlocks + 1u);
    EXPECT_EQ(store->TenantUsage(kAlice), (kBlocks + 1) * BlockBytes(4));
    // One put per block would sync once per block.
    const uint64_t before_single = fs->syncs();
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(Put(*store, kAlice, Key(2, i), MakeBlock(200 + i)).ok());
    }
    EXPECT_GE(fs->syncs() - before_single, 4u);
  }
  // A power loss drops whatever was not synced: the batch was.
  fs->DropUnsyncedData();
  auto store = OpenStore(o);
  for (int i = 0; i < kBlocks; ++i) {
    auto got = store->GetBlock(kAlice, Key(1, i));
    ASSERT_TRUE(got.ok()) << i << ": " << got.status();
    EXPECT_EQ(**got, blocks[i]);
  }
}

TEST(TieredStoreTest, SyncBatchFailsAsAWholeWhenTheDiskFails) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  TieredStoreOptions o = SmallOptions(8, dir.Sub("db"));
  o.durability = Durability::kSync;
  o.file_system = fs;
  auto store = OpenStore(o);
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 0), MakeBlock(0)).ok());
  fs->SetFailWrites(true);
  const std::string a = MakeBlock(1), b = MakeBlock(2), bad = "not a block";
  std::vector<BlockPut> puts = {BlockPut{Key(1, 1), 1, a},
                                BlockPut{Key(1, 2), 2, b},
                                BlockPut{Key(1, 3), 3, bad}};
  std::vector<absl::Status> results = store->PutBlocks(kAlice, puts);
  EXPECT_EQ(results[0].code(), absl::StatusCode::kUnavailable) << results[0];
  EXPECT_EQ(results[1].code(), absl::StatusCode::kUnavailable) << results[1];
  EXPECT_EQ(results[2].code(), absl::StatusCode::kDataLoss) << results[2];
  // Nothing unacknowledged is served or charged.
  EXPECT_EQ(store->GetBlock(kAlice, Key(1, 1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->TenantUsage(kAlice), BlockBytes(4));
  EXPECT_TRUE(store->Stats().disk_fault);
  fs->SetFailWrites(false);
  results = store->PutBlocks(kAlice, puts);
  EXPECT_TRUE(results[0].ok()) << results[0];
  EXPECT_TRUE(results[1].ok()) << results[1];
  EXPECT_EQ(**store->GetBlock(kAlice, Key(1, 2)), b);
  EXPECT_EQ(store->TenantUsage(kAlice), 3 * BlockBytes(4));
}

TEST(TieredStoreTest, GetBlocksFromMemoryDefersDiskOnlyBlocks) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(2, dir.Sub("db")));
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i)).ok());
  }
  ASSERT_TRUE(store->Flush().ok());
  const NamespaceId ns = Key(1, 0).ns;
  // Blocks 2 and 3 are the most recent: in memory. Block 9 was never put.
  auto mem = store->GetBlocksFromMemory(kAlice, ns, {Hash(3), Hash(9)});
  ASSERT_TRUE(mem.has_value());
  EXPECT_EQ(**(*mem)[0], MakeBlock(3));
  EXPECT_EQ((*mem)[1].status().code(), absl::StatusCode::kNotFound);
  // Block 0 was spilled: only on disk, so the caller must do disk I/O.
  EXPECT_FALSE(
      store->GetBlocksFromMemory(kAlice, ns, {Hash(3), Hash(0)}).has_value());
  // Another tenant learns nothing.
  auto other = store->GetBlocksFromMemory(kBob, ns, {Hash(3)});
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ((*other)[0].status().code(), absl::StatusCode::kNotFound);
  // Write-through stores always report puts as touching disk; memory-only
  // stores never.
  EXPECT_TRUE(store->PutMayTouchDisk(1));  // memory full: a put would spill
  auto memory_only = OpenStore(SmallOptions(8));
  EXPECT_FALSE(memory_only->PutMayTouchDisk(1 << 30));
  TieredStoreOptions wt = SmallOptions(8, dir.Sub("db2"));
  wt.write_policy = WritePolicy::kWriteThrough;
  EXPECT_TRUE(OpenStore(wt)->PutMayTouchDisk(1));
}

TEST(TieredStoreTest, OptionsAndNames) {
  TieredStoreOptions o;
  EXPECT_EQ(o.memory_bytes, uint64_t{1} << 30);
  EXPECT_EQ(o.disk_bytes, uint64_t{16} << 30);
  EXPECT_EQ(o.durability, Durability::kAsync);
  EXPECT_EQ(o.write_policy, WritePolicy::kSpill);
  EXPECT_EQ(o.ttl, absl::ZeroDuration());
  EXPECT_EQ(*ParseDurability("sync"), Durability::kSync);
  EXPECT_EQ(*ParseWritePolicy("write_through"), WritePolicy::kWriteThrough);
  EXPECT_EQ(ParseDurability("fast").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DurabilityName(Durability::kAsync), "async");
  EXPECT_EQ(WritePolicyName(WritePolicy::kSpill), "spill");
  o.memory_bytes = 0;
  EXPECT_EQ(TieredStore::Open(o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TieredStoreTest, ConcurrentClientsSmokeTest) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(40, dir.Sub("db")));
  constexpr int kThreads = 6, kBlocks = 60;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string tenant = absl::StrCat("tenant", t % 2);
      const uint64_t ns = 100 + t;
      std::vector<BlockHash> chain;
      for (int i = 0; i < kBlocks; ++i) {
        const BlockKey key = Key(ns, i);
        chain.push_back(key.hash);
        if (!Put(*store, tenant, key, MakeBlock(t * 1000 + i), i).ok()) {
          errors.fetch_add(1);
        }
        // A duplicate put from a racing writer.
        if (!Put(*store, tenant, key, MakeBlock(t * 1000 + i), i).ok()) {
          errors.fetch_add(1);
        }
        auto got = store->GetBlock(tenant, Key(ns, i / 2));
        if (!got.ok() || **got != MakeBlock(t * 1000 + i / 2)) {
          errors.fetch_add(1);
        }
      }
      if (store->Lookup(tenant, Ns(ns), chain).prefix_blocks != kBlocks) {
        errors.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  const StoreStats s = store->Stats();
  EXPECT_EQ(s.puts, uint64_t{kThreads * kBlocks});
  EXPECT_EQ(s.dropped, 0u);
  EXPECT_LE(s.memory.bytes, 40 * BlockBytes(4));
  // Every block is in memory or on disk, counted once.
  EXPECT_EQ(store->TenantUsage("tenant0") + store->TenantUsage("tenant1"),
            uint64_t{kThreads * kBlocks} * BlockBytes(4));
}

// --- kill -9 in sync mode ------------------------------------------------
// The test re-executes this binary as a child (a fresh process, so RocksDB's
// threads are its own), which opens the store in sync mode and puts blocks
// forever, writing each acknowledged index to a pipe. The parent kills it
// with SIGKILL mid-stream, reopens the store and checks that every
// acknowledged block is served bit-exact.

constexpr char kChildDirEnv[] = "VQKV_STORAGE_KILL9_CHILD_DIR";
constexpr char kChildFdEnv[] = "VQKV_STORAGE_KILL9_CHILD_FD";

TieredStoreOptions SyncOptions(const std::string& dir) {
  TieredStoreOptions o;
  o.memory_bytes = 64 * MemCost(16);
  o.data_dir = dir;
  o.durability = Durability::kSync;
  return o;
}

[[noreturn]] void RunKill9Child(const char* dir, int fd) {
  auto store = TieredStore::Open(SyncOptions(dir));
  if (!store.ok()) _exit(2);
  for (uint32_t i = 0;; ++i) {
    const std::string block = MakeBlock(i, 16);
    if (!(*store)->PutBlock(kAlice, BlockPut{Key(7, i), i, block}).ok()) {
      _exit(3);
    }
    if (write(fd, &i, sizeof(i)) != sizeof(i)) _exit(4);
  }
}

TEST(TieredStoreKill9Test, SyncPutsAcknowledgedBeforeKillSurvive) {
  if (const char* child_dir = getenv(kChildDirEnv)) {
    int fd = -1;
    if (!absl::SimpleAtoi(getenv(kChildFdEnv), &fd)) _exit(5);
    RunKill9Child(child_dir, fd);
  }
  TempDir dir;
  const std::string db = dir.Sub("db");
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    setenv(kChildDirEnv, db.c_str(), 1);
    setenv(kChildFdEnv, absl::StrCat(fds[1]).c_str(), 1);
    execl("/proc/self/exe", "/proc/self/exe",
          "--gtest_filter=TieredStoreKill9Test.*", static_cast<char*>(nullptr));
    _exit(6);
  }
  close(fds[1]);
  // Wait for 40 acknowledgements, then kill the child while it is writing.
  std::vector<uint32_t> acked;
  uint32_t i;
  while (acked.size() < 40 && read(fds[0], &i, sizeof(i)) == sizeof(i)) {
    acked.push_back(i);
  }
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  // Acknowledgements written before the kill are still in the pipe.
  while (read(fds[0], &i, sizeof(i)) == sizeof(i)) acked.push_back(i);
  close(fds[0]);
  ASSERT_GE(acked.size(), 40u);

  auto store = OpenStore(SyncOptions(db));
  ASSERT_NE(store, nullptr);
  for (uint32_t k : acked) {
    auto got = store->GetBlock(kAlice, Key(7, k));
    ASSERT_TRUE(got.ok()) << "acknowledged block " << k << ": " << got.status();
    EXPECT_EQ(**got, MakeBlock(k, 16)) << k;
  }
  EXPECT_EQ(store->Stats().corrupt_dropped, 0u);
}

// --- Issue 11 (hardening) regression tests -------------------------------
// docs/RELIABILITY.md says what each one exercises and shows.

// Resident set size of this process, from /proc/self/statm.
uint64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

// Item 1: 1,000,000 header-sized blocks into a 64 MiB memory budget. With
// only block bytes counted the store held ~700k of them in ~240 MB of heap;
// now the per-entry overhead is charged and the heap stays near the budget.
TEST(TieredStoreHardeningTest, MemoryBudgetBoundsHeapOfTinyBlocks) {
  if (!testing::kHeapMeasurable)
    GTEST_SKIP() << "heap is not measurable under a sanitizer";

  constexpr uint64_t kBudget = uint64_t{64} << 20;
  constexpr int kBlocks = 1000000;
  TieredStoreOptions o;
  o.memory_bytes = kBudget;                              // memory only
  const std::string block = MakeBlock(1, /*tokens=*/1);  // 96 bytes
  const uint64_t heap_before = testing::HeapInUse();
  const uint64_t rss_before = ResidentBytes();
  auto store = OpenStore(o);
  for (int i = 0; i < kBlocks; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, i), block).ok());
  }
  const uint64_t heap = testing::HeapInUse() - heap_before;
  const uint64_t rss = ResidentBytes() - rss_before;
  const StoreStats st = store->Stats();
  std::printf(
      "tiny blocks: %d puts of %zu bytes, budget %llu: %llu blocks held, "
      "heap +%llu bytes (%llu per held block), RSS +%llu bytes\n",
      kBlocks, block.size(), static_cast<unsigned long long>(kBudget),
      static_cast<unsigned long long>(st.memory.blocks),
      static_cast<unsigned long long>(heap),
      static_cast<unsigned long long>(heap / st.memory.blocks),
      static_cast<unsigned long long>(rss));
  EXPECT_LE(heap, kBudget + kBudget / 8);
  EXPECT_EQ(store->TenantUsage(kAlice), st.memory.bytes);
}

// Item 1: the disk tier's record count (its index's RAM) is bounded, by
// default to an index of a quarter of the memory budget; spilled records
// past the bound evict the oldest and leave the ledger.
TEST(TieredStoreHardeningTest, DiskRecordsAreBounded) {
  EXPECT_EQ(DiskMaxRecordsFor(uint64_t{1} << 30), 1398101u);
  EXPECT_EQ(DiskMaxRecordsFor(uint64_t{64} << 20), 87381u);
  EXPECT_EQ(DiskMaxRecordsFor(1), 4096u);
  TempDir dir;
  FakeClock clock;
  TieredStoreOptions o = SmallOptions(2, dir.Sub("db"));
  o.disk_max_records = 8;
  o.clock = clock.AsFunction();
  auto store = OpenStore(o);
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(Put(*store, kAlice, Key(1, i), MakeBlock(i)).ok());
    clock.Advance(absl::Seconds(1));
  }
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.disk.blocks, 8u);
  EXPECT_EQ(st.memory.blocks, 2u);
  EXPECT_EQ(store->TenantUsage(kAlice), 10 * BlockBytes(4));
  EXPECT_EQ(store->GetNamespaceInfo(Ns(1))->blocks, 10u);
}

// Item 3: a put the quota refuses claims no namespace, so a tenant over
// quota cannot create namespaces (before: one per refused put, forever).
TEST(TieredStoreHardeningTest, QuotaRefusalCreatesNoNamespace) {
  TieredStoreOptions o = SmallOptions(64);
  o.tenant_quotas[kAlice] = 2 * BlockBytes(4);
  auto store = OpenStore(o);
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 1), MakeBlock(1)).ok());
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 2), MakeBlock(2)).ok());
  for (uint64_t ns = 2; ns < 102; ++ns) {
    EXPECT_EQ(Put(*store, kAlice, Key(ns, 1), MakeBlock(3)).code(),
              absl::StatusCode::kResourceExhausted);
  }
  EXPECT_EQ(store->Stats().namespaces, 1u);
  EXPECT_EQ(store->GetNamespaceInfo(Ns(2)).status().code(),
            absl::StatusCode::kNotFound);
  // Never Alice's, so another tenant may still have it.
  EXPECT_TRUE(Put(*store, kBob, Key(2, 1), MakeBlock(3)).ok());
}

// Item 3: a tenant owns at most max_namespaces_per_tenant namespaces; at
// the bound its empty ones are reclaimed (and their owner records deleted).
TEST(TieredStoreHardeningTest, EmptyNamespacesAreReclaimedAtTheBound) {
  TempDir dir;
  TieredStoreOptions o = SmallOptions(64, dir.Sub("db"));
  o.max_namespaces_per_tenant = 3;
  {
    auto store = OpenStore(o);
    for (uint64_t ns = 1; ns <= 3; ++ns) {
      ASSERT_TRUE(Put(*store, kAlice, Key(ns, 1), MakeBlock(ns)).ok());
    }
    // None empty: refused, nothing claimed.
    EXPECT_EQ(Put(*store, kAlice, Key(4, 1), MakeBlock(4)).code(),
              absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(store->Stats().namespaces, 3u);
    ASSERT_TRUE(store->DeleteBlock(kAlice, Key(1, 1)).ok());
    ASSERT_TRUE(store->DeleteBlock(kAlice, Key(2, 1)).ok());
    // Namespaces 1 and 2 are empty now: the claim of 4 reclaims them.
    ASSERT_TRUE(Put(*store, kAlice, Key(4, 1), MakeBlock(4)).ok());
    EXPECT_EQ(store->Stats().namespaces, 2u);
    EXPECT_EQ(store->GetNamespaceInfo(Ns(1)).status().code(),
              absl::StatusCode::kNotFound);
    EXPECT_TRUE(Put(*store, kBob, Key(1, 5), MakeBlock(5)).ok());
  }
  // The reclaimed owner records are gone from disk too.
  auto store = OpenStore(o);
  EXPECT_EQ(store->Stats().namespaces, 3u);  // alice 3, 4; bob 1
  EXPECT_EQ(store->GetNamespaceInfo(Ns(2)).status().code(),
            absl::StatusCode::kNotFound);
  for (const auto& [ns, owner] :
       {std::pair<uint64_t, std::string>{1, kBob}, {3, kAlice}, {4, kAlice}}) {
    absl::StatusOr<NamespaceInfo> info = store->GetNamespaceInfo(Ns(ns));
    ASSERT_TRUE(info.ok()) << ns << ": " << info.status();
    EXPECT_EQ(info->tenant, owner) << ns;
  }
}

// Item 4: DeleteNamespace racing a spill. The spill of block (1,0) is held
// between its checks and its disk write (before_spill_write). Before the
// fix DeleteNamespace took no stripe lock, finished meanwhile, and the
// spill then wrote the deleted block back, uncharged. Now DeleteNamespace
// waits for the spill (the bounded wait below times out) and removes it.
TEST(TieredStoreHardeningTest, DeleteNamespaceCannotRaceASpill) {
  TempDir dir;
  TieredStoreOptions o = SmallOptions(2, dir.Sub("db"));
  absl::Notification in_spill, release;
  std::atomic<bool> armed{false};
  o.before_spill_write = [&](const BlockKey& key) {
    if (key == Key(1, 0) && armed.exchange(false)) {
      in_spill.Notify();
      release.WaitForNotificationWithTimeout(absl::Seconds(30));
    }
  };
  auto store = OpenStore(o);
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 0), MakeBlock(1)).ok());
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 1), MakeBlock(2)).ok());
  armed = true;
  // Evicts (1,0), the least recently used, and spills it.
  std::thread spiller(
      [&] { EXPECT_TRUE(Put(*store, kAlice, Key(2, 0), MakeBlock(3)).ok()); });
  if (!in_spill.WaitForNotificationWithTimeout(absl::Seconds(30))) {
    release.Notify();
    spiller.join();
    FAIL() << "the put did not spill (1,0)";
  }
  absl::StatusOr<NamespaceInfo> deleted = absl::UnknownError("not run");
  absl::Notification delete_done;
  std::thread deleter([&] {
    deleted = store->DeleteNamespace(kAlice, Ns(1));
    delete_done.Notify();
  });
  // Give an unfixed DeleteNamespace the chance to finish first (the fixed
  // one cannot: it waits for the spill's stripe). Bounded; the assertions
  // below do not depend on which happened.
  delete_done.WaitForNotificationWithTimeout(absl::Milliseconds(500));
  release.Notify();
  spiller.join();
  deleter.join();
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  // Nothing of namespace 1 is left anywhere, and Alice is charged only for
  // what she holds.
  EXPECT_EQ(store->Stats().disk.blocks, 0u);
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 7), MakeBlock(7)).ok());
  EXPECT_FALSE(store->Lookup(kAlice, Ns(1), {Hash(0)}).present[0]);
  EXPECT_EQ(store->TenantUsage(kAlice), 2 * BlockBytes(4));
}

// Item 4: a disk-budget eviction racing a memory eviction. Write-through:
// A and B are in memory and on disk. Putting C evicts A from memory (A is
// pending spill) and, on disk, evicts A's record for room. Before the fix
// that drop uncharged A (not in memory), and the spill then wrote A back:
// held, uncharged. Now the drop is settled under A's stripe, sees the
// pending spill, and A stays charged once.
TEST(TieredStoreHardeningTest, DiskDropRacingMemoryEvictionKeepsCharge) {
  TempDir dir;
  FakeClock clock;
  TieredStoreOptions o = SmallOptions(2, dir.Sub("db"));
  o.write_policy = WritePolicy::kWriteThrough;
  o.disk_bytes = 2 * BlockBytes(4);
  o.clock = clock.AsFunction();
  auto store = OpenStore(o);
  const BlockKey a = Key(1, 1), b = Key(1, 2), c = Key(1, 3);
  ASSERT_TRUE(Put(*store, kAlice, a, MakeBlock(1)).ok());
  clock.Advance(absl::Seconds(1));
  ASSERT_TRUE(Put(*store, kAlice, b, MakeBlock(2)).ok());
  clock.Advance(absl::Seconds(1));
  ASSERT_TRUE(Put(*store, kAlice, c, MakeBlock(3)).ok());
  // A, B and C are each held somewhere, and each charged once.
  for (const BlockKey& k : {a, b, c}) {
    EXPECT_TRUE(store->GetBlock(kAlice, k).ok()) << k.DebugString();
  }
  EXPECT_EQ(store->TenantUsage(kAlice), 3 * BlockBytes(4));
  EXPECT_EQ(store->GetNamespaceInfo(Ns(1))->blocks, 3u);
}

// Item 4: a failed owner-record write is retried. Sync mode: the first put
// into a namespace fails because the owner record cannot be written (disk
// fault); the ledger has claimed the namespace all the same. Before the
// fix the next put, after the fault cleared, wrote its block but never the
// owner record, so after a restart the acknowledged block read as
// NOT_FOUND. Now that put writes the owner record first.
TEST(TieredStoreHardeningTest, FailedOwnerRecordWriteIsRetried) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  TieredStoreOptions o = SmallOptions(8, dir.Sub("db"));
  o.durability = Durability::kSync;
  o.file_system = fs;
  const std::string block = MakeBlock(2);
  {
    auto store = OpenStore(o);
    fs->SetFailWrites(true);
    EXPECT_FALSE(Put(*store, kAlice, Key(1, 1), MakeBlock(1)).ok());
    fs->SetFailWrites(false);
    ASSERT_TRUE(Put(*store, kAlice, Key(1, 2), block).ok());  // acknowledged
  }
  auto store = OpenStore(o);
  absl::StatusOr<SharedBytes> got = store->GetBlock(kAlice, Key(1, 2));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(**got, block);
}

// The same in async mode: Flush writes the owner record again.
TEST(TieredStoreHardeningTest, FlushRetriesFailedOwnerRecordWrite) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  TieredStoreOptions o = SmallOptions(8, dir.Sub("db"));
  o.file_system = fs;
  {
    auto store = OpenStore(o);
    fs->SetFailWrites(true);
    EXPECT_TRUE(Put(*store, kAlice, Key(1, 1), MakeBlock(1)).ok());
    fs->SetFailWrites(false);
    ASSERT_TRUE(store->Flush().ok());
  }
  auto store = OpenStore(o);
  EXPECT_TRUE(store->GetBlock(kAlice, Key(1, 1)).ok());
}

// Item 5: two racing puts of one key. The store decides under the key's
// stripe lock, so exactly one stores it; with DuplicatePut::kAlreadyExists
// the other gets ALREADY_EXISTS (the service's Lookup-then-put left both
// OK). With the default (kOk) both are OK, by design (idempotent), and the
// block is stored and counted once.
TEST(TieredStoreHardeningTest, RacingPutsOfOneKeyStoreItOnce) {
  auto store = OpenStore(SmallOptions(256));
  const std::string block = MakeBlock(1);
  constexpr int kRounds = 100;
  for (int round = 0; round < kRounds; ++round) {
    const DuplicatePut mode =
        round % 2 == 0 ? DuplicatePut::kAlreadyExists : DuplicatePut::kOk;
    absl::Status results[2];
    std::latch start(2);
    auto put = [&](int i) {
      start.arrive_and_wait();
      results[i] =
          store->PutBlock(kAlice, BlockPut{Key(1, round), 0, block}, mode);
    };
    std::thread t0(put, 0), t1(put, 1);
    t0.join();
    t1.join();
    const int ok = results[0].ok() + results[1].ok();
    if (mode == DuplicatePut::kAlreadyExists) {
      EXPECT_EQ(ok, 1) << results[0] << " / " << results[1];
      EXPECT_TRUE(absl::IsAlreadyExists(results[0]) ||
                  absl::IsAlreadyExists(results[1]));
    } else {
      EXPECT_EQ(ok, 2);
    }
  }
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.puts, uint64_t{kRounds});
  EXPECT_EQ(st.duplicate_puts, uint64_t{kRounds});
  EXPECT_EQ(store->TenantUsage(kAlice), kRounds * BlockBytes(4));
}

// Item 5: the TTL applies to a block promoted from disk and spilled again.
// A's record is written at t0; a read at t0+6s promotes A into memory; at
// t0+11s (TTL 10 s) memory evicts A. Before the fix the spill wrote a new
// record stamped t0+11s, so a hot block never expired. Now the copy keeps
// its record's write time and is dropped instead of written.
TEST(TieredStoreHardeningTest, TtlAppliesToReSpilledHotBlocks) {
  TempDir dir;
  FakeClock clock;
  TieredStoreOptions o = SmallOptions(1, dir.Sub("db"));
  o.ttl = absl::Seconds(10);
  o.clock = clock.AsFunction();
  auto store = OpenStore(o);
  const BlockKey a = Key(1, 1);
  ASSERT_TRUE(Put(*store, kAlice, a, MakeBlock(1)).ok());
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 2), MakeBlock(2)).ok());  // spills A
  ASSERT_EQ(store->Stats().spills, 1u);
  clock.Advance(absl::Seconds(6));
  ASSERT_TRUE(store->GetBlock(kAlice, a).ok());  // disk hit: promoted
  ASSERT_EQ(store->Stats().promotions, 1u);
  clock.Advance(absl::Seconds(5));
  ASSERT_TRUE(Put(*store, kAlice, Key(1, 3), MakeBlock(3)).ok());  // evicts A
  EXPECT_EQ(store->GetBlock(kAlice, a).status().code(),
            absl::StatusCode::kNotFound);
  // A left the store once, and is uncharged once: (1,2) on disk (written
  // at t0+6s) and (1,3) in memory remain.
  store->SweepExpired();
  EXPECT_EQ(store->TenantUsage(kAlice), 2 * BlockBytes(4));
}

// A complete, tiny codebook set (1 layer, 1 head, head_dim 4, 1 stage of 4
// codewords for keys and values) with codewords derived from `seed`.
std::string TinyCodebookFile(uint64_t seed, uint64_t* hash) {
  CodebookConfig c;
  c.layout = KvLayout{1, 1, 4};
  c.key_group_stages = {1};
  c.key_bits = 2;
  c.value_stages = 1;
  c.value_bits = 2;
  absl::StatusOr<CodebookSet> set = CodebookSet::Create(c);
  EXPECT_TRUE(set.ok()) << set.status();
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> dist(-1, 1);
  auto quantizer = [&] {
    RvqParams p;
    p.dim = 4;
    p.stages = 1;
    p.bits = 2;
    std::vector<float> codebooks(4 * 4);
    for (float& x : codebooks) x = dist(rng);
    return *ResidualQuantizer::FromCodebooks(p, std::move(codebooks));
  };
  EXPECT_TRUE(set->SetKey(0, 0, 0, quantizer()).ok());
  EXPECT_TRUE(set->SetValue(0, 0, quantizer()).ok());
  *hash = *set->Hash();
  return *set->Serialize();
}

// Item 2: each tenant's codebook references are bounded (count and bytes),
// a tenant can delete its own, and the file goes with the last reference.
TEST(TieredStoreHardeningTest, CodebookQuotaAndDelete) {
  TempDir dir;
  TieredStoreOptions o = SmallOptions(8, dir.Sub("db"));
  o.codebook_quota = CodebookQuota{/*max_sets=*/2, /*max_bytes=*/0};
  uint64_t h[4];
  std::string files[4];
  for (int i = 0; i < 4; ++i) files[i] = TinyCodebookFile(i + 1, &h[i]);
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store->PutCodebooks(kAlice, h[0], files[0]).ok());
    ASSERT_TRUE(store->PutCodebooks(kAlice, h[1], files[1]).ok());
    ASSERT_TRUE(store->PutCodebooks(kAlice, h[1], files[1]).ok());  // again
    EXPECT_EQ(store->PutCodebooks(kAlice, h[2], files[2]).code(),
              absl::StatusCode::kResourceExhausted);
    EXPECT_FALSE(store->HasCodebook(h[2]));
    // Bob's reference to the same file counts for Bob.
    ASSERT_TRUE(store->PutCodebooks(kBob, h[0], files[0]).ok());
    EXPECT_EQ(store->TenantCodebookUsage(kBob).sets, 1u);
    ASSERT_TRUE(store->DeleteCodebooks(kAlice, h[0]).ok());
    EXPECT_TRUE(store->HasCodebook(h[0]));  // Bob still holds it
    EXPECT_EQ(store->DeleteCodebooks(kAlice, h[0]).code(),
              absl::StatusCode::kNotFound);
    ASSERT_TRUE(store->PutCodebooks(kAlice, h[2], files[2]).ok());
    ASSERT_TRUE(store->DeleteCodebooks(kBob, h[0]).ok());
    EXPECT_FALSE(store->HasCodebook(h[0]));
    EXPECT_EQ(store->Stats().codebooks, 2u);
  }
  // References and usage persist.
  auto store = OpenStore(o);
  EXPECT_EQ(store->Stats().codebooks, 2u);
  EXPECT_FALSE(store->HasCodebook(h[0]));
  EXPECT_EQ(store->TenantCodebookUsage(kAlice).sets, 2u);
  EXPECT_EQ(store->TenantCodebookUsage(kAlice).bytes,
            files[1].size() + files[2].size());
  EXPECT_EQ(store->TenantCodebookUsage(kBob).sets, 0u);
  EXPECT_EQ(store->PutCodebooks(kAlice, h[3], files[3]).code(),
            absl::StatusCode::kResourceExhausted);
  // The byte bound.
  TempDir dir2;
  TieredStoreOptions by_bytes = SmallOptions(8, dir2.Sub("db"));
  by_bytes.codebook_quota =
      CodebookQuota{/*max_sets=*/0, /*max_bytes=*/files[0].size() + 1};
  auto small = OpenStore(by_bytes);
  ASSERT_TRUE(small->PutCodebooks(kAlice, h[0], files[0]).ok());
  EXPECT_EQ(small->PutCodebooks(kAlice, h[1], files[1]).code(),
            absl::StatusCode::kResourceExhausted);
}

// Item 2: a codebook file read from disk is checked against its content
// hash. The stored file of h0 is replaced on disk by another valid set's
// file (and, for a second hash, by garbage); before the fix the registry
// served those bytes. Now Get fails with DATA_LOSS once, the file is
// dropped, and the set is unregistered (a client registers it again).
TEST(TieredStoreHardeningTest, CorruptCodebookOnDiskIsNeverServed) {
  TempDir dir;
  TieredStoreOptions o = SmallOptions(8, dir.Sub("db"));
  o.codebook_cache_bytes = 1;  // every Get reads the disk
  uint64_t h0 = 0, h1 = 0, h2 = 0;
  const std::string f0 = TinyCodebookFile(1, &h0);
  const std::string f1 = TinyCodebookFile(2, &h1);
  const std::string f2 = TinyCodebookFile(3, &h2);
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store->PutCodebooks(kAlice, h0, f0).ok());
    ASSERT_TRUE(store->PutCodebooks(kAlice, h2, f2).ok());
    EXPECT_EQ(**store->GetCodebooks(h0), f0);  // verified, served
  }
  {
    RocksDbTierOptions t;
    t.path = dir.Sub("db");
    auto tier = RocksDbTier::Open(t);
    ASSERT_TRUE(tier.ok()) << tier.status();
    ASSERT_TRUE((*tier)->TEST_OverwriteCodebookValue(h0, f1).ok());
    std::string garbage = f2;
    garbage[garbage.size() / 2] ^= 1;
    ASSERT_TRUE((*tier)->TEST_OverwriteCodebookValue(h2, garbage).ok());
  }
  auto store = OpenStore(o);
  for (uint64_t h : {h0, h2}) {
    EXPECT_EQ(store->GetCodebooks(h).status().code(),
              absl::StatusCode::kDataLoss);
    EXPECT_EQ(store->GetCodebooks(h).status().code(),
              absl::StatusCode::kNotFound);
    EXPECT_FALSE(store->HasCodebook(h));
  }
  EXPECT_EQ(store->Stats().codebooks_corrupt_dropped, 2u);
  EXPECT_EQ(store->TenantCodebookUsage(kAlice).sets, 0u);
  // Registered again, it is served again.
  ASSERT_TRUE(store->PutCodebooks(kAlice, h0, f0).ok());
  EXPECT_EQ(**store->GetCodebooks(h0), f0);
}

}  // namespace
}  // namespace vqkv::storage
