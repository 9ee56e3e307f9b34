#include "service/config.h"

#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "yaml-cpp/yaml.h"

namespace vqkv::service {
namespace {

absl::Status ParseDurability(absl::string_view text, storage::Durability* out) {
  auto d = storage::ParseDurability(text);
  if (!d.ok()) return d.status();
  *out = *d;
  return absl::OkStatus();
}

absl::Status ParseWritePolicy(absl::string_view text,
                              storage::WritePolicy* out) {
  auto p = storage::ParseWritePolicy(text);
  if (!p.ok()) return p.status();
  *out = *p;
  return absl::OkStatus();
}

// yaml-cpp throws; everything below runs inside one try block.
absl::Status ApplyYamlNode(const YAML::Node& root, absl::string_view origin,
                           ServerConfig* c) {
  if (!root.IsMap()) {
    if (root.IsNull()) return absl::OkStatus();  // empty file
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": the top level must be a mapping"));
  }
  auto bytes = [&](const YAML::Node& n, const std::string& key,
                   uint64_t* out) -> absl::Status {
    if (!n.IsScalar()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": '", key, "' must be a byte size"));
    }
    auto v = ParseBytes(n.Scalar());
    if (!v.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": '", key, "': ", v.status().message()));
    }
    *out = *v;
    return absl::OkStatus();
  };
  auto str = [&](const YAML::Node& n, const std::string& key,
                 std::string* out) -> absl::Status {
    if (!n.IsScalar()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": '", key, "' must be a string"));
    }
    *out = n.Scalar();
    return absl::OkStatus();
  };
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    absl::Status s;
    if (key == "listen") {
      s = str(v, key, &c->listen);
    } else if (key == "data_dir") {
      s = str(v, key, &c->data_dir);
    } else if (key == "memory_bytes") {
      s = bytes(v, key, &c->memory_bytes);
    } else if (key == "disk_bytes") {
      s = bytes(v, key, &c->disk_bytes);
    } else if (key == "durability") {
      std::string d;
      s = str(v, key, &d);
      if (s.ok()) s = ParseDurability(d, &c->durability);
    } else if (key == "write_policy") {
      std::string p;
      s = str(v, key, &p);
      if (s.ok()) s = ParseWritePolicy(p, &c->write_policy);
    } else if (key == "metrics_listen") {
      s = str(v, key, &c->metrics_listen);
    } else if (key == "tokens_file") {
      s = str(v, key, &c->tokens_file);
    } else if (key == "tls_cert") {
      s = str(v, key, &c->tls_cert);
    } else if (key == "tls_key") {
      s = str(v, key, &c->tls_key);
    } else if (key == "max_message_bytes") {
      s = bytes(v, key, &c->max_message_bytes);
    } else if (key == "ttl_seconds") {
      s = bytes(v, key, &c->ttl_seconds);  // plain integer
    } else if (key == "workers") {
      c->workers = v.as<int>();
    } else if (key == "shutdown_grace_seconds") {
      c->shutdown_grace_seconds = v.as<double>();
    } else if (key == "max_lease_ms") {
      c->max_lease_ms = v.as<uint64_t>();
    } else if (key == "tenants") {
      if (!v.IsMap()) {
        return absl::InvalidArgumentError(
            absl::StrCat(origin, ": 'tenants' must be a mapping"));
      }
      for (const auto& tkv : v) {
        const std::string tkey = tkv.first.as<std::string>();
        if (tkey == "default_quota_bytes") {
          s = bytes(tkv.second, "tenants.default_quota_bytes",
                    &c->default_quota_bytes);
        } else if (tkey == "quotas") {
          if (!tkv.second.IsMap()) {
            return absl::InvalidArgumentError(absl::StrCat(
                origin, ": 'tenants.quotas' must map tenant -> bytes"));
          }
          for (const auto& q : tkv.second) {
            const std::string tenant = q.first.as<std::string>();
            uint64_t quota = 0;
            s = bytes(q.second, "tenants.quotas." + tenant, &quota);
            if (!s.ok()) return s;
            c->tenant_quotas[tenant] = quota;
          }
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat(origin, ": unknown key 'tenants.", tkey, "'"));
        }
        if (!s.ok()) return s;
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": unknown key '", key, "'"));
    }
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ServerConfig::Validate() const {
  if (listen.empty() || listen.rfind(':') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen must be host:port, got '", listen, "'"));
  }
  if (data_dir.empty()) {
    return absl::InvalidArgumentError("data_dir must not be empty");
  }
  if (memory_bytes == 0) {
    return absl::InvalidArgumentError("memory_bytes must be positive");
  }
  if (!metrics_listen.empty() &&
      metrics_listen.rfind(':') == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics_listen must be host:port, got '", metrics_listen, "'"));
  }
  if (tls_cert.empty() != tls_key.empty()) {
    return absl::InvalidArgumentError(
        "tls_cert and tls_key must be given together");
  }
  if (max_message_bytes < (uint64_t{1} << 16) ||
      max_message_bytes > (uint64_t{2} << 30) - 1) {
    return absl::InvalidArgumentError(
        "max_message_bytes must be in [64KiB, 2GiB)");
  }
  if (workers < 0 || workers > 1024) {
    return absl::InvalidArgumentError("workers must be in [0, 1024]");
  }
  if (!(shutdown_grace_seconds >= 0) || shutdown_grace_seconds > 3600) {
    return absl::InvalidArgumentError(
        "shutdown_grace_seconds must be in [0, 3600]");
  }
  if (max_lease_ms > kMaxLeaseMsLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_lease_ms must be in [0, ", kMaxLeaseMsLimit, "]"));
  }
  return absl::OkStatus();
}

