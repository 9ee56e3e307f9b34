#include "service/kv_service.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kernels/block_format.h"
#include "service/validate.h"

namespace vqkv::service {
namespace {

// Bytes a BlockData entry adds to a response besides its data.
constexpr size_t kEntryOverhead = 32;

double SecondsSince(absl::Time start) {
  return absl::ToDoubleSeconds(absl::Now() - start);
}

// kPermissionDenied from the store means "another tenant's namespace": the
// caller must not learn that it exists.
absl::Status HideOtherTenants(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kPermissionDenied) {
    return absl::NotFoundError("not found");
  }
  return s;
}

uint32_t HeaderTokens(const std::string& block) {
  if (block.size() < sizeof(BlockHeader)) return 0;
  BlockHeader h;
  std::memcpy(&h, block.data(), sizeof(h));
  return h.tokens;
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
    auto h = ParseBlockHash(hashes[i], "hashes", i);
    if (!h.ok()) return h.status();
    out.push_back(*h);
  }
  return out;
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  const absl::Status h = HideOtherTenants(s);
  return grpc::Status(static_cast<grpc::StatusCode>(h.code()),
                      std::string(h.message()));
}

KvCacheService::KvCacheService(storage::TieredStore* store,
                               const TokenStore* tokens, Metrics* metrics,
                               KvServiceOptions options)
    : store_(store),
      tokens_(tokens),
      metrics_(metrics),
      options_(options),
      work_(options.workers < 1 ? 1 : options.workers),
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

static absl::Status ShuttingDown() {
  return absl::UnavailableError("server is shutting down");
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

template <typename Inline, typename Work>
grpc::ServerUnaryReactor* KvCacheService::RunUnary(
    grpc::CallbackServerContext* ctx, const char* method, Inline try_inline,
    Work work) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const absl::Time start = absl::Now();
  if (!Enter()) {
    metrics_->RecordRpc(method, static_cast<int>(ShuttingDown().code()), 0);
    reactor->Finish(ToGrpcStatus(ShuttingDown()));
    return reactor;
  }
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) {
    metrics_->RecordRpc(method, static_cast<int>(tenant.status().code()),
                        SecondsSince(start));
    reactor->Finish(ToGrpcStatus(tenant.status()));
    Exit();
    return reactor;
  }
  // Work that needs no disk I/O finishes here, on the gRPC thread: a hop to
  // a worker costs two context switches, more than a memory hit itself.
  if (std::optional<absl::Status> done = try_inline(*tenant)) {
    const absl::Status s = HideOtherTenants(*done);
    metrics_->RecordRpc(method, static_cast<int>(s.code()),
                        SecondsSince(start));
    reactor->Finish(ToGrpcStatus(s));
    Exit();
    return reactor;
  }
  work_.Submit([this, reactor, method, start, tenant = *std::move(tenant),
                work = std::move(work)]() mutable {
    const absl::Status s = HideOtherTenants(work(tenant));
    metrics_->RecordRpc(method, static_cast<int>(s.code()),
                        SecondsSince(start));
    reactor->Finish(ToGrpcStatus(s));
    Exit();
  });
  return reactor;
}

template <typename Work>
grpc::ServerUnaryReactor* KvCacheService::RunUnary(
    grpc::CallbackServerContext* ctx, const char* method, Work work) {
  return RunUnary(
      ctx, method,
      [](const std::string&) { return std::optional<absl::Status>(); },
      std::move(work));
}

// ---------------------------------------------------------------------------
// Unary handlers.

grpc::ServerUnaryReactor* KvCacheService::Lookup(
    grpc::CallbackServerContext* ctx, const v1::LookupRequest* request,
    v1::LookupResponse* response) {
  // Lookup reads the memory tier and the disk tier's in-memory index only.
  return RunUnary(
      ctx, "Lookup",
      [this, request, response](const std::string& tenant) {
        return std::optional<absl::Status>(
            DoLookup(tenant, *request, response));
      },
      [](const std::string&) { return absl::OkStatus(); });
}

grpc::ServerUnaryReactor* KvCacheService::PutBlocks(
    grpc::CallbackServerContext* ctx, const v1::PutBlocksRequest* request,
    v1::PutBlocksResponse* response) {
  auto put = [this, request, response](const std::string& tenant) {
    absl::Status s =
        CheckNamespaceForPut(request->namespace_(), request->has_namespace_());
    if (!s.ok()) return s;
    const storage::NamespaceId ns_id =
        ComputeNamespaceId(tenant, request->namespace_());
    return DoPutBlocks(tenant, request->namespace_(), ns_id, *request,
                       /*fail_if_all_failed=*/true, response);
  };
  return RunUnary(
      ctx, "PutBlocks",
      [this, request, put](const std::string& tenant) {
        uint64_t bytes = 0;
        for (const v1::Block& b : request->blocks()) bytes += b.data().size();
        if (store_->PutMayTouchDisk(bytes)) {
          return std::optional<absl::Status>();
        }
        return std::optional<absl::Status>(put(tenant));
      },
      put);
}

