#include "storage/rocksdb_tier.h"

#include <malloc.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "storage/fault_injection_fs.h"
#include "storage/keys.h"
#include "storage/lease_table.h"
#include "tests/unit/storage/storage_test_util.h"

namespace vqkv::storage {
namespace {

using testing::BlockBytes;
using testing::FakeClock;
using testing::Key;
using testing::MakeBlock;
using testing::Ns;
using testing::TempDir;

std::unique_ptr<RocksDbTier> OpenTier(RocksDbTierOptions o) {
  auto tier = RocksDbTier::Open(std::move(o));
  EXPECT_TRUE(tier.ok()) << tier.status();
  return tier.ok() ? std::move(*tier) : nullptr;
}

RocksDbTierOptions Options(const TempDir& dir) {
  RocksDbTierOptions o;
  o.path = dir.Sub("db");
  return o;
}

TEST(RocksDbTierTest, RoundTripContainsDelete) {
  TempDir dir;
  auto tier = OpenTier(Options(dir));
  ASSERT_NE(tier, nullptr);
  const std::string a = MakeBlock(1), b = MakeBlock(2, 300);
  ASSERT_TRUE(tier->Put(Key(1, 1), 0, a).ok());
  ASSERT_TRUE(tier->Put(Key(1, 2), 1, b).ok());
  ASSERT_TRUE(tier->Put(Key(1, 2), 1, b).ok());  // idempotent
  EXPECT_EQ(**tier->Get(Key(1, 1)), a);
  EXPECT_EQ(**tier->Get(Key(1, 2)), b);
  EXPECT_EQ(tier->Get(Key(1, 3)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tier->Contains({Key(1, 1), Key(1, 3), Key(1, 2)}),
            std::vector<bool>({true, false, true}));
  EXPECT_EQ(tier->Usage().blocks, 2u);
  EXPECT_EQ(tier->Usage().bytes, a.size() + b.size());
  auto info = tier->Stat(Key(1, 2));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->chain_position, 1u);
  EXPECT_EQ(*tier->Delete(Key(1, 1)), a.size());
  EXPECT_EQ(*tier->Delete(Key(1, 1)), 0u);
  EXPECT_EQ(tier->Get(Key(1, 1)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tier->Usage().blocks, 1u);
}

TEST(RocksDbTierTest, PersistsAcrossReopen) {
  TempDir dir;
  {
    auto tier = OpenTier(Options(dir));
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE(tier->Put(Key(i % 3, i), i, MakeBlock(i, 1 + i)).ok());
    }
    ASSERT_TRUE(tier->PutCodebook(0xabcdef, "codebook-bytes").ok());
    ASSERT_TRUE(tier->PutNamespaceOwner(Ns(1), "alice").ok());
  }
  auto tier = OpenTier(Options(dir));
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(tier->Usage().blocks, 20u);
  for (int i = 0; i < 20; ++i) {
    auto got = tier->Get(Key(i % 3, i));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(**got, MakeBlock(i, 1 + i));
    EXPECT_EQ(tier->Stat(Key(i % 3, i))->chain_position, uint32_t(i));
  }
  EXPECT_TRUE(tier->HasCodebook(0xabcdef));
  EXPECT_EQ(**tier->GetCodebook(0xabcdef), "codebook-bytes");
  EXPECT_EQ(tier->GetCodebook(0x1234).status().code(),
            absl::StatusCode::kNotFound);
  auto namespaces = tier->Namespaces();
  EXPECT_EQ(namespaces[Ns(1)].tenant, "alice");
  EXPECT_EQ(namespaces[Ns(1)].blocks, 7u);  // i = 1, 4, ..., 19
}

TEST(RocksDbTierTest, DeleteNamespaceRemovesOnlyThatNamespace) {
  TempDir dir;
  auto tier = OpenTier(Options(dir));
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(tier->Put(Key(1, i), i, MakeBlock(i)).ok());
    ASSERT_TRUE(tier->Put(Key(2, i), i, MakeBlock(10 + i)).ok());
  }
  auto removed = tier->DeleteNamespace(Ns(1));
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(removed->blocks, 5u);
  EXPECT_EQ(tier->Usage().blocks, 5u);
  EXPECT_FALSE(tier->Contains(Key(1, 3)));
  EXPECT_EQ(**tier->Get(Key(2, 3)), MakeBlock(13));
  tier.reset();
  tier = OpenTier(Options(dir));
  EXPECT_EQ(tier->Usage().blocks, 5u);
  EXPECT_FALSE(tier->Contains(Key(1, 0)));
}

TEST(RocksDbTierTest, DiskBudgetEvictsOldestAndRefusesHugeBlocks) {
  TempDir dir;
  FakeClock clock;
  std::vector<DroppedBlock> drops;
  RocksDbTierOptions o = Options(dir);
  o.capacity_bytes = 3 * BlockBytes(4);
  o.clock = clock.AsFunction();
  o.on_drop = [&](const DroppedBlock& d) { drops.push_back(d); };
  auto tier = OpenTier(o);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(tier->Put(Key(1, i), 0, MakeBlock(i)).ok());
    clock.Advance(absl::Seconds(1));
  }
  ASSERT_TRUE(tier->Put(Key(1, 3), 0, MakeBlock(3)).ok());
  ASSERT_EQ(drops.size(), 1u);
  EXPECT_EQ(drops[0].key, Key(1, 0));
  EXPECT_EQ(drops[0].reason, DropReason::kEvicted);
  EXPECT_EQ(tier->evicted(), 1u);
  EXPECT_LE(tier->Usage().bytes, o.capacity_bytes);
  EXPECT_FALSE(tier->Contains(Key(1, 0)));
  EXPECT_EQ(tier->Put(Key(1, 9), 0, MakeBlock(9, 20)).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(tier->Contains(Key(1, 1)));
}

TEST(RocksDbTierTest, DiskBudgetPassesOverLeasedRecords) {
  TempDir dir;
  FakeClock clock;
  std::vector<DroppedBlock> drops;
  LeaseTableOptions lo;
  lo.clock = clock.AsFunction();
  auto leases = std::make_shared<LeaseTable>(std::move(lo));
  RocksDbTierOptions o = Options(dir);
  o.capacity_bytes = 3 * BlockBytes(4);
  o.clock = clock.AsFunction();
  o.leases = leases;
  o.on_drop = [&](const DroppedBlock& d) { drops.push_back(d); };
  auto tier = OpenTier(o);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(tier->Put(Key(1, i), 0, MakeBlock(i)).ok());
    clock.Advance(absl::Seconds(1));
  }
  // The two oldest are leased: the third oldest goes instead.
  const absl::Time until = clock.Now() + absl::Seconds(10);
  ASSERT_TRUE(leases->Lease(Key(1, 0), until));
  ASSERT_TRUE(leases->Lease(Key(1, 1), until));
  ASSERT_TRUE(tier->Put(Key(1, 3), 0, MakeBlock(3)).ok());
  ASSERT_EQ(drops.size(), 1u);
  EXPECT_EQ(drops[0].key, Key(1, 2));
  EXPECT_EQ(tier->Contains({Key(1, 0), Key(1, 1), Key(1, 3)}),
            std::vector<bool>({true, true, true}));
  // With every record leased there is no room: refused, nothing removed.
  ASSERT_TRUE(leases->Lease(Key(1, 3), until));
  const absl::Status s = tier->Put(Key(1, 4), 0, MakeBlock(4));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(drops.size(), 1u);
  EXPECT_EQ(tier->Usage().blocks, 3u);
  EXPECT_FALSE(tier->Contains(Key(1, 4)));
  // Delete still removes a leased record; after the leases end, the oldest
  // goes first again.
  EXPECT_EQ(*tier->Delete(Key(1, 3)), BlockBytes(4));
  ASSERT_TRUE(tier->Put(Key(1, 4), 0, MakeBlock(4)).ok());
  clock.Advance(absl::Seconds(10));
  ASSERT_TRUE(tier->Put(Key(1, 5), 0, MakeBlock(5)).ok());
  ASSERT_EQ(drops.size(), 2u);
  EXPECT_EQ(drops[1].key, Key(1, 0));
}

