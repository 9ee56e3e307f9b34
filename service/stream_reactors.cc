// The streaming RPCs: PutBlocksStream, GetBlocksStream, GetBlocksSession,
// PutCodebookStream, GetCodebookStream. One base (StreamReactor) holds what
// they share: admission, the final status, the metrics when done, steps on a
// worker. They are raw methods (grpc::ByteBuffer messages): each reactor parses
// what it reads and serializes what it writes, so that a message that is not
// the expected type fails with INVALID_ARGUMENT naming it (a typed read reactor
// cannot tell a bad message from the end of the stream).
#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "base/tsan.h"
#include "service/kv_service.h"
#include "service/kv_service_internal.h"
#include "service/validate.h"

namespace vqkv::service {

// GrpcReactor: grpc::ServerReadReactor<grpc::ByteBuffer>,
// grpc::ServerWriteReactor<grpc::ByteBuffer> or
// grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>. A subclass's
// constructor calls Admitted() first and starts nothing when it returns false.
template <typename GrpcReactor>
class KvCacheService::StreamReactor : public GrpcReactor {
 public:
  void OnDone() override {
    AfterHandOff();
    RecordStreamMetrics();
    call_.End();
    delete this;
  }

 protected:
  StreamReactor(KvCacheService* svc, grpc::CallbackServerContext* ctx,
                const char* method)
      : svc_(svc), call_(svc, ctx, method) {}

  // False, after finishing the call, when it was refused (draining, auth).
  bool Admitted() {
    if (call_.tenant().ok()) return true;
    FinishWith(call_.tenant().status());
    return false;
  }
  // REQUIRES: Admitted().
  const std::string& tenant() const { return *call_.tenant(); }
  bool admitted() const { return call_.tenant().ok(); }

  void FinishWith(const absl::Status& s) {
    const grpc::Status status = call_.Status(s);
    base::TsanRelease(this);
    this->Finish(status);
  }

  // gRPC runs the callback a Start* or Finish leads to on a thread of its
  // own, after a hand-off TSan cannot see (base/tsan.h). Read, Write and
  // FinishWith release; every callback begins with AfterHandOff.
  void Read(grpc::ByteBuffer* buffer) {
    base::TsanRelease(this);
    this->StartRead(buffer);
  }
  void Write(const grpc::ByteBuffer* buffer) {
    base::TsanRelease(this);
    this->StartWrite(buffer);
  }
  void AfterHandOff() { base::TsanAcquire(this); }

  // Runs `step` on a worker; when it fails, finishes the call with its
  // status, else runs `next` there too. The first work of a call is
  // admission-controlled (admit = true): when the work queue is full the
  // call finishes at once with RESOURCE_EXHAUSTED; later work of an
  // admitted call is always queued.
  template <typename Step, typename Next>
  void OnWorker(Step step, Next next, bool admit = false) {
    auto work = [this, step, next] {
      const absl::Status s = step();
      if (!s.ok()) {
        FinishWith(s);
        return;
      }
      next();
    };
    if (!admit) {
      svc_->work_.Submit(work);
    } else if (!svc_->work_.TrySubmit(work)) {
      FinishWith(QueueFullError(svc_->work_.max_queued()));
    }
  }

  // For write streams, from OnWriteDone: false, after finishing the call
  // (CANCELLED), when the write did not go out.
  bool Written(bool ok) {
    if (!ok) FinishWith(absl::CancelledError("the client stopped reading"));
    return ok;
  }

  // Metrics beyond the call's own, recorded when the call is done.
  virtual void RecordStreamMetrics() {}

  void StopCountingForDrain() { call_.StopCountingForDrain(); }

  KvCacheService* const svc_;

