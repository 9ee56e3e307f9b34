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
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "grpcpp/grpcpp.h"
#include "service/get_blocks_response.h"
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

// The index of `method` in the vqkv.v1.KVCache service descriptor (the
// index gRPC's generated service registers it under). Aborts for an unknown
// name (a programming error).
int MethodIndex(absl::string_view method);

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
  // Long-lived streams (GetBlocksSession): the call stops counting for
  // drain, so an idle session does not hold a shutdown for its grace
  // period; the stream counts each request it serves instead (Enter/Exit).
  void StopCountingForDrain() { Leave(); }

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

// A message of type `Msg` from the raw bytes of a request (or of one message
// of a client stream). kInvalidArgument naming the expected type, with
// `where` ("message 3: ") in front, when the bytes are not one.
template <typename Msg>
absl::Status ParseMessage(const grpc::ByteBuffer& raw, absl::string_view where,
                          Msg* msg) {
  grpc::ByteBuffer copy(raw);  // Deserialize consumes its buffer (slices
                               // are reference-counted: no data copy)
  if (!grpc::SerializationTraits<Msg>::Deserialize(&copy, msg).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "the request is not a valid ", msg->GetTypeName(),
                     " message (protobuf parse failed)"));
  }
  return absl::OkStatus();
}

// `msg` as the raw bytes of a response message, replacing what `raw` held
// (a stream reuses one buffer). kInternal when it cannot be serialized
// (over 2 GiB).
template <typename Msg>
absl::Status SerializeMessage(const Msg& msg, grpc::ByteBuffer* raw) {
  raw->Clear();  // gRPC's large-message writer requires an empty buffer
  bool own = false;
  const grpc::Status s =
      grpc::SerializationTraits<Msg>::Serialize(msg, raw, &own);
  if (!s.ok()) {
    return absl::InternalError(absl::StrCat("cannot serialize the ",
                                            msg.GetTypeName(),
                                            " response: ", s.error_message()));
  }
  return absl::OkStatus();
}

// Writes a unary response into the raw buffer gRPC sends: protobuf messages
// through SerializeMessage, GetBlocks' writer as the slices it built.
template <typename Msg>
absl::Status WriteResponse(Msg* msg, grpc::ByteBuffer* raw) {
  return SerializeMessage(*msg, raw);
}
inline absl::Status WriteResponse(GetBlocksResponseWriter* writer,
                                  grpc::ByteBuffer* raw) {
  writer->Finish(raw);
  return absl::OkStatus();
}

// One unary call's request and response: parsed from and serialized into
// the raw buffers gRPC owns (valid until the call is done).
template <typename Req, typename Resp>
struct UnaryIo {
  UnaryIo(const grpc::ByteBuffer* in, grpc::ByteBuffer* out)
      : in(in), out(out) {}
  // Parses the request on first use.
  absl::Status Parse() {
    if (parsed) return absl::OkStatus();
    VQKV_RETURN_IF_ERROR(ParseMessage(*in, "", &req));
    parsed = true;
    return absl::OkStatus();
  }
  // Runs fn(tenant, req, &resp) on the parsed request, then serializes the
  // response when it succeeded.
  template <typename Fn>
  absl::Status Run(Fn& fn, const std::string& tenant) {
    VQKV_RETURN_IF_ERROR(Parse());
    VQKV_RETURN_IF_ERROR(fn(tenant, req, &resp));
    return WriteResponse(&resp, out);
  }
  // The same for a try_inline function: nullopt when it returned nullopt.
  template <typename Fn>
  std::optional<absl::Status> TryRun(Fn& fn, const std::string& tenant) {
    VQKV_RETURN_IF_ERROR(Parse());
    std::optional<absl::Status> done = fn(tenant, req, &resp);
    if (!done.has_value() || !done->ok()) return done;
    return WriteResponse(&resp, out);
  }

  const grpc::ByteBuffer* const in;
  grpc::ByteBuffer* const out;
  bool parsed = false;
  Req req;
  Resp resp;
};

template <typename Req, typename Resp, typename Fn>
grpc::ServerUnaryReactor* KvCacheService::RunInline(
    grpc::CallbackServerContext* ctx, const char* method,
    const grpc::ByteBuffer* request, grpc::ByteBuffer* response, Fn fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Call call(this, ctx, method);
  if (!call.tenant().ok()) {
    call.FinishUnary(reactor, call.tenant().status());
    return reactor;
  }
  UnaryIo<Req, Resp> io(request, response);
  call.FinishUnary(reactor, io.Run(fn, *call.tenant()));
  return reactor;
}

