// The gRPC backend's read path (client/grpc/get_session.h): gets over
// GetBlocksSession streams against the real vqkv-server (many threads at
// once, a restart under open sessions), and against stand-in servers: one
// that predates sessions (unary GetBlocks only) and one whose session never
// answers.
#include "client/grpc/grpc_backend.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "storage/keys.h"
#include "tests/integration/server_process.h"
#include "tests/integration/test_blocks.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::client {
namespace {

using ::testing::HasSubstr;
using ::vqkv::testing::HttpGet;
using ::vqkv::testing::ServerProcess;
using ::vqkv::testing::TempDir;

constexpr KvLayout kLayout{2, 2, 8};
constexpr int kBlockTokens = 16;

storage::NamespaceSpec Namespace() {
  storage::NamespaceSpec ns;
  ns.model_id = "session-test";
  ns.weight_revision = "r1";
  ns.codec = "fp16";
  ns.codec_id = static_cast<uint32_t>(CodecId::kFp16);
  ns.block_tokens = kBlockTokens;
  ns.layers = kLayout.layers;
  ns.kv_heads = kLayout.kv_heads;
  ns.head_dim = kLayout.head_dim;
  ns.dtype = storage::KvDtype::kFloat16;
  return ns;
}

struct Blocks {
  std::vector<storage::BlockHash> hashes;
  std::vector<std::string> data;
};

Blocks MakeBlocks(int n, uint64_t seed) {
  Blocks b;
  for (int i = 0; i < n; ++i) {
    b.hashes.push_back(storage::BlockHash::FromPair(seed, i));
    b.data.push_back(
        vqkv::testing::RandomFp16Block(kLayout, kBlockTokens, seed + i));
  }
  return b;
}

std::unique_ptr<Backend> Connect(const std::string& target,
                                 bool get_sessions = true,
                                 int connections = 8) {
  auto b = NewGrpcBackend({.target = target,
                           .get_sessions = get_sessions,
                           .connections = connections});
  EXPECT_TRUE(b.ok()) << b.status();
  return *std::move(b);
}

void PutAll(Backend* backend, const Blocks& blocks) {
  std::vector<PutItem> items;
  for (size_t i = 0; i < blocks.data.size(); ++i) {
    items.push_back(
        {blocks.hashes[i], blocks.data[i], static_cast<uint32_t>(i)});
  }
  auto put = backend->Put(Namespace(), items, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(put.ok()) << put.status();
  for (const absl::Status& s : *put) ASSERT_TRUE(s.ok()) << s;
}

// Blocks [first, first + n) of `blocks` through one Get; "" or a problem.
std::string GetAndCompare(Backend* backend, const Blocks& blocks, size_t first,
                          size_t n) {
  std::vector<storage::BlockHash> hashes(blocks.hashes.begin() + first,
                                         blocks.hashes.begin() + first + n);
  auto got = backend->Get(Namespace(), hashes, absl::Now() + absl::Seconds(30));
  if (!got.ok()) return got.status().ToString();
  if (got->size() != n) return "wrong count";
  for (size_t i = 0; i < n; ++i) {
    if (!(*got)[i].ok()) return (*got)[i].status().ToString();
    if (*(*got)[i] != blocks.data[first + i]) {
      return absl::StrCat("block ", first + i, " differs");
    }
  }
  return "";
}

// Established TCP connections from this process to 127.0.0.1:`port`: the
// sockets among /proc/self/fd whose /proc/net/tcp or tcp6 entry has that
// remote port.
int ConnectionsTo(int port) {
  std::set<std::string> own_sockets;
  for (const auto& fd : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target =
        std::filesystem::read_symlink(fd.path(), ec).string();
    if (!ec && target.rfind("socket:[", 0) == 0) {
      own_sockets.insert(target.substr(8, target.size() - 9));
    }
  }
  char remote_port[8];
  std::snprintf(remote_port, sizeof(remote_port), ":%04X", port);
  int n = 0;
  // gRPC's client sockets are dual-stack (IPv6, the v4 address mapped).
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream tcp(table);
    std::string line;
    std::getline(tcp, line);  // the header
    while (std::getline(tcp, line)) {
      // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
      std::istringstream fields(line);
      std::string sl, local, remote, state, skip, inode;
      fields >> sl >> local >> remote >> state >> skip >> skip >> skip >>
          skip >> skip >> inode;
      if (state == "01" && remote.ends_with(remote_port) &&
          own_sockets.count(inode) > 0) {
        ++n;
      }
    }
  }
  return n;
}

TEST(GrpcBackendTest, EachConnectionIsItsOwnTcpConnection) {
  TempDir dir;
  auto server = ServerProcess::Start({"--data-dir", dir.path()});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  const int port = std::stoi(address.substr(address.rfind(':') + 1));
  const int before = ConnectionsTo(port);
  for (const int connections : {1, 3}) {
    SCOPED_TRACE(connections);
    auto backend = Connect(address, /*get_sessions=*/true, connections);
    // Calls take the connections in turn: two rounds use each of them.
    for (int i = 0; i < 2 * connections; ++i) {
      auto found = backend->Lookup(Namespace(), MakeBlocks(1, 500).hashes, 0,
                                   absl::Now() + absl::Seconds(30));
      ASSERT_TRUE(found.ok()) << found.status();
    }
    EXPECT_EQ(ConnectionsTo(port) - before, connections);
  }
}

TEST(GrpcBackendTest, ConnectionsOutOfRangeAreRejected) {
  for (const int connections :
       {0, -1, GrpcBackendOptions::kMaxConnections + 1}) {
    auto b =
        NewGrpcBackend({.target = "127.0.0.1:1", .connections = connections});
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument)
        << connections;
    EXPECT_THAT(b.status().message(), HasSubstr("connections"));
  }
}

