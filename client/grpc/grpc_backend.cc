#include "client/grpc/grpc_backend.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/file.h"
#include "base/logging.h"
#include "base/net.h"
#include "base/status_macros.h"
#include "client/grpc/client_poller.h"
#include "client/grpc/get_session.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::client {
namespace {

// gRPC service config: KVCache calls that fail UNAVAILABLE before they
// commit get one more attempt after a short backoff.
constexpr char kRetryUnavailableOnce[] = R"json({
  "methodConfig": [{
    "name": [{"service": "vqkv.v1.KVCache"}],
    "retryPolicy": {
      "maxAttempts": 2,
      "initialBackoff": "0.02s",
      "maxBackoff": "0.1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
})json";

// Room for message framing and the namespace besides block bytes.
constexpr uint64_t kMessageSlack = 64 << 10;

void ToProto(const storage::NamespaceSpec& ns, v1::Namespace* out) {
  out->set_model_id(ns.model_id);
  out->set_weight_revision(ns.weight_revision);
  out->set_codec(ns.codec);
  out->set_codec_id(ns.codec_id);
  out->set_codebook_hash(ns.codebook_hash);
  out->set_block_tokens(ns.block_tokens);
  out->set_layers(ns.layers);
  out->set_kv_heads(ns.kv_heads);
  out->set_head_dim(ns.head_dim);
  out->set_dtype(static_cast<v1::DType>(ns.dtype));
}

class GrpcBackend : public Backend {
 public:
  GrpcBackend(const GrpcBackendOptions& options,
              std::vector<std::shared_ptr<grpc::Channel>> channels)
      : options_(options),
        channels_(std::move(channels)),
        describe_(absl::StrCat("grpc:", options.target)) {
    for (const auto& channel : channels_) {
      stubs_.push_back(v1::KVCache::NewStub(channel));
    }
  }
  ~GrpcBackend() override { DropIdleSessions(); }

  absl::StatusOr<std::vector<bool>> Lookup(
      const storage::NamespaceSpec& ns,
      absl::Span<const storage::BlockHash> hashes, uint32_t lease_ms,
      absl::Time deadline) override {
    v1::LookupRequest req;
    ToProto(ns, req.mutable_namespace_());
    for (const auto& h : hashes) req.add_hashes(h.ToString());
    req.set_lease_ms(lease_ms);
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline);
    absl::Status s = FromGrpc(NextStub()->Lookup(&ctx, req, &resp), "Lookup");
    if (!s.ok()) return s;
    if (static_cast<size_t>(resp.present_size()) != hashes.size()) {
      return absl::InternalError(
          absl::StrCat(describe_, ": Lookup answered ", resp.present_size(),
                       " entries for ", hashes.size(), " hashes"));
    }
    return std::vector<bool>(resp.present().begin(), resp.present().end());
  }

  absl::StatusOr<std::vector<absl::Status>> Put(
      const storage::NamespaceSpec& ns, absl::Span<const PutItem> blocks,
      absl::Time deadline) override {
    std::vector<absl::Status> out;
    out.reserve(blocks.size());
    const uint64_t budget = options_.max_message_bytes > 2 * kMessageSlack
                                ? options_.max_message_bytes - kMessageSlack
                                : options_.max_message_bytes / 2;
    size_t i = 0;
    while (i < blocks.size()) {
      v1::PutBlocksRequest req;
      ToProto(ns, req.mutable_namespace_());
      uint64_t bytes = 0;
      size_t j = i;
      // At least one block per message; the server rejects what is too big.
      while (j < blocks.size() &&
             (j == i || bytes + blocks[j].data.size() + 64 <= budget)) {
        v1::Block* b = req.add_blocks();
        b->set_hash(blocks[j].hash.ToString());
        b->set_data(blocks[j].data.data(), blocks[j].data.size());
        b->set_chain_position(blocks[j].chain_position);
        bytes += blocks[j].data.size() + 64;
        ++j;
      }
      v1::PutBlocksResponse resp;
      grpc::ClientContext ctx;
      Prepare(&ctx, deadline);
      grpc::Status gs = NextStub()->PutBlocks(&ctx, req, &resp);
      if (!gs.ok()) {
        // "Every block failed with one code" arrives as a call error with
        // no results: report it per block so quota exhaustion is a result.
        const auto code = static_cast<absl::StatusCode>(gs.error_code());
        if (code == absl::StatusCode::kResourceExhausted ||
            code == absl::StatusCode::kAlreadyExists) {
          for (size_t k = i; k < j; ++k) {
            out.push_back(absl::Status(code, gs.error_message()));
          }
          i = j;
          continue;
        }
        return FromGrpc(gs, "PutBlocks");
      }
      if (static_cast<size_t>(resp.results_size()) != j - i) {
        return absl::InternalError(absl::StrCat(
            describe_, ": PutBlocks answered ", resp.results_size(),
            " results for ", j - i, " blocks"));
      }
      for (const v1::PutResult& r : resp.results()) {
        out.push_back(
            absl::Status(static_cast<absl::StatusCode>(r.code()), r.message()));
      }
      i = j;
    }
    return out;
  }

  absl::StatusOr<std::vector<GetItem>> Get(
      const storage::NamespaceSpec& ns,
      absl::Span<const storage::BlockHash> hashes,
      absl::Time deadline) override {
    std::vector<GetItem> out(hashes.size(),
                             absl::UnavailableError("not fetched"));
    std::vector<size_t> pending(hashes.size());
    for (size_t i = 0; i < pending.size(); ++i) pending[i] = i;
    while (!pending.empty()) {
      v1::GetBlocksRequest req;
      ToProto(ns, req.mutable_namespace_());
      for (size_t i : pending) req.add_hashes(hashes[i].ToString());
      v1::GetBlocksResponse resp;
      VQKV_RETURN_IF_ERROR(GetOnce(req, &resp, deadline));
      std::vector<size_t> again;
      for (v1::BlockData& b : *resp.mutable_blocks()) {
        if (b.index() >= pending.size()) {
          return absl::InternalError(
              absl::StrCat(describe_, ": GetBlocks answered index ", b.index(),
                           " of ", pending.size()));
        }
        const size_t i = pending[b.index()];
        const auto code = static_cast<absl::StatusCode>(b.code());
        if (code == absl::StatusCode::kOk) {
          out[i] = std::move(*b.mutable_data());
        } else if (code == absl::StatusCode::kResourceExhausted) {
          again.push_back(i);  // left out for size: ask again
        } else {
          out[i] = absl::Status(
              code, absl::StrCat("block ", i, ": ", CodeText(code)));
        }
      }
      if (again.size() == pending.size()) {
        // No progress: even one block does not fit a message.
        for (size_t i : again) {
          out[i] = absl::ResourceExhaustedError(
              "block larger than the message limit");
        }
        break;
      }
      pending = std::move(again);
    }
    return out;
  }

  // Sets larger than half a message go through PutCodebookStream in chunks
  // of at most a quarter of max_message_bytes; smaller ones through the
  // unary PutCodebooks. `deadline` bounds the whole call.
  absl::Status PutCodebook(uint64_t hash, absl::string_view data,
                           absl::Time deadline) override {
    if (data.size() > options_.max_message_bytes / 2) {
      return PutCodebookStreamed(hash, data, deadline);
    }
    v1::PutCodebooksRequest req;
    v1::Codebook* c = req.add_codebooks();
    c->set_hash(hash);
    c->set_data(data.data(), data.size());
    v1::PutCodebooksResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline);
    absl::Status s =
        FromGrpc(NextStub()->PutCodebooks(&ctx, req, &resp), "PutCodebooks");
    if (!s.ok()) return s;
    if (resp.results_size() != 1) {
      return absl::InternalError(describe_ + ": PutCodebooks: no result");
    }
    const auto code = static_cast<absl::StatusCode>(resp.results(0).code());
    if (code == absl::StatusCode::kOk ||
        code == absl::StatusCode::kAlreadyExists) {
      return absl::OkStatus();
    }
    return absl::Status(
        code,
        absl::StrCat(describe_, ": PutCodebooks: ", resp.results(0).message()));
  }