TEST(RocksDbTierTest, TtlExpiresRecords) {
  TempDir dir;
  FakeClock clock;
  std::vector<DroppedBlock> drops;
  RocksDbTierOptions o = Options(dir);
  o.ttl = absl::Minutes(10);
  o.clock = clock.AsFunction();
  o.on_drop = [&](const DroppedBlock& d) { drops.push_back(d); };
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier->Put(Key(1, 1), 0, MakeBlock(1)).ok());
  ASSERT_TRUE(tier->Put(Key(1, 2), 0, MakeBlock(2)).ok());
  clock.Advance(absl::Minutes(6));
  ASSERT_TRUE(tier->Put(Key(1, 3), 0, MakeBlock(3)).ok());
  clock.Advance(absl::Minutes(5));  // 1, 2 are 11 min old; 3 is 5 min old
  EXPECT_EQ(tier->Contains({Key(1, 1), Key(1, 2), Key(1, 3)}),
            std::vector<bool>({false, false, true}));
  EXPECT_EQ(tier->Get(Key(1, 1)).status().code(), absl::StatusCode::kNotFound);
  ASSERT_EQ(drops.size(), 1u);  // dropped when met by Get
  EXPECT_EQ(drops[0].reason, DropReason::kExpired);
  EXPECT_EQ(tier->SweepExpired(), 1u);  // key 2
  EXPECT_EQ(tier->Usage().blocks, 1u);
  EXPECT_EQ(tier->expired(), 2u);
  EXPECT_EQ(**tier->Get(Key(1, 3)), MakeBlock(3));
  // Expired records stay gone after a restart, and a later put may store
  // the key again.
  tier.reset();
  drops.clear();
  tier = OpenTier(o);
  EXPECT_EQ(tier->Usage().blocks, 1u);
  ASSERT_TRUE(tier->Put(Key(1, 1), 0, MakeBlock(1)).ok());
  EXPECT_EQ(**tier->Get(Key(1, 1)), MakeBlock(1));
  clock.Advance(absl::Minutes(30));
  tier.reset();
  tier = OpenTier(o);  // Open sweeps
  EXPECT_EQ(tier->Usage().blocks, 0u);
}

