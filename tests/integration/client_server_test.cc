// The client library against a real vqkv-server process over gRPC: round
// trips, a codebook fetched by a second client, and a server that dies in
// the middle of loads: misses and failed page ids, never wrong data, and
// recovery once it is back.
#include <csignal>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "client/cache_client.h"
#include "client/grpc/grpc_backend.h"
#include "client/kv_connector.h"
#include "client/paged_kv.h"
#include "gtest/gtest.h"
#include "tests/integration/server_process.h"
#include "tests/unit/client/client_test_util.h"

namespace vqkv::client {
namespace {

using testing::ExactKv;
using testing::SmallLayout;
using testing::Tokens;
using ::vqkv::testing::ServerProcess;
using ::vqkv::testing::TempDir;

std::unique_ptr<Backend> Grpc(const std::string& target) {
  auto b = NewGrpcBackend({.target = target});
  EXPECT_TRUE(b.ok()) << b.status();
  return *std::move(b);
}

CacheClientOptions FastFailOptions() {
  CacheClientOptions o = testing::Options(32);
  o.lookup_timeout = absl::Milliseconds(500);
  o.io_timeout = absl::Seconds(2);
  o.circuit.failures_to_open = 2;
  o.circuit.probe_interval = absl::Milliseconds(200);
  o.circuit.max_probe_interval = absl::Milliseconds(400);
  return o;
}

TEST(ClientServerTest, VqRoundTripAndCodebookFetchOverGrpc) {
  TempDir dir;  // not ./vqkv-data, which a killed run may have left behind
  auto server = ServerProcess::Start(
      {"--data-dir", dir.path(), "--memory-bytes", "64MiB"});
  ASSERT_TRUE(server.ok()) << server.status();
  const testing::FittedVq vq = testing::FitVq(SmallLayout());
  auto first = CacheClient::Create(testing::Options(32), vq.codec, vq.file,
                                   Grpc((*server)->address()));
  ASSERT_TRUE(first.ok()) << first.status();
  testing::ExpectSecondClientSharesBlocks(
      first->get(), vq.codec->codebook_hash(), Grpc((*server)->address()));
}

TEST(ClientServerTest, ServerKilledMidLoadGivesMissesThenRecovers) {
  TempDir dir;
  auto server =
      ServerProcess::Start({"--data-dir", dir.path(), "--durability", "sync"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  auto c = CacheClient::Create(FastFailOptions(), testing::Fp16(SmallLayout()),
                               "", Grpc(address));
  ASSERT_TRUE(c.ok());
  auto& client = *c;
  const KvLayout l = SmallLayout();
  const std::vector<int32_t> t = Tokens(96);
  const std::vector<float> k = ExactKv(96 * l.ElementsPerToken(), 3);
  ASSERT_EQ(client->Store(t, "", k.data(), k.data())->stored, 3);
  ASSERT_EQ(*client->Lookup(t, ""), 96);

  // The scheduler saw 96 cached tokens; the server dies before the load.
  EXPECT_EQ((*server)->StopWith(SIGKILL), 128 + SIGKILL);
  std::vector<std::vector<uint8_t>> pages(
      l.layers, std::vector<uint8_t>(8 * 16 * l.kv_heads * l.head_dim * 2));
  std::vector<void*> kp, vp;
  for (auto& p : pages) kp.push_back(p.data());
  std::vector<std::vector<uint8_t>> vpages = pages;
  for (auto& p : vpages) vp.push_back(p.data());
  KvConnector engine(client.get());
  ASSERT_TRUE(engine
                  .RegisterKvCaches(PagedKvCaches::Nhd(
                      kp, vp, 8, 16, l.kv_heads, l.head_dim, DType::kFloat16))
                  .ok());
  const std::vector<int32_t> ids = {0, 1, 2, 3, 4, 5};
  const absl::Time start = absl::Now();
  ASSERT_TRUE(engine.StartLoad({LoadSpec{"r", t, "", ids, 96}}).ok());
  ASSERT_TRUE(engine.WaitForLayerLoad(l.layers - 1).ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "a load must not hang";
  EXPECT_EQ(engine.TakeLoadErrorBlockIds(), ids);
  for (const auto& p : pages) {
    for (uint8_t b : p) ASSERT_EQ(b, 0) << "no byte may be written";
  }
  std::vector<float> buf(k.size(), 7.0f);
  EXPECT_EQ(client->Load(t, "", buf.data(), buf.data())->tokens, 0);
  EXPECT_EQ(*client->Lookup(t, ""), 0);
  EXPECT_TRUE(client->stats().circuit_open);

  // Back on the same address with the same data: the circuit's probe finds
  // it and the blocks load again.
  auto again = ServerProcess::StartOn(address, {"--data-dir", dir.path()});
  ASSERT_TRUE(again.ok()) << again.status();
  int64_t cached = 0;
  for (int i = 0; i < 100 && cached == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    cached = *client->Lookup(t, "");
  }
  EXPECT_EQ(cached, 96);
  auto loaded = client->Load(t, "", buf.data(), buf.data());
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->tokens, 96);
  EXPECT_FALSE(client->stats().circuit_open);
}

// CheckHealth asks the server's grpc.health.v1 service: SERVING while it
// runs, kUnavailable once it is gone (what the cluster client readmits by).
TEST(ClientServerTest, HealthCheckFollowsTheServer) {
  TempDir dir;
  auto server = ServerProcess::Start(
      {"--data-dir", dir.path(), "--memory-bytes", "64MiB"});
  ASSERT_TRUE(server.ok()) << server.status();
  std::unique_ptr<Backend> b = Grpc((*server)->address());
  const absl::Status up = b->CheckHealth(absl::Now() + absl::Seconds(5));
  EXPECT_TRUE(up.ok()) << up;
  EXPECT_EQ((*server)->StopWith(SIGKILL), 128 + SIGKILL);
  const absl::Status down = b->CheckHealth(absl::Now() + absl::Seconds(5));
  EXPECT_TRUE(absl::IsUnavailable(down) || absl::IsDeadlineExceeded(down))
      << down;
}

TEST(ClientServerTest, UnreachableServerCostsOneDeadline) {
  // Nothing listens on port 1 of loopback: calls fail fast, the circuit
  // opens and later lookups miss at once.
  auto c = CacheClient::Create(FastFailOptions(), testing::Fp16(SmallLayout()),
                               "", Grpc("127.0.0.1:1"));
  ASSERT_TRUE(c.ok());
  const absl::Time start = absl::Now();
  for (int i = 0; i < 20; ++i) EXPECT_EQ(*(*c)->Lookup(Tokens(64), ""), 0);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE((*c)->stats().circuit_open);
}

}  // namespace
}  // namespace vqkv::client