grpc::ServerUnaryReactor* KvCacheService::GetBlocks(
    grpc::CallbackServerContext* ctx, const v1::GetBlocksRequest* request,
    v1::GetBlocksResponse* response) {
  return RunUnary(
      ctx, "GetBlocks",
      [this, request, response](const std::string& tenant) {
        return DoGetBlocks(tenant, *request, /*memory_only=*/true, response);
      },
      [this, request, response](const std::string& tenant) {
        return *DoGetBlocks(tenant, *request, /*memory_only=*/false, response);
      });
}

grpc::ServerUnaryReactor* KvCacheService::PutCodebooks(
    grpc::CallbackServerContext* ctx, const v1::PutCodebooksRequest* request,
    v1::PutCodebooksResponse* response) {
  return RunUnary(ctx, "PutCodebooks",
                  [this, request, response](const std::string&) {
                    return DoPutCodebooks(*request, response);
                  });
}

grpc::ServerUnaryReactor* KvCacheService::GetCodebooks(
    grpc::CallbackServerContext* ctx, const v1::GetCodebooksRequest* request,
    v1::GetCodebooksResponse* response) {
  return RunUnary(ctx, "GetCodebooks",
                  [this, request, response](const std::string&) {
                    return DoGetCodebooks(*request, response);
                  });
}

grpc::ServerUnaryReactor* KvCacheService::Delete(
    grpc::CallbackServerContext* ctx, const v1::DeleteRequest* request,
    v1::DeleteResponse* response) {
  return RunUnary(ctx, "Delete",
                  [this, request, response](const std::string& tenant) {
                    return DoDelete(tenant, *request, response);
                  });
}

grpc::ServerUnaryReactor* KvCacheService::Stats(
    grpc::CallbackServerContext* ctx, const v1::StatsRequest* /*request*/,
    v1::StatsResponse* response) {
  // Stats reads counters and in-memory usage only.
  return RunUnary(
      ctx, "Stats",
      [this, response](const std::string& tenant) {
        return std::optional<absl::Status>(DoStats(tenant, response));
      },
      [](const std::string&) { return absl::OkStatus(); });
}

grpc::ServerUnaryReactor* KvCacheService::PutRendezvous(
    grpc::CallbackServerContext* ctx, const v1::PutRendezvousRequest* request,
    v1::PutRendezvousResponse* response) {
  // The rendezvous table is in memory: always inline.
  return RunUnary(
      ctx, "PutRendezvous",
      [this, request, response](const std::string& tenant) {
        return std::optional<absl::Status>(
            DoPutRendezvous(tenant, *request, response));
      },
      [](const std::string&) { return absl::OkStatus(); });
}

grpc::ServerUnaryReactor* KvCacheService::GetRendezvous(
    grpc::CallbackServerContext* ctx, const v1::GetRendezvousRequest* request,
    v1::GetRendezvousResponse* response) {
  return RunUnary(
      ctx, "GetRendezvous",
      [this, request, response](const std::string& tenant) {
        return std::optional<absl::Status>(
            DoGetRendezvous(tenant, *request, response));
      },
      [](const std::string&) { return absl::OkStatus(); });
}

// ---------------------------------------------------------------------------
// The work behind the handlers (runs on a worker).

absl::Status KvCacheService::CheckNamespaceForPut(const v1::Namespace& ns,
                                                  bool present) {
  absl::Status s = ValidateNamespace(ns, present);
  if (!s.ok()) return s;
  if (ns.codebook_hash() != 0 && !store_->HasCodebook(ns.codebook_hash())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "codebook set ", absl::Hex(ns.codebook_hash(), absl::kZeroPad16),
        " is not registered; register it with PutCodebooks first"));
  }
  return absl::OkStatus();
}

