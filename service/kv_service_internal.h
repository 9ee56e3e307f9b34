// What the files of the KVCache service share (kv_service.cc, block_rpcs.cc,
// codebook_rpcs.cc, rendezvous_rpcs.cc, stream_reactors.cc): a call's
// admission and final status, the unary run modes, the one mapping of
// another tenant's data to NOT_FOUND, and the GetBlocks response builder.
// Not part of the service's interface; include only from service/.
//
// Thread safety: the free functions are pure; a Call or a BlockDataBuilder
// belongs to one call, used by one thread at a time.
#ifndef VQKV_SERVICE_KV_SERVICE_INTERNAL_H_
#define VQKV_SERVICE_KV_SERVICE_INTERNAL_H_

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "grpcpp/grpcpp.h"
#include "service/kv_service.h"
#include "service/metrics.h"
#include "service/validate.h"
#include "storage/keys.h"
#include "storage/tier.h"
#include "vqkv/v1/kvcache.pb.h"

namespace vqkv::service {

// The one place that hides other tenants: kPermissionDenied from the store
// means "another tenant's namespace", which the caller must not learn of, so
// it becomes NOT_FOUND ("not found"). Every status and per-item code a client
// sees passes through here: call statuses in Call::Status, BlockData codes
// in WireCode, put results (code and message) in DoPutBlocks.
absl::Status HideOtherTenants(const absl::Status& s);

// The wire code of a per-item result (BlockData.code).
inline int32_t WireCode(const absl::Status& s) {
  return static_cast<int32_t>(HideOtherTenants(s).code());
}

// Parses a request's hashes: non-empty, at most kMaxHashesPerRequest, each
// 16 bytes. kInvalidArgument naming the bad one.
absl::StatusOr<std::vector<storage::BlockHash>> ParseHashes(
    const google::protobuf::RepeatedPtrField<std::string>& hashes);

// The namespace and hashes of a Lookup or GetBlocks request, checked
// (ValidateNamespace, ParseHashes), with the namespace id for the tenant.
struct BlockRequest {
  storage::NamespaceId ns_id;
  std::vector<storage::BlockHash> hashes;
};
template <typename Request>  // v1::LookupRequest, v1::GetBlocksRequest
absl::StatusOr<BlockRequest> ParseBlockRequest(const std::string& tenant,
                                               const Request& req) {
  VQKV_RETURN_IF_ERROR(
      ValidateNamespace(req.namespace_(), req.has_namespace_()));
  VQKV_ASSIGN_OR_RETURN(std::vector<storage::BlockHash> hashes,
                        ParseHashes(req.hashes()));
  return BlockRequest{ComputeNamespaceId(tenant, req.namespace_()),
                      std::move(hashes)};
}

// One call's bookkeeping from admission to its final status, shared by the
// unary handlers and the stream reactors.
class KvCacheService::Call {
 public:
  // Admits the call: counts it for drain (refused with UNAVAILABLE "server is
  // shutting down" once draining), then authenticates it.
  Call(KvCacheService* svc, const grpc::CallbackServerContext* ctx,
       const char* method);

  // The caller's tenant, or the status the call must finish with at once.
  const absl::StatusOr<std::string>& tenant() const { return tenant_; }

  // `s` as the client sees it (HideOtherTenants); remembers its code for the
  // metrics.
  grpc::Status Status(const absl::Status& s);

  // Unary calls: records the metrics, finishes `reactor` with `s`, leaves.
  void FinishUnary(grpc::ServerUnaryReactor* reactor, const absl::Status& s);
  // Streams, from OnDone (after Finish): records the metrics and leaves.
  void End();

 private:
  void RecordMetrics() const;
  void Leave();

  KvCacheService* svc_;
  const char* method_;
  absl::Time start_;
  bool entered_;
  absl::StatusOr<std::string> tenant_;
  absl::StatusCode code_ = absl::StatusCode::kOk;
};

template <typename Fn>
grpc::ServerUnaryReactor* KvCacheService::RunInline(
    grpc::CallbackServerContext* ctx, const char* method, Fn fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Call call(this, ctx, method);
  call.FinishUnary(reactor, call.tenant().ok() ? fn(*call.tenant())
                                               : call.tenant().status());
  return reactor;
}

template <typename Req, typename Resp>
auto KvCacheService::Bind(absl::Status (KvCacheService::*do_fn)(
                              const std::string&, const Req&, Resp*),
                          const Req* req, Resp* resp) {
  return [this, do_fn, req, resp](const std::string& tenant) {
    return (this->*do_fn)(tenant, *req, resp);
  };
}

template <typename Fn>
void KvCacheService::FinishOnWorker(grpc::ServerUnaryReactor* reactor,
                                    Call call, Fn fn) {
  work_.Submit([reactor, call = std::move(call), fn = std::move(fn)]() mutable {
    call.FinishUnary(reactor, fn(*call.tenant()));
  });
}

template <typename Fn>
grpc::ServerUnaryReactor* KvCacheService::RunOnWorker(
    grpc::CallbackServerContext* ctx, const char* method, Fn fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Call call(this, ctx, method);
  if (!call.tenant().ok()) {
    call.FinishUnary(reactor, call.tenant().status());
  } else {
    FinishOnWorker(reactor, std::move(call), std::move(fn));
  }
  return reactor;
}

template <typename TryInline, typename Fn>
grpc::ServerUnaryReactor* KvCacheService::RunInlineOrOnWorker(
    grpc::CallbackServerContext* ctx, const char* method, TryInline try_inline,
    Fn fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Call call(this, ctx, method);
  if (!call.tenant().ok()) {
    call.FinishUnary(reactor, call.tenant().status());
    return reactor;
  }
  // Work that needs no disk I/O finishes here, on the gRPC thread: a hop to
  // a worker costs two context switches, more than a memory hit itself.
  if (std::optional<absl::Status> done = try_inline(*call.tenant())) {
    call.FinishUnary(reactor, *done);
  } else {
    FinishOnWorker(reactor, std::move(call), std::move(fn));
  }
  return reactor;
}

// The budget rule of GetBlocks: block data in one response message stays
// under the message limit less 1/16 (room for framing and the entries). A
// stream's messages default to a quarter of the limit; a request's
// max_response_bytes may ask for less, never for more than the cap.
inline uint64_t UnaryGetBlocksBudget(uint64_t max_message_bytes) {
  return max_message_bytes - max_message_bytes / 16;
}
inline uint64_t StreamGetBlocksBudget(uint64_t max_message_bytes,
                                      uint64_t requested) {
  if (requested == 0) return max_message_bytes / 4;
  return std::min(requested, UnaryGetBlocksBudget(max_message_bytes));
}

// Builds the BlockData entries of GetBlocks responses (unary and streamed)
// and counts what they carry, for the metrics.
class BlockDataBuilder {
 public:
  using Got = absl::StatusOr<storage::SharedBytes>;

  // Bytes the entry for `got` adds to a response when its data is sent.
  static uint64_t EntryBytes(const Got& got);

  // Appends entry `index` to `resp`: the block's data, or its error code
  // (WireCode). With over_budget, a found block is reported as
  // RESOURCE_EXHAUSTED without its data. Returns the bytes it added.
  uint64_t Add(size_t index, const Got& got, bool over_budget,
               v1::GetBlocksResponse* resp);

  // Records the hits, misses and bytes sent of every entry added ("get").
  void Record(Metrics* metrics, uint64_t block_tokens) const;

 private:
  uint64_t hit_ = 0, miss_ = 0, hit_tokens_ = 0, sent_ = 0;
};

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_KV_SERVICE_INTERNAL_H_
