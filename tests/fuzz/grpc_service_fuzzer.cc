// Fuzz target: every RPC of vqkv.v1.KVCache (proto/vqkv/v1/kvcache.proto)
// fed mutated request bytes, through the real service (KvCacheService over
// a TieredStore with a RocksDB disk tier in a temporary directory) on a
// gRPC server with no listening port: calls go through its in-process
// channel, so no network port is ever opened.
//
// Input: byte 0 picks the method (mod 13, kMethods order), byte 1 the
// caller (mod 4: no token, tenant "alpha", the admin tenant "ops", an
// unknown token); the rest is the request. Client-streaming methods split it
// into messages at each "|MSG|" (at most 16). GetBlocks inputs whose byte 1
// has its top bit set go through GetBlocksSession instead, their messages
// one request each, every answer read before the next request is sent. Requests
// are sent as raw bytes (grpc::ByteBuffer), so the service's own parsing sees
// invalid protobufs too.
//
// Properties: no crash, sanitizer report, hang (libFuzzer's -timeout) or
// unbounded growth (-rss_limit_mb); a call never ends with UNKNOWN (an
// unmapped error) and an OK unary response parses as its response type.
// The store keeps what earlier inputs put (bounded by its tiny budgets), so
// a crash may depend on earlier inputs: libFuzzer's crash file alone may
// not reproduce it, which is why regressions/ keeps whole input sequences
// as separate files replayed in name order.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "google/protobuf/stubs/logging.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/codegen/client_unary_call.h"
#include "grpcpp/impl/codegen/sync_stream.h"
#include "service/auth.h"
#include "service/kv_service.h"
#include "service/metrics.h"
#include "storage/tiered_store.h"
#include "tests/fuzz/fuzz_common.h"
#include "vqkv/v1/kvcache.pb.h"

