#include "service/config.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/file.h"
#include "base/net.h"
#include "base/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace vqkv::service {
namespace {

// ttl_seconds and max_lease_ms (plain integers in flags and YAML) as the
// options' durations. A lease past the limit stays past it (Validate
// rejects it) instead of wrapping around.
absl::Duration TtlFromSeconds(uint64_t seconds) {
  return absl::Seconds(static_cast<int64_t>(seconds));
}
absl::Duration LeaseFromMs(uint64_t ms) {
  return absl::Milliseconds(static_cast<int64_t>(
      std::min<uint64_t>(ms, ServerConfig::kMaxLeaseMsLimit + 1)));
}

// A default for --help: "64GiB", "1MiB", or plain bytes.
std::string BytesText(uint64_t n) {
  if (n != 0 && n % (uint64_t{1} << 30) == 0) {
    return absl::StrCat(n >> 30, "GiB");
  }
  if (n != 0 && n % (uint64_t{1} << 20) == 0) {
    return absl::StrCat(n >> 20, "MiB");
  }
  return absl::StrCat(n);
}

// A YAML value as a string or a byte size; kInvalidArgument naming the key.
absl::StatusOr<std::string> YamlString(const YAML::Node& n,
                                       absl::string_view origin,
                                       absl::string_view key) {
  if (!n.IsScalar()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": '", key, "' must be a string"));
  }
  return n.Scalar();
}

absl::StatusOr<uint64_t> YamlBytes(const YAML::Node& n,
                                   absl::string_view origin,
                                   absl::string_view key) {
  if (!n.IsScalar()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": '", key, "' must be a byte size"));
  }
  auto v = ParseBytes(n.Scalar());
  if (!v.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": '", key, "': ", v.status().message()));
  }
  return *v;
}

// The `tenants` mapping: default_quota_bytes and quotas.
absl::Status ApplyYamlTenants(const YAML::Node& v, absl::string_view origin,
                              storage::TieredStoreOptions* store) {
  if (!v.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": 'tenants' must be a mapping"));
  }
  for (const auto& tkv : v) {
    const std::string tkey = tkv.first.as<std::string>();
    if (tkey == "default_quota_bytes") {
      VQKV_ASSIGN_OR_RETURN(
          store->default_tenant_quota,
          YamlBytes(tkv.second, origin, "tenants.default_quota_bytes"));
    } else if (tkey == "quotas") {
      if (!tkv.second.IsMap()) {
        return absl::InvalidArgumentError(absl::StrCat(
            origin, ": 'tenants.quotas' must map tenant -> bytes"));
      }
      for (const auto& q : tkv.second) {
        const std::string tenant = q.first.as<std::string>();
        VQKV_ASSIGN_OR_RETURN(
            store->tenant_quotas[tenant],
            YamlBytes(q.second, origin, "tenants.quotas." + tenant));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": unknown key 'tenants.", tkey, "'"));
    }
  }
  return absl::OkStatus();
}

using YamlSetter =
    std::function<absl::Status(const YAML::Node&, const std::string& key)>;

