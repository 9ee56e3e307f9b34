// The KVCache gRPC service (proto/vqkv/v1/kvcache.proto) on top of the tiered
// store, with the callback API: each handler authenticates inline; work that
// needs no disk I/O (Lookup, Stats, rendezvous, memory hits, puts that cannot
// spill) also runs inline on the gRPC thread, the rest goes to a WorkQueue and
// finishes the reactor from there, so gRPC threads never block on disk.
//
// Status mapping: storage and validation errors are absl::Status codes,
// passed 1:1 to grpc::Status, except kPermissionDenied from the store
// (another tenant's namespace), which becomes NOT_FOUND so a tenant cannot
// learn of another tenant's data.
//
// Ownership: the service borrows the store, the token store and the metrics,
// which must outlive it. Thread safety: all handlers may run concurrently.
#ifndef VQKV_SERVICE_KV_SERVICE_H_
#define VQKV_SERVICE_KV_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "service/auth.h"
#include "service/kv_service_options.h"
#include "service/metrics.h"
#include "service/work_queue.h"
#include "storage/rendezvous_table.h"
#include "storage/tiered_store.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::service {

class KvCacheService final : public v1::KVCache::CallbackService {
 public:
  KvCacheService(storage::TieredStore* store, const TokenStore* tokens,
                 Metrics* metrics, KvServiceOptions options);
  // Stops the workers (running queued work first).
  ~KvCacheService() override;

  // Drains and joins the workers. Call after the gRPC server has shut down.
  void StopWorkers() { work_.Stop(); }