absl::Status KvCacheService::DoLookup(const std::string& tenant,
                                      const v1::LookupRequest& req,
                                      v1::LookupResponse* resp) {
  absl::Status s = ValidateNamespace(req.namespace_(), req.has_namespace_());
  if (!s.ok()) return s;
  auto hashes = ParseHashes(req.hashes());
  if (!hashes.ok()) return hashes.status();
  const storage::NamespaceId ns_id =
      ComputeNamespaceId(tenant, req.namespace_());
  // The lease is capped by the server; 0 (or leases off) means none.
  const absl::Duration lease =
      std::min(absl::Milliseconds(req.lease_ms()), options_.max_lease);
  const storage::LookupResult r = store_->Lookup(tenant, ns_id, *hashes, lease);
  resp->set_prefix_blocks(static_cast<uint32_t>(r.prefix_blocks));
  resp->mutable_present()->Reserve(static_cast<int>(r.present.size()));
  for (bool p : r.present) resp->add_present(p);
  const uint64_t n = hashes->size();
  const uint64_t hit = static_cast<uint64_t>(r.prefix_blocks);
  const uint64_t bt = req.namespace_().block_tokens();
  metrics_->RecordHits("lookup", hit, n - hit, hit * bt, (n - hit) * bt);
  return absl::OkStatus();
}

absl::Status KvCacheService::DoPutBlocks(const std::string& tenant,
                                         const v1::Namespace& ns,
                                         const storage::NamespaceId& ns_id,
                                         const v1::PutBlocksRequest& req,
                                         bool fail_if_all_failed,
                                         v1::PutBlocksResponse* resp) {
  const int n = req.blocks_size();
  if (n == 0) return absl::InvalidArgumentError("blocks must not be empty");
  if (static_cast<size_t>(n) > kMaxBlocksPerMessage) {
    return absl::InvalidArgumentError(absl::StrCat(
        "at most ", kMaxBlocksPerMessage, " blocks per message, got ", n));
  }
  // Validate everything before storing anything.
  std::vector<storage::BlockHash> hashes;
  hashes.reserve(n);
  absl::flat_hash_set<storage::BlockHash> seen;
  seen.reserve(n);
  for (int i = 0; i < n; ++i) {
    const v1::Block& b = req.blocks(i);
    auto h = ParseBlockHash(b.hash(), "blocks.hash", i);
    if (!h.ok()) return h.status();
    if (!seen.insert(*h).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "blocks[", i, "]: hash ", h->ToHex(), " appears twice in the batch"));
    }
    auto header = ValidateBlock(ns, b.data(), i);
    if (!header.ok()) return header.status();
    hashes.push_back(*h);
  }
  // Blocks already held are reported as ALREADY_EXISTS and not re-put.
  const storage::LookupResult present = store_->Lookup(tenant, ns_id, hashes);
  std::vector<storage::BlockPut> puts;
  std::vector<int> put_index;
  puts.reserve(n);
  for (int i = 0; i < n; ++i) {
    if (present.present[i]) continue;
    storage::BlockPut p;
    p.key = storage::BlockKey{ns_id, hashes[i]};
    p.chain_position = req.blocks(i).chain_position();
    p.block = req.blocks(i).data();
    puts.push_back(p);
    put_index.push_back(i);
  }
  std::vector<absl::Status> results(n, absl::OkStatus());
  for (int i = 0; i < n; ++i) {
    if (present.present[i]) {
      results[i] = absl::AlreadyExistsError(
          "a block with this hash is already stored; kept the stored copy");
    }
  }
  if (!puts.empty()) {
    std::vector<absl::Status> put_results = store_->PutBlocks(tenant, puts);
    for (size_t j = 0; j < puts.size(); ++j) {
      results[put_index[j]] = HideOtherTenants(put_results[j]);
    }
  }
  uint32_t stored = 0;
  uint64_t stored_bytes = 0;
  bool all_same_failure = true;
  for (int i = 0; i < n; ++i) {
    const absl::Status& s = results[i];
    if (s.ok()) {
      ++stored;
      stored_bytes += req.blocks(i).data().size();
    }
    if (s.ok() || s.code() == absl::StatusCode::kAlreadyExists ||
        s.code() != results[0].code()) {
      all_same_failure = false;
    }
  }
  metrics_->AddBlocksStored(stored);
  metrics_->AddBytesReceived(stored_bytes);
  if (fail_if_all_failed && all_same_failure) {
    return absl::Status(
        results[0].code(),
        absl::StrCat("no block stored: all ", n, " failed with ",
                     absl::StatusCodeToString(results[0].code()),
                     "; first: ", results[0].message()));
  }
  resp->mutable_results()->Reserve(resp->results_size() + n);
  for (const absl::Status& s : results) {
    v1::PutResult* r = resp->add_results();
    r->set_code(static_cast<int32_t>(s.code()));
    if (!s.ok()) r->set_message(std::string(s.message()));
  }
  resp->set_stored(resp->stored() + stored);
  return absl::OkStatus();
}