 private:
  Call call_;
};

// ---------------------------------------------------------------------------
// PutBlocksStream: read a message, store it on a worker, read the next.

class KvCacheService::PutStreamReactor
    : public StreamReactor<grpc::ServerReadReactor<grpc::ByteBuffer>> {
 public:
  PutStreamReactor(KvCacheService* svc, grpc::CallbackServerContext* ctx,
                   grpc::ByteBuffer* raw_resp)
      : StreamReactor(svc, ctx, "PutBlocksStream"),
        raw_resp_(raw_resp),
        block_limit_(PutStreamBlockLimit(svc->options_.max_message_bytes,
                                         svc->options_.max_stream_blocks)) {
    text_budget_.text_bytes = svc->options_.max_message_bytes / 4;
    if (Admitted()) Read(&raw_req_);
  }

  void OnReadDone(bool ok) override {
    AfterHandOff();
    if (!ok) {
      // The client half-closed (or the call was cancelled).
      FinishWith(messages_ == 0
                     ? absl::InvalidArgumentError(
                           "PutBlocksStream carried no messages (empty batch)")
                     : SerializeMessage(resp_, raw_resp_));
      return;
    }
    req_.Clear();
    const absl::Status parsed = ParseMessage(
        raw_req_, absl::StrCat("message ", messages_, ": "), &req_);
    if (!parsed.ok()) {
      FinishWith(parsed);
      return;
    }
    // The per-stream bound, before any work on the message.
    const uint64_t after = blocks_ + static_cast<uint64_t>(req_.blocks_size());
    if (after > block_limit_) {
      FinishWith(absl::ResourceExhaustedError(absl::StrCat(
          "message ", messages_, ": PutBlocksStream takes at most ",
          block_limit_, " blocks per stream (this message would bring it to ",
          after, "); send the rest in another stream")));
      return;
    }
    OnWorker([this] { return Process(); }, [this] { Read(&raw_req_); },
             /*admit=*/messages_ == 0);
  }

 private:
  absl::Status Process() {
    if (messages_ == 0) {
      VQKV_RETURN_IF_ERROR(
          svc_->CheckNamespaceForPut(req_.namespace_(), req_.has_namespace_()));
      ns_ = req_.namespace_();
      ns_id_ = ComputeNamespaceId(tenant(), ns_);
    } else if (req_.has_namespace_() &&
               ComputeNamespaceId(tenant(), req_.namespace_()) != ns_id_) {
      return absl::InvalidArgumentError(
          absl::StrCat("message ", messages_,
                       ": the namespace differs from the first message's"));
    }
    const absl::Status s =
        svc_->DoPutBlocks(tenant(), ns_, ns_id_, req_,
                          /*fail_if_all_failed=*/false, &text_budget_, &resp_);
    if (!s.ok()) {
      return absl::Status(
          s.code(), absl::StrCat("message ", messages_, ": ", s.message()));
    }
    ++messages_;
    blocks_ += static_cast<uint64_t>(req_.blocks_size());
    return absl::OkStatus();
  }

  grpc::ByteBuffer* const raw_resp_;
  const uint64_t block_limit_;
  PutResultsBudget text_budget_;
  grpc::ByteBuffer raw_req_;
  v1::PutBlocksRequest req_;
  v1::PutBlocksResponse resp_;
  v1::Namespace ns_;
  storage::NamespaceId ns_id_;
  int64_t messages_ = 0;
  uint64_t blocks_ = 0;  // stored or reported so far
};

// ---------------------------------------------------------------------------
// GetBlocksStream: fetch a run of blocks on a worker, write it, repeat.

class KvCacheService::GetStreamReactor
    : public StreamReactor<grpc::ServerWriteReactor<grpc::ByteBuffer>> {
 public:
  GetStreamReactor(KvCacheService* svc, grpc::CallbackServerContext* ctx,
                   const grpc::ByteBuffer* raw_req)
      : StreamReactor(svc, ctx, "GetBlocksStream"), raw_req_(raw_req) {
    if (Admitted()) {
      OnWorker([this] { return Prepare(); }, [this] { Next(); },
               /*admit=*/true);
    }
  }

  void OnWriteDone(bool ok) override {
    AfterHandOff();
    if (Written(ok)) svc_->work_.Submit([this] { Next(); });
  }

 private:
  void RecordStreamMetrics() override {
    builder_.Record(svc_->metrics_, req_.namespace_().block_tokens());
    if (admitted()) {
      svc_->CountTenantGets(tenant(), builder_.hits(), builder_.misses());
    }
  }

  absl::Status Prepare() {
    VQKV_RETURN_IF_ERROR(ParseMessage(*raw_req_, "", &req_));
    VQKV_ASSIGN_OR_RETURN(r_, ParseBlockRequest(tenant(), req_));
    budget_ = StreamGetBlocksBudget(svc_->options_.max_message_bytes,
                                    req_.max_response_bytes());
    return absl::OkStatus();
  }

  // Builds the next response message, or finishes when all were sent. A
  // message holds at least one entry, then as many as fit the budget.
  void Next() {
    if (next_ >= r_.hashes.size()) {
      FinishWith(absl::OkStatus());
      return;
    }
    uint64_t bytes = 0;
    while (next_ < r_.hashes.size()) {
      BlockDataBuilder::Got got =
          pending_.has_value()
              ? *std::move(pending_)
              : svc_->store_->GetBlock(tenant(), {r_.ns_id, r_.hashes[next_]});
      pending_.reset();
      if (resp_.entries() > 0 &&
          bytes + BlockDataBuilder::EntryBytes(got) > budget_) {
        pending_ = std::move(got);
        break;
      }
      bytes += builder_.Add(next_, got, &resp_);
      ++next_;
    }
    resp_.Finish(&out_);
    Write(&out_);
  }

  const grpc::ByteBuffer* const raw_req_;
  v1::GetBlocksRequest req_;
  grpc::ByteBuffer out_;
  BlockRequest r_;
  uint64_t budget_ = 0;
  size_t next_ = 0;
  // A block fetched that did not fit the last message: the next one's first.
  std::optional<BlockDataBuilder::Got> pending_;
  GetBlocksResponseWriter resp_;
  BlockDataBuilder builder_;
};

// ---------------------------------------------------------------------------
// GetBlocksSession: read a request, answer it as GetBlocks would (memory hits
// on the gRPC thread, from the first block on disk on a worker), write the
// answer, read the next. One request at a time, so answers keep their order.

class KvCacheService::GetSessionReactor
    : public StreamReactor<
          grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>> {
 public:
  GetSessionReactor(KvCacheService* svc, grpc::CallbackServerContext* ctx)
      : StreamReactor(svc, ctx, "GetBlocksSession") {
    if (!Admitted()) return;
    StopCountingForDrain();
    Read(&in_);
  }

  void OnReadDone(bool ok) override {
    AfterHandOff();
    if (!ok) {  // the client closed its side (or the call broke)
      FinishWith(absl::OkStatus());
      return;
    }
    if (!svc_->Enter()) {
      FinishWith(absl::UnavailableError("server is shutting down"));
      return;
    }
    in_request_ = true;
    request_start_ = absl::Now();
    progress_ = GetBlocksProgress();  // resp_ is empty: Finish cleared it
    if (absl::Status s = ParseMessage(in_, "", &req_); !s.ok()) {
      EndWith(s);
      return;
    }
    std::optional<absl::Status> inline_result = svc_->DoGetBlocks(
        tenant(), req_, /*memory_only=*/true, &progress_, &resp_);
    if (inline_result.has_value()) {
      Answer(*inline_result);
      return;
    }
    // A block is on disk: the request goes on on a worker from that block.
    auto rest = [this] {
      Answer(*svc_->DoGetBlocks(tenant(), req_, /*memory_only=*/false,
                                &progress_, &resp_));
    };
    if (!svc_->work_.TrySubmit(rest)) {
      EndWith(QueueFullError(svc_->work_.max_queued()));
    }
  }

  void OnWriteDone(bool ok) override {
    AfterHandOff();
    EndRequest();
    if (Written(ok)) Read(&in_);
  }

  void OnDone() override {
    AfterHandOff();
    EndRequest();
    StreamReactor::OnDone();  // deletes this
  }

 private:
  void EndRequest() {
    if (in_request_) svc_->Exit();
    in_request_ = false;
  }

  void Answer(const absl::Status& s) {
    if (!s.ok()) {
      EndWith(s);
      return;
    }
    RecordRequest(absl::StatusCode::kOk);
    resp_.Finish(&out_);
    Write(&out_);
  }

  // A failed request ends the session with its status.
  void EndWith(const absl::Status& s) {
    RecordRequest(HideOtherTenants(s).code());
    EndRequest();
    FinishWith(s);
  }

  // Each request is also counted on its own, so that the session's
  // requests show in the RPC latency histograms like unary GetBlocks calls.
  void RecordRequest(absl::StatusCode code) {
    svc_->metrics_->RecordRpc(
        kRequestMetric, static_cast<int>(code),
        absl::ToDoubleSeconds(absl::Now() - request_start_));
  }

  static constexpr char kRequestMetric[] = "GetBlocksSession.request";

  grpc::ByteBuffer in_;
  grpc::ByteBuffer out_;
  v1::GetBlocksRequest req_;
  absl::Time request_start_;
  bool in_request_ = false;  // counted for drain (Enter) until answered
  GetBlocksProgress progress_;
  GetBlocksResponseWriter resp_;
};

// ---------------------------------------------------------------------------
// PutCodebookStream: append chunks on the gRPC thread (a copy, no I/O), then
// validate and store the assembled file on a worker.

class KvCacheService::PutCodebookStreamReactor
    : public StreamReactor<grpc::ServerReadReactor<grpc::ByteBuffer>> {
 public:
  PutCodebookStreamReactor(KvCacheService* svc,
                           grpc::CallbackServerContext* ctx,
                           grpc::ByteBuffer* raw_resp)
      : StreamReactor(svc, ctx, "PutCodebookStream"), raw_resp_(raw_resp) {
    if (Admitted()) Read(&raw_chunk_);
  }

  void OnReadDone(bool ok) override {
    AfterHandOff();
    if (ok) {
      chunk_.Clear();
      absl::Status s = ParseMessage(
          raw_chunk_, absl::StrCat("chunk ", chunks_, ": "), &chunk_);
      if (s.ok()) s = Append();
      if (s.ok()) {
        Read(&raw_chunk_);
      } else {
        FinishWith(s);
      }
      return;
    }
    // The client half-closed (or the call was cancelled).
    if (chunks_ == 0) {
      FinishWith(
          absl::InvalidArgumentError("PutCodebookStream carried no chunks"));
    } else if (data_.size() != total_) {
      FinishWith(absl::InvalidArgumentError(
          absl::StrCat("total_bytes: the stream ended after ", data_.size(),
                       " of ", total_, " bytes")));
    } else {
      OnWorker(
          [this] {
            return svc_->DoPutOneCodebook(tenant(), hash_, data_, &resp_);
          },
          [this] { FinishWith(SerializeMessage(resp_, raw_resp_)); },
          /*admit=*/true);
    }
  }

 private:
  // Checks chunk_ against the stream so far and appends its data.
  absl::Status Append() {
    const std::string where = absl::StrCat("chunk ", chunks_, ": ");
    if (chunks_ == 0) {
      VQKV_RETURN_IF_ERROR(CheckFirstChunk(where));
      hash_ = chunk_.hash();
      total_ = chunk_.total_bytes();
    } else {
      if (chunk_.hash() != 0 && chunk_.hash() != hash_) {
        return absl::InvalidArgumentError(
            where + "hash differs from the first chunk's");
      }
      if (chunk_.total_bytes() != 0 && chunk_.total_bytes() != total_) {
        return absl::InvalidArgumentError(
            where + "total_bytes differs from the first chunk's");
      }
    }
    if (chunk_.offset() != data_.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "offset must be ", data_.size(),
          " (chunks in order, contiguous), got ", chunk_.offset()));
    }
    if (chunk_.data().size() > total_ - data_.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "data of ", chunk_.data().size(), " bytes at offset ",
          chunk_.offset(), " runs past total_bytes ", total_));
    }
    data_.append(chunk_.data());
    ++chunks_;
    return absl::OkStatus();
  }

  // The first chunk names the file: its hash and size (within the limit).
  absl::Status CheckFirstChunk(const std::string& where) const {
    if (chunk_.hash() == 0) {
      return absl::InvalidArgumentError(
          where + "hash must be non-zero in the first chunk");
    }
    if (chunk_.total_bytes() == 0) {
      return absl::InvalidArgumentError(
          where + "total_bytes must be non-zero in the first chunk");
    }
    if (chunk_.total_bytes() > svc_->options_.max_codebook_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat(where, "total_bytes ", chunk_.total_bytes(),
                       " exceeds the server's codebook limit of ",
                       svc_->options_.max_codebook_bytes, " bytes"));
    }
    return absl::OkStatus();
  }

  grpc::ByteBuffer* const raw_resp_;
  v1::PutCodebooksResponse resp_;
  grpc::ByteBuffer raw_chunk_;
  v1::CodebookChunk chunk_;
  uint64_t hash_ = 0;
  uint64_t total_ = 0;
  std::string data_;
  int64_t chunks_ = 0;
};