// The setter of each top-level YAML key: it converts the value and stores it
// in *c. yaml-cpp's own conversions (`as`) throw on a bad value;
// ApplyYamlConfig catches that.
std::map<std::string, YamlSetter> YamlSetters(absl::string_view origin,
                                              ServerConfig* c) {
  auto str = [origin](std::string* out) -> YamlSetter {
    return [origin, out](const YAML::Node& v, const std::string& key) {
      VQKV_ASSIGN_OR_RETURN(*out, YamlString(v, origin, key));
      return absl::OkStatus();
    };
  };
  auto bytes = [origin](uint64_t* out) -> YamlSetter {
    return [origin, out](const YAML::Node& v, const std::string& key) {
      VQKV_ASSIGN_OR_RETURN(*out, YamlBytes(v, origin, key));
      return absl::OkStatus();
    };
  };
  // A string parsed into an enum (storage::ParseDurability, ...).
  auto parsed = [origin](auto* out, auto parse) -> YamlSetter {
    return [origin, out, parse](const YAML::Node& v, const std::string& key) {
      VQKV_ASSIGN_OR_RETURN(const std::string text, YamlString(v, origin, key));
      VQKV_ASSIGN_OR_RETURN(*out, parse(text));
      return absl::OkStatus();
    };
  };
  auto as = [](auto* out) -> YamlSetter {
    return [out](const YAML::Node& v, const std::string&) {
      *out = v.as<std::remove_pointer_t<decltype(out)>>();
      return absl::OkStatus();
    };
  };
  return {
      {"listen", str(&c->listen)},
      {"data_dir", str(&c->store.data_dir)},
      {"memory_bytes", bytes(&c->store.memory_bytes)},
      {"disk_bytes", bytes(&c->store.disk_bytes)},
      {"durability", parsed(&c->store.durability, &storage::ParseDurability)},
      {"write_policy",
       parsed(&c->store.write_policy, &storage::ParseWritePolicy)},
      {"metrics_listen", str(&c->metrics_listen)},
      {"tokens_file", str(&c->tokens_file)},
      {"tls_cert", str(&c->tls_cert)},
      {"tls_key", str(&c->tls_key)},
      {"tls_client_ca", str(&c->tls_client_ca)},
      {"tls_reload_seconds", as(&c->tls_reload_seconds)},
      {"max_message_bytes", bytes(&c->service.max_message_bytes)},
      {"ttl_seconds",
       [origin, c](const YAML::Node& v, const std::string& key) {
         // A plain integer (ParseBytes accepts it).
         VQKV_ASSIGN_OR_RETURN(const uint64_t seconds,
                               YamlBytes(v, origin, key));
         c->store.ttl = TtlFromSeconds(seconds);
         return absl::OkStatus();
       }},
      {"workers", as(&c->service.workers)},
      {"allow_insecure_public", as(&c->allow_insecure_public)},
      {"admin_tenant", str(&c->service.admin_tenant)},
      {"max_stream_blocks", as(&c->service.max_stream_blocks)},
      {"max_queued_work", as(&c->service.max_queued_work)},
      {"max_concurrent_streams", as(&c->max_concurrent_streams)},
      {"disk_max_records", as(&c->store.disk_max_records)},
      {"max_namespaces_per_tenant", as(&c->store.max_namespaces_per_tenant)},
      {"codebook_max_sets", as(&c->store.codebook_quota.max_sets)},
      {"codebook_max_bytes", bytes(&c->store.codebook_quota.max_bytes)},
      {"grpc_memory_bytes", bytes(&c->grpc_memory_bytes)},
      {"shutdown_grace_seconds", as(&c->shutdown_grace_seconds)},
      {"max_lease_ms",
       [c](const YAML::Node& v, const std::string&) {
         c->service.max_lease = LeaseFromMs(v.as<uint64_t>());
         return absl::OkStatus();
       }},
      {"tenants",
       [origin, c](const YAML::Node& v, const std::string&) {
         return ApplyYamlTenants(v, origin, &c->store);
       }},
  };
}

// yaml-cpp throws; everything below runs inside one try block.
absl::Status ApplyYamlNode(const YAML::Node& root, absl::string_view origin,
                           ServerConfig* c) {
  if (!root.IsMap()) {
    if (root.IsNull()) return absl::OkStatus();  // empty file
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": the top level must be a mapping"));
  }
  const std::map<std::string, YamlSetter> setters = YamlSetters(origin, c);
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    auto it = setters.find(key);
    if (it == setters.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": unknown key '", key, "'"));
    }
    VQKV_RETURN_IF_ERROR(it->second(kv.second, key));
  }
  return absl::OkStatus();
}

