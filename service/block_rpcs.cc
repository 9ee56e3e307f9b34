// The work of the block RPCs (Lookup, PutBlocks, GetBlocks, Delete) and of
// Stats; kv_service.cc routes the calls here, stream_reactors.cc reuses
// DoPutBlocks and BlockDataBuilder for the streamed forms.
#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "base/status_macros.h"
#include "kernels/block_format.h"
#include "service/kv_service.h"
#include "service/kv_service_internal.h"
#include "service/validate.h"

namespace vqkv::service {
namespace {

// Bytes a BlockData entry adds to a response besides its data.
constexpr uint64_t kEntryOverhead = 32;

uint32_t HeaderTokens(const std::string& block) {
  if (block.size() < sizeof(BlockHeader)) return 0;
  BlockHeader h;
  std::memcpy(&h, block.data(), sizeof(h));
  return h.tokens;
}

// A PutBlocks message's blocks, checked before any is stored: 1 to
// kMaxBlocksPerMessage of them, each with a valid hash that appears once and
// a block valid for `ns`. Returns the parsed hashes.
absl::StatusOr<std::vector<storage::BlockHash>> ValidatePutBatch(
    const v1::Namespace& ns, const v1::PutBlocksRequest& req) {
  const int n = req.blocks_size();
  if (n == 0) return absl::InvalidArgumentError("blocks must not be empty");
  if (static_cast<size_t>(n) > kMaxBlocksPerMessage) {
    return absl::InvalidArgumentError(absl::StrCat(
        "at most ", kMaxBlocksPerMessage, " blocks per message, got ", n));
  }
  std::vector<storage::BlockHash> hashes;
  hashes.reserve(n);
  absl::flat_hash_set<storage::BlockHash> seen;
  seen.reserve(n);
  for (int i = 0; i < n; ++i) {
    const v1::Block& b = req.blocks(i);
    VQKV_ASSIGN_OR_RETURN(storage::BlockHash h,
                          ParseBlockHash(b.hash(), "blocks.hash", i));
    if (!seen.insert(h).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "blocks[", i, "]: hash ", h.ToHex(), " appears twice in the batch"));
    }
    VQKV_RETURN_IF_ERROR(ValidateBlock(ns, b.data(), i).status());
    hashes.push_back(h);
  }
  return hashes;
}

// The unary PutBlocks rule: when every block failed with one code (not
// ALREADY_EXISTS), the call fails with it; OK otherwise.
absl::Status AllFailedTheSame(const std::vector<absl::Status>& results) {
  const absl::Status& first = results[0];
  for (const absl::Status& s : results) {
    if (s.ok() || s.code() == absl::StatusCode::kAlreadyExists ||
        s.code() != first.code()) {
      return absl::OkStatus();
    }
  }
  return absl::Status(
      first.code(),
      absl::StrCat("no block stored: all ", results.size(), " failed with ",
                   absl::StatusCodeToString(first.code()),
                   "; first: ", first.message()));
}

}  // namespace

uint64_t BlockDataBuilder::EntryBytes(const Got& got) {
  return kEntryOverhead + (got.ok() ? (*got)->size() : uint64_t{0});
}

uint64_t BlockDataBuilder::Add(size_t index, const Got& got,
                               GetBlocksResponseWriter* resp) {
  if (!got.ok()) {
    resp->AddCode(static_cast<uint32_t>(index), WireCode(got.status()));
    ++miss_;
    return kEntryOverhead;
  }
  const std::string& block = **got;
  ++hit_;
  hit_tokens_ += HeaderTokens(block);
  resp->AddBlock(static_cast<uint32_t>(index), *got);
  sent_ += block.size();
  return kEntryOverhead + block.size();
}

uint64_t BlockDataBuilder::AddNotSent(size_t index,
                                      GetBlocksResponseWriter* resp) {
  resp->AddCode(static_cast<uint32_t>(index),
                static_cast<int32_t>(absl::StatusCode::kResourceExhausted));
  return kEntryOverhead;
}

void BlockDataBuilder::Record(Metrics* metrics, uint64_t block_tokens) const {
  metrics->RecordHits("get", hit_, miss_, hit_tokens_, miss_ * block_tokens);
  metrics->AddBytesSent(sent_);
}

// ---------------------------------------------------------------------------
// The work behind the handlers (kv_service.cc).

absl::Status KvCacheService::CheckNamespaceForPut(const v1::Namespace& ns,
                                                  bool present) {
  VQKV_RETURN_IF_ERROR(ValidateNamespace(ns, present));
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
  VQKV_ASSIGN_OR_RETURN(const BlockRequest r, ParseBlockRequest(tenant, req));
  // The lease is capped by the server; 0 (or leases off) means none.
  const absl::Duration lease =
      std::min(absl::Milliseconds(req.lease_ms()), options_.max_lease);
  const storage::LookupResult found =
      store_->Lookup(tenant, r.ns_id, r.hashes, lease);
  resp->set_prefix_blocks(static_cast<uint32_t>(found.prefix_blocks));
  resp->mutable_present()->Reserve(static_cast<int>(found.present.size()));
  for (bool p : found.present) resp->add_present(p);
  const uint64_t n = r.hashes.size();
  const uint64_t hit = static_cast<uint64_t>(found.prefix_blocks);
  const uint64_t bt = req.namespace_().block_tokens();
  metrics_->RecordHits("lookup", hit, n - hit, hit * bt, (n - hit) * bt);
  return absl::OkStatus();
}

