// cluster_bench: store and load throughput and latency of a CacheClient over
// a ClusterBackend (client/cluster/) of 1, 2 and 3 vqkv-server processes on
// loopback, with R=1 and R=2, in one table. A store is CacheClient::Store of
// a new prefix (lookup, fp16 encode, put to the R owners); a load is
// CacheClient::Load of a stored prefix (leased lookup, get, verify, decode).
// MiB/s counts fp16 K+V bytes. The servers are started here, each with a
// temporary data directory and 3 GiB of memory (the blocks stay in memory).
//
// Usage: cluster_bench [--ops 64] [--clients 2] [--blocks 4]
//          [--layers 30 --kv-heads 3 --head-dim 64 --block-tokens 64]
// Progress goes to stderr, the table to stdout.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cache_client.h"
#include "client/cluster/cluster_backend.h"
#include "kernels/codec_factory.h"
#include "tests/integration/server_process.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  int ops = 64;
  int clients = 2;
  int blocks = 4;
  int layers = 30, kv_heads = 3, head_dim = 64, block_tokens = 64;
};

struct Stat {
  double ops_per_s = 0, mib_per_s = 0, p50_ms = 0, p99_ms = 0;
  int64_t failed = 0;
};

// Runs op(i) for i in [0, ops) on `clients` threads; op returns false for an
// incomplete operation (counted).
template <typename Op>
Stat Measure(int ops, int clients, double mib_per_op, Op op) {
  std::atomic<int> next{0};
  std::atomic<int64_t> failed{0};
  std::vector<std::vector<double>> lat(clients);
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      for (int i = next++; i < ops; i = next++) {
        const auto t0 = Clock::now();
        if (!op(i)) ++failed;
        lat[t].push_back(
            std::chrono::duration<double, std::milli>(Clock::now() - t0)
                .count());
      }
    });
  }
  for (auto& th : threads) th.join();
  const double s = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (const auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  Stat r;
  r.ops_per_s = ops / s;
  r.mib_per_s = ops * mib_per_op / s;
  r.p50_ms = all[all.size() / 2];
  r.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  r.failed = failed;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{
      "cluster_bench: CacheClient store/load over 1-3 loopback "
      "vqkv-servers, R=1 and R=2"};
  app.add_option("--ops", f.ops, "stores (and loads) per row")
      ->capture_default_str();
  app.add_option("--clients", f.clients, "client threads")
      ->capture_default_str();
  app.add_option("--blocks", f.blocks, "blocks per prefix")
      ->capture_default_str();
  app.add_option("--layers", f.layers)->capture_default_str();
  app.add_option("--kv-heads", f.kv_heads)->capture_default_str();
  app.add_option("--head-dim", f.head_dim)->capture_default_str();
  app.add_option("--block-tokens", f.block_tokens)->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const vqkv::KvLayout layout{f.layers, f.kv_heads, f.head_dim};
  const int tokens = f.blocks * f.block_tokens;
  const int64_t elements = int64_t{tokens} * layout.ElementsPerToken();
  const double mib_per_op = 2.0 * elements * 2 / (1 << 20);  // fp16 K+V
  std::vector<float> k(elements), v(elements);
  for (int64_t i = 0; i < elements; ++i) {
    k[i] = static_cast<float>(i % 512 - 256) / 64.0f;
    v[i] = static_cast<float>((i * 7) % 512 - 256) / 64.0f;
  }
  auto codec = vqkv::MakeCodec("fp16", layout, nullptr);
  if (!codec.ok()) {
    std::fprintf(stderr, "%s\n", codec.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<const vqkv::Codec> fp16(*std::move(codec));

  std::printf(
      "| nodes | R | store ops/s | store MiB/s | store p50 ms | store p99 ms "
      "| load ops/s | load MiB/s | load p50 ms | load p99 ms | short |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int nodes = 1; nodes <= 3; ++nodes) {
    std::vector<std::unique_ptr<vqkv::testing::TempDir>> dirs;
    std::vector<std::unique_ptr<vqkv::testing::ServerProcess>> servers;
    std::vector<std::string> addresses;
    for (int i = 0; i < nodes; ++i) {
      dirs.push_back(std::make_unique<vqkv::testing::TempDir>());
      auto s = vqkv::testing::ServerProcess::Start(
          {"--data-dir", dirs.back()->path(), "--memory-bytes", "3GiB",
           "--max-message-bytes", "256MiB", "--durability", "async"});
      if (!s.ok()) {
        std::fprintf(stderr, "%s\n", s.status().ToString().c_str());
        return 1;
      }
      addresses.push_back((*s)->address());
      servers.push_back(*std::move(s));
    }
    for (int r = 1; r <= 2; ++r) {
      if (r > nodes) continue;
      vqkv::client::cluster::ClusterBackendOptions co;
      co.replicas = r;
      co.grpc.max_message_bytes = uint64_t{256} << 20;
      auto backend = vqkv::client::cluster::ClusterBackend::Create(
          absl::StrJoin(addresses, ","), co);
      if (!backend.ok()) {
        std::fprintf(stderr, "%s\n", backend.status().ToString().c_str());
        return 1;
      }
      vqkv::client::CacheClientOptions o;
      o.model_id = "cluster-bench";
      o.block_tokens = f.block_tokens;
      o.decode_threads = 1;
      auto client =
          vqkv::client::CacheClient::Create(o, fp16, "", *std::move(backend));
      if (!client.ok()) {
        std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
        return 1;
      }
      vqkv::client::CacheClient* c = client->get();
      const std::string salt = absl::StrCat("n", nodes, "r", r);
      auto prefix = [&](int i) {
        std::vector<int32_t> t(tokens);
        for (int j = 0; j < tokens; ++j) t[j] = i * tokens + j;
        return t;
      };
      std::fprintf(stderr, "nodes %d R %d: stores\n", nodes, r);
      const Stat store = Measure(f.ops, f.clients, mib_per_op, [&](int i) {
        auto s = c->Store(prefix(i), salt, k.data(), v.data());
        return s.ok() && s->stored == f.blocks;
      });
      std::fprintf(stderr, "nodes %d R %d: loads\n", nodes, r);
      const Stat load = Measure(f.ops, f.clients, mib_per_op, [&](int i) {
        std::vector<float> kb(elements), vb(elements);
        auto l = c->Load(prefix(i), salt, kb.data(), vb.data());
        return l.ok() && l->tokens == tokens;
      });
      std::printf(
          "| %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f "
          "| %lld |\n",
          nodes, r, store.ops_per_s, store.mib_per_s, store.p50_ms,
          store.p99_ms, load.ops_per_s, load.mib_per_s, load.p50_ms,
          load.p99_ms, static_cast<long long>(store.failed + load.failed));
      std::fflush(stdout);
    }
  }
  std::printf(
      "\n%d ops per row, %d client threads, prefixes of %d blocks x %d "
      "tokens (%.2f MiB fp16 K+V each), layout %dx%dx%d; short = stores "
      "or loads that did not complete\n",
      f.ops, f.clients, f.blocks, f.block_tokens, mib_per_op, f.layers,
      f.kv_heads, f.head_dim);
  return 0;
}