// The command line's values, as given, before they apply over the config
// file (only the flags given do).
struct Flags {
  std::string config_file, listen, data_dir, memory, disk, durability,
      write_policy, metrics_listen, tokens_file, tls_cert, tls_key,
      tls_client_ca, max_message, ttl, admin_tenant, grpc_memory,
      codebook_max_bytes;
  int workers = 0;
  uint64_t max_lease_ms = 0;
  bool allow_insecure_public = false;
  uint64_t max_stream_blocks = 0;
  size_t max_queued_work = 0;
  int max_concurrent_streams = 0;
  unsigned tls_reload_seconds = 0;
  uint64_t disk_max_records = 0;
  uint64_t max_namespaces_per_tenant = 0;
  uint64_t codebook_max_sets = 0;
};

// Declares the flags; the help texts show the defaults of ServerConfig.
void AddFlags(CLI::App* app, Flags* f) {
  const ServerConfig defaults;
  app->add_option("--config", f->config_file,
                  "YAML config file (flags override)");
  app->add_option("--listen", f->listen,
                  "gRPC host:port (port 0 = any free port)");
  app->add_option("--data-dir", f->data_dir, "RocksDB directory");
  app->add_option("--memory-bytes", f->memory,
                  absl::StrCat("memory tier budget, e.g. 1GiB (default ",
                               BytesText(defaults.store.memory_bytes), ")"));
  app->add_option("--disk-bytes", f->disk,
                  absl::StrCat("disk tier budget, 0 = unlimited (default ",
                               BytesText(defaults.store.disk_bytes), ")"));
  app->add_option("--durability", f->durability,
                  "async (default) or sync (fsync'd WAL before acknowledging)");
  app->add_option("--write-policy", f->write_policy,
                  "spill (default: memory evictions go to disk) or "
                  "write_through (every put also goes to disk)");
  app->add_option("--metrics-listen", f->metrics_listen,
                  "HTTP host:port for /metrics and /healthz (default off)");
  app->add_option("--tokens-file", f->tokens_file,
                  "bearer tokens: YAML, 'token tenant' lines, or a directory "
                  "(Kubernetes Secret) of files named by tenant; default: "
                  "auth off");
  app->add_flag("--allow-insecure-public", f->allow_insecure_public,
                "allow auth off on a non-loopback --listen address (anyone "
                "who can connect reads and writes everything)");
  app->add_option("--admin-tenant", f->admin_tenant,
                  "tenant whose token sees whole-cache Stats (default none)");
  app->add_option("--max-stream-blocks", f->max_stream_blocks,
                  absl::StrCat("blocks per PutBlocksStream (default ",
                               defaults.service.max_stream_blocks,
                               "; at most max-message-bytes / 8)"));
  app->add_option(
      "--max-queued-work", f->max_queued_work,
      absl::StrCat("calls waiting for a storage worker before new ones get "
                   "RESOURCE_EXHAUSTED (default ",
                   defaults.service.max_queued_work, "; 0 = no bound)"));
  app->add_option("--max-concurrent-streams", f->max_concurrent_streams,
                  absl::StrCat("calls open at once per client connection "
                               "(default ",
                               defaults.max_concurrent_streams, ")"));
  app->add_option(
      "--grpc-memory-bytes", f->grpc_memory,
      absl::StrCat("memory gRPC may use for its buffers (default ",
                   BytesText(defaults.grpc_memory_bytes), "; 0 = unbounded)"));
  app->add_option(
      "--disk-max-records", f->disk_max_records,
      "records the disk tier keeps, which bounds its in-memory index (up to "
      "192 bytes a record; default 0 = as many as fit a quarter of "
      "--memory-bytes)");
  app->add_option(
      "--max-namespaces-per-tenant", f->max_namespaces_per_tenant,
      absl::StrCat("namespaces one tenant may own; a new one past it "
                   "reclaims the tenant's empty ones, else RESOURCE_EXHAUSTED "
                   "(default ",
                   defaults.store.max_namespaces_per_tenant,
                   "; 0 = unlimited)"));
  app->add_option(
      "--codebook-max-sets", f->codebook_max_sets,
      absl::StrCat("codebook sets one tenant may register (default ",
                   defaults.store.codebook_quota.max_sets, "; 0 = unlimited)"));
  app->add_option(
      "--codebook-max-bytes", f->codebook_max_bytes,
      absl::StrCat("bytes of codebook sets one tenant may register (default ",
                   BytesText(defaults.store.codebook_quota.max_bytes),
                   "; 0 = unlimited)"));
  app->add_option("--tls-cert", f->tls_cert, "PEM certificate chain");
  app->add_option("--tls-key", f->tls_key, "PEM private key");
  app->add_option("--tls-client-ca", f->tls_client_ca,
                  "PEM CA bundle for client certificates: mTLS, every "
                  "connection must present a certificate it signed "
                  "(default off)");
  app->add_option("--tls-reload-seconds", f->tls_reload_seconds,
                  absl::StrCat("re-read the TLS files every N seconds, so "
                               "rotated certificates apply without a restart "
                               "(default ",
                               defaults.tls_reload_seconds, ")"));
  app->add_option(
      "--max-message-bytes", f->max_message,
      absl::StrCat("largest gRPC message (default ",
                   BytesText(defaults.service.max_message_bytes), ")"));
  app->add_option("--ttl-seconds", f->ttl,
                  "expire blocks after N seconds (0 = never)");
  app->add_option("--workers", f->workers,
                  "storage worker threads (0 = max(8, 2 x hardware threads))");
  app->add_option(
      "--max-lease-ms", f->max_lease_ms,
      absl::StrCat("cap on a Lookup's lease_ms (default ",
                   absl::ToInt64Milliseconds(defaults.service.max_lease),
                   "; 0 = no leases)"));
}

