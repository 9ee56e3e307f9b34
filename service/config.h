// Configuration of vqkv-server: defaults, the YAML config file and the
// command line (flags override the file).
//
// Thread safety: plain values; the loaders are pure functions.
#ifndef VQKV_SERVICE_CONFIG_H_
#define VQKV_SERVICE_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "service/kv_service_options.h"
#include "storage/tiered_store.h"

namespace vqkv::service {

struct ServerConfig {
  // The server's store defaults: the library's (storage/tiered_store.h),
  // except data_dir, which is "./vqkv-data" (the library's empty data_dir
  // means no disk tier).
  static storage::TieredStoreOptions DefaultStoreOptions();

  // host:port for gRPC. Port 0 picks a free port (printed when listening).
  std::string listen = "127.0.0.1:50051";
  // The tiered store: data_dir, memory_bytes, disk_bytes, durability,
  // write_policy, ttl, disk_max_records, max_namespaces_per_tenant,
  // codebook_quota, default_tenant_quota and tenant_quotas come from
  // flags and YAML; storage/tiered_store.h documents each and holds its
  // default. file_system is a test seam, not settable from flags or YAML
  // (e.g. a storage::FaultInjectionFileSystem for an in-process server whose
  // disk fails under it).
  storage::TieredStoreOptions store = DefaultStoreOptions();
  // The KVCache service: max_message_bytes (also the gRPC message limit),
  // workers, max_lease, max_stream_blocks, max_queued_work and admin_tenant
  // come from flags and YAML (service/
  // kv_service_options.h documents each and holds its default).
  KvServiceOptions service;
  // host:port for the Prometheus/health HTTP endpoint; empty = off.
  std::string metrics_listen;
  // Bearer tokens (service/auth.h formats); empty = auth off.
  std::string tokens_file;
  // Auth off on an address other than loopback is refused (Validate) unless
  // this is set: every caller could read, write and delete everything.
  bool allow_insecure_public = false;
  // gRPC transport bounds: HTTP/2 streams (calls) open at once per client
  // connection, and the memory gRPC may use for its buffers (a
  // grpc::ResourceQuota; 0 = gRPC's default, unbounded).
  int max_concurrent_streams = 100;
  uint64_t grpc_memory_bytes = uint64_t{2} << 30;
  // PEM certificate chain and private key; both or neither. Empty = plaintext.
  std::string tls_cert;
  std::string tls_key;
  // PEM CA bundle for client certificates (mTLS): when set, every connection
  // must present a certificate that chains to it. REQUIRES tls_cert.
  std::string tls_client_ca;
  // Seconds between re-reads of tls_cert, tls_key and tls_client_ca (a
  // rotated certificate is used for new connections without a restart);
  // 1..86400.
  unsigned tls_reload_seconds = 60;
  // Seconds SIGTERM waits for in-flight RPCs before cancelling them.
  double shutdown_grace_seconds = 10;
  // Upper bound of service.max_lease (max_lease_ms in flags and YAML).
  static constexpr uint64_t kMaxLeaseMsLimit = 3'600'000;  // one hour

  // kInvalidArgument naming the offending field.
  absl::Status Validate() const;
};

// Whether a listen address (host:port, [v6]:port or unix:path) only accepts
// connections from this machine: localhost, 127.0.0.0/8, ::1, or a Unix
// socket. Wildcards (0.0.0.0, [::]) and every other address are not.
bool IsLoopbackListen(absl::string_view listen);

// The disk budget the store gets for ServerConfig's disk_bytes: 0 means
// unlimited (the largest budget the store accepts).
uint64_t StoreDiskBytes(uint64_t disk_bytes);

// "1048576", "64MiB", "64M", "1.5GiB", "10GB" (powers of 1000 for kB/MB/GB/TB,
// of 1024 for K/M/G/T and KiB/MiB/GiB/TiB). kInvalidArgument otherwise.
absl::StatusOr<uint64_t> ParseBytes(absl::string_view text);

// Applies a YAML config file on top of `config`. Keys (all optional):
//   listen, data_dir, memory_bytes, disk_bytes, durability (async|sync),
//   write_policy (spill|write_through),
//   metrics_listen, tokens_file, tls_cert, tls_key, tls_client_ca,
//   tls_reload_seconds, max_message_bytes,
//   ttl_seconds, workers, shutdown_grace_seconds, max_lease_ms,
//   allow_insecure_public, admin_tenant, max_stream_blocks,
//   max_queued_work, max_concurrent_streams, grpc_memory_bytes,
//   disk_max_records, max_namespaces_per_tenant, codebook_max_sets,
//   codebook_max_bytes (store.codebook_quota),
//   tenants: { default_quota_bytes: N, quotas: { <tenant>: N, ... } }
// (docs/SERVICE.md; the store's and the service's keys set the fields of the
// same name in `store` and `service`, ttl_seconds sets store.ttl,
// max_lease_ms service.max_lease, tenants.* the store's quotas).
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