TEST(RocksDbTierTest, CorruptRecordIsDataLossThenNotFound) {
  TempDir dir;
  std::vector<DroppedBlock> drops;
  RocksDbTierOptions o = Options(dir);
  o.on_drop = [&](const DroppedBlock& d) { drops.push_back(d); };
  auto tier = OpenTier(o);
  const std::string block = MakeBlock(1, 200);
  ASSERT_TRUE(tier->Put(Key(1, 1), 0, block).ok());
  ASSERT_TRUE(tier->Put(Key(1, 2), 0, MakeBlock(2)).ok());
  std::string bad = block;
  bad[bad.size() / 2] ^= 0x40;  // one flipped payload bit
  ASSERT_TRUE(tier->TEST_OverwriteBlockValue(Key(1, 1), bad).ok());
  auto got = tier->Get(Key(1, 1));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_EQ(tier->corrupt_dropped(), 1u);
  ASSERT_EQ(drops.size(), 1u);
  EXPECT_EQ(drops[0].reason, DropReason::kCorrupt);
  EXPECT_EQ(drops[0].bytes, block.size());
  EXPECT_EQ(tier->Get(Key(1, 1)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(tier->Contains(Key(1, 1)));
  // A truncated record is caught too.
  ASSERT_TRUE(tier->TEST_OverwriteBlockValue(Key(1, 2), "VQKB-short").ok());
  EXPECT_EQ(tier->Get(Key(1, 2)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(tier->corrupt_dropped(), 2u);
  EXPECT_EQ(tier->Usage().blocks, 0u);
}

TEST(RocksDbTierTest, InjectedWriteErrorsAndFullDisk) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  RocksDbTierOptions o = Options(dir);
  o.file_system = fs;
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier->Put(Key(1, 1), 0, MakeBlock(1)).ok());

  fs->SetFailWrites(true);
  absl::Status s = tier->Put(Key(1, 2), 0, MakeBlock(2));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_FALSE(tier->Contains(Key(1, 2)));
  EXPECT_GT(fs->injected_write_errors(), 0u);
  EXPECT_GT(tier->io_errors(), 0u);
  // Reads of what was stored still work.
  EXPECT_EQ(**tier->Get(Key(1, 1)), MakeBlock(1));
  fs->SetFailWrites(false);

  fs->SetDiskFull(true);
  s = tier->Put(Key(1, 3), 0, MakeBlock(3));
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.code() == absl::StatusCode::kResourceExhausted ||
              s.code() == absl::StatusCode::kUnavailable)
      << s;
  EXPECT_FALSE(tier->Contains(Key(1, 3)));
  fs->SetDiskFull(false);

  // Once the fault clears the tier resumes and accepts writes again.
  s = tier->Put(Key(1, 4), 0, MakeBlock(4));
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(**tier->Get(Key(1, 4)), MakeBlock(4));
}

TEST(RocksDbTierTest, InjectedReadErrorsAreUnavailable) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  RocksDbTierOptions o = Options(dir);
  o.file_system = fs;
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier->Put(Key(1, 1), 0, MakeBlock(1, 300)).ok());
  ASSERT_TRUE(tier->Flush().ok());  // into files, out of the memtable
  tier.reset();
  tier = OpenTier(o);
  fs->SetFailReads(true);
  auto got = tier->Get(Key(1, 1));
  EXPECT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable)
      << got.status();
  EXPECT_GT(fs->injected_read_errors(), 0u);
  fs->SetFailReads(false);
  // A read error is not corruption: the record is kept and served again.
  EXPECT_EQ(**tier->Get(Key(1, 1)), MakeBlock(1, 300));
}