template <typename Req, typename Resp>
auto KvCacheService::Bind(absl::Status (KvCacheService::*do_fn)(
    const std::string&, const Req&, Resp*)) {
  return [this, do_fn](const std::string& tenant, const Req& req, Resp* resp) {
    return (this->*do_fn)(tenant, req, resp);
  };
}

// The status of a call refused because the work queue is full.
absl::Status QueueFullError(size_t max_queued);

template <typename Fn>
void KvCacheService::SubmitOrFinish(grpc::ServerUnaryReactor* reactor,
                                    Call call, Fn fn) {
  auto shared = std::make_shared<Call>(std::move(call));
  const bool queued =
      work_.TrySubmit([reactor, shared, fn = std::move(fn)]() mutable {
        shared->FinishUnary(reactor, fn(*shared));
      });
  if (!queued) {
    shared->FinishUnary(reactor, QueueFullError(work_.max_queued()));
  }
}

template <typename Req, typename Resp, typename Fn>
grpc::ServerUnaryReactor* KvCacheService::RunOnWorker(
    grpc::CallbackServerContext* ctx, const char* method,
    const grpc::ByteBuffer* request, grpc::ByteBuffer* response, Fn fn) {
  return RunInlineOrOnWorker<Req, Resp>(
      ctx, method, request, response,
      [](const std::string&, const Req&, Resp*) -> std::optional<absl::Status> {
        return std::nullopt;
      },
      std::move(fn));
}

template <typename Req, typename Resp, typename TryInline, typename Fn>
grpc::ServerUnaryReactor* KvCacheService::RunInlineOrOnWorker(
    grpc::CallbackServerContext* ctx, const char* method,
    const grpc::ByteBuffer* request, grpc::ByteBuffer* response,
    TryInline try_inline, Fn fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Call call(this, ctx, method);
  if (!call.tenant().ok()) {
    call.FinishUnary(reactor, call.tenant().status());
    return reactor;
  }
  // Work that needs no disk I/O finishes here, on the gRPC thread: a hop to
  // a worker costs two context switches, more than a memory hit itself.
  auto io = std::make_shared<UnaryIo<Req, Resp>>(request, response);
  if (std::optional<absl::Status> done =
          io->TryRun(try_inline, *call.tenant())) {
    call.FinishUnary(reactor, *done);
    return reactor;
  }
  SubmitOrFinish(reactor, std::move(call),
                 [io, fn = std::move(fn)](Call& call) mutable {
                   return io->Run(fn, *call.tenant());
                 });
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

// The bounds of PutBlocksStream's one response. Each result costs at most
// 4 bytes on the wire without its message text (code < 128), so
// max_message_bytes / 8 results take at most half a message; result texts
// are added while they fit in a quarter of the message, and are left out
// (the code alone) past that. The response never exceeds the limit.
inline uint64_t PutStreamBlockLimit(uint64_t max_message_bytes,
                                    uint64_t max_stream_blocks) {
  return std::min(max_stream_blocks, max_message_bytes / 8);
}
struct PutResultsBudget {
  // Bytes of result messages (text and framing) still allowed.
  uint64_t text_bytes = 0;
};

// Builds the BlockData entries of GetBlocks responses (unary and streamed)
// and counts what they carry, for the metrics.
class BlockDataBuilder {
 public:
  using Got = absl::StatusOr<storage::SharedBytes>;

  // Bytes the entry for `got` adds to a response when its data is sent.
  static uint64_t EntryBytes(const Got& got);

  // Appends entry `index` to `resp`: the block's data, or its error code
  // (WireCode). Returns the bytes it added.
  uint64_t Add(size_t index, const Got& got, GetBlocksResponseWriter* resp);
  // Appends entry `index` as not sent (RESOURCE_EXHAUSTED: the response
  // reached its budget); counted neither as a hit nor as a miss, since the
  // block may not even have been read. Returns the bytes it added.
  static uint64_t AddNotSent(size_t index, GetBlocksResponseWriter* resp);

  // Records the hits, misses and bytes sent of every entry added ("get").
  void Record(Metrics* metrics, uint64_t block_tokens) const;
  uint64_t hits() const { return hit_; }
  uint64_t misses() const { return miss_; }

 private:
  uint64_t hit_ = 0, miss_ = 0, hit_tokens_ = 0, sent_ = 0;
};

// How far one unary GetBlocks got: it starts on the gRPC thread (memory
// hits) and, at the first block that needs disk I/O, continues on a worker
// from where it stopped, so no block is read (or counted) twice.
struct GetBlocksProgress {
  bool parsed = false;
  BlockRequest request;
  size_t next = 0;     // the next hash to read
  uint64_t bytes = 0;  // of the response so far (BlockDataBuilder::Add)
  bool full = false;   // a found block did not fit: nothing more is read
  BlockDataBuilder builder;
};

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_KV_SERVICE_INTERNAL_H_