  // Fetches the set through GetCodebookStream (its size is not known in
  // advance), falling back to the unary GetCodebooks for a server without
  // the stream (UNIMPLEMENTED). `deadline` bounds the whole call.
  absl::StatusOr<std::string> GetCodebook(uint64_t hash,
                                          absl::Time deadline) override {
    absl::StatusOr<std::string> streamed = GetCodebookStreamed(hash, deadline);
    if (streamed.status().code() != absl::StatusCode::kUnimplemented) {
      return streamed;
    }
    v1::GetCodebooksRequest req;
    req.add_hashes(hash);
    v1::GetCodebooksResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline);
    absl::Status s =
        FromGrpc(NextStub()->GetCodebooks(&ctx, req, &resp), "GetCodebooks");
    if (!s.ok()) return s;
    if (resp.codebooks_size() != 1 || !resp.codebooks(0).found()) {
      return absl::NotFoundError(absl::StrCat(describe_, ": codebook set ",
                                              absl::Hex(hash, absl::kZeroPad16),
                                              " is not registered"));
    }
    return std::move(*resp.mutable_codebooks(0)->mutable_data());
  }

  absl::Status PutRendezvous(absl::string_view key, absl::string_view value,
                             absl::Duration ttl, absl::Time deadline) override {
    v1::PutRendezvousRequest req;
    req.set_key(key.data(), key.size());
    req.set_value(value.data(), value.size());
    // Below 1 ms (or negative) goes as 0, which the server rejects; above
    // the wire's range goes as the largest value, which the server caps.
    const int64_t ms = absl::ToInt64Milliseconds(ttl);
    req.set_ttl_ms(static_cast<uint32_t>(
        std::clamp<int64_t>(ms, 0, std::numeric_limits<uint32_t>::max())));
    v1::PutRendezvousResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline);
    return FromGrpc(NextStub()->PutRendezvous(&ctx, req, &resp),
                    "PutRendezvous");
  }

  absl::StatusOr<std::string> GetRendezvous(absl::string_view key,
                                            absl::Time deadline) override {
    v1::GetRendezvousRequest req;
    req.set_key(key.data(), key.size());
    v1::GetRendezvousResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline);
    absl::Status s =
        FromGrpc(NextStub()->GetRendezvous(&ctx, req, &resp), "GetRendezvous");
    if (!s.ok()) return s;
    if (!resp.found()) {
      return absl::NotFoundError(
          absl::StrCat(describe_, ": rendezvous key not found"));
    }
    return std::move(*resp.mutable_value());
  }

  // grpc.health.v1.Health/Check for the whole server (service ""), sent as
  // raw bytes through a generic stub: the request is the empty message, and
  // the response's field 1 (a varint) is the status, SERVING = 1.
  absl::Status CheckHealth(absl::Time deadline) override {
    grpc::GenericStub stub(channels_[NextConnection()]);
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(deadline));
    grpc::Slice empty("");
    const grpc::ByteBuffer request(&empty, 1);
    grpc::ByteBuffer response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                   &request, &response,
                   [&done](grpc::Status s) { done.set_value(std::move(s)); });
    absl::Status s = FromGrpc(done.get_future().get(), "Health/Check");
    if (!s.ok()) return s;
    std::vector<grpc::Slice> slices;
    if (!response.Dump(&slices).ok()) {
      return absl::UnavailableError(
          absl::StrCat(describe_, ": unreadable health response"));
    }
    std::string bytes;
    for (const grpc::Slice& slice : slices) {
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
    const int status = bytes.size() == 2 && bytes[0] == '\x08' ? bytes[1] : 0;
    if (status != 1) {
      return absl::UnavailableError(absl::StrCat(
          describe_, ": health check says not serving (status ", status, ")"));
    }
    return absl::OkStatus();
  }

  std::string Describe() const override { return describe_; }

 private:
  uint64_t ChunkBytes() const {
    return std::max<uint64_t>(1, options_.max_message_bytes / 4);
  }

  // PutCodebookStream: the file in chunks of ChunkBytes(), in order. Errors:
  // the call's status, or the one result's code (ALREADY_EXISTS is OK).
  absl::Status PutCodebookStreamed(uint64_t hash, absl::string_view data,
                                   absl::Time deadline) {
    v1::PutCodebooksResponse resp;
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline);
    std::unique_ptr<grpc::ClientWriter<v1::CodebookChunk>> writer =
        NextStub()->PutCodebookStream(&ctx, &resp);
    const uint64_t chunk_bytes = ChunkBytes();
    uint64_t offset = 0;
    do {
      v1::CodebookChunk chunk;
      if (offset == 0) {
        chunk.set_hash(hash);
        chunk.set_total_bytes(data.size());
      }
      chunk.set_offset(offset);
      const uint64_t n = std::min<uint64_t>(chunk_bytes, data.size() - offset);
      chunk.set_data(data.data() + offset, n);
      offset += n;
      // A failed write means the call is over; Finish says why.
      if (!writer->Write(chunk)) break;
    } while (offset < data.size());
    writer->WritesDone();
    absl::Status s = FromGrpc(writer->Finish(), "PutCodebookStream");
    if (!s.ok()) return s;
    if (resp.results_size() != 1) {
      return absl::InternalError(describe_ + ": PutCodebookStream: no result");
    }
    const auto code = static_cast<absl::StatusCode>(resp.results(0).code());
    if (code == absl::StatusCode::kOk ||
        code == absl::StatusCode::kAlreadyExists) {
      return absl::OkStatus();
    }
    return absl::Status(code, absl::StrCat(describe_, ": PutCodebookStream: ",
                                           resp.results(0).message()));
  }

  // GetCodebookStream: the assembled file. Errors: the call's status
  // (NOT_FOUND for an unregistered set, UNIMPLEMENTED for an older server);
  // kInternal for chunks that are out of order or do not add up.
  absl::StatusOr<std::string> GetCodebookStreamed(uint64_t hash,
                                                  absl::Time deadline) {
    v1::GetCodebookStreamRequest req;
    req.set_hash(hash);
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline);
    std::unique_ptr<grpc::ClientReader<v1::CodebookChunk>> reader =
        NextStub()->GetCodebookStream(&ctx, req);
    std::string out;
    uint64_t total = 0;
    int64_t chunks = 0;
    v1::CodebookChunk chunk;
    absl::Status bad;
    while (reader->Read(&chunk)) {
      if (chunks == 0) total = chunk.total_bytes();
      if (chunk.offset() != out.size() ||
          chunk.data().size() > total - out.size() ||
          (chunks == 0 && chunk.hash() != hash)) {
        bad = absl::InternalError(
            absl::StrCat(describe_, ": GetCodebookStream: chunk ", chunks,
                         " is out of order or past total_bytes"));
        ctx.TryCancel();
        break;
      }
      // The total is the server's word; reserve no more than 1 GiB on it.
      if (chunks == 0)
        out.reserve(std::min<uint64_t>(total, uint64_t{1} << 30));
      out.append(chunk.data());
      ++chunks;
    }
    absl::Status s = FromGrpc(reader->Finish(), "GetCodebookStream");
    if (!bad.ok()) return bad;
    if (!s.ok()) return s;
    if (chunks == 0 || out.size() != total) {
      return absl::InternalError(
          absl::StrCat(describe_, ": GetCodebookStream: got ", out.size(),
                       " of ", total, " bytes"));
    }
    return out;
  }

  // One GetBlocks exchange: over an idle session from the pool (or a new
  // one) when the server has them, else, or when the session breaks for a
  // reason other than the deadline, as a unary GetBlocks call.
  absl::Status GetOnce(const v1::GetBlocksRequest& req,
                       v1::GetBlocksResponse* resp, absl::Time deadline) {
    if (options_.get_sessions && !sessions_unsupported_.load()) {
      std::unique_ptr<GetSession> session = TakeSession();
      absl::Status s = session->RoundTrip(req, resp, deadline);
      if (s.ok()) {
        ReturnSession(std::move(session));
        return s;
      }
      if (s.code() == absl::StatusCode::kDeadlineExceeded) {
        return absl::DeadlineExceededError(
            absl::StrCat(describe_, ": ", s.message()));
      }
      if (s.code() == absl::StatusCode::kUnimplemented &&
          !sessions_unsupported_.exchange(true)) {
        VQKV_LOG(kInfo) << describe_
                        << ": the server has no GetBlocksSession (an older "
                           "vqkv-server): gets use unary GetBlocks calls";
      }
      // The connection went (restart, drain, network): the idle sessions
      // went with it, so they are not tried one by one.
      if (s.code() == absl::StatusCode::kUnavailable) DropIdleSessions();
      // A session the server ended or refused: the unary call decides, on
      // a fresh connection if need be.
      resp->Clear();
    }
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline);
    return FromGrpc(NextStub()->GetBlocks(&ctx, req, resp), "GetBlocks");
  }

  // A caller's idle session: the one it returned last when still there, so
  // a thread keeps reading from one connection (which is what gRPC's
  // "poll" poller rewards: client/grpc/client_poller.h); else a new one on
  // the slot's connection.
  std::unique_ptr<GetSession> TakeSession() {
    const size_t slot = CallerSlot();
    if (GetSession* idle = idle_sessions_[slot].exchange(nullptr)) {
      return std::unique_ptr<GetSession>(idle);
    }
    // No deadline on the session itself: each round trip has its own.
    return std::make_unique<GetSession>(stubs_[slot % stubs_.size()].get(),
                                        [this](grpc::ClientContext* ctx) {
                                          Prepare(ctx, absl::InfiniteFuture());
                                        });
  }

  void DropIdleSessions() {
    for (std::atomic<GetSession*>& idle : idle_sessions_) {
      delete idle.exchange(nullptr);  // closes it
    }
  }

  // Keeps a healthy session for the next get: in the caller's slot, or in
  // another empty one; with every slot taken it is closed.
  void ReturnSession(std::unique_ptr<GetSession> session) {
    const size_t first = CallerSlot();
    for (size_t i = 0; i < kMaxIdleSessions; ++i) {
      GetSession* empty = nullptr;
      if (idle_sessions_[(first + i) % kMaxIdleSessions]
              .compare_exchange_strong(empty, session.get())) {
        session.release();
        return;
      }
    }
  }

  // The calling thread's slot: threads are numbered as they first get, so
  // up to kMaxIdleSessions callers each have a slot of their own.
  static size_t CallerSlot() {
    static std::atomic<size_t> next_thread{0};
    thread_local const size_t thread_index = next_thread.fetch_add(1);
    return thread_index % kMaxIdleSessions;
  }

  static const char* CodeText(absl::StatusCode code) {
    switch (code) {
      case absl::StatusCode::kNotFound:
        return "not found";
      case absl::StatusCode::kDataLoss:
        return "stored copy was corrupt";
      case absl::StatusCode::kUnavailable:
        return "storage unavailable";
      default:
        return "failed";
    }
  }

  void Prepare(grpc::ClientContext* ctx, absl::Time deadline) const {
    if (deadline != absl::InfiniteFuture()) {
      ctx->set_deadline(absl::ToChronoTime(deadline));
    }
    if (!options_.auth_token.empty()) {
      ctx->AddMetadata("authorization", "Bearer " + options_.auth_token);
    }
  }

  absl::Status FromGrpc(const grpc::Status& s, const char* method) const {
    if (s.ok()) return absl::OkStatus();
    return absl::Status(
        static_cast<absl::StatusCode>(s.error_code()),
        absl::StrCat(describe_, ": ", method, ": ", s.error_message()));
  }

  // Calls other than session gets take the connections in turn (a new
  // session goes on its slot's).
  size_t NextConnection() {
    return next_connection_.fetch_add(1, std::memory_order_relaxed) %
           channels_.size();
  }
  v1::KVCache::Stub* NextStub() { return stubs_[NextConnection()].get(); }

  // Callers with a slot of their own; 64 idle sessions stay under the
  // server's 100 streams per connection even on one connection.
  static constexpr size_t kMaxIdleSessions = 64;

  const GrpcBackendOptions options_;
  const std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::KVCache::Stub>> stubs_;  // one per channel
  std::atomic<size_t> next_connection_{0};
  const std::string describe_;
  // Set once the server answered a session with UNIMPLEMENTED.
  std::atomic<bool> sessions_unsupported_{false};
  // Idle sessions by caller slot (owned; null = none). The destructor
  // closes them before the stubs go.
  std::array<std::atomic<GetSession*>, kMaxIdleSessions> idle_sessions_{};
};

