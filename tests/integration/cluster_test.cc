// The cluster client (client/cluster/cluster_backend.h) against three real
// vqkv-server processes, R=2: a CacheClient stores prefixes, one server is
// killed in the middle of a workload, and every load is bit-exact or a miss
// (never wrong data); with one node down no stored block misses; once the
// killed server is back on its address with its data directory, its blocks
// are served again (shown by killing another server afterwards).
#include <atomic>
#include <csignal>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/cache_client.h"
#include "client/client_factory.h"
#include "client/cluster/cluster_backend.h"
#include "gtest/gtest.h"
#include "tests/integration/server_process.h"
#include "tests/unit/client/client_test_util.h"

namespace vqkv::client {
namespace {

using ::vqkv::testing::ServerProcess;
using ::vqkv::testing::TempDir;

constexpr int kTokens = 128;  // 4 blocks of 32
constexpr int kPrefixes = 12;

struct Prefix {
  std::vector<int32_t> tokens;
  std::vector<float> k, v;
};

Prefix MakePrefix(int i) {
  const KvLayout l = testing::SmallLayout();
  return Prefix{testing::Tokens(kTokens, 1000 * (i + 1)),
                testing::ExactKv(kTokens * l.ElementsPerToken(), 2 * i + 1),
                testing::ExactKv(kTokens * l.ElementsPerToken(), 2 * i + 2)};
}

// Loads `p`; fails the test on any byte that differs from what was stored.
// Returns the tokens loaded (0 = a miss).
int64_t LoadExact(CacheClient* c, const Prefix& p) {
  const KvLayout l = testing::SmallLayout();
  const int64_t per_token = l.ElementsPerToken() / l.layers;
  std::vector<float> k(p.k.size(), -99.0f), v(p.v.size(), -99.0f);
  auto r = c->Load(p.tokens, "", k.data(), v.data());
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return 0;
  for (int layer = 0; layer < l.layers; ++layer) {
    const int64_t base = layer * kTokens * per_token;
    for (int64_t e = 0; e < r->tokens * per_token; ++e) {
      if (k[base + e] != p.k[base + e] || v[base + e] != p.v[base + e]) {
        ADD_FAILURE() << "wrong data at layer " << layer << " element " << e;
        return 0;
      }
    }
  }
  return r->tokens;
}

TEST(ClusterTest, ThreeServersSurviveAKillAndServeAgainAfterRestart) {
  TempDir dirs[3];
  std::unique_ptr<ServerProcess> servers[3];
  std::vector<std::string> addresses;
  for (int i = 0; i < 3; ++i) {
    auto s = ServerProcess::Start(
        {"--data-dir", dirs[i].path(), "--durability", "sync"});
    ASSERT_TRUE(s.ok()) << s.status();
    servers[i] = *std::move(s);
    addresses.push_back(servers[i]->address());
  }
  const std::string list = absl::StrJoin(addresses, ",");

  // The factory makes the same kind of backend from the same string.
  auto via_factory = OpenBackend(BackendConfig{.server = list, .replicas = 2});
  ASSERT_TRUE(via_factory.ok()) << via_factory.status();
  EXPECT_EQ((*via_factory)->Describe().rfind("cluster(", 0), 0u);

  cluster::ClusterBackendOptions co;
  co.replicas = 2;
  co.circuit.failures_to_open = 1;
  co.circuit.probe_interval = absl::Milliseconds(200);
  co.circuit.max_probe_interval = absl::Milliseconds(400);
  auto made = cluster::ClusterBackend::Create(list, co);
  ASSERT_TRUE(made.ok()) << made.status();
  cluster::ClusterBackend* cluster = made->get();
  CacheClientOptions o = testing::Options(32);
  o.io_timeout = absl::Seconds(3);
  o.lookup_timeout = absl::Seconds(1);
  // The client's own breaker must not hide the cluster's failover.
  o.circuit.failures_to_open = 1000;
  auto c = CacheClient::Create(o, testing::Fp16(testing::SmallLayout()), "",
                               *std::move(made));
  ASSERT_TRUE(c.ok()) << c.status();
  CacheClient* client = c->get();

  std::vector<Prefix> prefixes;
  for (int i = 0; i < kPrefixes; ++i) prefixes.push_back(MakePrefix(i));
  const int before_kill = kPrefixes / 2;
  for (int i = 0; i < before_kill; ++i) {
    auto s = client->Store(prefixes[i].tokens, "", prefixes[i].k.data(),
                           prefixes[i].v.data());
    ASSERT_TRUE(s.ok());
    ASSERT_EQ(s->stored, 4);
  }

  // Loads run while server 1 is killed: bit-exact or a miss, never wrong.
  std::atomic<bool> stop{false};
  std::atomic<int> loads{0}, misses{0};
  std::thread reader([&] {
    while (!stop) {
      for (int i = 0; i < before_kill && !stop; ++i) {
        const int64_t got = LoadExact(client, prefixes[i]);
        ++loads;
        if (got < kTokens) ++misses;
      }
    }
  });
  absl::SleepFor(absl::Milliseconds(300));
  const std::string killed = addresses[1];
  EXPECT_EQ(servers[1]->StopWith(SIGKILL), 128 + SIGKILL);
  absl::SleepFor(absl::Milliseconds(700));
  // More stores while it is down: acknowledged by the surviving owner.
  for (int i = before_kill; i < kPrefixes; ++i) {
    auto s = client->Store(prefixes[i].tokens, "", prefixes[i].k.data(),
                           prefixes[i].v.data());
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->stored, 4) << "prefix " << i;
  }
  stop = true;
  reader.join();
  EXPECT_GT(loads, 0);
  std::printf("loads during the kill: %d, short: %d\n", loads.load(),
              misses.load());

  // One node down, R=2: every stored block is served.
  for (int i = 0; i < kPrefixes; ++i) {
    EXPECT_EQ(*client->Lookup(prefixes[i].tokens, ""), kTokens) << i;
    EXPECT_EQ(LoadExact(client, prefixes[i]), kTokens) << i;
  }
  cluster::ClusterStats stats = cluster->Stats();
  bool saw_open = false;
  for (const auto& n : stats.nodes) {
    if (n.endpoint == killed) saw_open = n.circuit_open || n.times_opened > 0;
  }
  EXPECT_TRUE(saw_open) << cluster->Describe();
  EXPECT_GT(stats.replica_put_failures, 0);

  // Server 1 back on its address with its data; wait until the cluster's
  // prober readmits it (probe backoff 200-400 ms here, +-20% jitter; the
  // generous wait is for a loaded machine). The prober health-checks open
  // nodes in the background, so no call needs to be routed to the node:
  // this loop makes none.
  auto again = ServerProcess::StartOn(killed, {"--data-dir", dirs[1].path()});
  ASSERT_TRUE(again.ok()) << again.status();
  servers[1] = *std::move(again);
  bool readmitted = false;
  for (int i = 0; i < 400 && !readmitted; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    for (const auto& n : cluster->Stats().nodes) {
      if (n.endpoint == killed) readmitted = !n.circuit_open;
    }
  }
  ASSERT_TRUE(readmitted) << cluster->Describe();

  // Now server 2 dies: blocks stored before the first kill whose owners
  // were {1, 2} can only come from the restarted server 1.
  EXPECT_EQ(servers[2]->StopWith(SIGKILL), 128 + SIGKILL);
  for (int i = 0; i < before_kill; ++i) {
    EXPECT_EQ(LoadExact(client, prefixes[i]), kTokens) << i;
  }
  std::printf("%s\n", cluster->Describe().c_str());
}

}  // namespace
}  // namespace vqkv::client