absl::Status KvCacheService::DoPutBlocks(const std::string& tenant,
                                         const v1::Namespace& ns,
                                         const storage::NamespaceId& ns_id,
                                         const v1::PutBlocksRequest& req,
                                         bool fail_if_all_failed,
                                         PutResultsBudget* text_budget,
                                         v1::PutBlocksResponse* resp) {
  // Validate everything before storing anything.
  VQKV_ASSIGN_OR_RETURN(const std::vector<storage::BlockHash> hashes,
                        ValidatePutBatch(ns, req));
  const int n = req.blocks_size();
  // Blocks already held are reported as ALREADY_EXISTS and not re-put. The
  // store decides under each key's lock, which a put holds until its block
  // is on disk in sync mode: a duplicate of a block still being written
  // waits for that write, so ALREADY_EXISTS, like OK, is only answered for
  // a block that is stored (durably, in sync mode). (A lookup first would
  // answer it for a block whose write could still fail or be cut by a
  // crash.)
  std::vector<storage::BlockPut> puts(n);
  for (int i = 0; i < n; ++i) {
    puts[i].key = storage::BlockKey{ns_id, hashes[i]};
    puts[i].chain_position = req.blocks(i).chain_position();
    puts[i].block = req.blocks(i).data();
  }
  std::vector<absl::Status> results =
      store_->PutBlocks(tenant, puts, storage::DuplicatePut::kAlreadyExists);
  for (absl::Status& s : results) s = HideOtherTenants(s);
  uint32_t stored = 0;
  uint64_t stored_bytes = 0;
  for (int i = 0; i < n; ++i) {
    if (!results[i].ok()) continue;
    ++stored;
    stored_bytes += req.blocks(i).data().size();
  }
  metrics_->AddBlocksStored(stored);
  metrics_->AddBytesReceived(stored_bytes);
  if (fail_if_all_failed) VQKV_RETURN_IF_ERROR(AllFailedTheSame(results));
  resp->mutable_results()->Reserve(resp->results_size() + n);
  for (const absl::Status& s : results) {
    v1::PutResult* r = resp->add_results();
    r->set_code(static_cast<int32_t>(s.code()));
    if (s.ok()) continue;
    if (text_budget == nullptr) {
      r->set_message(std::string(s.message()));
      continue;
    }
    // Tag and length of the field, then the text.
    const uint64_t cost = s.message().size() + 4;
    if (s.code() == absl::StatusCode::kAlreadyExists ||
        cost > text_budget->text_bytes) {
      continue;
    }
    text_budget->text_bytes -= cost;
    r->set_message(std::string(s.message()));
  }
  resp->set_stored(resp->stored() + stored);
  return absl::OkStatus();
}

std::optional<absl::Status> KvCacheService::DoGetBlocks(
    const std::string& tenant, const v1::GetBlocksRequest& req,
    bool memory_only, GetBlocksProgress* progress,
    GetBlocksResponseWriter* resp) {
  if (!progress->parsed) {
    VQKV_ASSIGN_OR_RETURN(progress->request, ParseBlockRequest(tenant, req));
    progress->parsed = true;
  }
  const BlockRequest& r = progress->request;
  const uint64_t budget = UnaryGetBlocksBudget(options_.max_message_bytes);
  // Blocks are read one at a time, in request order, and reading stops at
  // the first found block that does not fit the budget: nothing past the
  // budget is read from disk (or promoted into memory), and the rest is
  // reported as not sent (RESOURCE_EXHAUSTED) without being looked at.
  while (progress->next < r.hashes.size() && !progress->full) {
    const size_t i = progress->next;
    BlockDataBuilder::Got got;
    if (memory_only) {
      auto from_memory = store_->GetBlocksFromMemory(
          tenant, r.ns_id, absl::MakeConstSpan(&r.hashes[i], 1));
      // Needs disk I/O: the caller continues on a worker from block i.
      if (!from_memory.has_value()) return std::nullopt;
      got = std::move((*from_memory)[0]);
    } else {
      got = store_->GetBlock(tenant, {r.ns_id, r.hashes[i]});
    }
    ++progress->next;
    if (got.ok() &&
        progress->bytes + BlockDataBuilder::EntryBytes(got) > budget) {
      progress->full = true;
      progress->builder.AddNotSent(i, resp);
      break;
    }
    progress->bytes += progress->builder.Add(i, got, resp);
  }
  for (size_t i = progress->next; i < r.hashes.size(); ++i) {
    progress->builder.AddNotSent(i, resp);
  }
  progress->next = r.hashes.size();
  progress->builder.Record(metrics_, req.namespace_().block_tokens());
  CountTenantGets(tenant, progress->builder.hits(), progress->builder.misses());
  return absl::OkStatus();
}