// ---------------------------------------------------------------------------
// GetCodebookStream: read the set on a worker, then write it in chunks.

class KvCacheService::GetCodebookStreamReactor
    : public StreamReactor<grpc::ServerWriteReactor<grpc::ByteBuffer>> {
 public:
  GetCodebookStreamReactor(KvCacheService* svc,
                           grpc::CallbackServerContext* ctx,
                           const grpc::ByteBuffer* raw_req)
      : StreamReactor(svc, ctx, "GetCodebookStream"),
        raw_req_(raw_req),
        chunk_bytes_(
            std::max<uint64_t>(1, svc->options_.max_message_bytes / 4)) {
    if (Admitted()) {
      OnWorker([this] { return Prepare(); }, [this] { Next(); },
               /*admit=*/true);
    }
  }

  void OnWriteDone(bool ok) override {
    AfterHandOff();
    if (Written(ok)) Next();
  }

 private:
  void RecordStreamMetrics() override { svc_->metrics_->AddBytesSent(offset_); }

  absl::Status Prepare() {
    VQKV_RETURN_IF_ERROR(ParseMessage(*raw_req_, "", &req_));
    if (req_.hash() == 0) {
      return absl::InvalidArgumentError("hash must be non-zero");
    }
    absl::StatusOr<storage::SharedBytes> got =
        svc_->store_->GetCodebooks(req_.hash());
    if (got.status().code() == absl::StatusCode::kNotFound) {
      return absl::NotFoundError(absl::StrCat(
          "codebook set ", absl::Hex(req_.hash(), absl::kZeroPad16),
          " is not registered"));
    }
    VQKV_ASSIGN_OR_RETURN(file_, std::move(got));
    return absl::OkStatus();
  }

  // Writes the next chunk, or finishes when the whole file was sent.
  void Next() {
    if (chunks_ > 0 && offset_ >= file_->size()) {
      FinishWith(absl::OkStatus());
      return;
    }
    chunk_.Clear();
    if (offset_ == 0) {
      chunk_.set_hash(req_.hash());
      chunk_.set_total_bytes(file_->size());
    }
    chunk_.set_offset(offset_);
    const uint64_t n =
        std::min<uint64_t>(chunk_bytes_, file_->size() - offset_);
    chunk_.set_data(file_->data() + offset_, n);
    offset_ += n;
    ++chunks_;
    const absl::Status s = SerializeMessage(chunk_, &out_);
    if (!s.ok()) {
      FinishWith(s);
      return;
    }
    Write(&out_);
  }

  const grpc::ByteBuffer* const raw_req_;
  v1::GetCodebookStreamRequest req_;
  grpc::ByteBuffer out_;
  const uint64_t chunk_bytes_;
  storage::SharedBytes file_;
  uint64_t offset_ = 0;
  int64_t chunks_ = 0;  // written so far (at least one, even when empty)
  v1::CodebookChunk chunk_;
};