// Applies the flags given on the command line over `c`.
absl::Status ApplyFlags(const CLI::App& app, const Flags& f, ServerConfig* c) {
  // A byte-size flag, when given.
  auto set_bytes = [&](const char* flag, const std::string& v,
                       uint64_t* out) -> absl::Status {
    if (app.count(flag) == 0) return absl::OkStatus();
    auto b = ParseBytes(v);
    if (!b.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": ", b.status().message()));
    }
    *out = *b;
    return absl::OkStatus();
  };
  if (app.count("--listen")) c->listen = f.listen;
  if (app.count("--data-dir")) c->store.data_dir = f.data_dir;
  if (app.count("--metrics-listen")) c->metrics_listen = f.metrics_listen;
  if (app.count("--tokens-file")) c->tokens_file = f.tokens_file;
  if (app.count("--tls-cert")) c->tls_cert = f.tls_cert;
  if (app.count("--tls-key")) c->tls_key = f.tls_key;
  if (app.count("--tls-client-ca")) c->tls_client_ca = f.tls_client_ca;
  if (app.count("--tls-reload-seconds")) {
    c->tls_reload_seconds = f.tls_reload_seconds;
  }
  if (app.count("--workers")) c->service.workers = f.workers;
  if (app.count("--allow-insecure-public")) {
    c->allow_insecure_public = f.allow_insecure_public;
  }
  if (app.count("--admin-tenant")) c->service.admin_tenant = f.admin_tenant;
  if (app.count("--max-stream-blocks")) {
    c->service.max_stream_blocks = f.max_stream_blocks;
  }
  if (app.count("--max-queued-work")) {
    c->service.max_queued_work = f.max_queued_work;
  }
  if (app.count("--max-concurrent-streams")) {
    c->max_concurrent_streams = f.max_concurrent_streams;
  }
  VQKV_RETURN_IF_ERROR(
      set_bytes("--grpc-memory-bytes", f.grpc_memory, &c->grpc_memory_bytes));
  if (app.count("--disk-max-records")) {
    c->store.disk_max_records = f.disk_max_records;
  }
  if (app.count("--max-namespaces-per-tenant")) {
    c->store.max_namespaces_per_tenant = f.max_namespaces_per_tenant;
  }
  if (app.count("--codebook-max-sets")) {
    c->store.codebook_quota.max_sets = f.codebook_max_sets;
  }
  VQKV_RETURN_IF_ERROR(set_bytes("--codebook-max-bytes", f.codebook_max_bytes,
                                 &c->store.codebook_quota.max_bytes));
  if (app.count("--max-lease-ms")) {
    c->service.max_lease = LeaseFromMs(f.max_lease_ms);
  }
  if (app.count("--durability")) {
    VQKV_ASSIGN_OR_RETURN(c->store.durability,
                          storage::ParseDurability(f.durability));
  }
  if (app.count("--write-policy")) {
    VQKV_ASSIGN_OR_RETURN(c->store.write_policy,
                          storage::ParseWritePolicy(f.write_policy));
  }
  VQKV_RETURN_IF_ERROR(
      set_bytes("--memory-bytes", f.memory, &c->store.memory_bytes));
  VQKV_RETURN_IF_ERROR(set_bytes("--disk-bytes", f.disk, &c->store.disk_bytes));
  VQKV_RETURN_IF_ERROR(set_bytes("--max-message-bytes", f.max_message,
                                 &c->service.max_message_bytes));
  if (app.count("--ttl-seconds")) {
    uint64_t seconds = 0;
    VQKV_RETURN_IF_ERROR(set_bytes("--ttl-seconds", f.ttl, &seconds));
    c->store.ttl = TtlFromSeconds(seconds);
  }
  return absl::OkStatus();
}

}  // namespace

