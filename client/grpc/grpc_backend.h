// A Backend that talks to one vqkv-server over gRPC
// (proto/vqkv/v1/kvcache.proto). Every call carries the caller's deadline;
// an RPC failure becomes the call-level status (UNAVAILABLE,
// DEADLINE_EXCEEDED, ...) with the target in the message. Large batches are
// split so each message stays under max_message_bytes; blocks the server
// left out of a unary GetBlocks answer for size (per-block
// RESOURCE_EXHAUSTED) are fetched again in a following call. Codebook sets
// (hundreds of MiB at the paper rate) travel through PutCodebookStream /
// GetCodebookStream in chunks of a quarter of max_message_bytes.
//
// Thread safety: as Backend; one channel shared by all calls.
#ifndef VQKV_CLIENT_GRPC_GRPC_BACKEND_H_
#define VQKV_CLIENT_GRPC_GRPC_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "client/backend.h"

namespace vqkv::client {

struct GrpcBackendOptions {
  // "host:port" (or any gRPC target, e.g. "dns:///cache:50051").
  std::string target;
  // Sent as "authorization: Bearer <token>" when non-empty.
  std::string auth_token;
  // PEM root certificates: non-empty means TLS, verified against them.
  std::string tls_root_certs;
  // Largest message sent or accepted (the server's default is 64 MiB).
  uint64_t max_message_bytes = uint64_t{64} << 20;
};

// Errors: kInvalidArgument for an empty target.
absl::StatusOr<std::unique_ptr<Backend>> NewGrpcBackend(
    const GrpcBackendOptions& options);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_GRPC_GRPC_BACKEND_H_
