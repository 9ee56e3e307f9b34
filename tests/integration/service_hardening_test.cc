// Hardening of the KVCache service against in-process servers
// (service/server.h): resource bounds of GetBlocks and PutBlocksStream,
// malformed requests, auth before the request body, what Stats shows a
// tenant, admission control and config edge cases. Each test pins one fix.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/block.h"
#include "service/config.h"
#include "service/server.h"
#include "storage/keys.h"
#include "tests/integration/server_process.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::testing {
namespace {

constexpr KvLayout kLayout{2, 2, 8};
constexpr int kBlockTokens = 16;

v1::Namespace TestNamespace(const std::string& model = "hardening-model") {
  v1::Namespace ns;
  ns.set_model_id(model);
  ns.set_weight_revision("r1");
  ns.set_codec("fp16");
  ns.set_codec_id(static_cast<uint32_t>(CodecId::kFp16));
  ns.set_block_tokens(kBlockTokens);
  ns.set_layers(kLayout.layers);
  ns.set_kv_heads(kLayout.kv_heads);
  ns.set_head_dim(kLayout.head_dim);
  ns.set_dtype(v1::DTYPE_FLOAT16);
  return ns;
}

// A valid fp16 block (about 2 KiB) whose content depends on `seed`.
std::string MakeBlock(uint64_t seed) {
  static const Codec* codec = Fp16Codec::Create(kLayout)->release();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  const size_t n =
      static_cast<size_t>(kBlockTokens) * codec->layout().ElementsPerToken();
  std::vector<float> k(n), v(n);
  for (float& x : k) x = dist(rng);
  for (float& x : v) x = dist(rng);
  auto block =
      EncodeBlock(*codec, k.data(), v.data(), kBlockTokens, BlockOptions{});
  EXPECT_TRUE(block.ok()) << block.status();
  return std::string(block->begin(), block->end());
}

std::string Hash(uint64_t i) {
  return storage::BlockHash::FromPair(0x4a4d, i).ToString();
}

service::ServerConfig BaseConfig(const TempDir& dir) {
  service::ServerConfig config;
  config.listen = "127.0.0.1:0";
  config.store.data_dir = dir.path() + "/data";
  config.metrics_listen = "127.0.0.1:0";
  return config;
}

std::unique_ptr<service::Server> StartServer(
    const service::ServerConfig& config) {
  auto server = service::Server::Start(config);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

std::shared_ptr<grpc::Channel> ChannelTo(const service::Server& server) {
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", server.port()),
                                   grpc::InsecureChannelCredentials(),
                                   TestChannelArgs());
}

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = "") {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(60));
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  return ctx;
}

// The value of one sample of the server's /metrics text, e.g.
// MetricValue(server, "vqkv_promotions_total") or with labels
// "vqkv_block_hits_total{op=\"get\"}"; -1 when absent.
double MetricValue(const service::Server& server, const std::string& sample) {
  const std::string text = server.RenderMetrics();
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, sample)) continue;
    if (!absl::ConsumePrefix(&line, " ")) continue;
    double v = 0;
    if (absl::SimpleAtod(line, &v)) return v;
  }
  return -1;
}

// Puts blocks [first, first + n) (one message).
void PutRange(v1::KVCache::Stub* stub, const v1::Namespace& ns, uint64_t first,
              uint64_t n, const std::string& token = "") {
  v1::PutBlocksRequest req;
  *req.mutable_namespace_() = ns;
  for (uint64_t i = first; i < first + n; ++i) {
    v1::Block* b = req.add_blocks();
    b->set_hash(Hash(i));
    b->set_data(MakeBlock(i));
  }
  v1::PutBlocksResponse resp;
  const grpc::Status s = stub->PutBlocks(Ctx(token).get(), req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.stored(), n);
}

// ---------------------------------------------------------------------------
// 1. Unary GetBlocks stops reading at the message budget.

