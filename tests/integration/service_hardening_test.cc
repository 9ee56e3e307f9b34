// Hardening of the KVCache service against in-process servers
// (service/server.h): resource bounds of GetBlocks and PutBlocksStream,
// malformed requests, auth before the request body, what Stats shows a
// tenant, admission control and config edge cases. Each test pins one fix.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/block.h"
#include "kernels/codebook_set.h"
#include "kernels/vq_codec.h"
#include "service/config.h"
#include "service/server.h"
#include "service/validate.h"
#include "storage/fault_injection_fs.h"
#include "storage/keys.h"
#include "tests/integration/server_process.h"
#include "tests/integration/test_blocks.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::testing {
namespace {

constexpr KvLayout kLayout{2, 2, 8};
constexpr int kBlockTokens = 16;

v1::Namespace TestNamespace(const std::string& model = "hardening-model") {
  return Fp16Namespace(model, kLayout, kBlockTokens);
}

// A valid fp16 block (about 2 KiB) whose content depends on `seed`.
std::string MakeBlock(uint64_t seed) {
  return RandomFp16Block(kLayout, kBlockTokens, seed);
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

// ---------------------------------------------------------------------------
// 4. Auth: calls without a valid token are refused before a handler runs;
// plaintext tokens on a public address are warned about.

constexpr char kTokens[] =
    "alice-token-123 alice\nbob-token-4567 bob\nops-token-8910 ops\n";

TEST(ServiceHardeningTest, UnauthenticatedCallIsRefusedBeforeItsHandler) {
  TempDir dir;
  service::ServerConfig config = BaseConfig(dir);
  config.tokens_file = dir.WriteFile("tokens", kTokens);
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));

  // A 48 MiB PutBlocks without a token (and one with a wrong token).
  v1::PutBlocksRequest big;
  *big.mutable_namespace_() = TestNamespace();
  for (int i = 0; i < 24; ++i) {
    v1::Block* b = big.add_blocks();
    b->set_hash(Hash(i));
    b->set_data(std::string(size_t{2} << 20, static_cast<char>('a' + i)));
  }
  for (const std::string token : {"", "not-a-token-0000"}) {
    SCOPED_TRACE(token);
    v1::PutBlocksResponse resp;
    const auto start = std::chrono::steady_clock::now();
    const grpc::Status s = stub->PutBlocks(Ctx(token).get(), big, &resp);
    const double ms = std::chrono::duration<double, std::milli>(
                          std::chrono::steady_clock::now() - start)
                          .count();
    std::printf(
        "unauthenticated 48 MiB PutBlocks (token '%s'): %s in %.1f ms\n",
        token.c_str(), s.error_message().c_str(), ms);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // No handler ran for them (it would have counted the call per method):
  // the server's credentials refused them from their metadata.
  EXPECT_EQ(MetricValue(*server, "vqkv_auth_failures_total"), 2);
  EXPECT_FALSE(
      absl::StrContains(server->RenderMetrics(),
                        "method=\"PutBlocks\",code=\"UNAUTHENTICATED\""));
  // A valid token goes through, to the right tenant.
  v1::StatsResponse st;
  ASSERT_TRUE(
      stub->Stats(Ctx("bob-token-4567").get(), v1::StatsRequest(), &st).ok());
  EXPECT_EQ(st.tenant(), "bob");
}

TEST(ServiceHardeningTest, PlaintextTokensOnAPublicAddressAreWarnedAbout) {
  TempDir dir;
  service::ServerConfig config = BaseConfig(dir);
  config.tokens_file = dir.WriteFile("tokens", kTokens);
  config.metrics_listen.clear();
  config.listen = "0.0.0.0:0";
  std::unique_ptr<service::Server> server;
  std::string log = CaptureStderr(dir.path() + "/public.txt",
                                  [&] { server = StartServer(config); });
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(absl::StrContains(log, "PLAINTEXT")) << log;
  server.reset();

  config.listen = "127.0.0.1:0";  // loopback: no warning
  log = CaptureStderr(dir.path() + "/loopback.txt",
                      [&] { server = StartServer(config); });
  ASSERT_NE(server, nullptr);
  EXPECT_FALSE(absl::StrContains(log, "PLAINTEXT")) << log;
  server.reset();

  // Auth off on a public address: refused unless explicitly allowed.
  config.tokens_file.clear();
  config.listen = "0.0.0.0:0";
  auto refused = service::Server::Start(config);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  config.allow_insecure_public = true;
  EXPECT_NE(StartServer(config), nullptr);
}

TEST(ServiceHardeningTest, TlsWithTokensAuthenticatesThroughTheCredentials) {
  // The TLS credentials are built on gRPC's C API too
  // (service/auth_credentials.cc): the token check runs there as well.
  if (system("command -v openssl >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "openssl CLI not installed (scripts/setup.sh installs it)";
  }
  TempDir dir;
  const std::string cert = dir.path() + "/cert.pem";
  const std::string key = dir.path() + "/key.pem";
  const std::string cmd = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
      key, " -out ", cert, " >/dev/null 2>&1");
  ASSERT_EQ(system(cmd.c_str()), 0);
  service::ServerConfig config = BaseConfig(dir);
  config.tokens_file = dir.WriteFile("tokens", kTokens);
  config.tls_cert = cert;
  config.tls_key = key;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  std::ifstream in(cert);
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(in),
                            std::istreambuf_iterator<char>());
  auto stub = v1::KVCache::NewStub(
      grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", server->port()),
                                grpc::SslCredentials(ssl), TestChannelArgs()));
  v1::StatsResponse st;
  ASSERT_TRUE(
      stub->Stats(Ctx("alice-token-123").get(), v1::StatsRequest(), &st).ok());
  EXPECT_EQ(st.tenant(), "alice");
  EXPECT_EQ(stub->Stats(Ctx().get(), v1::StatsRequest(), &st).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(MetricValue(*server, "vqkv_auth_failures_total"), 1);
}