std::optional<absl::Status> KvCacheService::DoGetBlocks(
    const std::string& tenant, const v1::GetBlocksRequest& req,
    bool memory_only, v1::GetBlocksResponse* resp) {
  absl::Status s = ValidateNamespace(req.namespace_(), req.has_namespace_());
  if (!s.ok()) return s;
  auto hashes = ParseHashes(req.hashes());
  if (!hashes.ok()) return hashes.status();
  const storage::NamespaceId ns_id =
      ComputeNamespaceId(tenant, req.namespace_());
  std::vector<absl::StatusOr<storage::SharedBytes>> got;
  if (memory_only) {
    auto from_memory = store_->GetBlocksFromMemory(tenant, ns_id, *hashes);
    if (!from_memory.has_value()) return std::nullopt;
    got = *std::move(from_memory);
  } else {
    got = store_->GetBlocks(tenant, ns_id, *hashes);
  }
  const uint64_t budget =
      options_.max_message_bytes - options_.max_message_bytes / 16;
  uint64_t bytes = 0;
  uint64_t hit = 0, miss = 0, hit_tokens = 0, sent = 0;
  resp->mutable_blocks()->Reserve(static_cast<int>(got.size()));
  for (size_t i = 0; i < got.size(); ++i) {
    v1::BlockData* d = resp->add_blocks();
    d->set_index(static_cast<uint32_t>(i));
    bytes += kEntryOverhead;
    if (!got[i].ok()) {
      d->set_code(
          static_cast<int32_t>(HideOtherTenants(got[i].status()).code()));
      ++miss;
      continue;
    }
    const std::string& block = **got[i];
    ++hit;
    hit_tokens += HeaderTokens(block);
    if (bytes + block.size() > budget) {
      d->set_code(static_cast<int32_t>(absl::StatusCode::kResourceExhausted));
      continue;
    }
    bytes += block.size();
    sent += block.size();
    d->set_code(0);
    d->set_data(block);
    resp->set_found(resp->found() + 1);
  }
  const uint64_t bt = req.namespace_().block_tokens();
  metrics_->RecordHits("get", hit, miss, hit_tokens, miss * bt);
  metrics_->AddBytesSent(sent);
  return absl::OkStatus();
}

absl::Status KvCacheService::DoPutCodebooks(const v1::PutCodebooksRequest& req,
                                            v1::PutCodebooksResponse* resp) {
  const int n = req.codebooks_size();
  if (n == 0) return absl::InvalidArgumentError("codebooks must not be empty");
  if (static_cast<size_t>(n) > kMaxCodebooksPerRequest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "at most ", kMaxCodebooksPerRequest, " codebook sets per request"));
  }
  for (int i = 0; i < n; ++i) {
    absl::Status s =
        ValidateCodebook(req.codebooks(i).hash(), req.codebooks(i).data(), i);
    if (!s.ok()) return s;
  }
  for (int i = 0; i < n; ++i) {
    const v1::Codebook& c = req.codebooks(i);
    v1::PutResult* r = resp->add_results();
    if (store_->HasCodebook(c.hash())) {
      r->set_code(static_cast<int32_t>(absl::StatusCode::kAlreadyExists));
      r->set_message("already registered");
      continue;
    }
    absl::Status s = store_->PutCodebooks(c.hash(), c.data());
    r->set_code(static_cast<int32_t>(s.code()));
    if (!s.ok()) r->set_message(std::string(s.message()));
  }
  return absl::OkStatus();
}

absl::Status KvCacheService::DoPutOneCodebook(uint64_t hash,
                                              const std::string& data,
                                              v1::PutCodebooksResponse* resp) {
  absl::Status s = ValidateCodebook(hash, data, 0);
  if (!s.ok()) return s;
  v1::PutResult* r = resp->add_results();
  if (store_->HasCodebook(hash)) {
    r->set_code(static_cast<int32_t>(absl::StatusCode::kAlreadyExists));
    r->set_message("already registered");
    return absl::OkStatus();
  }
  s = store_->PutCodebooks(hash, data);
  r->set_code(static_cast<int32_t>(s.code()));
  if (!s.ok()) r->set_message(std::string(s.message()));
  return absl::OkStatus();
}