// TLS channel credentials from files re-read every tls.reload_seconds (by a
// thread of the provider, which the credentials keep alive). The server's
// certificate must chain to tls.ca_file and carry the target's name.
std::shared_ptr<grpc::ChannelCredentials> TlsCredentials(
    const TlsClientOptions& tls) {
  namespace ge = grpc::experimental;
  std::shared_ptr<ge::CertificateProviderInterface> provider;
  if (tls.cert_file.empty()) {
    provider = std::make_shared<ge::FileWatcherCertificateProvider>(
        tls.ca_file, tls.reload_seconds);
  } else {
    provider = std::make_shared<ge::FileWatcherCertificateProvider>(
        tls.key_file, tls.cert_file, tls.ca_file, tls.reload_seconds);
  }
  ge::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(std::move(provider));
  options.watch_root_certs();
  if (!tls.cert_file.empty()) options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  // Explicit, so the name check does not depend on gRPC's default.
  options.set_certificate_verifier(
      std::make_shared<ge::HostNameCertificateVerifier>());
  return ge::TlsCredentials(options);
}

}  // namespace

absl::Status ValidateTlsClientOptions(const TlsClientOptions& tls) {
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS client certificate and key must be given together");
  }
  if (!tls.enabled()) {
    if (!tls.cert_file.empty() || !tls.server_name.empty()) {
      return absl::InvalidArgumentError(
          "a TLS client certificate or server name needs a CA file (TLS "
          "is off without one)");
    }
    return absl::OkStatus();
  }
  if (tls.reload_seconds < 1 || tls.reload_seconds > 86400) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TLS reload_seconds must be in [1, 86400], got ", tls.reload_seconds));
  }
  VQKV_RETURN_IF_ERROR(base::ReadPemFile(tls.ca_file, "CA file").status());
  if (!tls.cert_file.empty()) {
    VQKV_RETURN_IF_ERROR(
        base::ReadPemFile(tls.cert_file, "client certificate").status());
    VQKV_RETURN_IF_ERROR(
        base::ReadPemFile(tls.key_file, "client key").status());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> NewGrpcBackend(
    const GrpcBackendOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("the server address is empty");
  }
  if (options.connections < 1 ||
      options.connections > GrpcBackendOptions::kMaxConnections) {
    return absl::InvalidArgumentError(absl::StrCat(
        "connections must be in [1, ", GrpcBackendOptions::kMaxConnections,
        "], got ", options.connections));
  }
  grpc::ChannelArguments args;
  const int limit = static_cast<int>(
      std::min<uint64_t>(options.max_message_bytes, INT32_MAX));
  args.SetMaxReceiveMessageSize(limit);
  args.SetMaxSendMessageSize(limit);
  // Reconnect quickly after a server restart: a cache that comes back
  // should be used again within about a second.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 500);
  // A call that finds its connection gone (a server restart that this
  // connection has not noticed yet: with several connections, most of
  // them) is tried once more, on a fresh one. Every KVCache call may be:
  // puts are content-addressed, the rest read.
  args.SetServiceConfigJSON(kRetryUnavailableOnce);
  VQKV_RETURN_IF_ERROR(ValidateTlsClientOptions(options.tls));
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (!options.tls.enabled()) {
    creds = grpc::InsecureChannelCredentials();
    if (!options.auth_token.empty() &&
        !base::IsLoopbackAddress(options.target)) {
      // The server warns as well, but only the client knows what it sends.
      VQKV_LOG(kWarning)
          << "bearer token sent in PLAINTEXT to " << options.target
          << ": anyone on the network path can read it and act as its "
             "tenant. Give the client a TLS CA file (docs/CLIENT.md \"TLS\").";
    }
  } else {
    creds = TlsCredentials(options.tls);
    if (!options.tls.server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls.server_name);
    }
  }
  // gRPC starts with its first channel: with "poll" unless told otherwise
  // (client/grpc/client_poller.h).
  ScopedClientPoller poller;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < options.connections; ++i) {
    // Channels with equal arguments share one connection (gRPC's subchannel
    // pool); the index makes each its own.
    // (SetInt appends, so each channel gets its own copy of the rest.)
    grpc::ChannelArguments own = args;
    own.SetInt("vqkv.client.connection", i);
    channels.push_back(grpc::CreateCustomChannel(options.target, creds, own));
  }
  return std::unique_ptr<Backend>(
      std::make_unique<GrpcBackend>(options, std::move(channels)));
}

}  // namespace vqkv::client
