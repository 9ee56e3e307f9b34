// Tenants and bearer tokens.
//
// A TokenStore maps bearer tokens to tenant names. It loads from:
//  - a directory (a mounted Kubernetes Secret): every regular file whose name
//    does not start with '.' is one tenant, named by the file, whose token is
//    the file's content with surrounding whitespace removed;
//  - a YAML file with a top-level `tenants:` mapping of tenant -> token (or
//    tenant -> list of tokens);
//  - otherwise a text file of `<token> <tenant>` lines ('#' starts a comment,
//    blank lines are skipped).
// Tenant names are 1..128 characters of [A-Za-z0-9._-]; tokens are 8..4096
// printable ASCII characters without spaces; a token may map to one tenant
// only.
//
// Thread safety: a loaded TokenStore is immutable; all const methods are
// thread-safe.
#ifndef VQKV_SERVICE_AUTH_H_
#define VQKV_SERVICE_AUTH_H_

#include <cstddef>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace vqkv::service {

class TokenStore {
 public:
  // An empty store: with auth disabled, every caller is the anonymous
  // tenant "" (the local default).
  TokenStore() = default;

  // Errors: kNotFound when `path` does not exist; kInvalidArgument for a
  // malformed file, an invalid tenant name or token, a duplicate token, or
  // no tokens at all.
  static absl::StatusOr<TokenStore> Load(const std::string& path);
  // Parses the text formats above (YAML or lines); `origin` names the source
  // in error messages.
  static absl::StatusOr<TokenStore> Parse(absl::string_view text,
                                          absl::string_view origin);

  bool enabled() const { return !tenant_by_token_.empty(); }
  size_t size() const { return tenant_by_token_.size(); }

  // The tenant for the value of an `authorization` metadata entry
  // ("Bearer <token>", scheme case-insensitive). With auth disabled, returns
  // "" whatever the header. `present` says whether the header was sent.
  // Errors: kUnauthenticated for a missing header, another scheme or an
  // unknown token (the message never echoes the token). The token is
  // compared with every stored one in constant time (ConstantTimeEquals),
  // so the time taken reveals nothing about the stored tokens.
  absl::StatusOr<std::string> Authenticate(bool present,
                                           absl::string_view header) const;

 private:
  absl::Status Add(absl::string_view token, absl::string_view tenant,
                   absl::string_view origin);

  absl::flat_hash_map<std::string, std::string> tenant_by_token_;
};

// Whether `guess` equals `secret`, in time that depends only on
// guess.size() (never on where the first difference is). For comparing
// presented credentials with stored ones.
bool ConstantTimeEquals(absl::string_view secret, absl::string_view guess);

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_AUTH_H_
