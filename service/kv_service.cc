// The service's core: construction, drain, the unary handlers (which thread
// each runs on), and what every handler shares (admission, the final status,
// the mapping of other tenants' data). The work behind the handlers lives by
// subject in block_rpcs.cc, codebook_rpcs.cc and rendezvous_rpcs.cc; the
// streaming RPCs in stream_reactors.cc.
#include "service/kv_service.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "service/auth_credentials.h"
#include "service/kv_service_internal.h"
#include "service/validate.h"

namespace vqkv::service {
namespace {

int WorkerCount(int configured) {
  if (configured > 0) return configured;
  return std::max(8, 2 * static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace

absl::Status QueueFullError(size_t max_queued) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "server overloaded: ", max_queued,
      " calls are already waiting for a storage worker; retry with backoff"));
}

int MethodIndex(absl::string_view method) {
  const google::protobuf::ServiceDescriptor* service =
      v1::LookupRequest::descriptor()->file()->FindServiceByName("KVCache");
  const google::protobuf::MethodDescriptor* m =
      service == nullptr ? nullptr
                         : service->FindMethodByName(std::string(method));
  if (m == nullptr) {
    std::fprintf(stderr, "vqkv.v1.KVCache has no method %s\n",
                 std::string(method).c_str());
    std::abort();
  }
  return m->index();
}

absl::Status HideOtherTenants(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kPermissionDenied) {
    return absl::NotFoundError("not found");
  }
  return s;
}

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  const absl::Status h = HideOtherTenants(s);
  return grpc::Status(static_cast<grpc::StatusCode>(h.code()),
                      std::string(h.message()));
}

absl::StatusOr<std::vector<storage::BlockHash>> ParseHashes(
    const google::protobuf::RepeatedPtrField<std::string>& hashes) {
  if (hashes.empty()) {
    return absl::InvalidArgumentError("hashes must not be empty");
  }
  if (static_cast<size_t>(hashes.size()) > kMaxHashesPerRequest) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most ", kMaxHashesPerRequest,
                     " hashes per request, got ", hashes.size()));
  }
  std::vector<storage::BlockHash> out;
  out.reserve(hashes.size());
  for (int i = 0; i < hashes.size(); ++i) {
    VQKV_ASSIGN_OR_RETURN(storage::BlockHash h,
                          ParseBlockHash(hashes[i], "hashes", i));
    out.push_back(h);
  }
  return out;
}

KvCacheService::KvCacheService(storage::TieredStore* store,
                               const TokenStore* tokens, Metrics* metrics,
                               KvServiceOptions options)
    : store_(store),
      tokens_(tokens),
      metrics_(metrics),
      options_(options),
      work_(WorkerCount(options.workers), options.max_queued_work),
      rendezvous_(options.rendezvous) {
  RegisterUnary("Lookup", &KvCacheService::Lookup);
  RegisterUnary("PutBlocks", &KvCacheService::PutBlocks);
  RegisterUnary("GetBlocks", &KvCacheService::GetBlocks);
  RegisterUnary("PutCodebooks", &KvCacheService::PutCodebooks);
  RegisterUnary("GetCodebooks", &KvCacheService::GetCodebooks);
  RegisterUnary("Delete", &KvCacheService::Delete);
  RegisterUnary("Stats", &KvCacheService::Stats);
  RegisterUnary("PutRendezvous", &KvCacheService::PutRendezvous);
  RegisterUnary("GetRendezvous", &KvCacheService::GetRendezvous);
  RegisterStreams();
}

KvCacheService::~KvCacheService() { work_.Stop(); }

bool KvCacheService::Enter() {
  absl::MutexLock lock(&drain_mu_);
  if (draining_) return false;
  ++in_flight_;
  return true;
}

void KvCacheService::Exit() {
  absl::MutexLock lock(&drain_mu_);
  --in_flight_;
}

void KvCacheService::BeginDrain() {
  absl::MutexLock lock(&drain_mu_);
  draining_ = true;
}

bool KvCacheService::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&drain_mu_);
  return drain_mu_.AwaitWithTimeout(
      absl::Condition(this, &KvCacheService::IdleLocked), timeout);
}

absl::StatusOr<std::string> KvCacheService::Authenticate(
    const grpc::CallbackServerContext* ctx) const {
  if (!tokens_->enabled()) return std::string();
  // Normally the server's credentials authenticated the call already
  // (service/auth_credentials.h) and left the tenant in the auth context.
  if (const std::shared_ptr<const grpc::AuthContext> auth =
          ctx->auth_context()) {
    const std::vector<grpc::string_ref> tenant =
        auth->FindPropertyValues(kTenantProperty);
    if (tenant.size() == 1)
      return std::string(tenant[0].data(), tenant[0].size());
  }
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return tokens_->Authenticate(false, "");
  return tokens_->Authenticate(
      true, absl::string_view(it->second.data(), it->second.size()));
}

// ---------------------------------------------------------------------------
// The unary handlers, and where each runs: inline on the gRPC thread when it
// needs no disk I/O, on a worker otherwise. The work itself is in
// block_rpcs.cc, codebook_rpcs.cc and rendezvous_rpcs.cc.

void KvCacheService::RegisterUnary(const char* method,
                                   RawUnaryHandler handler) {
  MarkMethodRawCallback(
      MethodIndex(method),
      new grpc::internal::CallbackUnaryHandler<grpc::ByteBuffer,
                                               grpc::ByteBuffer>(
          [this, handler](grpc::CallbackServerContext* ctx,
                          const grpc::ByteBuffer* request,
                          grpc::ByteBuffer* response) {
            return (this->*handler)(ctx, request, response);
          }));
}

