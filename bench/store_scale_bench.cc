// store_scale_bench: how the store's put, get and lookup latency and its
// memory per block change as it grows from 10^3 to 10^6 blocks, next to a
// peer measured in the same run: a mutex-guarded absl::flat_hash_map from
// key to shared bytes (the least a store of blocks can do in one process).
//
// The store is storage::TieredStore, in process, memory tier only by
// default (budget: every block fits), or with --disk a RocksDB tier under a
// small memory tier (--disk-memory-mib), so that most gets read the disk.
// Blocks are sealed blocks of --block-bytes bytes (bench/sealed_block.h)
// in one namespace; one thread does everything, so the latencies are the
// store's own, with no RPC. For each size the store is grown to it (the
// puts of that step are timed), then --ops random gets of stored blocks and
// --ops lookups of 16-block chains of stored blocks are timed.
//
// "heap B/block" is the growth of the heap in use (glibc mallinfo2) per
// block stored, "over" that minus the block's own bytes: what the index,
// the LRU and the allocator cost a block. With --disk, blocks leave the
// heap for the disk, and "heap B/block" is what the process keeps per
// stored block (the memory tier's share, the disk index, RocksDB's caches
// and memtables); "over" is then "-".
//
// Usage: store_scale_bench [--max-blocks N] [--block-bytes B] [--ops N]
//                          [--disk [--disk-memory-mib M]]
// Progress goes to stderr, the table to stdout.
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "bench/sealed_block.h"
#include "storage/keys.h"
#include "storage/tiered_store.h"

namespace {

using Clock = std::chrono::steady_clock;
using vqkv::storage::BlockHash;
using vqkv::storage::BlockKey;
using vqkv::storage::NamespaceId;
using vqkv::storage::SharedBytes;

constexpr char kTenant[] = "bench";
constexpr int kChain = 16;  // blocks per lookup

uint64_t HeapInUse() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

BlockHash Hash(uint64_t i) {
  return BlockHash::FromPair(i * 0x9e3779b97f4a7c15ull + 1, i);
}

// p50 and p99 of latencies in microseconds.
struct Latency {
  double p50 = 0, p99 = 0;
};
Latency Percentiles(std::vector<double> us) {
  if (us.empty()) return {};
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[std::min(us.size() - 1, us.size() * 99 / 100)]};
}

double MicrosSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

// The two stores behind one interface, so both see the same calls.
class Subject {
 public:
  virtual ~Subject() = default;
  virtual const char* name() const = 0;
  virtual bool Put(const BlockKey& key, uint32_t position,
                   const std::string& block) = 0;
  virtual bool Get(const BlockKey& key) = 0;
  // Whether all of `hashes` are held.
  virtual bool Lookup(const NamespaceId& ns,
                      const std::vector<BlockHash>& hashes) = 0;
};

class StoreSubject final : public Subject {
 public:
  explicit StoreSubject(std::unique_ptr<vqkv::storage::TieredStore> store)
      : store_(std::move(store)) {}
  const char* name() const override { return "TieredStore"; }
  bool Put(const BlockKey& key, uint32_t position,
           const std::string& block) override {
    vqkv::storage::BlockPut put;
    put.key = key;
    put.chain_position = position;
    put.block = block;
    return store_->PutBlock(kTenant, put).ok();
  }
  bool Get(const BlockKey& key) override {
    return store_->GetBlock(kTenant, key).ok();
  }
  bool Lookup(const NamespaceId& ns,
              const std::vector<BlockHash>& hashes) override {
    return store_->Lookup(kTenant, ns, hashes).prefix_blocks ==
           static_cast<int64_t>(hashes.size());
  }

 private:
  std::unique_ptr<vqkv::storage::TieredStore> store_;
};

