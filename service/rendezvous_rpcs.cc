// The work of the rendezvous RPCs (PutRendezvous, GetRendezvous): a small
// per-tenant key -> value table with a TTL, in memory (kv_service.cc runs
// them inline).
#include <algorithm>
#include <string>
#include <utility>

#include "base/status_macros.h"
#include "service/kv_service.h"
#include "service/kv_service_internal.h"

namespace vqkv::service {

absl::Status KvCacheService::DoPutRendezvous(
    const std::string& tenant, const v1::PutRendezvousRequest& req,
    v1::PutRendezvousResponse* resp) {
  // The table checks key, value and ttl_ms and names the bad field.
  VQKV_ASSIGN_OR_RETURN(const absl::Duration granted,
                        rendezvous_.Put(tenant, req.key(), req.value(),
                                        absl::Milliseconds(req.ttl_ms())));
  resp->set_ttl_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(granted)));
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

}  // namespace vqkv::service