// ---------------------------------------------------------------------------

void KvCacheService::RegisterStreams() {
  using grpc::ByteBuffer;
  using grpc::CallbackServerContext;
  MarkMethodRawCallback(
      MethodIndex("PutBlocksStream"),
      new grpc::internal::CallbackClientStreamingHandler<ByteBuffer,
                                                         ByteBuffer>(
          [this](CallbackServerContext* ctx, ByteBuffer* response) {
            return new PutStreamReactor(this, ctx, response);
          }));
  MarkMethodRawCallback(
      MethodIndex("GetBlocksStream"),
      new grpc::internal::CallbackServerStreamingHandler<ByteBuffer,
                                                         ByteBuffer>(
          [this](CallbackServerContext* ctx, const ByteBuffer* request) {
            return new GetStreamReactor(this, ctx, request);
          }));
  MarkMethodRawCallback(
      MethodIndex("GetBlocksSession"),
      new grpc::internal::CallbackBidiHandler<ByteBuffer, ByteBuffer>(
          [this](CallbackServerContext* ctx) {
            return new GetSessionReactor(this, ctx);
          }));
  MarkMethodRawCallback(
      MethodIndex("PutCodebookStream"),
      new grpc::internal::CallbackClientStreamingHandler<ByteBuffer,
                                                         ByteBuffer>(
          [this](CallbackServerContext* ctx, ByteBuffer* response) {
            return new PutCodebookStreamReactor(this, ctx, response);
          }));
  MarkMethodRawCallback(
      MethodIndex("GetCodebookStream"),
      new grpc::internal::CallbackServerStreamingHandler<ByteBuffer,
                                                         ByteBuffer>(
          [this](CallbackServerContext* ctx, const ByteBuffer* request) {
            return new GetCodebookStreamReactor(this, ctx, request);
          }));
}

}  // namespace vqkv::service
