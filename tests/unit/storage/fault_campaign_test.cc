// Fault campaigns against the tiered store (issue 11, "Faults"), as opposed
// to the single-fault tests of tiered_store_test.cc:
//  - bit flips in stored records, at random positions, in every record:
//    each one is detected and dropped, none is served;
//  - bit flips in the database files themselves (table and blob files);
//  - disk full and I/O errors switched on and off under concurrent load:
//    memory keeps serving, the fault is reported, the store recovers.
// The numbers they print are in docs/RELIABILITY.md ("Crash and fault
// tests").
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "storage/fault_injection_fs.h"
#include "storage/memory_tier.h"
#include "storage/rocksdb_tier.h"
#include "storage/tiered_store.h"
#include "tests/testing/stored_files.h"
#include "tests/unit/storage/storage_test_util.h"

namespace vqkv::storage {
namespace {

using testing::BlockBytes;
using testing::Key;
using testing::MakeBlock;
using testing::TempDir;

constexpr char kTenant[] = "alice";

std::unique_ptr<TieredStore> OpenStore(TieredStoreOptions o) {
  auto store = TieredStore::Open(std::move(o));
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

// A store whose blocks all go to disk on put, with a memory tier too small
// to hold more than a few of them (reads come from disk after a reopen).
TieredStoreOptions DiskOptions(const std::string& dir) {
  TieredStoreOptions o;
  o.data_dir = dir;
  o.memory_bytes = 64 << 10;
  o.disk_bytes = 256 << 20;
  o.write_policy = WritePolicy::kWriteThrough;
  return o;
}

// The outcome of reading back every block after corruption.
struct ReadBack {
  uint64_t exact = 0;           // served, bit-exact
  uint64_t served_corrupt = 0;  // served, bytes differ: must stay 0
  uint64_t detected = 0;        // kDataLoss: detected and dropped
  uint64_t dropped_after = 0;   // kNotFound on the read after kDataLoss
  uint64_t other = 0;           // any other status
  std::string first_other;
};

// Reads keys [0, blocks.size()) of namespace 1 twice.
ReadBack ReadAll(TieredStore& store, const std::vector<std::string>& blocks) {
  ReadBack r;
  for (size_t i = 0; i < blocks.size(); ++i) {
    absl::StatusOr<SharedBytes> got = store.GetBlock(kTenant, Key(1, i));
    if (got.ok()) {
      ++(**got == blocks[i] ? r.exact : r.served_corrupt);
      continue;
    }
    if (absl::IsDataLoss(got.status())) {
      ++r.detected;
      const absl::Status again = store.GetBlock(kTenant, Key(1, i)).status();
      if (absl::IsNotFound(again)) ++r.dropped_after;
      continue;
    }
    if (r.other++ == 0) r.first_other = got.status().ToString();
  }
  return r;
}

// ---------------------------------------------------------------------------
// Bit flips in stored records.

// Every record of a store is rewritten with 1 to 16 random bits flipped
// (anywhere: header, codes, checksum), bypassing RocksDB's own checksums
// (the rewritten record is a valid RocksDB record): the block checksum
// (XXH3-64 over header and payload, kernels/block_format.h) and the header
// checks must catch every one.
TEST(StorageFaultTest, BitFlipsInEveryStoredRecordAreAllDetected) {
  constexpr int kBlocks = 2000;
  TempDir dir;
  const TieredStoreOptions o = DiskOptions(dir.Sub("db"));
  std::mt19937_64 rng(20261201);
  std::vector<std::string> blocks;
  for (int i = 0; i < kBlocks; ++i) {
    blocks.push_back(MakeBlock(i, 1 + static_cast<int>(rng() % 40)));
  }
  {
    auto store = OpenStore(o);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < kBlocks; ++i) {
      ASSERT_TRUE(
          store->PutBlock(kTenant, BlockPut{Key(1, i), 0, blocks[i]}).ok());
    }
    ASSERT_TRUE(store->Flush().ok());
  }
  uint64_t bits_flipped = 0;
  {
    RocksDbTierOptions raw;
    raw.path = o.data_dir;
    auto tier = RocksDbTier::Open(raw);
    ASSERT_TRUE(tier.ok()) << tier.status();
    for (int i = 0; i < kBlocks; ++i) {
      std::string bad = blocks[i];
      // Mostly single bits; every fourth record gets 2..16 distinct bits.
      const int flips = i % 4 == 3 ? 2 + static_cast<int>(rng() % 15) : 1;
      std::vector<bool> done(bad.size() * 8, false);
      for (int f = 0; f < flips;) {
        const uint64_t bit = rng() % (bad.size() * 8);
        if (done[bit]) continue;
        done[bit] = true;
        bad[bit / 8] ^= static_cast<char>(1u << (bit % 8));
        ++f;
      }
      bits_flipped += flips;
      ASSERT_TRUE((*tier)->TEST_OverwriteBlockValue(Key(1, i), bad).ok());
    }
  }
  auto store = OpenStore(o);
  ASSERT_NE(store, nullptr);
  const ReadBack r = ReadAll(*store, blocks);
  std::printf(
      "bit flips in records: %d records, %llu bits flipped; detected %llu, "
      "served corrupt %llu, other %llu\n",
      kBlocks, static_cast<unsigned long long>(bits_flipped),
      static_cast<unsigned long long>(r.detected),
      static_cast<unsigned long long>(r.served_corrupt),
      static_cast<unsigned long long>(r.other));
  EXPECT_EQ(r.served_corrupt, 0u);
  EXPECT_EQ(r.exact, 0u);
  EXPECT_EQ(r.detected, static_cast<uint64_t>(kBlocks));
  EXPECT_EQ(r.dropped_after, static_cast<uint64_t>(kBlocks));
  EXPECT_EQ(r.other, 0u) << r.first_other;
  const StoreStats s = store->Stats();
  EXPECT_EQ(s.corrupt_dropped, static_cast<uint64_t>(kBlocks));
  EXPECT_EQ(s.disk.blocks, 0u);
  EXPECT_EQ(store->TenantUsage(kTenant), 0u);
}

// Bits flipped in the database's own files after a clean close: one bit
// inside the stored bytes of one block in `flip_one_in`. Every flipped block is
// dropped (RocksDB's table-block or blob checksum, else the block checksum)
// and none is ever served with wrong bytes.
//  - Small blocks (192 bytes) sit inline in table files, many to a 4 KiB
//    data block: a flip drops the whole data block, so untouched neighbours
//    go with it (reported, not served).
//  - Large blocks (5184 bytes) go to blob files, one checksummed record
//    each: every untouched block is still served.
// (In one column family, large blocks' blob references sit in the same
// data blocks as small blocks' values: the two sizes get a store each.)
void FlipBlocksInFiles(int tokens, int flip_one_in, bool untouched_all_served) {
  constexpr int kBlocks = 200;
  TempDir dir;
  const TieredStoreOptions o = DiskOptions(dir.Sub("db"));
  std::mt19937_64 rng(1201 + tokens);
  std::vector<std::string> blocks;
  for (int i = 0; i < kBlocks; ++i) blocks.push_back(MakeBlock(i, tokens));
  {
    auto store = OpenStore(o);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < kBlocks; ++i) {
      ASSERT_TRUE(
          store->PutBlock(kTenant, BlockPut{Key(1, i), 0, blocks[i]}).ok());
    }
    ASSERT_TRUE(store->Flush().ok());  // memtables into table/blob files
  }
  std::vector<bool> flipped(kBlocks, false);
  uint64_t copies = 0, flips = 0;
  {
    ::vqkv::testing::StoredFiles files(o.data_dir);
    ASSERT_GT(files.files(), 0u);
    for (int i = 0; i < kBlocks; ++i) {
      if (rng() % flip_one_in != 0) continue;
      flipped[i] = true;
      ++flips;
      const int n = files.FlipBit(blocks[i], rng() % (blocks[i].size() * 8));
      ASSERT_GE(n, 1) << "block " << i << " not found verbatim on disk";
      copies += n;
    }
    ASSERT_TRUE(files.Save());
  }
  // The index (metadata column family) is untouched: the store opens.
  auto store = OpenStore(o);
  ASSERT_NE(store, nullptr);
  uint64_t served_corrupt = 0, flipped_served = 0, flipped_detected = 0,
           collateral = 0, exact = 0, other = 0;
  std::string first_other;
  for (int i = 0; i < kBlocks; ++i) {
    absl::StatusOr<SharedBytes> got = store->GetBlock(kTenant, Key(1, i));
    if (got.ok()) {
      if (**got != blocks[i]) ++served_corrupt;
      if (flipped[i]) ++flipped_served;
      if (**got == blocks[i]) ++exact;
      continue;
    }
    if (absl::IsDataLoss(got.status())) {
      ++(flipped[i] ? flipped_detected : collateral);
      EXPECT_TRUE(
          absl::IsNotFound(store->GetBlock(kTenant, Key(1, i)).status()));
      continue;
    }
    if (other++ == 0) first_other = got.status().ToString();
  }
  std::printf(
      "bit flips in files, %zu-byte blocks: %llu of %d blocks flipped (%llu "
      "stored copies); detected %llu, served corrupt %llu; untouched blocks "
      "served %llu, dropped with a flipped neighbour %llu\n",
      blocks[0].size(), static_cast<unsigned long long>(flips), kBlocks,
      static_cast<unsigned long long>(copies),
      static_cast<unsigned long long>(flipped_detected),
      static_cast<unsigned long long>(served_corrupt),
      static_cast<unsigned long long>(exact),
      static_cast<unsigned long long>(collateral));
  EXPECT_EQ(served_corrupt, 0u);
  EXPECT_EQ(flipped_served, 0u);
  EXPECT_EQ(flipped_detected, flips);
  EXPECT_EQ(other, 0u) << first_other;
  if (untouched_all_served) {
    EXPECT_EQ(collateral, 0u);
  }
  EXPECT_EQ(exact + flipped_detected + collateral,
            static_cast<uint64_t>(kBlocks));
  EXPECT_EQ(store->Stats().corrupt_dropped, flipped_detected + collateral);
}

TEST(StorageFaultTest, BitFlipsInTableFilesAreNeverServed) {
  FlipBlocksInFiles(/*tokens=*/4, /*flip_one_in=*/8,
                    /*untouched_all_served=*/false);
}

TEST(StorageFaultTest, BitFlipsInBlobFilesAreNeverServed) {
  FlipBlocksInFiles(/*tokens=*/160, /*flip_one_in=*/2,
                    /*untouched_all_served=*/true);
}

// ---------------------------------------------------------------------------
// Disk full and I/O errors under load.

// Four threads put fresh blocks and read back (a) the block each just put,
// which is in memory, and (b) older blocks, which may be on disk, while the
// disk goes full, then fails every write, then recovers. Async, spill: puts
// never fail (memory takes them); a block just put is served (unless so many
// puts came in between that LRU has rightly spilled it: a worker descheduled
// on a loaded machine); a block is never served with wrong bytes; the faults
// are counted and named in Stats; once the disk is healthy again, spills reach
// it and survive a reopen.
TEST(StorageFaultTest, DiskFullAndWriteErrorsUnderLoadKeepMemoryServing) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  TieredStoreOptions o;
  o.data_dir = dir.Sub("db");
  o.memory_bytes = 256 * (BlockBytes(4) + kEntryOverheadBytes);
  o.memory_shards = 1;
  o.disk_bytes = 256 << 20;
  o.disk_max_records = 1 << 20;  // only faults drop blocks here
  o.file_system = fs;
  auto store = OpenStore(o);
  ASSERT_NE(store, nullptr);