// ---------------------------------------------------------------------------
// 5. Stats: a tenant sees its own usage and hits, never another tenant's
// activity or the text of a disk error (which names a namespace and block).

TEST(ServiceHardeningTest, StatsShowATenantOnlyItsOwn) {
  TempDir dir;
  auto fs = std::make_shared<storage::FaultInjectionFileSystem>();
  service::ServerConfig config = BaseConfig(dir);
  config.tokens_file = dir.WriteFile("tokens", kTokens);
  config.service.admin_tenant = "ops";
  config.store.write_policy = storage::WritePolicy::kWriteThrough;
  config.store.file_system = fs;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  const v1::Namespace ns = TestNamespace();

  // alice stores a block while the disk fails: the fault's text names her
  // namespace and block.
  fs->SetFailWrites(true);
  PutRange(stub.get(), ns, 7, 1, "alice-token-123");
  fs->SetFailWrites(false);
  const std::string key =
      storage::BlockKey{service::ComputeNamespaceId("alice", ns),
                        storage::BlockHash::FromPair(0x4a4d, 7)}
          .DebugString();
  // alice reads it (1 hit); bob asks for two blocks he does not have.
  v1::GetBlocksRequest get;
  *get.mutable_namespace_() = ns;
  get.add_hashes(Hash(7));
  v1::GetBlocksResponse got;
  ASSERT_TRUE(stub->GetBlocks(Ctx("alice-token-123").get(), get, &got).ok());
  ASSERT_EQ(got.found(), 1u);
  get.add_hashes(Hash(8));
  ASSERT_TRUE(stub->GetBlocks(Ctx("bob-token-4567").get(), get, &got).ok());
  ASSERT_EQ(got.found(), 0u);

  auto stats = [&](const std::string& token) {
    v1::StatsResponse st;
    EXPECT_TRUE(stub->Stats(Ctx(token).get(), v1::StatsRequest(), &st).ok());
    return st;
  };
  const v1::StatsResponse admin = stats("ops-token-8910");
  EXPECT_TRUE(absl::StrContains(admin.last_fault(), key)) << admin.last_fault();
  EXPECT_GE(admin.tiers(0).blocks(), 1u);

  const v1::StatsResponse bob = stats("bob-token-4567");
  EXPECT_EQ(bob.tenant(), "bob");
  EXPECT_GE(bob.storage_faults(), 1u);
  EXPECT_FALSE(absl::StrContains(bob.last_fault(), key)) << bob.last_fault();
  EXPECT_FALSE(absl::StrContains(
      bob.last_fault(), service::ComputeNamespaceId("alice", ns).ToHex()));
  EXPECT_FALSE(bob.last_fault().empty());  // says that the disk failed
  EXPECT_EQ(bob.block_hits(), 0u);
  EXPECT_EQ(bob.block_misses(), 2u);
  EXPECT_EQ(bob.tenant_bytes(), 0u);
  for (const v1::TierStats& t : bob.tiers()) {
    EXPECT_EQ(t.blocks(), 0u) << t.name();
    EXPECT_EQ(t.bytes(), 0u) << t.name();
    EXPECT_GT(t.capacity_bytes(), 0u) << t.name();
  }
  const v1::StatsResponse alice = stats("alice-token-123");
  EXPECT_EQ(alice.block_hits(), 1u);
  EXPECT_EQ(alice.block_misses(), 0u);
  EXPECT_GT(alice.tenant_bytes(), 0u);
  EXPECT_FALSE(absl::StrContains(alice.last_fault(), key));
}

