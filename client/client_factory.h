// Opening a CacheClient from plain settings: the one place that turns a
// server string, a codec name and a codebook file into a backend, a codec
// and a client, shared by the C API (client/include/vqkv/vqkv.h) and the
// Python binding (client/python/vqkv_py.cc) so both accept exactly the same
// settings and report the same errors.
//
// Server strings:
//   "", "embedded"    an in-process, memory-only store (EmbeddedBackend)
//   "embedded:DIR"    an in-process store with its RocksDB tier in DIR
//   "h1:p1,h2:p2,..." a cluster of vqkv-servers (client/cluster/), each
//                     block on `replicas` of them
//   "dns:///name:port" a cluster whose members are the addresses `name`
//                     resolves to (e.g. a Kubernetes headless Service),
//                     re-resolved every 30 s
//   anything else     one vqkv-server's gRPC target, e.g. "127.0.0.1:50051"
//
// Thread safety: pure functions.
#ifndef VQKV_CLIENT_CLIENT_FACTORY_H_
#define VQKV_CLIENT_CLIENT_FACTORY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/backend.h"
#include "client/cache_client.h"
#include "client/grpc/grpc_backend.h"
#include "kernels/codec.h"

namespace vqkv::client {

// Where a backend lives and how to talk to it.
struct BackendConfig {
  std::string server = "embedded";
  // Bearer token for vqkv-servers (ignored by the embedded store).
  std::string auth_token;
  // TLS to vqkv-servers (client/grpc/grpc_backend.h); off by default.
  TlsClientOptions tls;
  // Largest gRPC message sent or accepted (GrpcBackendOptions).
  uint64_t max_message_bytes = uint64_t{64} << 20;
  // Memory budget of an embedded store.
  uint64_t embedded_memory_bytes = uint64_t{256} << 20;
  // Clusters only: owners of each block (>= 1; capped at the node count).
  int replicas = 2;
};

struct ClientConfig {
  std::string server = "embedded";
  // Bearer token for a vqkv-server (ignored by the embedded store).
  std::string auth_token;
  // TLS to vqkv-servers (client/grpc/grpc_backend.h); off by default.
  TlsClientOptions tls;
  // "fp16", "kivi2", "kivi4" or "vq" (kernels/codec_factory.h).
  std::string codec = "fp16";
  // vq only: the codebook file (docs/CODEBOOK_FORMAT.md), or, when empty,
  // the content hash of a set registered with the backend. Both empty is an
  // error for vq; either set is an error for the other codecs.
  std::string codebook_path;
  uint64_t codebook_hash = 0;
  // vq only: bits of the key sketch (VqConfig::key_sketch_bits; docs/CODEC.md
  // "Key sketch"), 0 = none. It is part of the codec descriptor, so clients
  // with different sketches never share blocks.
  int key_sketch_bits = 0;
  // vq only: the sketch covers layers key_sketch_first_layer.. only
  // (VqConfig::key_sketch_first_layer); in the descriptor too.
  int key_sketch_first_layer = 0;
  KvLayout layout;
  // Memory budget of an embedded store.
  uint64_t embedded_memory_bytes = uint64_t{256} << 20;
  // Clusters only (a server list or dns:///): owners of each block.
  int replicas = 2;
  // model_id, block_tokens, sink_tokens, timeouts, ...
  CacheClientOptions options;
};

// The backend named by `config.server` (see above).
// Errors: kInvalidArgument for "embedded:" without a directory, TLS settings
// for the embedded store, a bad server list (client/cluster/membership.h
// ParseMembership) or replicas < 1; ValidateTlsClientOptions's errors (also
// for a cluster, before any member is dialled); the store's Open errors;
// NewGrpcBackend's errors.
absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(
    const BackendConfig& config);
// The same with the other settings at their defaults.
absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(
    const std::string& server, const std::string& auth_token,
    uint64_t embedded_memory_bytes);

// A client for `config`. Errors: kInvalidArgument for a bad layout, an
// unknown codec, missing or unexpected codebooks, a key sketch for a codec
// other than vq or of a size VqConfig refuses, and CacheClient::Create's
// option errors (messages name the setting); kNotFound / kDataLoss for a
// codebook file that cannot be read or parsed; CacheClient's errors.
absl::StatusOr<std::unique_ptr<CacheClient>> OpenCacheClient(
    ClientConfig config);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_CLIENT_FACTORY_H_