storage::TieredStoreOptions ServerConfig::DefaultStoreOptions() {
  storage::TieredStoreOptions store;
  store.data_dir = "./vqkv-data";
  return store;
}

absl::Status ServerConfig::Validate() const {
  if (listen.empty() || listen.rfind(':') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen must be host:port, got '", listen, "'"));
  }
  if (store.data_dir.empty()) {
    return absl::InvalidArgumentError("data_dir must not be empty");
  }
  if (store.memory_bytes == 0) {
    return absl::InvalidArgumentError("memory_bytes must be positive");
  }
  // disk_bytes 0 means unlimited (StoreDiskBytes).
  if (!metrics_listen.empty() &&
      metrics_listen.rfind(':') == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics_listen must be host:port, got '", metrics_listen, "'"));
  }
  if (tokens_file.empty() && !allow_insecure_public &&
      !IsLoopbackListen(listen)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "auth is off (no tokens_file) but listen '", listen,
        "' is not a loopback address: anyone who can connect could read, "
        "write and delete every block. Give --tokens-file, listen on "
        "127.0.0.1, or pass --allow-insecure-public (YAML "
        "allow_insecure_public: true) to accept that"));
  }
  if (service.max_stream_blocks == 0) {
    return absl::InvalidArgumentError("max_stream_blocks must be positive");
  }
  if (max_concurrent_streams < 1) {
    return absl::InvalidArgumentError(
        "max_concurrent_streams must be positive");
  }
  if (grpc_memory_bytes != 0 &&
      grpc_memory_bytes < 2 * service.max_message_bytes) {
    return absl::InvalidArgumentError(
        "grpc_memory_bytes must be 0 (unbounded) or at least twice "
        "max_message_bytes");
  }
  if (tls_cert.empty() != tls_key.empty()) {
    return absl::InvalidArgumentError(
        "tls_cert and tls_key must be given together");
  }
  if (!tls_client_ca.empty() && tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "tls_client_ca (mTLS) needs tls_cert and tls_key");
  }
  if (tls_reload_seconds < 1 || tls_reload_seconds > 86400) {
    return absl::InvalidArgumentError(
        "tls_reload_seconds must be in [1, 86400]");
  }
  if (service.max_message_bytes < (uint64_t{1} << 16) ||
      service.max_message_bytes > (uint64_t{2} << 30) - 1) {
    return absl::InvalidArgumentError(
        "max_message_bytes must be in [64KiB, 2GiB)");
  }
  if (service.workers < 0 || service.workers > 1024) {
    return absl::InvalidArgumentError("workers must be in [0, 1024]");
  }
  if (!(shutdown_grace_seconds >= 0) || shutdown_grace_seconds > 3600) {
    return absl::InvalidArgumentError(
        "shutdown_grace_seconds must be in [0, 3600]");
  }
  if (service.max_lease < absl::ZeroDuration() ||
      service.max_lease > absl::Milliseconds(kMaxLeaseMsLimit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_lease_ms must be in [0, ", kMaxLeaseMsLimit, "]"));
  }
  return absl::OkStatus();
}