uint64_t ServerConfig::QuotaFor(const std::string& tenant) const {
  auto it = tenant_quotas.find(tenant);
  return it == tenant_quotas.end() ? default_quota_bytes : it->second;
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
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read config file '", path, "'"));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ApplyYamlConfig(ss.str(), path, config);
}

absl::StatusOr<ServerConfig> ParseCommandLine(int argc, char** argv,
                                              bool* exit_now) {
  *exit_now = false;
  CLI::App app{
      "vqkv-server: the vqkv KV-cache service (gRPC, memory + RocksDB "
      "tiers).\nWith no arguments: listens on 127.0.0.1:50051, stores under "
      "./vqkv-data, auth off."};
  std::string config_file, listen, data_dir, memory, disk, durability,
      write_policy, metrics_listen, tokens_file, tls_cert, tls_key, max_message,
      ttl;
  int workers = 0;
  uint64_t max_lease_ms = 0;
  app.add_option("--config", config_file, "YAML config file (flags override)");
  app.add_option("--listen", listen, "gRPC host:port (port 0 = any free port)");
  app.add_option("--data-dir", data_dir, "RocksDB directory");
  app.add_option("--memory-bytes", memory,
                 "memory tier budget, e.g. 1GiB (default 1GiB)");
  app.add_option("--disk-bytes", disk,
                 "disk tier budget, 0 = unlimited (default 64GiB)");
  app.add_option("--durability", durability,
                 "async (default) or sync (fsync'd WAL before acknowledging)");
  app.add_option("--write-policy", write_policy,
                 "spill (default: memory evictions go to disk) or "
                 "write_through (every put also goes to disk)");
  app.add_option("--metrics-listen", metrics_listen,
                 "HTTP host:port for /metrics and /healthz (default off)");
  app.add_option("--tokens-file", tokens_file,
                 "bearer tokens: YAML, 'token tenant' lines, or a directory "
                 "(Kubernetes Secret) of files named by tenant; default: "
                 "auth off");
  app.add_option("--tls-cert", tls_cert, "PEM certificate chain");
  app.add_option("--tls-key", tls_key, "PEM private key");
  app.add_option("--max-message-bytes", max_message,
                 "largest gRPC message (default 64MiB)");
  app.add_option("--ttl-seconds", ttl,
                 "expire blocks after N seconds (0 = never)");
  app.add_option("--workers", workers, "storage worker threads (0 = auto)");
  app.add_option("--max-lease-ms", max_lease_ms,
                 "cap on a Lookup's lease_ms (default 10000; 0 = no leases)");
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
  if (!config_file.empty()) {
    absl::Status s = ApplyYamlConfigFile(config_file, &c);
    if (!s.ok()) return s;
  }
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
  if (app.count("--listen")) c.listen = listen;
  if (app.count("--data-dir")) c.data_dir = data_dir;
  if (app.count("--metrics-listen")) c.metrics_listen = metrics_listen;
  if (app.count("--tokens-file")) c.tokens_file = tokens_file;
  if (app.count("--tls-cert")) c.tls_cert = tls_cert;
  if (app.count("--tls-key")) c.tls_key = tls_key;
  if (app.count("--workers")) c.workers = workers;
  if (app.count("--max-lease-ms")) c.max_lease_ms = max_lease_ms;
  if (app.count("--durability")) {
    absl::Status s = ParseDurability(durability, &c.durability);
    if (!s.ok()) return s;
  }
  if (app.count("--write-policy")) {
    absl::Status s = ParseWritePolicy(write_policy, &c.write_policy);
    if (!s.ok()) return s;
  }
  for (absl::Status s :
       {set_bytes("--memory-bytes", memory, &c.memory_bytes),
        set_bytes("--disk-bytes", disk, &c.disk_bytes),
        set_bytes("--max-message-bytes", max_message, &c.max_message_bytes),
        set_bytes("--ttl-seconds", ttl, &c.ttl_seconds)}) {
    if (!s.ok()) return s;
  }
  absl::Status s = c.Validate();
  if (!s.ok()) return s;
  return c;
}

}  // namespace vqkv::service
