// Integration tests: the real vqkv-server process, driven over loopback
// with the generated C++ stub.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/block.h"
#include "kernels/block_format.h"
#include "kernels/vq_codec.h"
#include "storage/keys.h"
#include "tests/integration/server_process.h"
#include "tests/integration/test_blocks.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::testing {
namespace {

using ::testing::HasSubstr;

constexpr KvLayout kLayout{2, 2, 8};
constexpr int kBlockTokens = 16;

v1::Namespace TestNamespace(const std::string& model = "test-model") {
  return Fp16Namespace(model, kLayout, kBlockTokens);
}

const Codec& TestCodec() {
  static const Codec* codec = Fp16Codec::Create(kLayout)->release();
  return *codec;
}

// A sealed block of `tokens` random tokens, encoded with `codec`.
std::string MakeBlock(const Codec& codec, uint64_t seed,
                      int tokens = kBlockTokens) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  const size_t n =
      static_cast<size_t>(tokens) * codec.layout().ElementsPerToken();
  std::vector<float> k(n), v(n);
  for (float& x : k) x = dist(rng);
  for (float& x : v) x = dist(rng);
  auto block = EncodeBlock(codec, k.data(), v.data(), tokens, BlockOptions{});
  EXPECT_TRUE(block.ok()) << block.status();
  return std::string(block->begin(), block->end());
}
std::string MakeBlock(uint64_t seed, int tokens = kBlockTokens) {
  return MakeBlock(TestCodec(), seed, tokens);
}

std::string Hash(uint64_t i, uint64_t chain = 0x5eed) {
  return storage::BlockHash::FromPair(chain, i).ToString();
}

// Re-seals a block after editing its header (so only the intended field is
// wrong, not the checksum).
void Reseal(std::string* block) {
  BlockHeader h;
  std::memcpy(&h, block->data(), sizeof(h));
  h.checksum = BlockChecksum(
      h, reinterpret_cast<const uint8_t*>(block->data()) + sizeof(h),
      block->size() - sizeof(h));
  std::memcpy(block->data(), &h, sizeof(h));
}

BlockHeader HeaderOf(const std::string& block) {
  BlockHeader h;
  std::memcpy(&h, block.data(), sizeof(h));
  return h;
}

struct Client {
  explicit Client(const ServerProcess& server, const std::string& token = "")
      : stub(server.Stub()), token(token) {}