// A simulated power loss: writes 30 blocks, crashes without a clean flush
// (writes fail from then on), drops every byte that was never synced, and
// reopens. Returns how many of the blocks came back.
int SurvivorsOfPowerLoss(bool sync_writes) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  RocksDbTierOptions o = Options(dir);
  o.file_system = fs;
  o.sync_writes = sync_writes;
  {
    auto tier = OpenTier(o);
    for (int i = 0; i < 30; ++i) {
      EXPECT_TRUE(tier->Put(Key(1, i), i, MakeBlock(i)).ok());
    }
    fs->SetFailWrites(true);  // the shutdown flush cannot persist anything
  }
  fs->SetFailWrites(false);
  fs->DropUnsyncedData();
  auto tier = OpenTier(o);
  if (tier == nullptr) return -1;
  int survivors = 0;
  for (int i = 0; i < 30; ++i) {
    auto got = tier->Get(Key(1, i));
    if (got.ok()) {
      EXPECT_EQ(**got, MakeBlock(i));
      ++survivors;
    }
  }
  return survivors;
}

TEST(RocksDbTierTest, SyncWritesSurvivePowerLoss) {
  EXPECT_EQ(SurvivorsOfPowerLoss(/*sync_writes=*/true), 30);
}

TEST(RocksDbTierTest, AsyncWritesMayBeLostInPowerLoss) {
  // The contrast that shows the simulation bites: unsynced WAL data is gone.
  EXPECT_LT(SurvivorsOfPowerLoss(/*sync_writes=*/false), 30);
}