// ---------------------------------------------------------------------------
// 6. Admission control: a full work queue refuses new calls; the gRPC
// stream limit is applied.

// A file system whose WAL syncs wait while the gate is closed, so a sync
// put holds its storage worker for as long as the test wants.
class GatedFileSystem : public storage::FaultInjectionFileSystem {
 public:
  void Close() {
    absl::MutexLock lock(&mu_);
    open_ = false;
  }
  void Open() {
    absl::MutexLock lock(&mu_);
    open_ = true;
  }
  // Waits until `n` syncs are held at the gate.
  bool WaitForWaiters(int n) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n] {
      mu_.AssertHeld();
      return waiting_ >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(30));
  }

  rocksdb::IOStatus NewWritableFile(
      const std::string& fname, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = storage::FaultInjectionFileSystem::NewWritableFile(
        fname, options, result, dbg);
    if (s.ok() && absl::EndsWith(fname, ".log")) {
      *result = std::make_unique<GatedFile>(std::move(*result), this);
    }
    return s;
  }

 private:
  class GatedFile : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    GatedFile(std::unique_ptr<rocksdb::FSWritableFile> file,
              GatedFileSystem* fs)
        : FSWritableFileOwnerWrapper(std::move(file)), fs_(fs) {}
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
      fs_->Pass();
      return target()->Sync(options, dbg);
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                            rocksdb::IODebugContext* dbg) override {
      fs_->Pass();
      return target()->Fsync(options, dbg);
    }

   private:
    GatedFileSystem* const fs_;
  };

  void Pass() {
    absl::MutexLock lock(&mu_);
    ++waiting_;
    mu_.Await(absl::Condition(&open_));
    --waiting_;
  }

  absl::Mutex mu_;
  bool open_ = true;
  int waiting_ = 0;
};

