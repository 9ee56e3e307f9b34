// The service's core: construction, drain, the unary handlers (which thread
// each runs on), and what every handler shares (admission, the final status,
// the mapping of other tenants' data). The work behind the handlers lives by
// subject in block_rpcs.cc, codebook_rpcs.cc and rendezvous_rpcs.cc; the
// streaming RPCs in stream_reactors.cc.
#include "service/kv_service.h"

#include <algorithm>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "service/kv_service_internal.h"
#include "service/validate.h"

namespace vqkv::service {
namespace {

int WorkerCount(int configured) {
  if (configured > 0) return configured;
  return std::max(8, 2 * static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace

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
      work_(WorkerCount(options.workers)),
      rendezvous_(options.rendezvous) {}

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

grpc::ServerUnaryReactor* KvCacheService::Lookup(
    grpc::CallbackServerContext* ctx, const v1::LookupRequest* request,
    v1::LookupResponse* response) {
  // Lookup reads the memory tier and the disk tier's in-memory index only.
  return RunInline(ctx, "Lookup",
                   Bind(&KvCacheService::DoLookup, request, response));
}

grpc::ServerUnaryReactor* KvCacheService::PutBlocks(
    grpc::CallbackServerContext* ctx, const v1::PutBlocksRequest* request,
    v1::PutBlocksResponse* response) {
  auto put = [this, request, response](const std::string& tenant) {
    VQKV_RETURN_IF_ERROR(
        CheckNamespaceForPut(request->namespace_(), request->has_namespace_()));
    const storage::NamespaceId ns_id =
        ComputeNamespaceId(tenant, request->namespace_());
    return DoPutBlocks(tenant, request->namespace_(), ns_id, *request,
                       /*fail_if_all_failed=*/true, response);
  };
  // A put that cannot spill is a memory copy: inline.
  auto put_unless_disk =
      [this, request,
       put](const std::string& tenant) -> std::optional<absl::Status> {
    uint64_t bytes = 0;
    for (const v1::Block& b : request->blocks()) bytes += b.data().size();
    if (store_->PutMayTouchDisk(bytes)) return std::nullopt;
    return put(tenant);
  };
  return RunInlineOrOnWorker(ctx, "PutBlocks", put_unless_disk, put);
}

grpc::ServerUnaryReactor* KvCacheService::GetBlocks(
    grpc::CallbackServerContext* ctx, const v1::GetBlocksRequest* request,
    v1::GetBlocksResponse* response) {
  // Memory hits inline; a block only on disk sends the call to a worker.
  return RunInlineOrOnWorker(
      ctx, "GetBlocks",
      [this, request, response](const std::string& tenant) {
        return DoGetBlocks(tenant, *request, /*memory_only=*/true, response);
      },
      [this, request, response](const std::string& tenant) {
        return *DoGetBlocks(tenant, *request, /*memory_only=*/false, response);
      });
}

grpc::ServerUnaryReactor* KvCacheService::Delete(
    grpc::CallbackServerContext* ctx, const v1::DeleteRequest* request,
    v1::DeleteResponse* response) {
  return RunOnWorker(ctx, "Delete",
                     Bind(&KvCacheService::DoDelete, request, response));
}

grpc::ServerUnaryReactor* KvCacheService::Stats(
    grpc::CallbackServerContext* ctx, const v1::StatsRequest* request,
    v1::StatsResponse* response) {
  // Stats reads counters and in-memory usage only.
  return RunInline(ctx, "Stats",
                   Bind(&KvCacheService::DoStats, request, response));
}

grpc::ServerUnaryReactor* KvCacheService::PutCodebooks(
    grpc::CallbackServerContext* ctx, const v1::PutCodebooksRequest* request,
    v1::PutCodebooksResponse* response) {
  return RunOnWorker(ctx, "PutCodebooks",
                     Bind(&KvCacheService::DoPutCodebooks, request, response));
}

grpc::ServerUnaryReactor* KvCacheService::GetCodebooks(
    grpc::CallbackServerContext* ctx, const v1::GetCodebooksRequest* request,
    v1::GetCodebooksResponse* response) {
  return RunOnWorker(ctx, "GetCodebooks",
                     Bind(&KvCacheService::DoGetCodebooks, request, response));
}

// The rendezvous table is in memory: always inline.
grpc::ServerUnaryReactor* KvCacheService::PutRendezvous(
    grpc::CallbackServerContext* ctx, const v1::PutRendezvousRequest* request,
    v1::PutRendezvousResponse* response) {
  return RunInline(ctx, "PutRendezvous",
                   Bind(&KvCacheService::DoPutRendezvous, request, response));
}

grpc::ServerUnaryReactor* KvCacheService::GetRendezvous(
    grpc::CallbackServerContext* ctx, const v1::GetRendezvousRequest* request,
    v1::GetRendezvousResponse* response) {
  return RunInline(ctx, "GetRendezvous",
                   Bind(&KvCacheService::DoGetRendezvous, request, response));
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