grpc::ServerUnaryReactor* KvCacheService::Lookup(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  // Lookup reads the memory tier and the disk tier's in-memory index only.
  return RunInline<v1::LookupRequest, v1::LookupResponse>(
      ctx, "Lookup", request, response, Bind(&KvCacheService::DoLookup));
}

grpc::ServerUnaryReactor* KvCacheService::PutBlocks(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  auto put = [this](const std::string& tenant, const v1::PutBlocksRequest& req,
                    v1::PutBlocksResponse* resp) {
    VQKV_RETURN_IF_ERROR(
        CheckNamespaceForPut(req.namespace_(), req.has_namespace_()));
    const storage::NamespaceId ns_id =
        ComputeNamespaceId(tenant, req.namespace_());
    return DoPutBlocks(tenant, req.namespace_(), ns_id, req,
                       /*fail_if_all_failed=*/true, /*text_budget=*/nullptr,
                       resp);
  };
  // A put that cannot spill is a memory copy: inline.
  auto put_unless_disk =
      [this, put](const std::string& tenant, const v1::PutBlocksRequest& req,
                  v1::PutBlocksResponse* resp) -> std::optional<absl::Status> {
    uint64_t bytes = 0;
    for (const v1::Block& b : req.blocks()) bytes += b.data().size();
    if (store_->PutMayTouchDisk(bytes)) return std::nullopt;
    return put(tenant, req, resp);
  };
  return RunInlineOrOnWorker<v1::PutBlocksRequest, v1::PutBlocksResponse>(
      ctx, "PutBlocks", request, response, put_unless_disk, put);
}

grpc::ServerUnaryReactor* KvCacheService::GetBlocks(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  // Memory hits inline; at the first block only on disk, the call goes on
  // on a worker from that block.
  auto progress = std::make_shared<GetBlocksProgress>();
  return RunInlineOrOnWorker<v1::GetBlocksRequest, GetBlocksResponseWriter>(
      ctx, "GetBlocks", request, response,
      [this, progress](const std::string& tenant,
                       const v1::GetBlocksRequest& req,
                       GetBlocksResponseWriter* resp) {
        return DoGetBlocks(tenant, req, /*memory_only=*/true, progress.get(),
                           resp);
      },
      [this, progress](const std::string& tenant,
                       const v1::GetBlocksRequest& req,
                       GetBlocksResponseWriter* resp) {
        return *DoGetBlocks(tenant, req, /*memory_only=*/false, progress.get(),
                            resp);
      });
}

grpc::ServerUnaryReactor* KvCacheService::Delete(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return RunOnWorker<v1::DeleteRequest, v1::DeleteResponse>(
      ctx, "Delete", request, response, Bind(&KvCacheService::DoDelete));
}

grpc::ServerUnaryReactor* KvCacheService::Stats(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  // Stats reads counters and in-memory usage only.
  return RunInline<v1::StatsRequest, v1::StatsResponse>(
      ctx, "Stats", request, response, Bind(&KvCacheService::DoStats));
}

grpc::ServerUnaryReactor* KvCacheService::PutCodebooks(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return RunOnWorker<v1::PutCodebooksRequest, v1::PutCodebooksResponse>(
      ctx, "PutCodebooks", request, response,
      Bind(&KvCacheService::DoPutCodebooks));
}

grpc::ServerUnaryReactor* KvCacheService::GetCodebooks(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return RunOnWorker<v1::GetCodebooksRequest, v1::GetCodebooksResponse>(
      ctx, "GetCodebooks", request, response,
      Bind(&KvCacheService::DoGetCodebooks));
}

// The rendezvous table is in memory: always inline.
grpc::ServerUnaryReactor* KvCacheService::PutRendezvous(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return RunInline<v1::PutRendezvousRequest, v1::PutRendezvousResponse>(
      ctx, "PutRendezvous", request, response,
      Bind(&KvCacheService::DoPutRendezvous));
}

grpc::ServerUnaryReactor* KvCacheService::GetRendezvous(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return RunInline<v1::GetRendezvousRequest, v1::GetRendezvousResponse>(
      ctx, "GetRendezvous", request, response,
      Bind(&KvCacheService::DoGetRendezvous));
}

// ---------------------------------------------------------------------------
// Call: admission and the final status.

KvCacheService::Call::Call(KvCacheService* svc,
                           const grpc::CallbackServerContext* ctx,
                           const char* method)
    : svc_(svc),
      method_(method),
      start_(absl::Now()),
      entered_(svc->Enter()),
      tenant_(entered_ ? svc->Authenticate(ctx)
                       : absl::UnavailableError("server is shutting down")) {}

grpc::Status KvCacheService::Call::Status(const absl::Status& s) {
  const absl::Status hidden = HideOtherTenants(s);
  code_ = hidden.code();
  return ToGrpcStatus(hidden);
}

void KvCacheService::Call::FinishUnary(grpc::ServerUnaryReactor* reactor,
                                       const absl::Status& s) {
  const grpc::Status status = Status(s);
  RecordMetrics();
  reactor->Finish(status);
  Leave();
}

void KvCacheService::Call::End() {
  RecordMetrics();
  Leave();
}

void KvCacheService::Call::RecordMetrics() const {
  svc_->metrics_->RecordRpc(method_, static_cast<int>(code_),
                            absl::ToDoubleSeconds(absl::Now() - start_));
}

void KvCacheService::Call::Leave() {
  if (entered_) svc_->Exit();
  entered_ = false;
}

}  // namespace vqkv::service