bool IsLoopbackListen(absl::string_view listen) {
  return base::IsLoopbackAddress(listen);
}

uint64_t StoreDiskBytes(uint64_t disk_bytes) {
  return disk_bytes == 0 ? std::numeric_limits<uint64_t>::max() : disk_bytes;
}

absl::StatusOr<uint64_t> ParseBytes(absl::string_view text) {
  std::string t(absl::StripAsciiWhitespace(text));
  size_t split = 0;
  while (split < t.size() &&
         (absl::ascii_isdigit(t[split]) || t[split] == '.')) {
    ++split;
  }
  const std::string number = t.substr(0, split);
  std::string unit(absl::StripAsciiWhitespace(t.substr(split)));
  double value = 0;
  if (number.empty() || !absl::SimpleAtod(number, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a byte size: '", text, "'"));
  }
  double scale = 1;
  const std::string u = absl::AsciiStrToLower(unit);
  if (u.empty() || u == "b") {
    scale = 1;
  } else if (u == "k" || u == "kib") {
    scale = 1024.0;
  } else if (u == "m" || u == "mib") {
    scale = 1024.0 * 1024;
  } else if (u == "g" || u == "gib") {
    scale = 1024.0 * 1024 * 1024;
  } else if (u == "t" || u == "tib") {
    scale = 1024.0 * 1024 * 1024 * 1024;
  } else if (u == "kb") {
    scale = 1e3;
  } else if (u == "mb") {
    scale = 1e6;
  } else if (u == "gb") {
    scale = 1e9;
  } else if (u == "tb") {
    scale = 1e12;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown byte unit in '", text, "'"));
  }
  const double bytes = value * scale;
  if (!(bytes >= 0) || bytes > 1.8e19 || bytes != std::floor(bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("byte size out of range or fractional: '", text, "'"));
  }
  return static_cast<uint64_t>(bytes);
}

absl::Status ApplyYamlConfig(absl::string_view yaml, absl::string_view origin,
                             ServerConfig* config) {
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    return ApplyYamlNode(root, origin, config);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": YAML error: ", e.what()));
  }
}

absl::Status ApplyYamlConfigFile(const std::string& path,
                                 ServerConfig* config) {
  absl::StatusOr<std::string> text = base::ReadFile(path);
  if (!text.ok()) {
    return absl::NotFoundError(
        absl::StrCat("config file: ", text.status().message()));
  }
  return ApplyYamlConfig(*text, path, config);
}

absl::StatusOr<ServerConfig> ParseCommandLine(int argc, char** argv,
                                              bool* exit_now) {
  *exit_now = false;
  CLI::App app{
      "vqkv-server: the vqkv KV-cache service (gRPC, memory + RocksDB "
      "tiers).\nWith no arguments: listens on 127.0.0.1:50051, stores under "
      "./vqkv-data, auth off."};
  Flags flags;
  AddFlags(&app, &flags);
  app.set_version_flag("--version", "vqkv-server 0.1.0");
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    app.exit(e);
    *exit_now = true;
    return ServerConfig{};
  } catch (const CLI::ParseError& e) {
    std::ostringstream out, err;
    app.exit(e, out, err);
    return absl::InvalidArgumentError(err.str().empty() ? e.what() : err.str());
  }
  ServerConfig c;
  if (!flags.config_file.empty()) {
    VQKV_RETURN_IF_ERROR(ApplyYamlConfigFile(flags.config_file, &c));
  }
  VQKV_RETURN_IF_ERROR(ApplyFlags(app, flags, &c));
  VQKV_RETURN_IF_ERROR(c.Validate());
  return c;
}

}  // namespace vqkv::service