TEST(ServiceHardeningTest, GetBlocksStopsReadingAtTheMessageBudget) {
  TempDir dir;
  service::ServerConfig config = BaseConfig(dir);
  config.service.max_message_bytes = 64 << 10;  // room for ~28 blocks
  const v1::Namespace ns = TestNamespace();
  constexpr int kBlocks = 200;
  {
    auto server = StartServer(config);
    ASSERT_NE(server, nullptr);
    auto stub = v1::KVCache::NewStub(ChannelTo(*server));
    for (int i = 0; i < kBlocks; i += 20) PutRange(stub.get(), ns, i, 20);
    ASSERT_TRUE(server->Shutdown(absl::Seconds(5)).ok());  // spills to disk
  }
  // Restarted: every block is on disk only.
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  v1::GetBlocksRequest get;
  *get.mutable_namespace_() = ns;
  for (int i = 0; i < kBlocks; ++i) get.add_hashes(Hash(i));
  v1::GetBlocksResponse got;
  const grpc::Status s = stub->GetBlocks(Ctx().get(), get, &got);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(got.blocks_size(), kBlocks);
  const uint32_t found = got.found();
  EXPECT_GT(found, 10u);
  EXPECT_LT(found, 40u);
  for (int i = 0; i < kBlocks; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(got.blocks(i).index(), static_cast<uint32_t>(i));
    if (static_cast<uint32_t>(i) < found) {
      EXPECT_EQ(got.blocks(i).code(), 0);
      EXPECT_TRUE(got.blocks(i).data() == MakeBlock(i));
    } else {
      EXPECT_EQ(got.blocks(i).code(),
                static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
      EXPECT_TRUE(got.blocks(i).data().empty());
    }
  }
  // Only what was sent (plus at most the one block that did not fit) was
  // read from disk and promoted into memory; only what was sent is a hit.
  EXPECT_LE(MetricValue(*server, "vqkv_promotions_total"), found + 1);
  EXPECT_LE(MetricValue(*server, "vqkv_store_hits_total{tier=\"disk\"}"),
            found + 1);
  EXPECT_EQ(MetricValue(*server, "vqkv_block_hits_total{op=\"get\"}"), found);
  EXPECT_EQ(MetricValue(*server, "vqkv_block_misses_total{op=\"get\"}"), 0);
  v1::StatsResponse st;
  ASSERT_TRUE(stub->Stats(Ctx().get(), v1::StatsRequest(), &st).ok());
  EXPECT_LE(st.block_hits(), found + 1);
}

// ---------------------------------------------------------------------------
// 2. PutBlocksStream: a per-stream block limit, checked before a message is
// worked on, and one response that always fits a message.

// Sends `total` blocks through one PutBlocksStream, `per_message` per
// message, cycling through the hashes of blocks [0, distinct); returns the
// call's status and fills *resp.
grpc::Status PutStream(v1::KVCache::Stub* stub, const v1::Namespace& ns,
                       int total, int per_message, int distinct,
                       v1::PutBlocksResponse* resp) {
  std::vector<std::string> blocks;
  for (int i = 0; i < distinct; ++i) blocks.push_back(MakeBlock(i));
  auto ctx = Ctx();
  auto writer = stub->PutBlocksStream(ctx.get(), resp);
  int sent = 0;
  while (sent < total) {
    v1::PutBlocksRequest req;
    if (sent == 0) *req.mutable_namespace_() = ns;
    for (int j = 0; j < per_message && sent < total; ++j, ++sent) {
      v1::Block* b = req.add_blocks();
      b->set_hash(Hash(sent % distinct));
      b->set_data(blocks[sent % distinct]);
    }
    if (!writer->Write(req)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

TEST(ServiceHardeningTest, PutBlocksStreamBlockLimitAtAndPastIt) {
  TempDir dir;
  service::ServerConfig config = BaseConfig(dir);
  config.service.max_stream_blocks = 100;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  const v1::Namespace ns = TestNamespace();

  v1::PutBlocksResponse at;
  grpc::Status s = PutStream(stub.get(), ns, 100, 10, 10, &at);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(at.results_size(), 100);
  EXPECT_EQ(at.stored(), 10u);

  v1::PutBlocksResponse past;
  s = PutStream(stub.get(), ns, 101, 10, 10, &past);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(
      absl::StrContains(s.error_message(), "at most 100 blocks per stream"))
      << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "message 10"))
      << s.error_message();
}

TEST(ServiceHardeningTest, PutBlocksStreamResponseFitsTheMessageLimit) {
  // A long, legitimate stream of blocks the server already holds: every
  // result is ALREADY_EXISTS. With a 64 KiB message limit the stream takes
  // up to 8192 blocks, and its response still fits one message.
  TempDir dir;
  service::ServerConfig config = BaseConfig(dir);
  config.service.max_message_bytes = 64 << 10;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  const v1::Namespace ns = TestNamespace();
  PutRange(stub.get(), ns, 0, 20);

  constexpr int kLimit = (64 << 10) / 8;
  v1::PutBlocksResponse resp;
  grpc::Status s = PutStream(stub.get(), ns, kLimit, 20, 20, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.results_size(), kLimit);
  EXPECT_EQ(resp.stored(), 0u);
  for (const v1::PutResult& r : resp.results()) {
    ASSERT_EQ(r.code(), static_cast<int>(grpc::StatusCode::ALREADY_EXISTS));
  }
  EXPECT_LT(resp.ByteSizeLong(), size_t{64} << 10);

  s = PutStream(stub.get(), ns, kLimit + 1, 20, 20, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(
      absl::StrContains(s.error_message(), absl::StrCat("at most ", kLimit)))
      << s.error_message();
}

// ---------------------------------------------------------------------------
// 3. A request that is not a valid protobuf message: INVALID_ARGUMENT naming
// the expected type (not gRPC's UNIMPLEMENTED with an empty message).

// Bytes that no protobuf parser accepts: a field tag followed by a varint
// that never ends.
std::string Garbage() { return std::string("\x0a\xff\xff\xff\xff", 5); }

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// Sends `messages` as the raw request messages of `method` (any kind of
// RPC, through the generic bidi-streaming call), reads whatever comes back
// and returns the final status.
grpc::Status RawCall(grpc::Channel* channel, const std::string& method,
                     const std::vector<std::string>& messages) {
  grpc::GenericStub stub(channel->shared_from_this());
  grpc::CompletionQueue cq;
  auto ctx = Ctx();
  auto call = stub.PrepareCall(ctx.get(), method, &cq);
  auto step = [&cq] {
    void* tag = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    return ok;
  };
  call->StartCall(nullptr);
  step();
  for (const std::string& m : messages) {
    call->Write(ToBuffer(m), nullptr);
    if (!step()) break;
  }
  call->WritesDone(nullptr);
  step();
  grpc::ByteBuffer out;
  while (true) {
    call->Read(&out, nullptr);
    if (!step()) break;
  }
  grpc::Status status;
  call->Finish(&status, nullptr);
  step();
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

TEST(ServiceHardeningTest, GarbageRequestIsInvalidArgumentNamingTheType) {
  TempDir dir;
  auto server = StartServer(BaseConfig(dir));
  ASSERT_NE(server, nullptr);
  auto channel = ChannelTo(*server);
  const std::vector<std::pair<std::string, std::string>> methods = {
      {"Lookup", "vqkv.v1.LookupRequest"},
      {"PutBlocks", "vqkv.v1.PutBlocksRequest"},
      {"GetBlocks", "vqkv.v1.GetBlocksRequest"},
      {"PutBlocksStream", "vqkv.v1.PutBlocksRequest"},
      {"GetBlocksStream", "vqkv.v1.GetBlocksRequest"},
      {"PutCodebooks", "vqkv.v1.PutCodebooksRequest"},
      {"GetCodebooks", "vqkv.v1.GetCodebooksRequest"},
      {"PutCodebookStream", "vqkv.v1.CodebookChunk"},
      {"GetCodebookStream", "vqkv.v1.GetCodebookStreamRequest"},
      {"Delete", "vqkv.v1.DeleteRequest"},
      {"Stats", "vqkv.v1.StatsRequest"},
      {"PutRendezvous", "vqkv.v1.PutRendezvousRequest"},
      {"GetRendezvous", "vqkv.v1.GetRendezvousRequest"},
  };
  for (const auto& [method, type] : methods) {
    SCOPED_TRACE(method);
    const grpc::Status s =
        RawCall(channel.get(), "/vqkv.v1.KVCache/" + method, {Garbage()});
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(), type))
        << s.error_message();
  }
  // A valid first message, then garbage: the stream names the bad message
  // instead of taking it for the end of the stream.
  v1::PutBlocksRequest first;
  *first.mutable_namespace_() = TestNamespace();
  v1::Block* b = first.add_blocks();
  b->set_hash(Hash(1));
  b->set_data(MakeBlock(1));
  const grpc::Status s =
      RawCall(channel.get(), "/vqkv.v1.KVCache/PutBlocksStream",
              {first.SerializeAsString(), Garbage()});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "message 1:"))
      << s.error_message();
  // A well-formed request through the same raw path still works.
  v1::StatsRequest stats;
  EXPECT_TRUE(RawCall(channel.get(), "/vqkv.v1.KVCache/Stats",
                      {stats.SerializeAsString()})
                  .ok());
}

}  // namespace
}  // namespace vqkv::testing