TEST(ServiceHardeningTest, FullWorkQueueRefusesNewCalls) {
  TempDir dir;
  auto fs = std::make_shared<GatedFileSystem>();
  service::ServerConfig config = BaseConfig(dir);
  config.store.durability = storage::Durability::kSync;  // puts on a worker
  config.store.file_system = fs;
  config.service.workers = 1;
  config.service.max_queued_work = 2;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto channel = ChannelTo(*server);
  const v1::Namespace ns = TestNamespace();
  auto put = [&](uint64_t i) {
    auto stub = v1::KVCache::NewStub(channel);
    v1::PutBlocksRequest req;
    *req.mutable_namespace_() = ns;
    v1::Block* b = req.add_blocks();
    b->set_hash(Hash(i));
    b->set_data(MakeBlock(i));
    v1::PutBlocksResponse resp;
    return stub->PutBlocks(Ctx().get(), req, &resp);
  };
  ASSERT_TRUE(put(100).ok());  // the namespace exists, the WAL is open

  fs->Close();
  std::vector<grpc::Status> results(10);
  std::vector<std::thread> threads;
  threads.emplace_back([&] { results[0] = put(0); });
  ASSERT_TRUE(fs->WaitForWaiters(1));  // the one worker is held
  absl::Mutex mu;
  int done = 0;
  for (int i = 1; i < 10; ++i) {
    threads.emplace_back([&, i] {
      results[i] = put(i);
      absl::MutexLock lock(&mu);
      ++done;
    });
  }
  {
    // Two calls wait in the queue; the other seven are refused at once.
    absl::MutexLock lock(&mu);
    auto seven_done = [&done] { return done >= 7; };
    EXPECT_TRUE(
        mu.AwaitWithTimeout(absl::Condition(&seven_done), absl::Seconds(30)));
  }
  fs->Open();
  for (std::thread& t : threads) t.join();
  int ok = 0, refused = 0;
  for (const grpc::Status& s : results) {
    if (s.ok()) {
      ++ok;
    } else {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
      EXPECT_TRUE(absl::StrContains(s.error_message(), "overloaded"))
          << s.error_message();
      ++refused;
    }
  }
  EXPECT_EQ(ok, 3);
  EXPECT_EQ(refused, 7);
}

TEST(ServiceHardeningTest, MaxConcurrentStreamsIsApplied) {
  TempDir dir;
  service::ServerConfig config = BaseConfig(dir);
  config.max_concurrent_streams = 1;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  v1::StatsResponse st;
  ASSERT_TRUE(stub->Stats(Ctx().get(), v1::StatsRequest(), &st).ok());
  // One open stream takes the connection's only slot: another call on the
  // same connection waits (here past its deadline) until it closes.
  v1::PutBlocksResponse resp;
  auto ctx = Ctx();
  auto writer = stub->PutBlocksStream(ctx.get(), &resp);
  v1::PutBlocksRequest req;
  *req.mutable_namespace_() = TestNamespace();
  v1::Block* b = req.add_blocks();
  b->set_hash(Hash(1));
  b->set_data(MakeBlock(1));
  ASSERT_TRUE(writer->Write(req));
  grpc::ClientContext short_ctx;
  short_ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(500));
  EXPECT_EQ(stub->Stats(&short_ctx, v1::StatsRequest(), &st).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  writer->WritesDone();
  ASSERT_TRUE(writer->Finish().ok());
  EXPECT_TRUE(stub->Stats(Ctx().get(), v1::StatsRequest(), &st).ok());
}

// ---------------------------------------------------------------------------
// 7. disk_bytes 0: an unlimited disk tier.

TEST(ServiceHardeningTest, DiskBytesZeroIsAnUnlimitedDiskTier) {
  TempDir dir;
  service::ServerConfig config = BaseConfig(dir);
  config.store.disk_bytes = 0;
  config.store.write_policy = storage::WritePolicy::kWriteThrough;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  PutRange(stub.get(), TestNamespace(), 0, 10);
  v1::StatsResponse st;
  ASSERT_TRUE(stub->Stats(Ctx().get(), v1::StatsRequest(), &st).ok());
  ASSERT_EQ(st.tiers_size(), 2);
  EXPECT_EQ(st.tiers(1).name(), "disk");
  EXPECT_EQ(st.tiers(1).capacity_bytes(), 0u);  // 0 = unlimited
  EXPECT_EQ(st.tiers(1).blocks(), 10u);
}

// ---------------------------------------------------------------------------
// Codebook sets count against the registering tenant's own quota, also when
// another tenant registered the same set first.