  enum Phase { kHealthy, kDiskFull, kWriteErrors, kRecovered, kDone };
  std::atomic<int> phase{kHealthy};
  constexpr int kThreads = 4;
  struct Counts {
    uint64_t puts = 0, put_errors = 0, own_reads = 0, own_misses = 0,
             own_evicted = 0, old_reads = 0, old_exact = 0, old_missing = 0,
             old_unavailable = 0, wrong = 0, other = 0;
    uint64_t puts_in[kDone] = {};
    std::string first_problem;
  };
  std::vector<Counts> counts(kThreads);
  std::atomic<uint64_t> next_id{0};
  // Puts per phase, for the main thread to wait on (Counts are the
  // workers' own until they are joined).
  std::atomic<uint64_t> phase_puts[kDone] = {};
  // A block just put is the tier's most recent of 256; each later id adds
  // at most a put and an old read (a touch or a promotion) from any thread,
  // so under this many later ids it cannot have been evicted yet.
  constexpr uint64_t kEvictionHorizon = 64;
  auto worker = [&](int t) {
    Counts& c = counts[t];
    std::mt19937_64 rng(t);
    std::vector<uint64_t> mine;
    while (phase.load() != kDone) {
      const int p = phase.load();
      const uint64_t id = next_id.fetch_add(1);
      const std::string block = MakeBlock(static_cast<uint32_t>(id));
      const absl::Status put =
          store->PutBlock(kTenant, BlockPut{Key(1, id), 0, block});
      ++c.puts;
      ++c.puts_in[p];
      phase_puts[p].fetch_add(1);
      if (!put.ok()) {
        if (c.put_errors++ == 0) c.first_problem = put.ToString();
        continue;
      }
      mine.push_back(id);
      // The block just put is in memory, whatever the disk does.
      absl::StatusOr<SharedBytes> got = store->GetBlock(kTenant, Key(1, id));
      ++c.own_reads;
      if (!got.ok() && next_id.load() - id > kEvictionHorizon) {
        ++c.own_evicted;  // spilled by LRU: an old block now
      } else if (!got.ok()) {
        if (c.own_misses++ == 0 && c.first_problem.empty()) {
          c.first_problem =
              absl::StrCat("own block: ", got.status().ToString());
        }
      } else if (**got != block) {
        ++c.wrong;
      }
      // An older block of this thread: memory, disk, or dropped (a spill
      // that failed drops it).
      const uint64_t old = mine[rng() % mine.size()];
      got = store->GetBlock(kTenant, Key(1, old));
      ++c.old_reads;
      if (got.ok()) {
        ++(**got == MakeBlock(static_cast<uint32_t>(old)) ? c.old_exact
                                                          : c.wrong);
      } else if (absl::IsNotFound(got.status())) {
        ++c.old_missing;
      } else if (absl::IsUnavailable(got.status())) {
        ++c.old_unavailable;
      } else if (c.other++ == 0 && c.first_problem.empty()) {
        c.first_problem = absl::StrCat("old block: ", got.status().ToString());
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  // Each phase runs for `ms` and until `ready` (and the phase has seen
  // puts), so a slow machine (a sanitizer build, a loaded CI runner) still
  // exercises every phase; at most a minute.
  auto run_for = [&](int ms, const std::function<bool()>& ready = nullptr) {
    const auto start = std::chrono::steady_clock::now();
    const int p = phase.load();
    while (true) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      const auto elapsed = std::chrono::steady_clock::now() - start;
      if (elapsed > std::chrono::seconds(60)) return;
      if (elapsed < std::chrono::milliseconds(ms)) continue;
      if (phase_puts[p].load() < 16) continue;
      if (ready && !ready()) continue;
      return;
    }
  };

  // Healthy until the memory tier has spilled to disk.
  run_for(300, [&] { return store->Stats().spills > 0; });
  const StoreStats healthy = store->Stats();
  fs->SetDiskFull(true);
  phase.store(kDiskFull);
  run_for(300);
  // A flush (WAL sync and memtable flush) fails too: a background error in
  // RocksDB that has to be recovered from afterwards.
  EXPECT_FALSE(store->Flush().ok());
  const StoreStats full = store->Stats();
  fs->SetDiskFull(false);
  fs->SetFailWrites(true);
  phase.store(kWriteErrors);
  run_for(300);
  const StoreStats failing = store->Stats();
  fs->SetFailWrites(false);
  phase.store(kRecovered);
  // Every block from here on is put after the fault cleared.
  const uint64_t first_recovered_id = next_id.load();
  run_for(100);
  // Recovery: what the store did at the first writes after the fault
  // cleared is done; from here on, no new fault.
  const StoreStats recovered = store->Stats();
  run_for(300);
  phase.store(kDone);
  for (std::thread& t : threads) t.join();
  const StoreStats end = store->Stats();

  Counts total;
  for (const Counts& c : counts) {
    total.puts += c.puts;
    total.put_errors += c.put_errors;
    total.own_reads += c.own_reads;
    total.own_misses += c.own_misses;
    total.own_evicted += c.own_evicted;
    total.old_reads += c.old_reads;
    total.old_exact += c.old_exact;
    total.old_missing += c.old_missing;
    total.old_unavailable += c.old_unavailable;
    total.wrong += c.wrong;
    total.other += c.other;
    for (int p = 0; p < kDone; ++p) total.puts_in[p] += c.puts_in[p];
    if (total.first_problem.empty()) total.first_problem = c.first_problem;
  }
  std::printf(
      "disk faults under load: %llu puts (healthy %llu, disk full %llu, write "
      "errors %llu, recovered %llu), %llu failed; %llu reads of the block "
      "just put, %llu missed, %llu evicted first; %llu reads of older blocks: "
      "%llu exact, %llu "
      "dropped, %llu unavailable; wrong bytes %llu; disk faults counted %llu; "
      "spills %llu, dropped %llu\n",
      static_cast<unsigned long long>(total.puts),
      static_cast<unsigned long long>(total.puts_in[kHealthy]),
      static_cast<unsigned long long>(total.puts_in[kDiskFull]),
      static_cast<unsigned long long>(total.puts_in[kWriteErrors]),
      static_cast<unsigned long long>(total.puts_in[kRecovered]),
      static_cast<unsigned long long>(total.put_errors),
      static_cast<unsigned long long>(total.own_reads),
      static_cast<unsigned long long>(total.own_misses),
      static_cast<unsigned long long>(total.own_evicted),
      static_cast<unsigned long long>(total.old_reads),
      static_cast<unsigned long long>(total.old_exact),
      static_cast<unsigned long long>(total.old_missing),
      static_cast<unsigned long long>(total.old_unavailable),
      static_cast<unsigned long long>(total.wrong),
      static_cast<unsigned long long>(end.disk_faults),
      static_cast<unsigned long long>(end.spills),
      static_cast<unsigned long long>(end.dropped));

  // The load ran in every phase and spilled (the memory tier holds 256).
  for (int p = 0; p < kDone; ++p) EXPECT_GT(total.puts_in[p], 0u) << p;
  EXPECT_GT(healthy.spills, 0u);
  // Memory kept serving: no put failed, every block just put was served,
  // nothing was ever served wrong.
  EXPECT_EQ(total.put_errors, 0u) << total.first_problem;
  EXPECT_EQ(total.own_misses, 0u) << total.first_problem;
  EXPECT_LT(total.own_evicted, total.own_reads / 10);
  EXPECT_EQ(total.wrong, 0u);
  EXPECT_EQ(total.other, 0u) << total.first_problem;
  // Reported: counted, and the last error names the fault.
  EXPECT_FALSE(healthy.disk_fault);
  EXPECT_TRUE(full.disk_fault);
  EXPECT_GT(full.disk_faults, 0u);
  EXPECT_TRUE(absl::StrContains(full.last_disk_error, "injected disk full"))
      << full.last_disk_error;
  EXPECT_GT(failing.disk_faults, full.disk_faults);
  EXPECT_TRUE(absl::StrContains(failing.last_disk_error, "injected write"))
      << failing.last_disk_error;
  // Recovered: after the fault cleared, spills reach the disk again and no
  // new fault is counted.
  EXPECT_EQ(end.disk_faults, recovered.disk_faults);
  EXPECT_GT(end.spills, recovered.spills);
  ASSERT_TRUE(store->Flush().ok());
  EXPECT_EQ(store->Stats().disk_faults, recovered.disk_faults);

  // What the recovered store wrote survives a reopen: every block put in
  // the last phase is served, bit-exact, from disk or memory.
  const uint64_t ids = next_id.load();
  store.reset();
  store = OpenStore(o);
  ASSERT_NE(store, nullptr);
  uint64_t served = 0, missing = 0, recovered_missing = 0;
  for (uint64_t id = 0; id < ids; ++id) {
    absl::StatusOr<SharedBytes> got = store->GetBlock(kTenant, Key(1, id));
    if (got.ok()) {
      EXPECT_EQ(**got, MakeBlock(static_cast<uint32_t>(id))) << id;
      ++served;
    } else {
      EXPECT_TRUE(absl::IsNotFound(got.status())) << got.status();
      ++missing;
      if (id >= first_recovered_id) ++recovered_missing;
    }
  }
  std::printf("after reopen: %llu of %llu blocks served, %llu dropped\n",
              static_cast<unsigned long long>(served),
              static_cast<unsigned long long>(ids),
              static_cast<unsigned long long>(missing));
  // Blocks whose spill failed during the faults are gone (async mode keeps
  // them in memory only); nothing put after the disk recovered is.
  EXPECT_GT(ids, first_recovered_id);
  EXPECT_EQ(recovered_missing, 0u);
}

}  // namespace
}  // namespace vqkv::storage