absl::Status KvCacheService::DoGetCodebooks(const v1::GetCodebooksRequest& req,
                                            v1::GetCodebooksResponse* resp) {
  const int n = req.hashes_size();
  if (n == 0) return absl::InvalidArgumentError("hashes must not be empty");
  if (static_cast<size_t>(n) > kMaxCodebooksPerRequest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "at most ", kMaxCodebooksPerRequest, " codebook hashes per request"));
  }
  for (int i = 0; i < n; ++i) {
    if (req.hashes(i) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("hashes[", i, "] must be non-zero"));
    }
  }
  for (int i = 0; i < n; ++i) {
    v1::CodebookEntry* e = resp->add_codebooks();
    e->set_hash(req.hashes(i));
    auto bytes = store_->GetCodebooks(req.hashes(i));
    if (bytes.ok()) {
      e->set_found(true);
      e->set_data(**bytes);
    } else if (bytes.status().code() != absl::StatusCode::kNotFound) {
      return absl::Status(
          bytes.status().code(),
          absl::StrCat("hashes[", i, "]: ", bytes.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::Status KvCacheService::DoDelete(const std::string& tenant,
                                      const v1::DeleteRequest& req,
                                      v1::DeleteResponse* resp) {
  absl::Status s = ValidateNamespace(req.namespace_(), req.has_namespace_());
  if (!s.ok()) return s;
  const storage::NamespaceId ns_id =
      ComputeNamespaceId(tenant, req.namespace_());
  if (req.whole_namespace()) {
    if (!req.hashes().empty()) {
      return absl::InvalidArgumentError(
          "hashes must be empty when whole_namespace is set");
    }
    auto info = store_->DeleteNamespace(tenant, ns_id);
    if (info.ok()) {
      resp->set_deleted(info->blocks);
      return absl::OkStatus();
    }
    const absl::Status hidden = HideOtherTenants(info.status());
    if (hidden.code() == absl::StatusCode::kNotFound) {
      resp->set_deleted(0);
      return absl::OkStatus();
    }
    return hidden;
  }
  auto hashes = ParseHashes(req.hashes());
  if (!hashes.ok()) return hashes.status();
  uint64_t deleted = 0;
  for (const storage::BlockHash& h : *hashes) {
    const absl::Status d =
        HideOtherTenants(store_->DeleteBlock(tenant, {ns_id, h}));
    if (d.ok()) {
      ++deleted;
    } else if (d.code() != absl::StatusCode::kNotFound) {
      return d;
    }
  }
  resp->set_deleted(deleted);
  return absl::OkStatus();
}

absl::Status KvCacheService::DoStats(const std::string& tenant,
                                     v1::StatsResponse* resp) {
  const storage::StoreStats st = store_->Stats();
  const storage::TieredStoreOptions& opt = store_->options();
  resp->set_tenant(tenant);
  resp->set_tenant_bytes(store_->TenantUsage(tenant));
  auto q = opt.tenant_quotas.find(tenant);
  resp->set_tenant_quota_bytes(
      q == opt.tenant_quotas.end() ? opt.default_tenant_quota : q->second);
  v1::TierStats* mem = resp->add_tiers();
  mem->set_name("memory");
  mem->set_blocks(st.memory.blocks);
  mem->set_bytes(st.memory.bytes);
  mem->set_capacity_bytes(opt.memory_bytes);
  mem->set_evictions(st.memory_evictions);
  if (st.has_disk) {
    v1::TierStats* disk = resp->add_tiers();
    disk->set_name("disk");
    disk->set_blocks(st.disk.blocks);
    disk->set_bytes(st.disk.bytes);
    disk->set_capacity_bytes(opt.disk_bytes);
    disk->set_evictions(st.dropped);
  }
  resp->set_block_hits(st.memory_hits + st.disk_hits);
  resp->set_block_misses(st.misses);
  resp->set_corrupt_blocks(st.corrupt_dropped);
  resp->set_storage_faults(st.disk_faults);
  resp->set_last_fault(st.last_disk_error);
  resp->set_codebooks(st.codebooks);
  return absl::OkStatus();
}

absl::Status KvCacheService::DoPutRendezvous(
    const std::string& tenant, const v1::PutRendezvousRequest& req,
    v1::PutRendezvousResponse* resp) {
  // The table checks key, value and ttl_ms and names the bad field.
  absl::StatusOr<absl::Duration> granted = rendezvous_.Put(
      tenant, req.key(), req.value(), absl::Milliseconds(req.ttl_ms()));
  if (!granted.ok()) return granted.status();
  resp->set_ttl_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(*granted)));
  return absl::OkStatus();
}

absl::Status KvCacheService::DoGetRendezvous(
    const std::string& tenant, const v1::GetRendezvousRequest& req,
    v1::GetRendezvousResponse* resp) {
  absl::StatusOr<storage::RendezvousEntry> got =
      rendezvous_.Get(tenant, req.key());
  if (!got.ok()) {
    if (got.status().code() == absl::StatusCode::kNotFound) {
      resp->set_found(false);
      return absl::OkStatus();
    }
    return got.status();
  }
  resp->set_found(true);
  resp->set_remaining_ttl_ms(static_cast<uint32_t>(
      std::max<int64_t>(1, absl::ToInt64Milliseconds(absl::Ceil(
                               got->remaining_ttl, absl::Milliseconds(1))))));
  *resp->mutable_value() = std::move(got->value);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// PutBlocksStream: read a message, store it on a worker, read the next.

class KvCacheService::PutStreamReactor
    : public grpc::ServerReadReactor<v1::PutBlocksRequest> {
 public:
  PutStreamReactor(KvCacheService* svc, v1::PutBlocksResponse* resp,
                   absl::StatusOr<std::string> tenant)
      : svc_(svc), resp_(resp), start_(absl::Now()), entered_(svc->Enter()) {
    if (!entered_) {
      FinishWith(ShuttingDown());
      return;
    }
    if (!tenant.ok()) {
      FinishWith(tenant.status());
      return;
    }
    tenant_ = *std::move(tenant);
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client half-closed (or the call was cancelled).
      if (messages_ == 0) {
        FinishWith(absl::InvalidArgumentError(
            "PutBlocksStream carried no messages (empty batch)"));
      } else {
        FinishWith(absl::OkStatus());
      }
      return;
    }
    svc_->work_.Submit([this] {
      absl::Status s = Process();
      if (!s.ok()) {
        FinishWith(s);
        return;
      }
      StartRead(&req_);
    });
  }

  void OnDone() override {
    svc_->metrics_->RecordRpc("PutBlocksStream", code_, SecondsSince(start_));
    if (entered_) svc_->Exit();
    delete this;
  }

 private:
  absl::Status Process() {
    if (messages_ == 0) {
      absl::Status s =
          svc_->CheckNamespaceForPut(req_.namespace_(), req_.has_namespace_());
      if (!s.ok()) return s;
      ns_ = req_.namespace_();
      ns_id_ = ComputeNamespaceId(tenant_, ns_);
    } else if (req_.has_namespace_() &&
               ComputeNamespaceId(tenant_, req_.namespace_()) != ns_id_) {
      return absl::InvalidArgumentError(
          absl::StrCat("message ", messages_,
                       ": the namespace differs from the first message's"));
    }
    absl::Status s = svc_->DoPutBlocks(tenant_, ns_, ns_id_, req_,
                                       /*fail_if_all_failed=*/false, resp_);
    if (!s.ok()) {
      return absl::Status(
          s.code(), absl::StrCat("message ", messages_, ": ", s.message()));
    }
    ++messages_;
    return absl::OkStatus();
  }

  void FinishWith(const absl::Status& s) {
    const absl::Status h = HideOtherTenants(s);
    code_ = static_cast<int>(h.code());
    Finish(ToGrpcStatus(h));
  }

  KvCacheService* const svc_;
  v1::PutBlocksResponse* const resp_;
  const absl::Time start_;
  const bool entered_;
  std::string tenant_;
  v1::PutBlocksRequest req_;
  v1::Namespace ns_;
  storage::NamespaceId ns_id_;
  int messages_ = 0;
  int code_ = 0;
};

grpc::ServerReadReactor<v1::PutBlocksRequest>* KvCacheService::PutBlocksStream(
    grpc::CallbackServerContext* ctx, v1::PutBlocksResponse* response) {
  return new PutStreamReactor(this, response, Authenticate(ctx));
}

// ---------------------------------------------------------------------------
// GetBlocksStream: fetch a run of blocks on a worker, write it, repeat.

class KvCacheService::GetStreamReactor
    : public grpc::ServerWriteReactor<v1::GetBlocksResponse> {
 public:
  GetStreamReactor(KvCacheService* svc, const v1::GetBlocksRequest* req,
                   absl::StatusOr<std::string> tenant)
      : svc_(svc), req_(req), start_(absl::Now()), entered_(svc->Enter()) {
    if (!entered_) {
      FinishWith(ShuttingDown());
      return;
    }
    if (!tenant.ok()) {
      FinishWith(tenant.status());
      return;
    }
    tenant_ = *std::move(tenant);
    svc_->work_.Submit([this] {
      absl::Status s = Prepare();
      if (!s.ok()) {
        FinishWith(s);
        return;
      }
      Next();
    });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishWith(absl::CancelledError("the client stopped reading"));
      return;
    }
    svc_->work_.Submit([this] { Next(); });
  }

  void OnDone() override {
    svc_->metrics_->RecordRpc("GetBlocksStream", code_, SecondsSince(start_));
    svc_->metrics_->RecordHits("get", hit_, miss_, hit_tokens_,
                               miss_ * req_->namespace_().block_tokens());
    svc_->metrics_->AddBytesSent(sent_);
    if (entered_) svc_->Exit();
    delete this;
  }

 private:
  absl::Status Prepare() {
    absl::Status s =
        ValidateNamespace(req_->namespace_(), req_->has_namespace_());
    if (!s.ok()) return s;
    auto hashes = ParseHashes(req_->hashes());
    if (!hashes.ok()) return hashes.status();
    hashes_ = *std::move(hashes);
    ns_id_ = ComputeNamespaceId(tenant_, req_->namespace_());
    const uint64_t cap = svc_->options_.max_message_bytes -
                         svc_->options_.max_message_bytes / 16;
    budget_ = req_->max_response_bytes() == 0
                  ? svc_->options_.max_message_bytes / 4
                  : std::min<uint64_t>(req_->max_response_bytes(), cap);
    return absl::OkStatus();
  }

  // Builds the next response message, or finishes when all were sent.
  void Next() {
    if (next_ >= hashes_.size()) {
      FinishWith(absl::OkStatus());
      return;
    }
    resp_.Clear();
    uint64_t bytes = 0;
    while (next_ < hashes_.size()) {
      absl::StatusOr<storage::SharedBytes> got =
          pending_.has_value()
              ? *std::move(pending_)
              : svc_->store_->GetBlock(tenant_, {ns_id_, hashes_[next_]});
      pending_.reset();
      const uint64_t size =
          kEntryOverhead + (got.ok() ? (*got)->size() : uint64_t{0});
      if (resp_.blocks_size() > 0 && bytes + size > budget_) {
        pending_ = std::move(got);
        break;
      }
      bytes += size;
      v1::BlockData* d = resp_.add_blocks();
      d->set_index(static_cast<uint32_t>(next_));
      if (got.ok()) {
        d->set_code(0);
        d->set_data(**got);
        resp_.set_found(resp_.found() + 1);
        ++hit_;
        hit_tokens_ += HeaderTokens(**got);
        sent_ += (*got)->size();
      } else {
        d->set_code(
            static_cast<int32_t>(HideOtherTenants(got.status()).code()));
        ++miss_;
      }
      ++next_;
    }
    StartWrite(&resp_);
  }

  void FinishWith(const absl::Status& s) {
    const absl::Status h = HideOtherTenants(s);
    code_ = static_cast<int>(h.code());
    Finish(ToGrpcStatus(h));
  }

  KvCacheService* const svc_;
  const v1::GetBlocksRequest* const req_;
  const absl::Time start_;
  const bool entered_;
  std::string tenant_;
  std::vector<storage::BlockHash> hashes_;
  storage::NamespaceId ns_id_;
  uint64_t budget_ = 0;
  size_t next_ = 0;
  std::optional<absl::StatusOr<storage::SharedBytes>> pending_;
  v1::GetBlocksResponse resp_;
  uint64_t hit_ = 0, miss_ = 0, hit_tokens_ = 0, sent_ = 0;
  int code_ = 0;
};

grpc::ServerWriteReactor<v1::GetBlocksResponse>*
KvCacheService::GetBlocksStream(grpc::CallbackServerContext* ctx,
                                const v1::GetBlocksRequest* request) {
  return new GetStreamReactor(this, request, Authenticate(ctx));
}

// ---------------------------------------------------------------------------
// PutCodebookStream: append chunks on the gRPC thread (a copy, no I/O), then
// validate and store the assembled file on a worker.

class KvCacheService::PutCodebookStreamReactor
    : public grpc::ServerReadReactor<v1::CodebookChunk> {
 public:
  PutCodebookStreamReactor(KvCacheService* svc, v1::PutCodebooksResponse* resp,
                           const absl::StatusOr<std::string>& tenant)
      : svc_(svc), resp_(resp), start_(absl::Now()), entered_(svc->Enter()) {
    if (!entered_) {
      FinishWith(ShuttingDown());
      return;
    }
    if (!tenant.ok()) {
      FinishWith(tenant.status());
      return;
    }
    StartRead(&chunk_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client half-closed (or the call was cancelled).
      if (chunks_ == 0) {
        FinishWith(
            absl::InvalidArgumentError("PutCodebookStream carried no chunks"));
        return;
      }
      if (data_.size() != total_) {
        FinishWith(absl::InvalidArgumentError(
            absl::StrCat("total_bytes: the stream ended after ", data_.size(),
                         " of ", total_, " bytes")));
        return;
      }
      svc_->work_.Submit(
          [this] { FinishWith(svc_->DoPutOneCodebook(hash_, data_, resp_)); });
      return;
    }
    absl::Status s = Append();
    if (!s.ok()) {
      FinishWith(s);
      return;
    }
    StartRead(&chunk_);
  }

  void OnDone() override {
    svc_->metrics_->RecordRpc("PutCodebookStream", code_, SecondsSince(start_));
    if (entered_) svc_->Exit();
    delete this;
  }

 private:
  // Checks chunk_ against the stream so far and appends its data.
  absl::Status Append() {
    const std::string where = absl::StrCat("chunk ", chunks_, ": ");
    if (chunks_ == 0) {
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

  void FinishWith(const absl::Status& s) {
    code_ = static_cast<int>(s.code());
    Finish(ToGrpcStatus(s));
  }

  KvCacheService* const svc_;
  v1::PutCodebooksResponse* const resp_;
  const absl::Time start_;
  const bool entered_;
  v1::CodebookChunk chunk_;
  uint64_t hash_ = 0;
  uint64_t total_ = 0;
  std::string data_;
  int64_t chunks_ = 0;
  int code_ = 0;
};

grpc::ServerReadReactor<v1::CodebookChunk>* KvCacheService::PutCodebookStream(
    grpc::CallbackServerContext* ctx, v1::PutCodebooksResponse* response) {
  return new PutCodebookStreamReactor(this, response, Authenticate(ctx));
}

// ---------------------------------------------------------------------------
// GetCodebookStream: read the set on a worker, then write it in chunks.

class KvCacheService::GetCodebookStreamReactor
    : public grpc::ServerWriteReactor<v1::CodebookChunk> {
 public:
  GetCodebookStreamReactor(KvCacheService* svc,
                           const v1::GetCodebookStreamRequest* req,
                           const absl::StatusOr<std::string>& tenant)
      : svc_(svc), req_(req), start_(absl::Now()), entered_(svc->Enter()) {
    if (!entered_) {
      FinishWith(ShuttingDown());
      return;
    }
    if (!tenant.ok()) {
      FinishWith(tenant.status());
      return;
    }
    chunk_bytes_ = std::max<uint64_t>(1, svc_->options_.max_message_bytes / 4);
    svc_->work_.Submit([this] {
      absl::Status s = Prepare();
      if (!s.ok()) {
        FinishWith(s);
        return;
      }
      Next();
    });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishWith(absl::CancelledError("the client stopped reading"));
      return;
    }
    Next();
  }

  void OnDone() override {
    svc_->metrics_->RecordRpc("GetCodebookStream", code_, SecondsSince(start_));
    svc_->metrics_->AddBytesSent(offset_);
    if (entered_) svc_->Exit();
    delete this;
  }

 private:
  absl::Status Prepare() {
    if (req_->hash() == 0) {
      return absl::InvalidArgumentError("hash must be non-zero");
    }
    absl::StatusOr<storage::SharedBytes> got =
        svc_->store_->GetCodebooks(req_->hash());
    if (!got.ok()) {
      if (got.status().code() == absl::StatusCode::kNotFound) {
        return absl::NotFoundError(absl::StrCat(
            "codebook set ", absl::Hex(req_->hash(), absl::kZeroPad16),
            " is not registered"));
      }
      return got.status();
    }
    file_ = *std::move(got);
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
      chunk_.set_hash(req_->hash());
      chunk_.set_total_bytes(file_->size());
    }
    chunk_.set_offset(offset_);
    const uint64_t n =
        std::min<uint64_t>(chunk_bytes_, file_->size() - offset_);
    chunk_.set_data(file_->data() + offset_, n);
    offset_ += n;
    ++chunks_;
    StartWrite(&chunk_);
  }

  void FinishWith(const absl::Status& s) {
    code_ = static_cast<int>(s.code());
    Finish(ToGrpcStatus(s));
  }

  KvCacheService* const svc_;
  const v1::GetCodebookStreamRequest* const req_;
  const absl::Time start_;
  const bool entered_;
  uint64_t chunk_bytes_ = 1;
  storage::SharedBytes file_;
  uint64_t offset_ = 0;
  int64_t chunks_ = 0;  // written so far (at least one, even when empty)
  v1::CodebookChunk chunk_;
  int code_ = 0;
};

grpc::ServerWriteReactor<v1::CodebookChunk>* KvCacheService::GetCodebookStream(
    grpc::CallbackServerContext* ctx,
    const v1::GetCodebookStreamRequest* request) {
  return new GetCodebookStreamReactor(this, request, Authenticate(ctx));
}

}  // namespace vqkv::service