namespace vqkv::fuzz {
namespace {

enum class Kind { kUnary, kClientStream, kServerStream, kBidiStream };

struct Method {
  const char* path;
  Kind kind;
  // Parses an OK unary response as the method's response type.
  bool (*parses)(const std::string&);
};

template <typename Resp>
bool Parses(const std::string& bytes) {
  Resp r;
  return r.ParseFromString(bytes);
}

const Method kMethods[] = {
    {"/vqkv.v1.KVCache/Lookup", Kind::kUnary, Parses<v1::LookupResponse>},
    {"/vqkv.v1.KVCache/PutBlocks", Kind::kUnary, Parses<v1::PutBlocksResponse>},
    {"/vqkv.v1.KVCache/GetBlocks", Kind::kUnary, Parses<v1::GetBlocksResponse>},
    {"/vqkv.v1.KVCache/PutBlocksStream", Kind::kClientStream,
     Parses<v1::PutBlocksResponse>},
    {"/vqkv.v1.KVCache/GetBlocksStream", Kind::kServerStream,
     Parses<v1::GetBlocksResponse>},
    {"/vqkv.v1.KVCache/PutCodebooks", Kind::kUnary,
     Parses<v1::PutCodebooksResponse>},
    {"/vqkv.v1.KVCache/GetCodebooks", Kind::kUnary,
     Parses<v1::GetCodebooksResponse>},
    {"/vqkv.v1.KVCache/PutCodebookStream", Kind::kClientStream,
     Parses<v1::PutCodebooksResponse>},
    {"/vqkv.v1.KVCache/GetCodebookStream", Kind::kServerStream,
     Parses<v1::CodebookChunk>},
    {"/vqkv.v1.KVCache/Delete", Kind::kUnary, Parses<v1::DeleteResponse>},
    {"/vqkv.v1.KVCache/Stats", Kind::kUnary, Parses<v1::StatsResponse>},
    {"/vqkv.v1.KVCache/PutRendezvous", Kind::kUnary,
     Parses<v1::PutRendezvousResponse>},
    {"/vqkv.v1.KVCache/GetRendezvous", Kind::kUnary,
     Parses<v1::GetRendezvousResponse>},
};
constexpr int kNumMethods = sizeof(kMethods) / sizeof(kMethods[0]);
// GetBlocks's requests, many over one call (byte 1's top bit, above).
const Method kGetBlocksSession = {"/vqkv.v1.KVCache/GetBlocksSession",
                                  Kind::kBidiStream,
                                  Parses<v1::GetBlocksResponse>};

const char* const kAuthHeaders[] = {nullptr, "Bearer fuzz-token-alpha",
                                    "Bearer fuzz-token-ops",
                                    "Bearer fuzz-token-unknown"};

// The service and its in-process channel, built once per process.
struct Service {
  std::string dir;
  service::TokenStore tokens;
  service::Metrics metrics;
  std::unique_ptr<storage::TieredStore> store;
  std::unique_ptr<service::KvCacheService> kv;
  std::unique_ptr<grpc::Server> server;
  std::shared_ptr<grpc::Channel> channel;
};

Service* g_service = nullptr;

Service* Start() {
  auto* s = new Service;
  // Protobuf logs every invalid UTF-8 string field it parses; thousands of
  // such lines a second would only slow the run down.
  google::protobuf::SetLogHandler(nullptr);
  char tmpl[] = "/tmp/vqkv-fuzz-grpc-XXXXXX";
  FUZZ_CHECK(mkdtemp(tmpl) != nullptr);
  s->dir = tmpl;
  auto tokens = service::TokenStore::Parse(
      "fuzz-token-alpha alpha\nfuzz-token-ops ops\n", "fuzz");
  FUZZ_CHECK(tokens.ok());
  s->tokens = *std::move(tokens);

  storage::TieredStoreOptions store;
  store.memory_bytes = 256 << 10;
  store.memory_shards = 2;
  store.data_dir = s->dir + "/data";
  store.disk_bytes = 1 << 20;
  store.codebook_cache_bytes = 256 << 10;
  store.codebook_quota.max_sets = 4;
  store.codebook_quota.max_bytes = 1 << 20;
  store.default_tenant_quota = 1 << 20;
  store.max_namespaces_per_tenant = 16;
  store.max_leases = 1024;
  auto opened = storage::TieredStore::Open(std::move(store));
  FUZZ_CHECK(opened.ok());
  s->store = *std::move(opened);

  service::KvServiceOptions options;
  options.max_message_bytes = 1 << 20;
  options.max_codebook_bytes = 256 << 10;
  options.max_stream_blocks = 64;
  options.workers = 2;
  options.max_queued_work = 64;
  options.admin_tenant = "ops";
  options.rendezvous.max_entries = 256;
  options.rendezvous.max_tenant_entries = 64;
  s->kv = std::make_unique<service::KvCacheService>(s->store.get(), &s->tokens,
                                                    &s->metrics, options);

  grpc::ServerBuilder builder;  // no AddListeningPort: in-process only
  builder.SetMaxReceiveMessageSize(1 << 20);
  builder.SetMaxSendMessageSize(1 << 20);
  builder.RegisterService(s->kv.get());
  s->server = builder.BuildAndStart();
  FUZZ_CHECK(s->server != nullptr);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 20);
  args.SetMaxSendMessageSize(1 << 20);
  s->channel = s->server->InProcessChannel(args);
  std::atexit([] {
    Service* s = g_service;
    s->kv->BeginDrain();
    s->server->Shutdown(std::chrono::system_clock::now());
    s->server->Wait();
    s->kv->StopWorkers();
    std::error_code ec;
    std::filesystem::remove_all(s->dir, ec);
  });
  g_service = s;
  return s;
}

grpc::ByteBuffer Buffer(std::string_view bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

std::string String(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

std::unique_ptr<grpc::ClientContext> Context(const char* auth) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(20));
  if (auth != nullptr) ctx->AddMetadata("authorization", auth);
  return ctx;
}

// Splits a client stream's bytes into its messages.
std::vector<std::string_view> Messages(std::string_view rest) {
  constexpr std::string_view kSep = "|MSG|";
  std::vector<std::string_view> out;
  while (out.size() < 15) {
    const size_t at = rest.find(kSep);
    if (at == std::string_view::npos) break;
    out.push_back(rest.substr(0, at));
    rest.remove_prefix(at + kSep.size());
  }
  out.push_back(rest);
  return out;
}

// VQKV_FUZZ_VERBOSE=1 prints each call's method and status (to see what a
// corpus or a regression input reaches).
void CheckStatus(const Method& m, const grpc::Status& status) {
  static const bool verbose = std::getenv("VQKV_FUZZ_VERBOSE") != nullptr;
  if (verbose) {
    std::fprintf(stderr, "%s: %d %s\n", m.path, status.error_code(),
                 status.error_message().c_str());
  }
  if (status.error_code() == grpc::StatusCode::UNKNOWN) {
    std::fprintf(stderr, "UNKNOWN: %s\n", status.error_message().c_str());
  }
  FUZZ_CHECK(status.error_code() != grpc::StatusCode::UNKNOWN);
}

}  // namespace
}  // namespace vqkv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vqkv::fuzz;
  namespace gi = grpc::internal;
  static Service* service = Start();
  if (size < 2) return 0;
  const Method& m = data[0] % kNumMethods == 2 && (data[1] & 0x80) != 0
                        ? kGetBlocksSession
                        : kMethods[data[0] % kNumMethods];
  const char* auth = kAuthHeaders[data[1] % 4];
  const std::string_view rest(reinterpret_cast<const char*>(data + 2),
                              size - 2);
  grpc::ChannelInterface* channel = service->channel.get();
  std::unique_ptr<grpc::ClientContext> ctx = Context(auth);
  grpc::ByteBuffer response;
  switch (m.kind) {
    case Kind::kUnary: {
      const grpc::ByteBuffer request = Buffer(rest);
      // What generated stubs call, with raw buffers as the messages.
      const grpc::Status status =
          gi::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
              channel, gi::RpcMethod(m.path, gi::RpcMethod::NORMAL_RPC),
              ctx.get(), request, &response);
      CheckStatus(m, status);
      if (status.ok()) FUZZ_CHECK(m.parses(String(response)));
      break;
    }
    case Kind::kClientStream: {
      std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
          gi::ClientWriterFactory<grpc::ByteBuffer>::Create(
              channel, gi::RpcMethod(m.path, gi::RpcMethod::CLIENT_STREAMING),
              ctx.get(), &response));
      for (std::string_view msg : Messages(rest)) {
        if (!writer->Write(Buffer(msg))) break;
      }
      writer->WritesDone();
      const grpc::Status status = writer->Finish();
      CheckStatus(m, status);
      if (status.ok()) FUZZ_CHECK(m.parses(String(response)));
      break;
    }
    case Kind::kServerStream: {
      const grpc::ByteBuffer request = Buffer(rest);
      std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
          gi::ClientReaderFactory<grpc::ByteBuffer>::Create(
              channel, gi::RpcMethod(m.path, gi::RpcMethod::SERVER_STREAMING),
              ctx.get(), request));
      while (reader->Read(&response)) FUZZ_CHECK(m.parses(String(response)));
      CheckStatus(m, reader->Finish());
      break;
    }
    case Kind::kBidiStream: {
      std::unique_ptr<
          grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>>
          stream(gi::ClientReaderWriterFactory<
                 grpc::ByteBuffer,
                 grpc::ByteBuffer>::Create(channel,
                                           gi::RpcMethod(
                                               m.path,
                                               gi::RpcMethod::BIDI_STREAMING),
                                           ctx.get()));
      for (std::string_view msg : Messages(rest)) {
        if (!stream->Write(Buffer(msg)) || !stream->Read(&response)) break;
        FUZZ_CHECK(m.parses(String(response)));
      }
      stream->WritesDone();
      CheckStatus(m, stream->Finish());
      break;
    }
  }
  return 0;
}