std::string TinyCodebookFile(uint64_t seed) {
  VqConfig cfg;
  cfg.key_stages = 2;
  cfg.key_bits = 4;
  cfg.value_stages = 1;
  cfg.value_bits = 4;
  cfg.training.kmeans_iterations = 1;
  auto codec = VqCodec::Create(kLayout, cfg);
  EXPECT_TRUE(codec.ok()) << codec.status();
  const int tokens = 64;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> k(tokens * kLayout.ElementsPerToken()), v(k.size());
  for (float& x : k) x = dist(rng);
  for (float& x : v) x = dist(rng);
  EXPECT_TRUE((*codec)->Fit(k.data(), v.data(), tokens, FitOptions{}).ok());
  auto file = (*codec)->codebooks().Serialize();
  EXPECT_TRUE(file.ok()) << file.status();
  return *file;
}

TEST(ServiceHardeningTest, CodebookQuotaIsPerTenant) {
  TempDir dir;
  service::ServerConfig config = BaseConfig(dir);
  config.tokens_file = dir.WriteFile("tokens", kTokens);
  config.store.codebook_quota.max_sets = 1;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  const std::string a = TinyCodebookFile(1), b = TinyCodebookFile(2);
  auto put = [&](const std::string& token, const std::string& file) {
    v1::PutCodebooksRequest req;
    v1::Codebook* cb = req.add_codebooks();
    auto set = CodebookSet::Deserialize(file);
    EXPECT_TRUE(set.ok()) << set.status();
    cb->set_hash(*set->Hash());
    cb->set_data(file);
    v1::PutCodebooksResponse resp;
    const grpc::Status s = stub->PutCodebooks(Ctx(token).get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.results_size() == 1 ? resp.results(0).code() : -1;
  };
  const int kOk = 0,
            kExists = static_cast<int>(grpc::StatusCode::ALREADY_EXISTS),
            kExhausted = static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(put("alice-token-123", a), kOk);
  EXPECT_EQ(put("alice-token-123", a), kExists);     // her own, again
  EXPECT_EQ(put("alice-token-123", b), kExhausted);  // her one set is used
  EXPECT_EQ(put("bob-token-4567", b), kOk);          // bob's own quota
  EXPECT_EQ(put("bob-token-4567", a), kExhausted);   // a counts for bob too
  EXPECT_EQ(put("ops-token-8910", a), kExists);      // registered, now ops' too
}

// The namespace bound of a tenant, as the server's flag sets it: at the
// bound a tenant still writes to the namespaces it owns, one past it is
// refused (its namespaces all hold blocks, so none can be reclaimed), and
// another tenant's bound is its own.
TEST(ServiceHardeningTest, NamespaceLimitIsPerTenant) {
  TempDir dir;
  service::ServerConfig config = BaseConfig(dir);
  config.tokens_file = dir.WriteFile("tokens", kTokens);
  config.store.max_namespaces_per_tenant = 2;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  auto put = [&](const std::string& token, const std::string& model) {
    v1::PutBlocksRequest req;
    *req.mutable_namespace_() = TestNamespace(model);
    v1::Block* b = req.add_blocks();
    b->set_hash(Hash(1));
    b->set_data(MakeBlock(1));
    v1::PutBlocksResponse resp;
    const grpc::Status s = stub->PutBlocks(Ctx(token).get(), req, &resp);
    return s.ok() ? 0 : static_cast<int>(s.error_code());
  };
  const int kExhausted = static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(put("alice-token-123", "m1"), 0);
  EXPECT_EQ(put("alice-token-123", "m2"), 0);           // at the bound
  EXPECT_EQ(put("alice-token-123", "m3"), kExhausted);  // one past it
  EXPECT_EQ(put("alice-token-123", "m1"), 0);  // owned ones still take puts
  EXPECT_EQ(put("bob-token-4567", "m3"), 0);   // bob's own bound
  EXPECT_EQ(put("bob-token-4567", "m4"), 0);
  EXPECT_EQ(put("bob-token-4567", "m5"), kExhausted);
}

// The per-request counts (service/validate.h), each at its limit and one
// past it: hashes per Lookup/GetBlocks, blocks per PutBlocks message,
// codebook sets per PutCodebooks. Past the limit the call fails with
// INVALID_ARGUMENT naming the limit, and nothing of it is stored.
TEST(ServiceHardeningTest, RequestCountLimitsAtAndPastThem) {
  TempDir dir;
  service::ServerConfig config = BaseConfig(dir);
  config.store.codebook_quota = storage::CodebookQuota{0, 0};  // unlimited
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  const int kInvalid = static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT);
  auto code_of = [](const grpc::Status& s) {
    return static_cast<int>(s.error_code());
  };

  // Hashes: 2^20 per Lookup (16 MiB of hashes) and GetBlocks.
  for (const size_t n :
       {service::kMaxHashesPerRequest, service::kMaxHashesPerRequest + 1}) {
    v1::LookupRequest req;
    *req.mutable_namespace_() = TestNamespace();
    for (size_t i = 0; i < n; ++i) req.add_hashes(Hash(i));
    v1::LookupResponse resp;
    const grpc::Status s = stub->Lookup(Ctx().get(), req, &resp);
    if (n == service::kMaxHashesPerRequest) {
      EXPECT_TRUE(s.ok()) << s.error_message();
      EXPECT_EQ(resp.present_size(), static_cast<int>(n));
    } else {
      EXPECT_EQ(code_of(s), kInvalid);
      EXPECT_TRUE(absl::StrContains(s.error_message(), "at most 1048576"))
          << s.error_message();
    }
  }
  {
    v1::GetBlocksRequest req;
    *req.mutable_namespace_() = TestNamespace();
    for (size_t i = 0; i <= service::kMaxHashesPerRequest; ++i) {
      req.add_hashes(Hash(i));
    }
    v1::GetBlocksResponse resp;
    EXPECT_EQ(code_of(stub->GetBlocks(Ctx().get(), req, &resp)), kInvalid);
  }

  // Blocks: 2^16 per PutBlocks message, small ones (a 1-layer, 1-head,
  // 4-wide layout) so that the limit, not the message size, is what binds.
  constexpr KvLayout kSmall{1, 1, 4};
  const v1::Namespace small_ns =
      Fp16Namespace("count-limits", kSmall, kBlockTokens);
  const std::string block = RandomFp16Block(kSmall, kBlockTokens, 1);
  for (const size_t n :
       {service::kMaxBlocksPerMessage + 1, service::kMaxBlocksPerMessage}) {
    v1::PutBlocksRequest req;
    *req.mutable_namespace_() = small_ns;
    for (size_t i = 0; i < n; ++i) {
      v1::Block* b = req.add_blocks();
      b->set_hash(Hash(i));
      b->set_data(block);
    }
    v1::PutBlocksResponse resp;
    const grpc::Status s = stub->PutBlocks(Ctx().get(), req, &resp);
    if (n == service::kMaxBlocksPerMessage) {
      EXPECT_TRUE(s.ok()) << s.error_message();
      EXPECT_EQ(resp.stored(), n);  // none was stored by the refused one
    } else {
      EXPECT_EQ(code_of(s), kInvalid);
      EXPECT_TRUE(absl::StrContains(s.error_message(), "at most 65536 blocks"))
          << s.error_message();
    }
  }

  // Codebook sets: 64 per PutCodebooks (one set, repeated: the count is
  // checked before the sets are).
  const std::string file = TinyCodebookFile(3);
  auto set = CodebookSet::Deserialize(file);
  ASSERT_TRUE(set.ok()) << set.status();
  for (const size_t n : {service::kMaxCodebooksPerRequest + 1,
                         service::kMaxCodebooksPerRequest}) {
    v1::PutCodebooksRequest req;
    for (size_t i = 0; i < n; ++i) {
      v1::Codebook* cb = req.add_codebooks();
      cb->set_hash(*set->Hash());
      cb->set_data(file);
    }
    v1::PutCodebooksResponse resp;
    const grpc::Status s = stub->PutCodebooks(Ctx().get(), req, &resp);
    if (n == service::kMaxCodebooksPerRequest) {
      EXPECT_TRUE(s.ok()) << s.error_message();
      ASSERT_EQ(resp.results_size(), static_cast<int>(n));
      EXPECT_EQ(resp.results(0).code(), 0);  // the refused call stored none
    } else {
      EXPECT_EQ(code_of(s), kInvalid);
      EXPECT_TRUE(absl::StrContains(s.error_message(), "at most 64"))
          << s.error_message();
    }
  }
}

