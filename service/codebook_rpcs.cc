// The work of the codebook registry RPCs (PutCodebooks, GetCodebooks);
// kv_service.cc routes the calls here, stream_reactors.cc reuses
// DoPutOneCodebook for PutCodebookStream.
#include <string>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "service/kv_service.h"
#include "service/kv_service_internal.h"
#include "service/validate.h"

namespace vqkv::service {
namespace {

// kInvalidArgument unless a request holds 1..kMaxCodebooksPerRequest items.
absl::Status CheckCount(int n, absl::string_view field,
                        absl::string_view items) {
  if (n == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must not be empty"));
  }
  if (static_cast<size_t>(n) > kMaxCodebooksPerRequest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "at most ", kMaxCodebooksPerRequest, " ", items, " per request"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status KvCacheService::DoPutCodebooks(const std::string& tenant,
                                            const v1::PutCodebooksRequest& req,
                                            v1::PutCodebooksResponse* resp) {
  const int n = req.codebooks_size();
  VQKV_RETURN_IF_ERROR(CheckCount(n, "codebooks", "codebook sets"));
  for (int i = 0; i < n; ++i) {
    VQKV_RETURN_IF_ERROR(
        ValidateCodebook(req.codebooks(i).hash(), req.codebooks(i).data(), i));
  }
  for (const v1::Codebook& c : req.codebooks()) {
    StoreCodebook(tenant, c.hash(), c.data(), resp);
  }
  return absl::OkStatus();
}

absl::Status KvCacheService::DoPutOneCodebook(const std::string& tenant,
                                              uint64_t hash,
                                              const std::string& data,
                                              v1::PutCodebooksResponse* resp) {
  VQKV_RETURN_IF_ERROR(ValidateCodebook(hash, data, 0));
  StoreCodebook(tenant, hash, data, resp);
  return absl::OkStatus();
}

void KvCacheService::StoreCodebook(const std::string& tenant, uint64_t hash,
                                   const std::string& data,
                                   v1::PutCodebooksResponse* resp) {
  v1::PutResult* r = resp->add_results();
  const bool existed = store_->HasCodebook(hash);
  // Even a set registered before takes the tenant's reference, so every
  // tenant's sets count against its own quota and survive another tenant's
  // delete.
  const absl::Status s = store_->PutCodebooks(tenant, hash, data);
  if (!s.ok()) {
    r->set_code(static_cast<int32_t>(s.code()));
    r->set_message(std::string(s.message()));
  } else if (existed) {
    r->set_code(static_cast<int32_t>(absl::StatusCode::kAlreadyExists));
    r->set_message("already registered");
  }
}

absl::Status KvCacheService::DoGetCodebooks(const std::string& /*tenant*/,
                                            const v1::GetCodebooksRequest& req,
                                            v1::GetCodebooksResponse* resp) {
  const int n = req.hashes_size();
  VQKV_RETURN_IF_ERROR(CheckCount(n, "hashes", "codebook hashes"));
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

}  // namespace vqkv::service
