#include "service/auth.h"

#include <exception>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace vqkv::service {
namespace {

bool ValidTenant(absl::string_view t) {
  if (t.empty() || t.size() > 128) return false;
  for (char c : t) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

bool ValidToken(absl::string_view t) {
  if (t.size() < 8 || t.size() > 4096) return false;
  for (char c : t) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

// base::ReadFile, every failure as kNotFound (auth.h, server.h).
absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> text = base::ReadFile(path);
  if (!text.ok()) return absl::NotFoundError(text.status().message());
  return text;
}

}  // namespace

absl::Status TokenStore::Add(absl::string_view token, absl::string_view tenant,
                             absl::string_view origin) {
  if (!ValidTenant(tenant)) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": invalid tenant name '", tenant,
                     "' (1..128 of [A-Za-z0-9._-])"));
  }
  if (!ValidToken(token)) {
    return absl::InvalidArgumentError(absl::StrCat(
        origin, ": the token of tenant '", tenant,
        "' is invalid (8..4096 printable ASCII characters, no spaces)"));
  }
  auto [it, inserted] =
      tenant_by_token_.emplace(std::string(token), std::string(tenant));
  if (!inserted && it->second != tenant) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": tenants '",
                                                   it->second, "' and '",
                                                   tenant, "' share a token"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TokenStore> TokenStore::Parse(absl::string_view text,
                                             absl::string_view origin) {
  TokenStore store;
  // YAML form: a mapping with a `tenants` key.
  bool yaml = false;
  try {
    YAML::Node root = YAML::Load(std::string(text));
    if (root.IsMap() && root["tenants"]) {
      yaml = true;
      const YAML::Node tenants = root["tenants"];
      if (!tenants.IsMap()) {
        return absl::InvalidArgumentError(
            absl::StrCat(origin, ": 'tenants' must map tenant -> token"));
      }
      for (const auto& kv : tenants) {
        const std::string tenant = kv.first.as<std::string>();
        if (kv.second.IsSequence()) {
          for (const auto& tok : kv.second) {
            VQKV_RETURN_IF_ERROR(
                store.Add(tok.as<std::string>(), tenant, origin));
          }
        } else if (kv.second.IsScalar()) {
          VQKV_RETURN_IF_ERROR(
              store.Add(kv.second.as<std::string>(), tenant, origin));
        } else {
          return absl::InvalidArgumentError(absl::StrCat(
              origin, ": tenant '", tenant, "' needs a token or a list"));
        }
      }
    }
  } catch (const std::exception& e) {
    if (yaml) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": YAML error: ", e.what()));
    }
    // Not YAML: fall through to the line format.
  }
  if (!yaml) {
    int line_no = 0;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      ++line_no;
      const size_t hash = line.find('#');
      if (hash != absl::string_view::npos) line = line.substr(0, hash);
      line = absl::StripAsciiWhitespace(line);
      if (line.empty()) continue;
      std::vector<absl::string_view> fields =
          absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
      if (fields.size() != 2) {
        return absl::InvalidArgumentError(
            absl::StrCat(origin, ":", line_no,
                         ": expected '<token> <tenant>' (two fields)"));
      }
      VQKV_RETURN_IF_ERROR(
          store.Add(fields[0], fields[1], absl::StrCat(origin, ":", line_no)));
    }
  }
  if (!store.enabled()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": no tokens found"));
  }
  return store;
}

absl::StatusOr<TokenStore> TokenStore::Load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    return absl::NotFoundError(
        absl::StrCat("tokens file '", path, "' does not exist"));
  }
  if (!fs::is_directory(st)) {
    VQKV_ASSIGN_OR_RETURN(const std::string text, ReadTokenFile(path));
    return Parse(text, path);
  }
  // A directory of files named by tenant (Kubernetes Secret volume: the
  // entries are symlinks into a hidden ..data directory, so follow links and
  // skip dot-names).
  TokenStore store;
  for (const auto& entry : fs::directory_iterator(path, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    std::error_code fec;
    if (!fs::is_regular_file(entry.path(), fec)) continue;
    VQKV_ASSIGN_OR_RETURN(const std::string text,
                          ReadTokenFile(entry.path().string()));
    VQKV_RETURN_IF_ERROR(store.Add(absl::StripAsciiWhitespace(text), name,
                                   entry.path().string()));
  }
  if (ec) {
    return absl::NotFoundError(
        absl::StrCat("cannot list '", path, "': ", ec.message()));
  }
  if (!store.enabled()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no token files found"));
  }
  return store;
}

absl::StatusOr<std::string> TokenStore::Authenticate(
    bool present, absl::string_view header) const {
  if (!enabled()) return std::string();
  if (!present) {
    return absl::UnauthenticatedError(
        "missing 'authorization: Bearer <token>' metadata");
  }
  absl::string_view h = absl::StripAsciiWhitespace(header);
  if (h.size() < 7 || !absl::EqualsIgnoreCase(h.substr(0, 7), "bearer ")) {
    return absl::UnauthenticatedError(
        "the authorization metadata must use the Bearer scheme");
  }
  absl::string_view token = absl::StripAsciiWhitespace(h.substr(7));
  // Every stored token is compared, each in constant time, with no early
  // exit: the time taken does not depend on which token matched or on how
  // much of a guess was right (a hash-map lookup would leak both).
  const std::string* tenant = nullptr;
  for (const auto& [stored, name] : tenant_by_token_) {
    if (ConstantTimeEquals(stored, token)) tenant = &name;
  }
  if (tenant == nullptr) {
    return absl::UnauthenticatedError("unknown bearer token");
  }
  return *tenant;
}

bool ConstantTimeEquals(absl::string_view secret, absl::string_view guess) {
  // Runs over all of `guess` whatever the contents; the secret's bytes are
  // read cyclically so that a length mismatch costs the same time as a
  // content mismatch. The compiler may not skip the loop: `diff` is
  // accumulated through a volatile.
  volatile unsigned char diff = secret.size() == guess.size() ? 0 : 1;
  if (secret.empty()) return guess.empty();
  for (size_t i = 0; i < guess.size(); ++i) {
    diff =
        diff | static_cast<unsigned char>(secret[i % secret.size()] ^ guess[i]);
  }
  return diff == 0;
}

}  // namespace vqkv::service