// ---------------------------------------------------------------------------
// 8. Sync durability: a duplicate put is not acknowledged (ALREADY_EXISTS)
// before the block it duplicates is durable. Before: the service looked the
// blocks up first and answered ALREADY_EXISTS for a block another put had
// only in memory, its WAL sync still pending; when that sync failed (or the
// server was killed) the "already stored" block was gone.

TEST(ServiceHardeningTest, SyncDuplicatePutWaitsForTheFirstToBeDurable) {
  TempDir dir;
  auto fs = std::make_shared<storage::FaultInjectionFileSystem>();
  service::ServerConfig config = BaseConfig(dir);
  config.store.durability = storage::Durability::kSync;
  config.store.file_system = fs;
  config.service.workers = 4;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  const v1::Namespace ns = TestNamespace();
  PutRange(stub.get(), ns, 0, 1);  // claims the namespace

  struct Outcome {
    grpc::Status status;
    int32_t code = -1;
    std::atomic<bool> done{false};
  };
  auto put = [&](Outcome* out) {
    v1::PutBlocksRequest req;
    *req.mutable_namespace_() = ns;
    v1::Block* b = req.add_blocks();
    b->set_hash(Hash(1));
    b->set_data(MakeBlock(1));
    v1::PutBlocksResponse resp;
    out->status = stub->PutBlocks(Ctx().get(), req, &resp);
    if (out->status.ok() && resp.results_size() == 1) {
      out->code = resp.results(0).code();
    }
    out->done.store(true);
  };
  // The first put of block 1 stops in its WAL sync.
  fs->SetHoldSyncs(true);
  Outcome first, second;
  std::thread a(put, &first);
  for (int i = 0; i < 1000 && fs->held_syncs() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(fs->held_syncs(), 0) << "the first put never reached its sync";
  // A second put of the same block, while the first is not durable.
  std::thread b(put, &second);
  for (int i = 0; i < 50 && !second.done.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const bool answered_early = second.done.load();
  // The first put's sync fails.
  fs->SetFailWrites(true);
  fs->SetHoldSyncs(false);
  a.join();
  b.join();
  fs->SetFailWrites(false);

  EXPECT_FALSE(answered_early)
      << "the duplicate was answered (code " << second.code
      << ") while the first put's write was not durable";
  EXPECT_EQ(first.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << first.status.error_message();
  // Whatever the second put was told, it must be true: acknowledged means
  // the block is served.
  const bool second_acked =
      second.status.ok() && (second.code == 0 || second.code == 6);
  v1::GetBlocksRequest get;
  *get.mutable_namespace_() = ns;
  get.add_hashes(Hash(1));
  v1::GetBlocksResponse got;
  ASSERT_TRUE(stub->GetBlocks(Ctx().get(), get, &got).ok());
  EXPECT_EQ(got.found() == 1, second_acked)
      << "second put: " << second.status.error_message() << " code "
      << second.code << "; found " << got.found();
  // With the disk healthy again, a put is acknowledged (OK, or
  // ALREADY_EXISTS when the reopened database replayed the failed put's WAL
  // record: an unacknowledged put may or may not be stored) and the block
  // is served.
  for (int round = 0; round < 2; ++round) {
    Outcome again;
    put(&again);
    ASSERT_TRUE(again.status.ok()) << again.status.error_message();
    EXPECT_TRUE(again.code == 0 || again.code == 6) << again.code;
    ASSERT_TRUE(stub->GetBlocks(Ctx().get(), get, &got).ok());
    ASSERT_EQ(got.found(), 1u);
    EXPECT_TRUE(got.blocks(0).data() == MakeBlock(1));
  }
  EXPECT_TRUE(server->Shutdown(absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace vqkv::testing