  // Graceful shutdown, step 1: from now on new calls fail at once with
  // UNAVAILABLE ("server is shutting down"; clients retry elsewhere).
  void BeginDrain();
  // Step 2: waits until no accepted call is in flight, or `timeout` passed.
  // Returns true when idle.
  bool WaitIdle(absl::Duration timeout);

  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* ctx,
                                   const v1::LookupRequest* request,
                                   v1::LookupResponse* response) override;
  grpc::ServerUnaryReactor* PutBlocks(grpc::CallbackServerContext* ctx,
                                      const v1::PutBlocksRequest* request,
                                      v1::PutBlocksResponse* response) override;
  grpc::ServerUnaryReactor* GetBlocks(grpc::CallbackServerContext* ctx,
                                      const v1::GetBlocksRequest* request,
                                      v1::GetBlocksResponse* response) override;
  grpc::ServerReadReactor<v1::PutBlocksRequest>* PutBlocksStream(
      grpc::CallbackServerContext* ctx,
      v1::PutBlocksResponse* response) override;
  grpc::ServerWriteReactor<v1::GetBlocksResponse>* GetBlocksStream(
      grpc::CallbackServerContext* ctx,
      const v1::GetBlocksRequest* request) override;
  grpc::ServerUnaryReactor* PutCodebooks(
      grpc::CallbackServerContext* ctx, const v1::PutCodebooksRequest* request,
      v1::PutCodebooksResponse* response) override;
  grpc::ServerUnaryReactor* GetCodebooks(
      grpc::CallbackServerContext* ctx, const v1::GetCodebooksRequest* request,
      v1::GetCodebooksResponse* response) override;
  // Streamed codebook transfer for sets larger than a message (proto
  // comments). Both buffer the whole file in memory (bounded by
  // max_codebook_bytes); validation and storage run on a worker.
  grpc::ServerReadReactor<v1::CodebookChunk>* PutCodebookStream(
      grpc::CallbackServerContext* ctx,
      v1::PutCodebooksResponse* response) override;
  grpc::ServerWriteReactor<v1::CodebookChunk>* GetCodebookStream(
      grpc::CallbackServerContext* ctx,
      const v1::GetCodebookStreamRequest* request) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx,
                                   const v1::DeleteRequest* request,
                                   v1::DeleteResponse* response) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx,
                                  const v1::StatsRequest* request,
                                  v1::StatsResponse* response) override;
  grpc::ServerUnaryReactor* PutRendezvous(
      grpc::CallbackServerContext* ctx, const v1::PutRendezvousRequest* request,
      v1::PutRendezvousResponse* response) override;
  grpc::ServerUnaryReactor* GetRendezvous(
      grpc::CallbackServerContext* ctx, const v1::GetRendezvousRequest* request,
      v1::GetRendezvousResponse* response) override;

 private:
  // Admission and the final status, shared by every handler
  // (kv_service_internal.h).
  class Call;
  // The stream reactors: one base (admission, finish, metrics, work on a
  // worker) under the four streaming RPCs (stream_reactors.cc).
  template <typename GrpcReactor>
  class StreamReactor;
  class PutStreamReactor;
  class GetStreamReactor;
  class PutCodebookStreamReactor;
  class GetCodebookStreamReactor;

  // Admission for drain: Enter() counts an accepted call (false once
  // draining); Exit() when it has finished.
  bool Enter();
  void Exit();
  bool IdleLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(drain_mu_) {
    return in_flight_ == 0;
  }

  // The caller's tenant from its metadata (UNAUTHENTICATED on failure).
  absl::StatusOr<std::string> Authenticate(
      const grpc::CallbackServerContext* ctx) const;

  // The three ways a unary handler runs, each admitting the call (drain,
  // auth), finishing the reactor with the status `fn` returns and recording
  // metrics. RunInline: `fn(tenant)` on the calling gRPC thread (no disk
  // I/O). RunOnWorker: on a worker. RunInlineOrOnWorker: `try_inline(tenant)`
  // on the gRPC thread; when it returns nullopt (the call needs disk I/O),
  // `fn(tenant)` on a worker.
  template <typename Fn>
  grpc::ServerUnaryReactor* RunInline(grpc::CallbackServerContext* ctx,
                                      const char* method, Fn fn);
  template <typename Fn>
  grpc::ServerUnaryReactor* RunOnWorker(grpc::CallbackServerContext* ctx,
                                        const char* method, Fn fn);
  template <typename TryInline, typename Fn>
  grpc::ServerUnaryReactor* RunInlineOrOnWorker(
      grpc::CallbackServerContext* ctx, const char* method,
      TryInline try_inline, Fn fn);
  // A Do* method bound to one call's request and response, as the Run*
  // functions take it: fn(tenant) = (this->*do_fn)(tenant, *req, resp).
  template <typename Req, typename Resp>
  auto Bind(absl::Status (KvCacheService::*do_fn)(const std::string&,
                                                  const Req&, Resp*),
            const Req* req, Resp* resp);
  // Runs `fn(tenant)` on a worker and finishes the admitted `call` with it.
  template <typename Fn>
  void FinishOnWorker(grpc::ServerUnaryReactor* reactor, Call call, Fn fn);

  absl::Status DoLookup(const std::string& tenant, const v1::LookupRequest& req,
                        v1::LookupResponse* resp);
  // Validates and stores one message's blocks, appending one result per
  // block to resp. ns_id: the namespace id (already validated). With
  // fail_if_all_failed, a batch whose every block failed with one code
  // becomes that status (the unary PutBlocks rule).
  absl::Status DoPutBlocks(const std::string& tenant, const v1::Namespace& ns,
                           const storage::NamespaceId& ns_id,
                           const v1::PutBlocksRequest& req,
                           bool fail_if_all_failed,
                           v1::PutBlocksResponse* resp);
  // With memory_only, returns nullopt (resp untouched) when a block would
  // have to be read from disk; never nullopt otherwise.
  std::optional<absl::Status> DoGetBlocks(const std::string& tenant,
                                          const v1::GetBlocksRequest& req,
                                          bool memory_only,
                                          v1::GetBlocksResponse* resp);
  // The codebook registry is shared by all tenants: the Do*Codebooks
  // methods ignore `tenant`.
  absl::Status DoPutCodebooks(const std::string& tenant,
                              const v1::PutCodebooksRequest& req,
                              v1::PutCodebooksResponse* resp);
  // Validates one assembled codebook file (ValidateCodebook) and stores it,
  // appending one result to resp (ALREADY_EXISTS when registered before).
  // Errors: ValidateCodebook's, with no result appended.
  absl::Status DoPutOneCodebook(uint64_t hash, const std::string& data,
                                v1::PutCodebooksResponse* resp);
  // Stores one validated codebook file, appending its result to resp.
  void StoreCodebook(uint64_t hash, const std::string& data,
                     v1::PutCodebooksResponse* resp);
  absl::Status DoGetCodebooks(const std::string& tenant,
                              const v1::GetCodebooksRequest& req,
                              v1::GetCodebooksResponse* resp);
  absl::Status DoDelete(const std::string& tenant, const v1::DeleteRequest& req,
                        v1::DeleteResponse* resp);
  absl::Status DoStats(const std::string& tenant, const v1::StatsRequest& req,
                       v1::StatsResponse* resp);
  absl::Status DoPutRendezvous(const std::string& tenant,
                               const v1::PutRendezvousRequest& req,
                               v1::PutRendezvousResponse* resp);
  absl::Status DoGetRendezvous(const std::string& tenant,
                               const v1::GetRendezvousRequest& req,
                               v1::GetRendezvousResponse* resp);

  // Checks a namespace for a put: valid, and its codebook set registered
  // (FAILED_PRECONDITION otherwise).
  absl::Status CheckNamespaceForPut(const v1::Namespace& ns, bool present);

  storage::TieredStore* const store_;
  const TokenStore* const tokens_;
  Metrics* const metrics_;
  const KvServiceOptions options_;
  WorkQueue work_;
  // Rendezvous entries (memory only; thread-safe on its own).
  storage::RendezvousTable rendezvous_;
  absl::Mutex drain_mu_;
  bool draining_ ABSL_GUARDED_BY(drain_mu_) = false;
  int64_t in_flight_ ABSL_GUARDED_BY(drain_mu_) = 0;
};

// absl::Status -> grpc::Status, code for code, except kPermissionDenied,
// which becomes NOT_FOUND (HideOtherTenants, kv_service_internal.h).
grpc::Status ToGrpcStatus(const absl::Status& s);

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_KV_SERVICE_H_
