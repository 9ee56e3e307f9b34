// vqkv-server in-process (service/server.h, the library main.cc wraps): a
// disk that fails under a running server (storage/fault_injection_fs.h
// through the config's test seam).

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/block.h"
#include "service/config.h"
#include "service/server.h"
#include "storage/fault_injection_fs.h"
#include "storage/keys.h"
#include "tests/integration/server_process.h"
#include "tests/integration/test_blocks.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::testing {
namespace {

constexpr KvLayout kLayout{2, 2, 8};
constexpr int kBlockTokens = 16;

v1::Namespace TestNamespace() {
  return Fp16Namespace("inprocess-model", kLayout, kBlockTokens);
}

std::string MakeBlock(uint64_t seed) {
  return RandomFp16Block(kLayout, kBlockTokens, seed);
}

std::string Hash(uint64_t i) {
  return storage::BlockHash::FromPair(0xfa17, i).ToString();
}

std::unique_ptr<service::Server> StartServer(service::ServerConfig config) {
  config.listen = "127.0.0.1:0";
  auto server = service::Server::Start(config);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

std::shared_ptr<grpc::Channel> ChannelTo(const service::Server& server) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", server.port()),
                             grpc::InsecureChannelCredentials());
}

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(60));
  return ctx;
}

TEST(ServerInProcessTest, DiskFaultUnderARunningServerKeepsServingMemory) {
  TempDir dir;
  auto fs = std::make_shared<storage::FaultInjectionFileSystem>();
  service::ServerConfig config;
  config.store.data_dir = dir.path() + "/data";
  config.store.write_policy =
      storage::WritePolicy::kWriteThrough;  // disk on puts
  config.metrics_listen = "127.0.0.1:0";
  config.store.file_system = fs;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  auto stub = v1::KVCache::NewStub(ChannelTo(*server));
  const v1::Namespace ns = TestNamespace();

  auto put = [&](uint64_t i) {
    v1::PutBlocksRequest req;
    *req.mutable_namespace_() = ns;
    v1::Block* b = req.add_blocks();
    b->set_hash(Hash(i));
    b->set_data(MakeBlock(i));
    v1::PutBlocksResponse resp;
    grpc::Status s = stub->PutBlocks(Ctx().get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.stored();
  };
  auto stats = [&] {
    v1::StatsResponse resp;
    EXPECT_TRUE(stub->Stats(Ctx().get(), v1::StatsRequest(), &resp).ok());
    return resp;
  };
  EXPECT_EQ(put(0), 1u);
  EXPECT_EQ(stats().storage_faults(), 0u);

  // The disk fails: async puts still succeed (memory holds them), and the
  // first fault is logged.
  fs->SetFailWrites(true);
  uint32_t stored = 0;
  const std::string log =
      CaptureStderr(dir.path() + "/stderr.txt", [&] { stored = put(1); });
  EXPECT_EQ(stored, 1u);
  EXPECT_TRUE(absl::StrContains(log, "disk tier fault")) << log;
  EXPECT_TRUE(absl::StrContains(log, "serving from memory")) << log;

  // Both blocks are served, bit-exact, from memory.
  v1::GetBlocksRequest get;
  *get.mutable_namespace_() = ns;
  get.add_hashes(Hash(0));
  get.add_hashes(Hash(1));
  v1::GetBlocksResponse got;
  ASSERT_TRUE(stub->GetBlocks(Ctx().get(), get, &got).ok());
  ASSERT_EQ(got.found(), 2u);
  EXPECT_TRUE(got.blocks(0).data() == MakeBlock(0));
  EXPECT_TRUE(got.blocks(1).data() == MakeBlock(1));

  // Stats and /metrics report the fault.
  const v1::StatsResponse st = stats();
  EXPECT_GE(st.storage_faults(), 1u);
  EXPECT_TRUE(absl::StrContains(st.last_fault(), "write-through put"))
      << st.last_fault();
  httplib::Client http("127.0.0.1", server->metrics_port());
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_FALSE(absl::StrContains(metrics->body, "vqkv_disk_faults_total 0\n"));
  EXPECT_TRUE(absl::StrContains(metrics->body, "vqkv_disk_faults_total "));
  auto healthz = http.Get("/healthz");
  ASSERT_TRUE(healthz);
  EXPECT_EQ(healthz->status, 200);  // still serving

  // Once the disk recovers, new puts reach it again.
  fs->SetFailWrites(false);
  EXPECT_EQ(put(2), 1u);
  const uint64_t faults = stats().storage_faults();
  EXPECT_EQ(put(3), 1u);
  EXPECT_EQ(stats().storage_faults(), faults);
  EXPECT_TRUE(server->Shutdown(absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace vqkv::testing
