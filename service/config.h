// Configuration of vqkv-server: defaults, the YAML config file and the
// command line (flags override the file).
//
// Thread safety: plain values; the loaders are pure functions.
#ifndef VQKV_SERVICE_CONFIG_H_
#define VQKV_SERVICE_CONFIG_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/tiered_store.h"

namespace vqkv::service {

struct ServerConfig {
  // host:port for gRPC. Port 0 picks a free port (printed when listening).
  std::string listen = "127.0.0.1:50051";
  // RocksDB directory (created if missing).
  std::string data_dir = "./vqkv-data";
  // Memory tier budget and disk tier budget, in bytes. disk_bytes 0 means
  // unlimited.
  uint64_t memory_bytes = uint64_t{1} << 30;
  uint64_t disk_bytes = uint64_t{64} << 30;
  // async: acknowledged once in memory; sync: after an fsync'd WAL write.
  storage::Durability durability = storage::Durability::kAsync;
  // spill: memory evictions go to disk; write_through: every put also goes
  // to disk (forced by sync).
  storage::WritePolicy write_policy = storage::WritePolicy::kSpill;
  // host:port for the Prometheus/health HTTP endpoint; empty = off.
  std::string metrics_listen;
  // Bearer tokens (service/auth.h formats); empty = auth off.
  std::string tokens_file;
  // PEM certificate chain and private key; both or neither. Empty = plaintext.
  std::string tls_cert;
  std::string tls_key;
  // Largest gRPC message accepted or sent.
  uint64_t max_message_bytes = uint64_t{64} << 20;
  // Blocks older than this are expired from disk; 0 = never.
  uint64_t ttl_seconds = 0;
  // Per-tenant byte quotas; tenants not listed get default_quota_bytes.
  // 0 = unlimited.
  uint64_t default_quota_bytes = 0;
  std::map<std::string, uint64_t> tenant_quotas;
  // Threads running storage work for RPCs; 0 = max(4, hardware threads).
  int workers = 0;
  // Seconds SIGTERM waits for in-flight RPCs before cancelling them.
  double shutdown_grace_seconds = 10;
  // Cap on LookupRequest.lease_ms, in milliseconds; 0 turns leases off.
  // At most kMaxLeaseMsLimit.
  uint64_t max_lease_ms = 10000;
  static constexpr uint64_t kMaxLeaseMsLimit = 3'600'000;  // one hour

  // Test seam, not settable from flags or YAML: the file system RocksDB
  // uses (null = the real one), e.g. a storage::FaultInjectionFileSystem for
  // an in-process server whose disk fails under it.
  std::shared_ptr<rocksdb::FileSystem> file_system;

  // kInvalidArgument naming the offending field.
  absl::Status Validate() const;
  // Quota of `tenant` (0 = unlimited).
  uint64_t QuotaFor(const std::string& tenant) const;
};

// "1048576", "64MiB", "64M", "1.5GiB", "10GB" (powers of 1000 for kB/MB/GB/TB,
// of 1024 for K/M/G/T and KiB/MiB/GiB/TiB). kInvalidArgument otherwise.
absl::StatusOr<uint64_t> ParseBytes(absl::string_view text);

// Applies a YAML config file on top of `config`. Keys (all optional):
//   listen, data_dir, memory_bytes, disk_bytes, durability (async|sync),
//   write_policy (spill|write_through),
//   metrics_listen, tokens_file, tls_cert, tls_key, max_message_bytes,
//   ttl_seconds, workers, shutdown_grace_seconds, max_lease_ms,
//   tenants: { default_quota_bytes: N, quotas: { <tenant>: N, ... } }
// Byte sizes accept ParseBytes syntax. Unknown keys are an error (typos must
// not silently fall back to defaults).
// Errors: kNotFound when the file cannot be read, kInvalidArgument for a
// parse error or a bad value (message names the key).
absl::Status ApplyYamlConfigFile(const std::string& path, ServerConfig* config);
// The same for YAML text (`origin` names it in messages).
absl::Status ApplyYamlConfig(absl::string_view yaml, absl::string_view origin,
                             ServerConfig* config);

// Parses the command line: defaults, then --config FILE, then the other
// flags. Returns the config, or a status; *exit_now is set (with OK) for
// --help / --version, after printing the text to stdout.
absl::StatusOr<ServerConfig> ParseCommandLine(int argc, char** argv,
                                              bool* exit_now);

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_CONFIG_H_