class MapSubject final : public Subject {
 public:
  const char* name() const override { return "hash map"; }
  bool Put(const BlockKey& key, uint32_t, const std::string& block) override {
    auto bytes = std::make_shared<const std::string>(block);
    absl::MutexLock lock(&mu_);
    map_.try_emplace(key, std::move(bytes));
    return true;
  }
  bool Get(const BlockKey& key) override {
    SharedBytes found;
    {
      absl::MutexLock lock(&mu_);
      auto it = map_.find(key);
      if (it == map_.end()) return false;
      found = it->second;
    }
    return found != nullptr;
  }
  bool Lookup(const NamespaceId& ns,
              const std::vector<BlockHash>& hashes) override {
    absl::MutexLock lock(&mu_);
    for (const BlockHash& h : hashes) {
      if (!map_.contains(BlockKey{ns, h})) return false;
    }
    return true;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<BlockKey, SharedBytes> map_ ABSL_GUARDED_BY(mu_);
};

struct Row {
  int64_t blocks = 0;
  double put_per_s = 0;
  Latency put, get, lookup;
  double heap_per_block = 0;
  bool ok = true;
};

// Grows `subject` through `sizes`, measuring at each.
std::vector<Row> Measure(Subject* subject, const std::vector<int64_t>& sizes,
                         const std::vector<std::string>& blocks, int ops) {
  const NamespaceId ns = NamespaceId::FromPair(7, 11);
  const uint64_t heap0 = HeapInUse();
  std::mt19937_64 rng(5);
  std::vector<Row> rows;
  int64_t stored = 0;
  for (int64_t n : sizes) {
    Row row;
    row.blocks = n;
    std::vector<double> put_us;
    put_us.reserve(n - stored);
    const auto grow0 = Clock::now();
    for (; stored < n; ++stored) {
      const auto t0 = Clock::now();
      row.ok &= subject->Put(BlockKey{ns, Hash(stored)},
                             static_cast<uint32_t>(stored % kChain),
                             blocks[stored % blocks.size()]);
      put_us.push_back(MicrosSince(t0));
    }
    row.put_per_s = put_us.size() / (MicrosSince(grow0) * 1e-6);
    row.put = Percentiles(std::move(put_us));
    row.heap_per_block =
        static_cast<double>(HeapInUse() - heap0) / static_cast<double>(n);
    std::vector<double> get_us, lookup_us;
    for (int i = 0; i < ops; ++i) {
      const BlockKey key{ns, Hash(rng() % n)};
      const auto t0 = Clock::now();
      row.ok &= subject->Get(key);
      get_us.push_back(MicrosSince(t0));
    }
    std::vector<BlockHash> chain(kChain);
    for (int i = 0; i < ops; ++i) {
      const uint64_t first = rng() % (n - kChain + 1);
      for (int c = 0; c < kChain; ++c) chain[c] = Hash(first + c);
      const auto t0 = Clock::now();
      row.ok &= subject->Lookup(ns, chain);
      lookup_us.push_back(MicrosSince(t0));
    }
    row.get = Percentiles(std::move(get_us));
    row.lookup = Percentiles(std::move(lookup_us));
    std::fprintf(stderr, "%s: %lld blocks\n", subject->name(),
                 static_cast<long long>(n));
    rows.push_back(row);
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"store latency and memory per block from 10^3 to 10^6 blocks"};
  int64_t max_blocks = 1'000'000;
  int64_t block_bytes = 1024;
  int ops = 20'000;
  bool disk = false;
  int64_t disk_memory_mib = 64;
  app.add_option("--max-blocks", max_blocks,
                 "largest store size; sizes are the powers of 10 from 10^3 "
                 "up to it (default 10^6)")
      ->check(CLI::Range(int64_t{1000}, int64_t{100'000'000}));
  app.add_option("--block-bytes", block_bytes,
                 "bytes per block, header included (default 1024)")
      ->check(CLI::Range(int64_t{128}, int64_t{64} << 20));
  app.add_option("--ops", ops,
                 "timed gets and lookups per size (default 20000)")
      ->check(CLI::Range(1, 10'000'000));
  app.add_flag("--disk", disk,
               "add a RocksDB tier (in a temporary directory) under a small "
               "memory tier");
  app.add_option("--disk-memory-mib", disk_memory_mib,
                 "memory tier budget with --disk (default 64)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  CLI11_PARSE(app, argc, argv);

  std::vector<int64_t> sizes;
  for (int64_t n = 1000; n <= max_blocks; n *= 10) sizes.push_back(n);
  const uint64_t payload = static_cast<uint64_t>(block_bytes) - 64;
  std::vector<std::string> blocks;
  for (int i = 0; i < 16; ++i) {
    blocks.push_back(vqkv::bench::MakeSealedBlock(
        1, 1, 8, 16, vqkv::CodecId::kVq, payload, 100 + i));
  }

  vqkv::storage::TieredStoreOptions options;
  std::string dir;
  if (disk) {
    char tmpl[] = "/tmp/vqkv-scale-XXXXXX";
    dir = mkdtemp(tmpl);
    options.data_dir = dir + "/data";
    options.memory_bytes = static_cast<uint64_t>(disk_memory_mib) << 20;
    options.disk_max_records = static_cast<uint64_t>(max_blocks) * 2;
    options.disk_bytes = static_cast<uint64_t>(max_blocks) * block_bytes * 2;
  } else {
    // Every block fits, with room for the tier's own accounting.
    options.memory_bytes =
        static_cast<uint64_t>(max_blocks) * (block_bytes + 512) + (64 << 20);
  }
  auto store = vqkv::storage::TieredStore::Open(options);
  if (!store.ok()) {
    std::fprintf(stderr, "cannot open the store: %s\n",
                 store.status().ToString().c_str());
    return 1;
  }

  std::printf(
      "store latency and memory as it grows: %lld-byte blocks, one thread, "
      "in process; TieredStore %s vs a mutex-guarded absl::flat_hash_map "
      "(peer)\n"
      "put: the puts that grew the store to its size; get: %d random "
      "stored blocks; lookup: %d chains of %d stored blocks; latencies in "
      "us\n"
      "heap B/block: heap growth per stored block (glibc mallinfo2); over: "
      "that minus the block's bytes\n\n",
      static_cast<long long>(block_bytes),
      disk ? "(memory tier + RocksDB)" : "(memory tier only)", ops, ops,
      kChain);
  std::printf("%-11s %9s %10s %8s %8s %8s %8s %9s %9s %12s %8s\n", "store",
              "blocks", "put/s", "put p50", "put p99", "get p50", "get p99",
              "look p50", "look p99", "heap B/block", "over");
  bool ok = true;
  // The map first: it is freed before the store grows, so the two heaps do
  // not overlap.
  for (int pass = 0; pass < 2; ++pass) {
    std::unique_ptr<Subject> subject;
    if (pass == 0) {
      subject = std::make_unique<MapSubject>();
    } else {
      subject = std::make_unique<StoreSubject>(*std::move(store));
    }
    for (const Row& r : Measure(subject.get(), sizes, blocks, ops)) {
      // With a disk tier, blocks leave the heap: "over" means nothing.
      const std::string over =
          disk && pass == 1
              ? "-"
              : std::to_string(static_cast<int64_t>(
                    r.heap_per_block - static_cast<double>(block_bytes)));
      std::printf(
          "%-11s %9lld %10.0f %8.2f %8.2f %8.2f %8.2f %9.2f %9.2f %12.0f "
          "%8s%s\n",
          subject->name(), static_cast<long long>(r.blocks), r.put_per_s,
          r.put.p50, r.put.p99, r.get.p50, r.get.p99, r.lookup.p50,
          r.lookup.p99, r.heap_per_block, over.c_str(),
          r.ok ? "" : "  (FAILED: a put, get or lookup did not succeed)");
      std::fflush(stdout);
      ok &= r.ok;
    }
  }
  if (!dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  return ok ? 0 : 1;
}