  std::unique_ptr<grpc::ClientContext> Ctx() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(60));
    return ctx;
  }

  grpc::Status Put(
      const v1::Namespace& ns,
      const std::vector<std::pair<std::string, std::string>>& blocks,
      v1::PutBlocksResponse* resp) const {
    v1::PutBlocksRequest req;
    *req.mutable_namespace_() = ns;
    uint32_t pos = 0;
    for (const auto& [h, d] : blocks) {
      v1::Block* b = req.add_blocks();
      b->set_hash(h);
      b->set_data(d);
      b->set_chain_position(pos++);
    }
    return stub->PutBlocks(Ctx().get(), req, resp);
  }

  grpc::Status Lookup(const v1::Namespace& ns,
                      const std::vector<std::string>& hashes,
                      v1::LookupResponse* resp) const {
    v1::LookupRequest req;
    *req.mutable_namespace_() = ns;
    for (const auto& h : hashes) req.add_hashes(h);
    return stub->Lookup(Ctx().get(), req, resp);
  }

  grpc::Status Get(const v1::Namespace& ns,
                   const std::vector<std::string>& hashes,
                   v1::GetBlocksResponse* resp) const {
    v1::GetBlocksRequest req;
    *req.mutable_namespace_() = ns;
    for (const auto& h : hashes) req.add_hashes(h);
    return stub->GetBlocks(Ctx().get(), req, resp);
  }

  // `blocks` in one PutBlocksStream of `per_message` blocks a message (the
  // namespace in the first).
  grpc::Status PutStream(
      const v1::Namespace& ns,
      const std::vector<std::pair<std::string, std::string>>& blocks,
      int per_message, v1::PutBlocksResponse* resp) const {
    auto ctx = Ctx();
    auto writer = stub->PutBlocksStream(ctx.get(), resp);
    for (size_t first = 0; first < blocks.size(); first += per_message) {
      v1::PutBlocksRequest req;
      if (first == 0) *req.mutable_namespace_() = ns;
      for (size_t i = first; i < std::min(blocks.size(), first + per_message);
           ++i) {
        v1::Block* b = req.add_blocks();
        b->set_hash(blocks[i].first);
        b->set_data(blocks[i].second);
        b->set_chain_position(static_cast<uint32_t>(i));
      }
      if (!writer->Write(req)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  // GetBlocksStream for `hashes`, every message's entries appended to
  // *entries; *messages counts the messages.
  grpc::Status GetStream(const v1::Namespace& ns,
                         const std::vector<std::string>& hashes,
                         uint64_t max_response_bytes,
                         std::vector<v1::BlockData>* entries,
                         int* messages) const {
    v1::GetBlocksRequest req;
    *req.mutable_namespace_() = ns;
    for (const auto& h : hashes) req.add_hashes(h);
    req.set_max_response_bytes(max_response_bytes);
    auto ctx = Ctx();
    auto reader = stub->GetBlocksStream(ctx.get(), req);
    v1::GetBlocksResponse msg;
    while (reader->Read(&msg)) {
      ++*messages;
      for (const auto& d : msg.blocks()) entries->push_back(d);
    }
    return reader->Finish();
  }

  // A GetBlocksSession (the caller sends requests and reads answers).
  struct Session {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<
        grpc::ClientReaderWriter<v1::GetBlocksRequest, v1::GetBlocksResponse>>
        stream;
    // One request and its answer; false when the session ended instead.
    bool RoundTrip(const v1::Namespace& ns,
                   const std::vector<std::string>& hashes,
                   v1::GetBlocksResponse* resp) {
      v1::GetBlocksRequest req;
      *req.mutable_namespace_() = ns;
      for (const auto& h : hashes) req.add_hashes(h);
      return stream->Write(req) && stream->Read(resp);
    }
  };
  Session OpenSession() const {
    Session s{Ctx(), nullptr};
    s.stream = stub->GetBlocksSession(s.ctx.get());
    return s;
  }

  v1::StatsResponse Stats() const {
    v1::StatsResponse resp;
    grpc::Status s = stub->Stats(Ctx().get(), v1::StatsRequest(), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  std::unique_ptr<v1::KVCache::Stub> stub;
  std::string token;
};

// n blocks (hash i -> block of seed base+i).
std::vector<std::pair<std::string, std::string>> Blocks(int n, uint64_t base,
                                                        uint64_t chain = 1) {
  std::vector<std::pair<std::string, std::string>> out;
  for (int i = 0; i < n; ++i) {
    out.emplace_back(Hash(i, chain), MakeBlock(base + i));
  }
  return out;
}

std::vector<std::string> HashesOf(
    const std::vector<std::pair<std::string, std::string>>& blocks) {
  std::vector<std::string> out;
  for (const auto& b : blocks) out.push_back(b.first);
  return out;
}

// Runs `clients` threads at once, each with its own Client, calling
// round(client, t, r) for r in [0, rounds); a thread stops at the first
// round that returns a problem (non-empty). Expects none.
void RunClientsConcurrently(
    const ServerProcess& server, int clients, int rounds,
    const std::function<std::string(const Client&, int t, int round)>& round) {
  std::vector<std::thread> threads;
  std::vector<std::string> problems(clients);
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      Client c(server);
      for (int r = 0; r < rounds && problems[t].empty(); ++r) {
        problems[t] = round(c, t, r);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < clients; ++t)
    EXPECT_EQ(problems[t], "") << "client " << t;
}

// Expects every block to be served bit-exact.
void ExpectAllServed(
    const Client& c, const v1::Namespace& ns,
    const std::vector<std::pair<std::string, std::string>>& blocks) {
  v1::GetBlocksResponse got;
  grpc::Status s = c.Get(ns, HashesOf(blocks), &got);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(got.blocks_size(), static_cast<int>(blocks.size()));
  EXPECT_EQ(got.found(), blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_EQ(got.blocks(i).index(), i);
    EXPECT_EQ(got.blocks(i).code(), 0) << "block " << i;
    EXPECT_TRUE(got.blocks(i).data() == blocks[i].second)
        << "block " << i << " not bit-exact";
  }
}

class KvServiceTest : public ::testing::Test {
 protected:
  std::unique_ptr<ServerProcess> StartServer(
      std::vector<std::string> args = {}) {
    if (std::find(args.begin(), args.end(), "--data-dir") == args.end()) {
      args.push_back("--data-dir");
      args.push_back(dir_.path() + "/data");
    }
    auto s = ServerProcess::Start(args);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
  TempDir dir_;
};

TEST_F(KvServiceTest, PutLookupGetRoundTripBitExact) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  auto blocks = Blocks(8, 100);
  blocks.emplace_back(Hash(8, 1), MakeBlock(108, 5));  // a short last block
  v1::PutBlocksResponse put;
  grpc::Status s = c.Put(ns, blocks, &put);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(put.stored(), 9u);
  ASSERT_EQ(put.results_size(), 9);
  for (const auto& r : put.results()) EXPECT_EQ(r.code(), 0) << r.message();

  v1::LookupResponse lk;
  ASSERT_TRUE(c.Lookup(ns, HashesOf(blocks), &lk).ok());
  EXPECT_EQ(lk.prefix_blocks(), 9u);
  ExpectAllServed(c, ns, blocks);
}

TEST_F(KvServiceTest, PartialPrefixHits) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  auto all = Blocks(6, 200);
  // Store blocks 0, 1, 2 and 4: the cached prefix is 3 blocks long.
  std::vector<std::pair<std::string, std::string>> some = {all[0], all[1],
                                                           all[2], all[4]};
  v1::PutBlocksResponse put;
  ASSERT_TRUE(c.Put(ns, some, &put).ok());
  v1::LookupResponse lk;
  ASSERT_TRUE(c.Lookup(ns, HashesOf(all), &lk).ok());
  EXPECT_EQ(lk.prefix_blocks(), 3u);
  EXPECT_THAT(std::vector<bool>(lk.present().begin(), lk.present().end()),
              ::testing::ElementsAre(true, true, true, false, true, false));

  v1::GetBlocksResponse got;
  ASSERT_TRUE(c.Get(ns, HashesOf(all), &got).ok());
  EXPECT_EQ(got.found(), 4u);
  for (int i : {0, 1, 2, 4}) {
    EXPECT_EQ(got.blocks(i).code(), 0);
    EXPECT_TRUE(got.blocks(i).data() == all[i].second);
  }
  for (int i : {3, 5}) {
    EXPECT_EQ(got.blocks(i).code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_TRUE(got.blocks(i).data().empty());
  }
  // Another namespace (different model) sees nothing.
  ASSERT_TRUE(c.Lookup(TestNamespace("other-model"), HashesOf(all), &lk).ok());
  EXPECT_EQ(lk.prefix_blocks(), 0u);
}

TEST_F(KvServiceTest, StreamsCarryBatchesInPieces) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  auto blocks = Blocks(40, 300);
  v1::PutBlocksResponse put;
  grpc::Status s = c.PutStream(ns, blocks, 10, &put);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(put.stored(), 40u);
  EXPECT_EQ(put.results_size(), 40);

  std::vector<std::string> hashes = HashesOf(blocks);
  hashes.push_back(Hash(999, 1));  // absent
  std::vector<v1::BlockData> entries;
  int messages = 0;
  // Room for about 3 blocks per message.
  s = c.GetStream(ns, hashes, 3 * blocks[0].second.size() + 200, &entries,
                  &messages);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(entries.size(), 41u);
  for (uint32_t i = 0; i < entries.size(); ++i) {
    EXPECT_EQ(entries[i].index(), i);
    if (i < blocks.size()) {
      EXPECT_EQ(entries[i].code(), 0);
      EXPECT_TRUE(entries[i].data() == blocks[i].second);
    } else {
      EXPECT_EQ(entries[i].code(), grpc::StatusCode::NOT_FOUND);
    }
  }
  EXPECT_GE(messages, 10);
  EXPECT_LE(messages, 41 / 2);  // several entries a message
}

// Streams from many clients at once: their reactors' steps run on the
// storage workers and gRPC's threads interleaved (the ThreadSanitizer pass,
// scripts/tsan.sh, runs this), and every block comes back bit-exact.
TEST_F(KvServiceTest, ConcurrentStreams) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const v1::Namespace ns = TestNamespace();
  RunClientsConcurrently(
      *server, /*clients=*/8, /*rounds=*/3,
      [&](const Client& c, int t, int round) -> std::string {
        auto blocks = Blocks(12, 50000 + 1000 * t + 100 * round,
                             /*chain=*/5000 + 100 * t + round);
        v1::PutBlocksResponse put;
        grpc::Status s = c.PutStream(ns, blocks, 4, &put);
        if (!s.ok() || put.stored() != blocks.size()) {
          return "put: " + s.error_message();
        }
        std::vector<v1::BlockData> entries;
        int messages = 0;
        s = c.GetStream(ns, HashesOf(blocks), 2 * blocks[0].second.size() + 200,
                        &entries, &messages);
        if (!s.ok() || entries.size() != blocks.size()) {
          return "get: " + s.error_message();
        }
        for (size_t i = 0; i < blocks.size(); ++i) {
          if (entries[i].data() != blocks[i].second) {
            return "block " + std::to_string(i) + " differs";
          }
        }
        return "";
      });
}

// Blocks(n, base) put through `c`; expects every one stored.
std::vector<std::pair<std::string, std::string>> PutNewBlocks(
    const Client& c, const v1::Namespace& ns, int n, uint64_t base) {
  auto blocks = Blocks(n, base);
  v1::PutBlocksResponse put;
  const grpc::Status s = c.Put(ns, blocks, &put);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(put.stored(), blocks.size());
  return blocks;
}

// Expects `got` to answer `hashes`, where blocks[i] is what hash i names
// and anything past blocks is absent.
void ExpectAnswer(
    const v1::GetBlocksResponse& got,
    const std::vector<std::pair<std::string, std::string>>& blocks,
    size_t absent) {
  ASSERT_EQ(got.blocks_size(), static_cast<int>(blocks.size() + absent));
  EXPECT_EQ(got.found(), blocks.size());
  for (int i = 0; i < got.blocks_size(); ++i) {
    EXPECT_EQ(got.blocks(i).index(), static_cast<uint32_t>(i));
    if (static_cast<size_t>(i) < blocks.size()) {
      EXPECT_EQ(got.blocks(i).code(), 0) << "block " << i;
      EXPECT_TRUE(got.blocks(i).data() == blocks[i].second)
          << "block " << i << " not bit-exact";
    } else {
      EXPECT_EQ(got.blocks(i).code(), grpc::StatusCode::NOT_FOUND);
    }
  }
}

TEST_F(KvServiceTest, SessionAnswersEveryRequestInOrder) {
  // Small memory, so some answers come from RocksDB (on a worker) and some
  // from memory (inline), in one session.
  auto server = StartServer({"--memory-bytes", "64KiB"});
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  const auto blocks = PutNewBlocks(c, ns, 60, 1300);
  ASSERT_GT(c.Stats().tiers(1).bytes(), 0u) << "nothing spilled to disk";

  Client::Session session = c.OpenSession();
  for (size_t first = 0; first < blocks.size(); first += 7) {
    const std::vector<std::pair<std::string, std::string>> want(
        blocks.begin() + first,
        blocks.begin() + std::min(blocks.size(), first + 7));
    std::vector<std::string> hashes = HashesOf(want);
    hashes.push_back(Hash(5000 + first, 1));  // absent
    v1::GetBlocksResponse got;
    ASSERT_TRUE(session.RoundTrip(ns, hashes, &got)) << "request " << first;
    ExpectAnswer(got, want, 1);
  }
  ASSERT_TRUE(session.stream->WritesDone());
  const grpc::Status done = session.stream->Finish();
  EXPECT_TRUE(done.ok()) << done.error_message();
}

TEST_F(KvServiceTest, BadRequestEndsSessionWithItsStatus) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  const auto blocks = PutNewBlocks(c, ns, 2, 1400);

  Client::Session session = c.OpenSession();
  v1::GetBlocksResponse got;
  ASSERT_TRUE(session.RoundTrip(ns, HashesOf(blocks), &got));
  ExpectAnswer(got, blocks, 0);
  // A 3-byte hash: what GetBlocks answers with INVALID_ARGUMENT.
  EXPECT_FALSE(session.RoundTrip(ns, {"abc"}, &got));
  const grpc::Status ended = session.stream->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(ended.error_message(), HasSubstr("hashes"));
  // The server is fine, and so is a new session.
  Client::Session again = c.OpenSession();
  ASSERT_TRUE(again.RoundTrip(ns, HashesOf(blocks), &got));
  ExpectAnswer(got, blocks, 0);
}

TEST_F(KvServiceTest, SessionsAreAuthenticatedAndSeeTheirTenantOnly) {
  const std::string tokens = dir_.WriteFile(
      "tokens.txt", "alice-token-123 alice\nbob-token-4567 bob\n");
  auto server = StartServer({"--tokens-file", tokens});
  ASSERT_NE(server, nullptr);
  const v1::Namespace ns = TestNamespace();
  const auto blocks =
      PutNewBlocks(Client(*server, "alice-token-123"), ns, 3, 1500);

  v1::GetBlocksResponse got;
  Client::Session anonymous = Client(*server).OpenSession();
  EXPECT_FALSE(anonymous.RoundTrip(ns, HashesOf(blocks), &got));
  EXPECT_EQ(anonymous.stream->Finish().error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  Client::Session bob = Client(*server, "bob-token-4567").OpenSession();
  ASSERT_TRUE(bob.RoundTrip(ns, HashesOf(blocks), &got));
  EXPECT_EQ(got.found(), 0u);
  Client::Session alice = Client(*server, "alice-token-123").OpenSession();
  ASSERT_TRUE(alice.RoundTrip(ns, HashesOf(blocks), &got));
  ExpectAnswer(got, blocks, 0);
}

// An idle session is not a call in flight: SIGTERM does not wait the grace
// period for it, and the session ends.
TEST_F(KvServiceTest, IdleSessionDoesNotHoldTheDrain) {
  const std::string config =
      dir_.WriteFile("config.yaml", "shutdown_grace_seconds: 120\n");
  auto server = StartServer({"--config", config});
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  const auto blocks = PutNewBlocks(c, ns, 1, 1600);
  Client::Session session = c.OpenSession();
  v1::GetBlocksResponse got;
  ASSERT_TRUE(session.RoundTrip(ns, HashesOf(blocks), &got));

  const absl::Time start = absl::Now();
  EXPECT_EQ(server->StopWith(SIGTERM), 0);
  EXPECT_LT(absl::Now() - start, absl::Seconds(60))
      << "the drain waited for the idle session";
  EXPECT_FALSE(session.RoundTrip(ns, HashesOf(blocks), &got));
  EXPECT_FALSE(session.stream->Finish().ok());
}

TEST_F(KvServiceTest, EvictionUnderSmallMemoryLosesNothingAcknowledged) {
  // 256 KiB of memory for ~1.3 MiB of blocks: most must spill to RocksDB.
  auto server = StartServer({"--memory-bytes", "256KiB"});
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  std::vector<std::pair<std::string, std::string>> all;
  for (int batch = 0; batch < 16; ++batch) {
    auto blocks = Blocks(40, 10000 + 40 * batch, /*chain=*/100 + batch);
    v1::PutBlocksResponse put;
    grpc::Status s = c.Put(ns, blocks, &put);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(put.stored(), 40u);
    all.insert(all.end(), blocks.begin(), blocks.end());
  }
  const v1::StatsResponse st = c.Stats();
  ASSERT_GE(st.tiers_size(), 2);
  EXPECT_EQ(st.tiers(0).name(), "memory");
  EXPECT_LE(st.tiers(0).bytes(), 256u * 1024);
  EXPECT_GT(st.tiers(0).evictions(), 0u);
  EXPECT_EQ(st.tiers(1).name(), "disk");
  EXPECT_GT(st.tiers(1).bytes(), 0u);
  ExpectAllServed(c, ns, all);
}

// Restart and crash tests run with auth off (the anonymous tenant "") and
// with a named tenant, since namespace ownership must survive a restart.
class RestartTest : public KvServiceTest,
                    public ::testing::WithParamInterface<bool> {
 protected:
  // Server args for the parameter (auth on: a tokens file with alice).
  std::vector<std::string> AuthArgs() {
    if (!GetParam()) return {};
    return {"--tokens-file",
            dir_.WriteFile("tokens.txt", "alice-token-123 alice\n")};
  }
  std::string Token() const { return GetParam() ? "alice-token-123" : ""; }
  static std::vector<std::string> Plus(std::vector<std::string> a,
                                       const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
};

TEST_P(RestartTest, RestartKeepsBlocksAndSigtermExitsZero) {
  const v1::Namespace ns = TestNamespace();
  auto blocks = Blocks(12, 400);
  {
    auto server = StartServer(AuthArgs());
    ASSERT_NE(server, nullptr);
    Client c(*server, Token());
    v1::PutBlocksResponse put;
    ASSERT_TRUE(c.Put(ns, blocks, &put).ok());
    ASSERT_EQ(put.stored(), 12u);
    EXPECT_EQ(server->StopWith(SIGTERM), 0);
  }
  auto server = StartServer(AuthArgs());
  ASSERT_NE(server, nullptr);
  Client c(*server, Token());
  v1::LookupResponse lk;
  ASSERT_TRUE(c.Lookup(ns, HashesOf(blocks), &lk).ok());
  EXPECT_EQ(lk.prefix_blocks(), 12u);
  ExpectAllServed(c, ns, blocks);
  EXPECT_EQ(server->StopWith(SIGINT), 0);
}

TEST_P(RestartTest, Kill9InSyncModeKeepsAcknowledgedPuts) {
  const v1::Namespace ns = TestNamespace();
  std::vector<std::pair<std::string, std::string>> acked;
  {
    auto server = StartServer(Plus({"--durability", "sync"}, AuthArgs()));
    ASSERT_NE(server, nullptr);
    Client c(*server, Token());
    for (int batch = 0; batch < 5; ++batch) {
      auto blocks = Blocks(8, 500 + 8 * batch, 200 + batch);
      v1::PutBlocksResponse put;
      ASSERT_TRUE(c.Put(ns, blocks, &put).ok());
      ASSERT_EQ(put.stored(), 8u);
      acked.insert(acked.end(), blocks.begin(), blocks.end());
    }
    EXPECT_EQ(server->StopWith(SIGKILL), 128 + SIGKILL);
  }
  auto server = StartServer(Plus({"--durability", "sync"}, AuthArgs()));
  ASSERT_NE(server, nullptr);
  ExpectAllServed(Client(*server, Token()), ns, acked);
}

INSTANTIATE_TEST_SUITE_P(AuthOffAndOn, RestartTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "NamedTenant" : "AuthOff";
                         });

// SIGTERM drains: a call accepted before the signal runs to completion, a
// call arriving while the server drains gets UNAVAILABLE, then the process
// exits 0.
TEST_F(KvServiceTest, CallsDuringDrainAfterSigtermAreUnavailable) {
  const v1::Namespace ns = TestNamespace();
  auto server = StartServer({"--durability", "sync"});
  ASSERT_NE(server, nullptr);
  Client c(*server);
  auto blocks = Blocks(2, 900);

  // An open PutBlocksStream is a call in flight until the client finishes.
  auto ctx = c.Ctx();
  v1::PutBlocksResponse streamed;
  auto writer = c.stub->PutBlocksStream(ctx.get(), &streamed);
  v1::PutBlocksRequest msg;
  *msg.mutable_namespace_() = ns;
  v1::Block* b = msg.add_blocks();
  b->set_hash(blocks[0].first);
  b->set_data(blocks[0].second);
  ASSERT_TRUE(writer->Write(msg));
  // Once the first message is stored the server has accepted the call.
  for (int i = 0;; ++i) {
    v1::LookupResponse lk;
    ASSERT_TRUE(c.Lookup(ns, {blocks[0].first}, &lk).ok());
    if (lk.prefix_blocks() == 1) break;
    ASSERT_LT(i, 3000) << "the stream's first message was never stored";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  ASSERT_EQ(kill(server->pid(), SIGTERM), 0);
  // New calls are refused while the stream keeps the server draining.
  grpc::Status refused;
  for (int i = 0;; ++i) {
    v1::LookupResponse lk;
    refused = c.Lookup(ns, {blocks[0].first}, &lk);
    if (!refused.ok()) break;
    ASSERT_LT(i, 3000) << "the server never began draining";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE)
      << refused.error_message();
  EXPECT_THAT(refused.error_message(), HasSubstr("shutting down"));
  v1::GetBlocksResponse got;
  EXPECT_EQ(c.Get(ns, {blocks[0].first}, &got).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(server->Running());

  // The call in flight still completes, with both messages stored.
  msg.clear_blocks();
  b = msg.add_blocks();
  b->set_hash(blocks[1].first);
  b->set_data(blocks[1].second);
  ASSERT_TRUE(writer->Write(msg));
  ASSERT_TRUE(writer->WritesDone());
  const grpc::Status done = writer->Finish();
  EXPECT_TRUE(done.ok()) << done.error_message();
  EXPECT_EQ(streamed.stored(), 2u);
  // A second SIGTERM while the server flushes is ignored: still exit 0.
  EXPECT_EQ(server->StopWith(SIGTERM), 0);

  // What the drained call stored was flushed (sync mode) and survives.
  server = StartServer({"--durability", "sync"});
  ASSERT_NE(server, nullptr);
  ExpectAllServed(Client(*server), ns, blocks);
}

TEST_F(KvServiceTest, ConcurrentClients) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const v1::Namespace ns = TestNamespace();
  RunClientsConcurrently(*server, /*clients=*/16, /*rounds=*/5,
                         [&](const Client& c, int t, int round) -> std::string {
                           auto blocks =
                               Blocks(4, 100000 + 1000 * t + 10 * round,
                                      /*chain=*/1000 + 100 * t + round);
                           v1::PutBlocksResponse put;
                           grpc::Status s = c.Put(ns, blocks, &put);
                           if (!s.ok() || put.stored() != 4)
                             return "put: " + s.error_message();
                           v1::GetBlocksResponse got;
                           s = c.Get(ns, HashesOf(blocks), &got);
                           if (!s.ok()) return "get: " + s.error_message();
                           for (int i = 0; i < 4; ++i) {
                             if (got.blocks(i).data() != blocks[i].second) {
                               return "block " + std::to_string(i) + " differs";
                             }
                           }
                           return "";
                         });
}

TEST_F(KvServiceTest, TenantsAreIsolatedAndAuthenticated) {
  const std::string tokens = dir_.WriteFile(
      "tokens.txt",
      "# token tenant\nalice-token-123 alice\nbob-token-4567 bob\n");
  const std::string config =
      dir_.WriteFile("config.yaml", "tenants:\n  quotas:\n    bob: 10KiB\n");
  auto server = StartServer({"--tokens-file", tokens, "--config", config});
  ASSERT_NE(server, nullptr);
  Client alice(*server, "alice-token-123");
  Client bob(*server, "bob-token-4567");
  const v1::Namespace ns = TestNamespace();
  auto blocks = Blocks(4, 600);
  v1::PutBlocksResponse put;
  ASSERT_TRUE(alice.Put(ns, blocks, &put).ok());
  ASSERT_EQ(put.stored(), 4u);

  // Bob, same namespace fields and hashes: nothing is there for him.
  v1::LookupResponse lk;
  ASSERT_TRUE(bob.Lookup(ns, HashesOf(blocks), &lk).ok());
  EXPECT_EQ(lk.prefix_blocks(), 0u);
  for (bool p : lk.present()) EXPECT_FALSE(p);
  v1::GetBlocksResponse got;
  ASSERT_TRUE(bob.Get(ns, HashesOf(blocks), &got).ok());
  EXPECT_EQ(got.found(), 0u);
  for (const auto& d : got.blocks()) {
    EXPECT_EQ(d.code(), grpc::StatusCode::NOT_FOUND);
  }
  v1::DeleteRequest del;
  *del.mutable_namespace_() = ns;
  del.set_whole_namespace(true);
  v1::DeleteResponse dresp;
  ASSERT_TRUE(bob.stub->Delete(bob.Ctx().get(), del, &dresp).ok());
  EXPECT_EQ(dresp.deleted(), 0u);
  ExpectAllServed(alice, ns, blocks);
  EXPECT_EQ(alice.Stats().tenant(), "alice");

  // Bob's quota (10 KiB) takes four 2 KiB blocks, not eight.
  auto bob_blocks = Blocks(8, 700, 7);
  grpc::Status s = bob.Put(ns, bob_blocks, &put);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_LT(put.stored(), 8u);
  EXPECT_GT(put.stored(), 0u);
  int exhausted = 0;
  for (const auto& r : put.results()) {
    if (r.code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++exhausted;
  }
  EXPECT_EQ(exhausted, 8 - static_cast<int>(put.stored()));
  // A batch that cannot store anything fails as a whole.
  s = bob.Put(ns, Blocks(2, 800, 8), &put);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  const v1::StatsResponse bst = bob.Stats();
  EXPECT_EQ(bst.tenant(), "bob");
  EXPECT_EQ(bst.tenant_quota_bytes(), 10u * 1024);
  EXPECT_LE(bst.tenant_bytes(), 10u * 1024);

  // Missing, unknown and malformed credentials.
  for (const std::string& token :
       {std::string(), std::string("nope-nope"), std::string("Basic abc")}) {
    Client anon(*server, "");
    auto ctx = anon.Ctx();
    if (token == "Basic abc") {
      ctx->AddMetadata("authorization", token);
    } else if (!token.empty()) {
      ctx->AddMetadata("authorization", "Bearer " + token);
    }
    v1::LookupRequest req;
    *req.mutable_namespace_() = ns;
    req.add_hashes(blocks[0].first);
    v1::LookupResponse r;
    s = anon.stub->Lookup(ctx.get(), req, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << "token '" << token << "'";
    auto sctx = anon.Ctx();
    v1::PutBlocksResponse pr;
    auto writer = anon.stub->PutBlocksStream(sctx.get(), &pr);
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
}

TEST_F(KvServiceTest, KubernetesSecretDirectoryOfTokens) {
  TempDir secret;
  secret.WriteFile("carol", "carol-token-xyz\n");
  secret.WriteFile(".hidden", "ignored-token-1");
  auto server = StartServer({"--tokens-file", secret.path()});
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(Client(*server, "carol-token-xyz").Stats().tenant(), "carol");
  Client bad(*server, "ignored-token-1");
  v1::StatsResponse r;
  EXPECT_EQ(
      bad.stub->Stats(bad.Ctx().get(), v1::StatsRequest(), &r).error_code(),
      grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(KvServiceTest, BadBlocksAreRejectedPrecisely) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  const std::string good = MakeBlock(900);
  struct Case {
    std::string name;
    std::string data;
    std::string hash;
    grpc::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases;
  {
    std::string d = good;
    d[100] ^= 0x40;  // payload bit flip
    cases.push_back(
        {"checksum", d, Hash(1), grpc::StatusCode::DATA_LOSS, "blocks[1]"});
  }
  {
    std::string d = good;
    d[0] ^= 1;  // magic
    cases.push_back(
        {"magic", d, Hash(1), grpc::StatusCode::INVALID_ARGUMENT, "blocks[1]"});
  }
  cases.push_back({"truncated", good.substr(0, good.size() - 10), Hash(1),
                   grpc::StatusCode::DATA_LOSS, "blocks[1]"});
  cases.push_back(
      {"tiny", "xyz", Hash(1), grpc::StatusCode::DATA_LOSS, "blocks[1]"});
  {
    // A block of another layout (3 layers): sealed correctly, wrong shape.
    auto codec = Fp16Codec::Create(KvLayout{3, 2, 8});
    cases.push_back({"layers", MakeBlock(**codec, 1), Hash(1),
                     grpc::StatusCode::INVALID_ARGUMENT, "layers is 3"});
  }
  {
    std::string d = good;
    BlockHeader h = HeaderOf(d);
    h.codebook_hash = 0x1234;
    std::memcpy(d.data(), &h, sizeof(h));
    Reseal(&d);
    cases.push_back({"codebook", d, Hash(1), grpc::StatusCode::INVALID_ARGUMENT,
                     "codebook_hash"});
  }
  {
    std::string d = good;
    BlockHeader h = HeaderOf(d);
    h.codec_id = static_cast<uint32_t>(CodecId::kKivi);
    std::memcpy(d.data(), &h, sizeof(h));
    Reseal(&d);
    cases.push_back(
        {"codec", d, Hash(1), grpc::StatusCode::INVALID_ARGUMENT, "codec_id"});
  }
  cases.push_back({"too many tokens", MakeBlock(901, kBlockTokens + 1), Hash(1),
                   grpc::StatusCode::INVALID_ARGUMENT, "tokens is 17"});
  cases.push_back({"short hash", good, std::string(15, 'h'),
                   grpc::StatusCode::INVALID_ARGUMENT, "exactly 16 bytes"});
  cases.push_back({"duplicate hash in batch", good, Hash(0),
                   grpc::StatusCode::INVALID_ARGUMENT, "appears twice"});
  for (const Case& k : cases) {
    // Block 0 is fine, block 1 is bad: nothing may be stored.
    v1::PutBlocksResponse put;
    grpc::Status s = c.Put(ns, {{Hash(0), good}, {k.hash, k.data}}, &put);
    EXPECT_EQ(s.error_code(), k.code) << k.name << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(k.message)) << k.name;
    v1::LookupResponse lk;
    ASSERT_TRUE(c.Lookup(ns, {Hash(0)}, &lk).ok());
    EXPECT_FALSE(lk.present(0)) << k.name << ": part of a bad batch stored";
  }
  // The server is still up and serving.
  v1::PutBlocksResponse put;
  ASSERT_TRUE(c.Put(ns, {{Hash(0), good}}, &put).ok());
  EXPECT_EQ(put.stored(), 1u);
  // A duplicate put is harmless and reported per block.
  grpc::Status s =
      c.Put(ns, {{Hash(0), good}, {Hash(1), MakeBlock(902)}}, &put);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(put.results(0).code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(put.results(1).code(), 0);
  EXPECT_EQ(put.stored(), 1u);
  ExpectAllServed(c, ns, {{Hash(0), good}});
}

TEST_F(KvServiceTest, BadRequestsAreRejectedPrecisely) {
  auto server = StartServer({"--max-message-bytes", "1MiB"});
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  v1::PutBlocksResponse put;
  grpc::Status s = c.Put(ns, {}, &put);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("empty"));

  v1::LookupResponse lk;
  s = c.Lookup(ns, {}, &lk);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s = c.Lookup(ns, {Hash(0), "short"}, &lk);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("hashes[1]"));

  {  // No namespace.
    v1::GetBlocksRequest req;
    req.add_hashes(Hash(0));
    v1::GetBlocksResponse r;
    s = c.stub->GetBlocks(c.Ctx().get(), req, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("namespace is required"));
  }
  for (auto mutate : std::vector<std::function<void(v1::Namespace*)>>{
           [](v1::Namespace* n) { n->set_head_dim(0); },
           [](v1::Namespace* n) { n->set_dtype(v1::DTYPE_UNSPECIFIED); },
           [](v1::Namespace* n) { n->clear_model_id(); },
           [](v1::Namespace* n) { n->set_block_tokens(0); },
           [](v1::Namespace* n) { n->set_codec_id(0); }}) {
    v1::Namespace bad = ns;
    mutate(&bad);
    s = c.Put(bad, {{Hash(0), MakeBlock(1)}}, &put);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("namespace."));
  }
  {  // Unknown codebook set.
    v1::Namespace vq = ns;
    vq.set_codebook_hash(0xfeedfacecafebeefULL);
    s = c.Put(vq, {{Hash(0), MakeBlock(1)}}, &put);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(s.error_message(), HasSubstr("not registered"));
  }
  {  // Oversized: more than --max-message-bytes.
    std::vector<std::pair<std::string, std::string>> big;
    for (int i = 0; i < 600; ++i) big.emplace_back(Hash(i), MakeBlock(i));
    s = c.Put(ns, big, &put);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  {  // Delete: both modes at once.
    v1::DeleteRequest req;
    *req.mutable_namespace_() = ns;
    req.set_whole_namespace(true);
    req.add_hashes(Hash(0));
    v1::DeleteResponse r;
    s = c.stub->Delete(c.Ctx().get(), req, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // Malformed bytes that are not a PutBlocksRequest at all.
    grpc::GenericStub generic(server->Channel());
    grpc::ClientContext ctx;
    const char garbage[] = "\x0a\xff\xff\xff\xff\x0f garbage";
    grpc::Slice slice(garbage, sizeof(garbage) - 1);
    grpc::ByteBuffer request(&slice, 1), response;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    generic.UnaryCall(&ctx, "/vqkv.v1.KVCache/PutBlocks", grpc::StubOptions(),
                      &request, &response, [&](grpc::Status st) {
                        std::lock_guard<std::mutex> lock(mu);
                        status = st;
                        done = true;
                        cv.notify_one();
                      });
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(
        cv.wait_for(lock, std::chrono::seconds(30), [&] { return done; }));
    EXPECT_FALSE(status.ok());
  }
  // Still serving after all of that.
  ASSERT_TRUE(c.Put(ns, {{Hash(0), MakeBlock(1)}}, &put).ok());
  EXPECT_EQ(put.stored(), 1u);
  EXPECT_TRUE(server->Running());
}

TEST_F(KvServiceTest, LargeGetsStayUnderTheMessageLimit) {
  auto server = StartServer({"--max-message-bytes", "1MiB"});
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  std::vector<std::pair<std::string, std::string>> all;
  for (int batch = 0; batch < 3; ++batch) {  // 3 x 200 x ~2 KiB = ~1.2 MiB
    auto blocks = Blocks(200, 3000 + 200 * batch, 300 + batch);
    v1::PutBlocksResponse put;
    ASSERT_TRUE(c.Put(ns, blocks, &put).ok());
    ASSERT_EQ(put.stored(), 200u);
    all.insert(all.end(), blocks.begin(), blocks.end());
  }
  // Unary: the answer fits the limit; blocks that did not fit are marked
  // RESOURCE_EXHAUSTED (present, fetch again), never silently dropped.
  v1::GetBlocksResponse got;
  grpc::Status s = c.Get(ns, HashesOf(all), &got);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(got.blocks_size(), 600);
  EXPECT_GT(got.found(), 0u);
  EXPECT_LT(got.found(), 600u);
  for (int i = 0; i < 600; ++i) {
    const auto& d = got.blocks(i);
    if (d.code() == 0) {
      EXPECT_TRUE(d.data() == all[i].second);
    } else {
      EXPECT_EQ(d.code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    }
  }
  // The stream delivers all of them (default budget: a quarter of the limit).
  v1::GetBlocksRequest req;
  *req.mutable_namespace_() = ns;
  for (const auto& b : all) req.add_hashes(b.first);
  auto ctx = c.Ctx();
  auto reader = c.stub->GetBlocksStream(ctx.get(), req);
  v1::GetBlocksResponse msg;
  uint32_t next = 0;
  while (reader->Read(&msg)) {
    EXPECT_LE(msg.ByteSizeLong(), 1u << 20);
    for (const auto& d : msg.blocks()) {
      ASSERT_LT(d.index(), all.size());
      EXPECT_EQ(d.index(), next++);
      EXPECT_EQ(d.code(), 0);
      EXPECT_TRUE(d.data() == all[d.index()].second);
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(next, 600u);
}

// A tiny fitted VQ codec, so the codebook registry is exercised with a real
// codebook file.
std::unique_ptr<VqCodec> TinyVqCodec() {
  VqConfig cfg;
  cfg.key_stages = 2;
  cfg.key_bits = 4;
  cfg.value_stages = 1;
  cfg.value_bits = 4;
  cfg.training.kmeans_iterations = 2;
  auto codec = VqCodec::Create(kLayout, cfg);
  EXPECT_TRUE(codec.ok()) << codec.status();
  const int tokens = 128;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> dist;
  std::vector<float> k(tokens * kLayout.ElementsPerToken()), v(k.size());
  for (float& x : k) x = dist(rng);
  for (float& x : v) x = dist(rng);
  absl::Status s = (*codec)->Fit(k.data(), v.data(), tokens, FitOptions{});
  EXPECT_TRUE(s.ok()) << s;
  return *std::move(codec);
}

TEST_F(KvServiceTest, CodebookRegistryGatesVqBlocks) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  Client c(*server);
  auto codec = TinyVqCodec();
  ASSERT_NE(codec, nullptr);
  const uint64_t hash = codec->codebook_hash();
  auto file = codec->codebooks().Serialize();
  ASSERT_TRUE(file.ok()) << file.status();
  v1::Namespace ns = TestNamespace();
  ns.set_codec(codec->Descriptor());
  ns.set_codec_id(static_cast<uint32_t>(CodecId::kVq));
  ns.set_codebook_hash(hash);
  const std::string block = MakeBlock(*codec, 5);

  v1::PutBlocksResponse put;
  grpc::Status s = c.Put(ns, {{Hash(0), block}}, &put);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  auto put_codebook = [&](uint64_t h, const std::string& data,
                          v1::PutCodebooksResponse* resp) {
    v1::PutCodebooksRequest req;
    v1::Codebook* cb = req.add_codebooks();
    cb->set_hash(h);
    cb->set_data(data);
    return c.stub->PutCodebooks(c.Ctx().get(), req, resp);
  };
  v1::PutCodebooksResponse cresp;
  s = put_codebook(0, *file, &cresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s = put_codebook(hash + 1, *file, &cresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("content hash"));
  std::string corrupt = *file;
  corrupt[corrupt.size() / 2] ^= 0x10;
  s = put_codebook(hash, corrupt, &cresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS) << s.error_message();
  s = put_codebook(hash, file->substr(0, file->size() - 3), &cresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS) << s.error_message();

  s = put_codebook(hash, *file, &cresp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(cresp.results(0).code(), 0);
  s = put_codebook(hash, *file, &cresp);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(cresp.results(0).code(), grpc::StatusCode::ALREADY_EXISTS);

  v1::GetCodebooksRequest greq;
  greq.add_hashes(hash);
  greq.add_hashes(hash ^ 1);
  v1::GetCodebooksResponse gresp;
  ASSERT_TRUE(c.stub->GetCodebooks(c.Ctx().get(), greq, &gresp).ok());
  ASSERT_EQ(gresp.codebooks_size(), 2);
  EXPECT_TRUE(gresp.codebooks(0).found());
  EXPECT_TRUE(gresp.codebooks(0).data() == *file);
  EXPECT_FALSE(gresp.codebooks(1).found());

  s = c.Put(ns, {{Hash(0), block}}, &put);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(put.stored(), 1u);
  ExpectAllServed(c, ns, {{Hash(0), block}});
  EXPECT_EQ(c.Stats().codebooks(), 1u);
}

TEST_F(KvServiceTest, DeleteBlocksAndNamespace) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  auto blocks = Blocks(6, 1000);
  v1::PutBlocksResponse put;
  ASSERT_TRUE(c.Put(ns, blocks, &put).ok());
  v1::DeleteRequest req;
  *req.mutable_namespace_() = ns;
  req.add_hashes(blocks[4].first);
  req.add_hashes(blocks[5].first);
  req.add_hashes(Hash(77, 77));  // absent: not an error
  v1::DeleteResponse resp;
  ASSERT_TRUE(c.stub->Delete(c.Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.deleted(), 2u);
  v1::LookupResponse lk;
  ASSERT_TRUE(c.Lookup(ns, HashesOf(blocks), &lk).ok());
  EXPECT_EQ(lk.prefix_blocks(), 4u);
  req.clear_hashes();
  req.set_whole_namespace(true);
  ASSERT_TRUE(c.stub->Delete(c.Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.deleted(), 4u);
  ASSERT_TRUE(c.Lookup(ns, HashesOf(blocks), &lk).ok());
  EXPECT_EQ(lk.prefix_blocks(), 0u);
}

// --- Leases (LookupRequest.lease_ms) ---------------------------------------

// Tiers small enough that a few hundred blocks (~2 KiB each) flush both:
// memory (one shard) holds ~60 blocks, disk ~30. (The server always has a
// disk tier; a tiny one makes evicted blocks leave the store all the same.)
const std::vector<std::string> kTinyTiers = {"--memory-bytes", "128KiB",
                                             "--disk-bytes", "64KiB"};

grpc::Status LookupWithLease(const Client& c, const v1::Namespace& ns,
                             const std::vector<std::string>& hashes,
                             uint32_t lease_ms, v1::LookupResponse* resp) {
  v1::LookupRequest req;
  *req.mutable_namespace_() = ns;
  for (const auto& h : hashes) req.add_hashes(h);
  req.set_lease_ms(lease_ms);
  return c.stub->Lookup(c.Ctx().get(), req, resp);
}

// Puts `n` unrelated blocks, all at chain position 0, so that eviction is
// plain LRU and pushes every unleased block out of both tiers.
void PutFiller(const Client& c, int n, uint64_t seed) {
  const v1::Namespace ns = TestNamespace("filler");
  for (int done = 0; done < n; done += 40) {
    v1::PutBlocksRequest req;
    *req.mutable_namespace_() = ns;
    for (int i = done; i < std::min(n, done + 40); ++i) {
      v1::Block* b = req.add_blocks();
      b->set_hash(Hash(seed + i, seed));
      b->set_data(MakeBlock(seed + i));
      b->set_chain_position(0);
    }
    v1::PutBlocksResponse resp;
    grpc::Status s = c.stub->PutBlocks(c.Ctx().get(), req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(resp.stored(), static_cast<uint32_t>(req.blocks_size()));
  }
}

// How many of `blocks` GetBlocks serves bit-exact.
int CountServed(
    const Client& c, const v1::Namespace& ns,
    const std::vector<std::pair<std::string, std::string>>& blocks) {
  v1::GetBlocksResponse got;
  grpc::Status s = c.Get(ns, HashesOf(blocks), &got);
  EXPECT_TRUE(s.ok()) << s.error_message();
  int served = 0;
  for (const v1::BlockData& b : got.blocks()) {
    if (b.code() == 0 && b.data() == blocks[b.index()].second) ++served;
  }
  return served;
}

TEST_F(KvServiceTest, LookupLeaseKeepsThePrefixForTheFollowingGet) {
  auto server = StartServer(kTinyTiers);
  ASSERT_NE(server, nullptr);
  Client c(*server);
  // The same prefix in two namespaces; only the first is looked up with a
  // lease, the second is the control.
  const v1::Namespace leased_ns = TestNamespace("leased");
  const v1::Namespace plain_ns = TestNamespace("plain");
  const auto prefix = Blocks(8, 3000);
  for (const v1::Namespace& ns : {leased_ns, plain_ns}) {
    v1::PutBlocksResponse put;
    ASSERT_TRUE(c.Put(ns, prefix, &put).ok());
    ASSERT_EQ(put.stored(), 8u);
  }
  v1::LookupResponse lk;
  ASSERT_TRUE(LookupWithLease(c, leased_ns, HashesOf(prefix), 10000, &lk).ok());
  EXPECT_EQ(lk.prefix_blocks(), 8u);
  ASSERT_TRUE(c.Lookup(plain_ns, HashesOf(prefix), &lk).ok());
  EXPECT_EQ(lk.prefix_blocks(), 8u);
  // Several times what both tiers hold.
  PutFiller(c, 240, 100000);
  const v1::StatsResponse st = c.Stats();
  EXPECT_GT(st.tiers(0).evictions(), 100u);
  EXPECT_EQ(CountServed(c, leased_ns, prefix), 8);
  EXPECT_EQ(CountServed(c, plain_ns, prefix), 0);  // without a lease: lost
}

TEST_F(KvServiceTest, LookupLeaseIsCappedByMaxLeaseMs) {
  std::vector<std::string> args = kTinyTiers;
  args.insert(args.end(), {"--max-lease-ms", "1000"});
  auto server = StartServer(args);
  ASSERT_NE(server, nullptr);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  const auto prefix = Blocks(8, 4000);
  v1::PutBlocksResponse put;
  ASSERT_TRUE(c.Put(ns, prefix, &put).ok());
  ASSERT_EQ(put.stored(), 8u);
  // Ask for ten minutes; the server grants one second.
  const auto asked = std::chrono::steady_clock::now();
  v1::LookupResponse lk;
  ASSERT_TRUE(LookupWithLease(c, ns, HashesOf(prefix), 600000, &lk).ok());
  ASSERT_EQ(lk.prefix_blocks(), 8u);
  PutFiller(c, 240, 200000);
  if (std::chrono::steady_clock::now() - asked <
      std::chrono::milliseconds(800)) {
    EXPECT_EQ(CountServed(c, ns, prefix), 8);  // the lease holds meanwhile
  }  // (else the machine is too slow to tell; the check below still runs)
  std::this_thread::sleep_until(asked + std::chrono::milliseconds(1500));
  PutFiller(c, 240, 300000);
  EXPECT_EQ(CountServed(c, ns, prefix), 0);  // the capped lease has ended
}

TEST_F(KvServiceTest, MetricsHealthAndGrpcHealthService) {
  auto server = StartServer({"--metrics-listen", "127.0.0.1:0"});
  ASSERT_NE(server, nullptr);
  ASSERT_NE(server->metrics_port(), 0);
  Client c(*server);
  const v1::Namespace ns = TestNamespace();
  auto blocks = Blocks(3, 1100);
  v1::PutBlocksResponse put;
  ASSERT_TRUE(c.Put(ns, blocks, &put).ok());
  v1::GetBlocksResponse got;
  ASSERT_TRUE(c.Get(ns, {blocks[0].first, Hash(50, 50)}, &got).ok());
  v1::LookupResponse lk;
  EXPECT_FALSE(c.Lookup(ns, {}, &lk).ok());

  const HttpResult health = HttpGet(server->metrics_port(), "/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "ok\n");
  const HttpResult m = HttpGet(server->metrics_port(), "/metrics");
  ASSERT_EQ(m.status, 200);
  EXPECT_THAT(
      m.body,
      HasSubstr("vqkv_requests_total{method=\"PutBlocks\",code=\"OK\"} 1\n"));
  EXPECT_THAT(m.body, HasSubstr("vqkv_requests_total{method=\"Lookup\",code="
                                "\"INVALID_ARGUMENT\"} 1\n"));
  EXPECT_THAT(m.body,
              HasSubstr("vqkv_errors_total{code=\"INVALID_ARGUMENT\"} 1\n"));
  EXPECT_THAT(m.body, HasSubstr("vqkv_block_hits_total{op=\"get\"} 1\n"));
  EXPECT_THAT(m.body, HasSubstr("vqkv_block_misses_total{op=\"get\"} 1\n"));
  EXPECT_THAT(m.body,
              HasSubstr(absl::StrCat("vqkv_token_hits_total{op=\"get\"} ",
                                     kBlockTokens, "\n")));
  EXPECT_THAT(m.body, HasSubstr("vqkv_blocks_stored_total 3\n"));
  EXPECT_THAT(m.body,
              HasSubstr(absl::StrCat("vqkv_bytes_received_total ",
                                     3 * blocks[0].second.size(), "\n")));
  EXPECT_THAT(m.body,
              HasSubstr(absl::StrCat("vqkv_tier_bytes{tier=\"memory\"} ",
                                     3 * blocks[0].second.size())));
  EXPECT_THAT(
      m.body,
      HasSubstr(
          "vqkv_request_duration_seconds_count{method=\"PutBlocks\"} 1\n"));

  // grpc.health.v1.Health/Check with an empty request: SERVING (field 1 = 1).
  grpc::GenericStub generic(server->Channel());
  grpc::ClientContext ctx;
  grpc::ByteBuffer request, response;
  grpc::Slice empty("", 0);
  request = grpc::ByteBuffer(&empty, 1);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                    &request, &response, [&](grpc::Status st) {
                      std::lock_guard<std::mutex> lock(mu);
                      status = st;
                      done = true;
                      cv.notify_one();
                    });
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(
        cv.wait_for(lock, std::chrono::seconds(30), [&] { return done; }));
  }
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const auto& sl : slices) {
    bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  }
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
  EXPECT_EQ(server->StopWith(SIGTERM), 0);
}

TEST_F(KvServiceTest, TlsWithSelfSignedCertificate) {
  if (system("command -v openssl >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "openssl CLI not installed (scripts/setup.sh installs it)";
  }
  const std::string cert = dir_.path() + "/cert.pem";
  const std::string key = dir_.path() + "/key.pem";
  const std::string cmd = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
      key, " -out ", cert, " >/dev/null 2>&1");
  ASSERT_EQ(system(cmd.c_str()), 0);
  auto server = StartServer({"--tls-cert", cert, "--tls-key", key});
  ASSERT_NE(server, nullptr);
  std::ifstream in(cert);
  std::string pem((std::istreambuf_iterator<char>(in)),
                  std::istreambuf_iterator<char>());
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = pem;
  auto channel = grpc::CreateCustomChannel(
      server->address(), grpc::SslCredentials(ssl), TestChannelArgs());
  auto stub = v1::KVCache::NewStub(channel);
  const v1::Namespace ns = TestNamespace();
  v1::PutBlocksRequest req;
  *req.mutable_namespace_() = ns;
  v1::Block* b = req.add_blocks();
  b->set_hash(Hash(0));
  b->set_data(MakeBlock(3));
  v1::PutBlocksResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = stub->PutBlocks(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.stored(), 1u);
  // A plaintext client cannot talk to the TLS port.
  Client plain(*server);
  v1::StatsResponse st;
  auto pctx = plain.Ctx();
  pctx->set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(5));
  EXPECT_FALSE(plain.stub->Stats(pctx.get(), v1::StatsRequest(), &st).ok());
}

TEST_F(KvServiceTest, BadStartupConfigFailsFast) {
  auto bad = ServerProcess::Start({"--durability", "sometimes"});
  EXPECT_FALSE(bad.ok());
  auto missing =
      ServerProcess::Start({"--tokens-file", dir_.path() + "/no-such-file"});
  EXPECT_FALSE(missing.ok());
  const std::string config = dir_.WriteFile("typo.yaml", "memory_byts: 1GiB\n");
  auto typo = ServerProcess::Start({"--config", config});
  EXPECT_FALSE(typo.ok());
}

}  // namespace
}  // namespace vqkv::testing
