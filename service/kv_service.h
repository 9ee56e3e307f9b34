// The KVCache gRPC service (proto/vqkv/v1/kvcache.proto) on top of the tiered
// store, with the callback API and raw (ByteBuffer) methods: each handler
// admits and authenticates the call (the server's credentials have usually
// refused a bad token already, service/auth_credentials.h), then parses its
// request; work that needs no disk I/O (Lookup, Stats, rendezvous, memory
// hits, puts that cannot spill) runs inline on the gRPC thread, the rest goes
// to a bounded WorkQueue (a full queue refuses new calls with
// RESOURCE_EXHAUSTED) and finishes the reactor from there, so gRPC threads
// never block on disk.
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

#include "absl/container/flat_hash_map.h"
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

struct GetBlocksProgress;       // kv_service_internal.h
struct PutResultsBudget;        // kv_service_internal.h
class GetBlocksResponseWriter;  // get_blocks_response.h

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

  // Every method is served as a raw callback method (grpc::ByteBuffer in
  // and out): the service authenticates a call before it parses the request,
  // and a request that is not a valid protobuf message fails with
  // INVALID_ARGUMENT naming the expected message type (gRPC's typed
  // callback handlers answer UNIMPLEMENTED with an empty message instead).
  // The handlers below are registered by the constructor; each parses its
  // message type and runs the matching Do* method.

 private:
  // Admission and the final status, shared by every handler
  // (kv_service_internal.h).
  class Call;
  // The stream reactors: one base (admission, finish, metrics, work on a
  // worker) under the five streaming RPCs (stream_reactors.cc).
  template <typename GrpcReactor>
  class StreamReactor;
  class PutStreamReactor;
  class GetStreamReactor;
  class GetSessionReactor;
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

  // Registration of the raw handlers (constructor).
  using RawUnaryHandler = grpc::ServerUnaryReactor* (
      KvCacheService::*)(grpc::CallbackServerContext*, const grpc::ByteBuffer*,
                         grpc::ByteBuffer*);
  void RegisterUnary(const char* method, RawUnaryHandler handler);
  void RegisterStreams();

  // The unary handlers: parse, run (inline or on a worker), serialize.
  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* ctx,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response);
  grpc::ServerUnaryReactor* PutBlocks(grpc::CallbackServerContext* ctx,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response);
  grpc::ServerUnaryReactor* GetBlocks(grpc::CallbackServerContext* ctx,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response);
  grpc::ServerUnaryReactor* PutCodebooks(grpc::CallbackServerContext* ctx,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response);
  grpc::ServerUnaryReactor* GetCodebooks(grpc::CallbackServerContext* ctx,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response);
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response);
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response);
  grpc::ServerUnaryReactor* PutRendezvous(grpc::CallbackServerContext* ctx,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response);
  grpc::ServerUnaryReactor* GetRendezvous(grpc::CallbackServerContext* ctx,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response);

  // The three ways a unary handler runs, each admitting the call (drain,
  // auth), then parsing the request into a Req (INVALID_ARGUMENT when it is
  // not one), running `fn(tenant, req, &resp)`, serializing the response and
  // finishing the reactor with the status, and recording metrics. RunInline:
  // on the calling gRPC thread (no disk I/O). RunOnWorker: on a worker.
  // RunInlineOrOnWorker: `try_inline(tenant, req, &resp)` on the gRPC thread;
  // when it returns nullopt (the call needs disk I/O), `fn` on a worker.
  template <typename Req, typename Resp, typename Fn>
  grpc::ServerUnaryReactor* RunInline(grpc::CallbackServerContext* ctx,
                                      const char* method,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response, Fn fn);
  template <typename Req, typename Resp, typename Fn>
  grpc::ServerUnaryReactor* RunOnWorker(grpc::CallbackServerContext* ctx,
                                        const char* method,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response, Fn fn);
  template <typename Req, typename Resp, typename TryInline, typename Fn>
  grpc::ServerUnaryReactor* RunInlineOrOnWorker(
      grpc::CallbackServerContext* ctx, const char* method,
      const grpc::ByteBuffer* request, grpc::ByteBuffer* response,
      TryInline try_inline, Fn fn);
  // Runs `fn(call)` on a worker and finishes the admitted `call` with the
  // status it returns; when the work queue is full (max_queued_work),
  // finishes it at once with RESOURCE_EXHAUSTED instead.
  template <typename Fn>
  void SubmitOrFinish(grpc::ServerUnaryReactor* reactor, Call call, Fn fn);
  // A Do* method as the Run* functions take it.
  template <typename Req, typename Resp>
  auto Bind(absl::Status (KvCacheService::*do_fn)(const std::string&,
                                                  const Req&, Resp*));

  absl::Status DoLookup(const std::string& tenant, const v1::LookupRequest& req,
                        v1::LookupResponse* resp);
  // Validates and stores one message's blocks, appending one result per
  // block to resp. ns_id: the namespace id (already validated). With
  // fail_if_all_failed, a batch whose every block failed with one code
  // becomes that status (the unary PutBlocks rule). With a text budget (the
  // stream), results carry their message only while it lasts, and
  // ALREADY_EXISTS none; without one (nullptr), every failed result does.
  absl::Status DoPutBlocks(const std::string& tenant, const v1::Namespace& ns,
                           const storage::NamespaceId& ns_id,
                           const v1::PutBlocksRequest& req,
                           bool fail_if_all_failed,
                           PutResultsBudget* text_budget,
                           v1::PutBlocksResponse* resp);
  // Reads the requested blocks in order into resp until the message budget
  // (UnaryGetBlocksBudget) is reached; the rest are reported as not sent
  // without being read. With memory_only, returns nullopt when the next
  // block would have to be read from disk: `progress` says where to go on
  // (with memory_only false, on a worker); never nullopt otherwise.
  std::optional<absl::Status> DoGetBlocks(const std::string& tenant,
                                          const v1::GetBlocksRequest& req,
                                          bool memory_only,
                                          GetBlocksProgress* progress,
                                          GetBlocksResponseWriter* resp);
  // The codebook registry is shared by all tenants: the Do*Codebooks
  // methods ignore `tenant`.
  absl::Status DoPutCodebooks(const std::string& tenant,
                              const v1::PutCodebooksRequest& req,
                              v1::PutCodebooksResponse* resp);
  // Validates one assembled codebook file (ValidateCodebook) and stores it,
  // appending one result to resp (ALREADY_EXISTS when registered before).
  // Errors: ValidateCodebook's, with no result appended.
  absl::Status DoPutOneCodebook(const std::string& tenant, uint64_t hash,
                                const std::string& data,
                                v1::PutCodebooksResponse* resp);
  // Stores one validated codebook file with a reference for `tenant`,
  // counted against its codebook quota (storage/codebook_registry.h), and
  // appends its result to resp: OK, ALREADY_EXISTS when the set was
  // registered before (the tenant now holds a reference too), or the
  // store's error (RESOURCE_EXHAUSTED over the tenant's quota).
  void StoreCodebook(const std::string& tenant, uint64_t hash,
                     const std::string& data, v1::PutCodebooksResponse* resp);
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

  // Blocks a tenant's GetBlocks / GetBlocksStream / GetBlocksSession calls
  // returned (hits) and did not find (misses): what Stats shows a tenant that
  // is not the admin.
  void CountTenantGets(const std::string& tenant, uint64_t hits,
                       uint64_t misses);
  // Whether `tenant` sees the whole cache in Stats (admin_tenant, or the
  // anonymous tenant with auth off).
  bool SeesWholeCache(const std::string& tenant) const;

  storage::TieredStore* const store_;
  const TokenStore* const tokens_;
  Metrics* const metrics_;
  const KvServiceOptions options_;
  WorkQueue work_;
  // Rendezvous entries (memory only; thread-safe on its own).
  storage::RendezvousTable rendezvous_;
  struct TenantGets {
    uint64_t hits = 0;
    uint64_t misses = 0;
  };
  // One entry per tenant that fetched blocks (bounded by the token file).
  mutable absl::Mutex tenant_gets_mu_;
  absl::flat_hash_map<std::string, TenantGets> tenant_gets_
      ABSL_GUARDED_BY(tenant_gets_mu_);
  absl::Mutex drain_mu_;
  bool draining_ ABSL_GUARDED_BY(drain_mu_) = false;
  int64_t in_flight_ ABSL_GUARDED_BY(drain_mu_) = 0;
};

// absl::Status -> grpc::Status, code for code, except kPermissionDenied,
// which becomes NOT_FOUND (HideOtherTenants, kv_service_internal.h).
grpc::Status ToGrpcStatus(const absl::Status& s);

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_KV_SERVICE_H_