TEST(RocksDbTierTest, RejectsBadOptionsAndEmptyBlocks) {
  TempDir dir;
  RocksDbTierOptions o;
  EXPECT_EQ(RocksDbTier::Open(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Options(dir);
  o.capacity_bytes = 0;
  EXPECT_EQ(RocksDbTier::Open(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto tier = OpenTier(Options(dir));
  EXPECT_EQ(tier->Put(Key(1, 1), 0, "").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->PutCodebook(1, "").code(),
            absl::StatusCode::kInvalidArgument);
}

// Issue 11 item 1: the index grows with the record count, not the bytes;
// max_records bounds it. The oldest records go first, as for bytes, and a
// batch of more records than the bound keeps only the newest.
TEST(RocksDbTierTest, MaxRecordsBoundsTheIndex) {
  TempDir dir;
  FakeClock clock;
  std::vector<DroppedBlock> drops;
  RocksDbTierOptions o = Options(dir);
  o.max_records = 10;
  o.clock = clock.AsFunction();
  o.on_drop = [&](const DroppedBlock& d) { drops.push_back(d); };
  auto tier = OpenTier(o);
  const std::string block = MakeBlock(1, /*tokens=*/1);
  for (int i = 0; i < 25; ++i) {
    ASSERT_TRUE(tier->Put(Key(1, i), 0, block).ok());
    clock.Advance(absl::Seconds(1));
    EXPECT_LE(tier->Usage().blocks, 10u);
  }
  EXPECT_EQ(tier->Usage().blocks, 10u);
  ASSERT_EQ(drops.size(), 15u);
  EXPECT_EQ(drops[0].key, Key(1, 0));
  EXPECT_EQ(drops[0].reason, DropReason::kEvicted);
  EXPECT_FALSE(tier->Contains(Key(1, 14)));
  EXPECT_TRUE(tier->Contains(Key(1, 15)));
  std::vector<BlockPut> batch;
  for (int i = 100; i < 112; ++i) batch.push_back({Key(1, i), 0, block});
  const std::vector<absl::Status> results = tier->PutBatch(batch);
  EXPECT_EQ(results[0].code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(results[11].ok());
  EXPECT_EQ(tier->Usage().blocks, 10u);
  // Reopened, the bound holds for what was stored.
  tier.reset();
  tier = OpenTier(o);
  EXPECT_EQ(tier->Usage().blocks, 10u);
  o.max_records = 0;
  EXPECT_EQ(RocksDbTier::Open(o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Heap the tier takes once open on a database of `records` tiny blocks
// (flushed to SST files, so no WAL replay into memtables).
uint64_t OpenedHeap(int records) {
  TempDir dir;
  RocksDbTierOptions o = Options(dir);
  {
    auto tier = OpenTier(o);
    const std::string block = MakeBlock(1, /*tokens=*/1);
    std::vector<BlockPut> batch;
    for (int i = 0; i < records; ++i) {
      batch.push_back({Key(1, i), 0, block});
      if (batch.size() == 1000 || i + 1 == records) {
        for (const absl::Status& s : tier->PutBatch(batch)) {
          EXPECT_TRUE(s.ok()) << s;
        }
        batch.clear();
      }
    }
    EXPECT_TRUE(tier->Flush().ok());
  }
  const uint64_t before = testing::HeapInUse();
  auto tier = OpenTier(o);
  EXPECT_EQ(tier->Usage().blocks, static_cast<uint64_t>(records));
  return testing::HeapInUse() - before;
}

// kIndexBytesPerRecord covers what one more record costs the open tier in
// RAM: measured as the heap difference between two databases of different
// record counts, so RocksDB's fixed costs cancel. (It includes RocksDB's
// cached metadata blocks read while loading the index, so it is an upper
// bound for the index itself.)
TEST(RocksDbTierTest, IndexBytesPerRecordIsBounded) {
  if (!testing::kHeapMeasurable)
    GTEST_SKIP() << "heap is not measurable under a sanitizer";

  constexpr int kSmall = 20000, kLarge = 120000;
  const uint64_t small = OpenedHeap(kSmall);
  const uint64_t large = OpenedHeap(kLarge);
  const uint64_t per_record = (large - small) / (kLarge - kSmall);
  std::printf(
      "rocksdb tier index: %llu heap bytes per record (%d records: "
      "%llu, %d records: %llu; charged %llu)\n",
      static_cast<unsigned long long>(per_record), kSmall,
      static_cast<unsigned long long>(small), kLarge,
      static_cast<unsigned long long>(large),
      static_cast<unsigned long long>(kIndexBytesPerRecord));
  EXPECT_LE(per_record, kIndexBytesPerRecord);
}

}  // namespace
}  // namespace vqkv::storage