TEST(GrpcBackendTest, ConcurrentGetsGoOverSessionsBitExact) {
  TempDir dir;
  auto server = ServerProcess::Start(
      {"--data-dir", dir.path(), "--metrics-listen", "127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto backend = Connect((*server)->address());
  const Blocks blocks = MakeBlocks(24, 100);
  PutAll(backend.get(), blocks);

  constexpr int kThreads = 8, kRounds = 25;
  std::vector<std::string> problems(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds && problems[t].empty(); ++r) {
        const size_t first = (t * 7 + r * 3) % 20;
        problems[t] = GetAndCompare(backend.get(), blocks, first, 1 + r % 4);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(problems[t], "") << t;

  // Every get was a session request; no unary GetBlocks was made.
  const auto metrics = HttpGet((*server)->metrics_port(), "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_THAT(metrics.body,
              HasSubstr(absl::StrCat("vqkv_requests_total{method=\""
                                     "GetBlocksSession.request\",code=\"OK\"} ",
                                     kThreads * kRounds, "\n")));
  EXPECT_THAT(metrics.body,
              ::testing::Not(HasSubstr("method=\"GetBlocks\",code")));
}

TEST(GrpcBackendTest, GetsSurviveARestartUnderOpenSessions) {
  TempDir dir;
  const std::vector<std::string> args = {"--data-dir", dir.path(),
                                         "--durability", "sync"};
  auto server = ServerProcess::Start(args);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  auto backend = Connect(address);
  const Blocks blocks = MakeBlocks(6, 200);
  PutAll(backend.get(), blocks);
  ASSERT_EQ(GetAndCompare(backend.get(), blocks, 0, 6), "");

  // The session the backend keeps dies with the server.
  EXPECT_EQ((*server)->StopWith(SIGKILL), 128 + SIGKILL);
  server = ServerProcess::StartOn(address, args);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(GetAndCompare(backend.get(), blocks, 0, 6), "");
  EXPECT_EQ(GetAndCompare(backend.get(), blocks, 2, 3), "");
}

// Stand-ins for a server: unary GetBlocks answers every hash with its
// block; GetBlocksSession is left to the generated base (UNIMPLEMENTED) or
// reads one request and never answers.
class StandInServer : public v1::KVCache::Service {
 public:
  StandInServer(const Blocks& blocks, bool silent_sessions)
      : blocks_(blocks), silent_sessions_(silent_sessions) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~StandInServer() override {
    server_->Shutdown(std::chrono::system_clock::now());
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  int unary_gets() const { return unary_gets_.load(); }

  grpc::Status GetBlocks(grpc::ServerContext*, const v1::GetBlocksRequest* req,
                         v1::GetBlocksResponse* resp) override {
    ++unary_gets_;
    for (int i = 0; i < req->hashes_size(); ++i) {
      v1::BlockData* d = resp->add_blocks();
      d->set_index(static_cast<uint32_t>(i));
      for (size_t b = 0; b < blocks_.hashes.size(); ++b) {
        if (blocks_.hashes[b].ToString() == req->hashes(i)) {
          d->set_data(blocks_.data[b]);
        }
      }
      if (d->data().empty()) d->set_code(grpc::StatusCode::NOT_FOUND);
    }
    resp->set_found(static_cast<uint32_t>(req->hashes_size()));
    return grpc::Status::OK;
  }

  grpc::Status GetBlocksSession(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<v1::GetBlocksResponse, v1::GetBlocksRequest>*
          stream) override {
    if (!silent_sessions_) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no sessions");
    }
    v1::GetBlocksRequest req;
    stream->Read(&req);
    while (!ctx->IsCancelled()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return grpc::Status::CANCELLED;
  }

 private:
  const Blocks& blocks_;
  const bool silent_sessions_;
  std::atomic<int> unary_gets_{0};
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

TEST(GrpcBackendTest, ServerWithoutSessionsGetsUnaryCalls) {
  const Blocks blocks = MakeBlocks(4, 300);
  StandInServer server(blocks, /*silent_sessions=*/false);
  auto backend = Connect(server.address());
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(GetAndCompare(backend.get(), blocks, i, 2), "");
  }
  EXPECT_EQ(server.unary_gets(), 3);
}

TEST(GrpcBackendTest, SessionThatNeverAnswersCostsTheDeadline) {
  const Blocks blocks = MakeBlocks(2, 400);
  StandInServer server(blocks, /*silent_sessions=*/true);
  auto backend = Connect(server.address());
  const absl::Time start = absl::Now();
  auto got =
      backend->Get(Namespace(), blocks.hashes, start + absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded)
      << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr(server.address()));
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Seconds(10));
  EXPECT_EQ(server.unary_gets(), 0);

  // With sessions off, the same server answers through GetBlocks.
  auto unary = Connect(server.address(), /*get_sessions=*/false);
  EXPECT_EQ(GetAndCompare(unary.get(), blocks, 0, 2), "");
  EXPECT_EQ(server.unary_gets(), 1);
}

}  // namespace
}  // namespace vqkv::client