absl::Status KvCacheService::DoDelete(const std::string& tenant,
                                      const v1::DeleteRequest& req,
                                      v1::DeleteResponse* resp) {
  VQKV_RETURN_IF_ERROR(
      ValidateNamespace(req.namespace_(), req.has_namespace_()));
  const storage::NamespaceId ns_id =
      ComputeNamespaceId(tenant, req.namespace_());
  // Another tenant's data counts as absent: nothing deleted, no error.
  auto absent = [](const absl::Status& s) {
    return HideOtherTenants(s).code() == absl::StatusCode::kNotFound;
  };
  if (req.whole_namespace()) {
    if (!req.hashes().empty()) {
      return absl::InvalidArgumentError(
          "hashes must be empty when whole_namespace is set");
    }
    auto info = store_->DeleteNamespace(tenant, ns_id);
    if (!info.ok() && !absent(info.status())) return info.status();
    resp->set_deleted(info.ok() ? info->blocks : 0);
    return absl::OkStatus();
  }
  VQKV_ASSIGN_OR_RETURN(const std::vector<storage::BlockHash> hashes,
                        ParseHashes(req.hashes()));
  uint64_t deleted = 0;
  for (const storage::BlockHash& h : hashes) {
    const absl::Status d = store_->DeleteBlock(tenant, {ns_id, h});
    if (d.ok()) {
      ++deleted;
    } else if (!absent(d)) {
      return d;
    }
  }
  resp->set_deleted(deleted);
  return absl::OkStatus();
}

void KvCacheService::CountTenantGets(const std::string& tenant, uint64_t hits,
                                     uint64_t misses) {
  if (hits == 0 && misses == 0) return;
  absl::MutexLock lock(&tenant_gets_mu_);
  TenantGets& g = tenant_gets_[tenant];
  g.hits += hits;
  g.misses += misses;
}

bool KvCacheService::SeesWholeCache(const std::string& tenant) const {
  if (!tokens_->enabled()) return true;  // one (anonymous) tenant
  return !options_.admin_tenant.empty() && tenant == options_.admin_tenant;
}

// What a tenant sees: its own usage, quota and get hits/misses; of the
// cache, the tier capacities, fault and corruption counts and the codebook
// count (the registry is shared). The tiers' usage, the store's hit/miss
// counters and the last disk error's text (which names the namespace and
// block it failed on, possibly another tenant's) only to the admin tenant.
absl::Status KvCacheService::DoStats(const std::string& tenant,
                                     const v1::StatsRequest& /*req*/,
                                     v1::StatsResponse* resp) {
  const storage::StoreStats st = store_->Stats();
  const storage::TieredStoreOptions& opt = store_->options();
  const bool whole = SeesWholeCache(tenant);
  resp->set_tenant(tenant);
  resp->set_tenant_bytes(store_->TenantUsage(tenant));
  resp->set_tenant_quota_bytes(store_->TenantQuota(tenant));
  v1::TierStats* mem = resp->add_tiers();
  mem->set_name("memory");
  mem->set_capacity_bytes(opt.memory_bytes);
  if (whole) {
    mem->set_blocks(st.memory.blocks);
    mem->set_bytes(st.memory.bytes);
    mem->set_evictions(st.memory_evictions);
  }
  if (st.has_disk) {
    v1::TierStats* disk = resp->add_tiers();
    disk->set_name("disk");
    // 0 = unlimited (the proto's convention; disk_bytes 0 in the config).
    disk->set_capacity_bytes(opt.disk_bytes ==
                                     std::numeric_limits<uint64_t>::max()
                                 ? 0
                                 : opt.disk_bytes);
    if (whole) {
      disk->set_blocks(st.disk.blocks);
      disk->set_bytes(st.disk.bytes);
      disk->set_evictions(st.dropped);
    }
  }
  if (whole) {
    resp->set_block_hits(st.memory_hits + st.disk_hits);
    resp->set_block_misses(st.misses);
    resp->set_last_fault(st.last_disk_error);
  } else {
    absl::MutexLock lock(&tenant_gets_mu_);
    auto it = tenant_gets_.find(tenant);
    if (it != tenant_gets_.end()) {
      resp->set_block_hits(it->second.hits);
      resp->set_block_misses(it->second.misses);
    }
    if (st.disk_faults > 0) {
      resp->set_last_fault(
          "the disk tier has failed (details in the server log and in the "
          "admin tenant's Stats)");
    }
  }
  resp->set_corrupt_blocks(st.corrupt_dropped);
  resp->set_storage_faults(st.disk_faults);
  resp->set_codebooks(st.codebooks);
  return absl::OkStatus();
}

}  // namespace vqkv::service
