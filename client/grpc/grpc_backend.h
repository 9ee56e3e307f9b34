// A Backend that talks to one vqkv-server over gRPC
// (proto/vqkv/v1/kvcache.proto). Every call carries the caller's deadline;
// an RPC failure becomes the call-level status (UNAVAILABLE,
// DEADLINE_EXCEEDED, ...) with the target in the message. Gets go over
// GetBlocksSession streams kept open between calls (client/grpc/
// get_session.h), so a cache read costs a message rather than a new RPC.
// Idle sessions wait in slots by calling thread (at most 64): a thread
// gets over the session it used last, on the same connection, which is
// what the "poll" poller rewards. A server without sessions, or a session
// that breaks, gets the unary GetBlocks instead. Large batches are
// split so each message stays under max_message_bytes; blocks the server
// left out of a unary GetBlocks answer for size (per-block
// RESOURCE_EXHAUSTED) are fetched again in a following call. Codebook sets
// (hundreds of MiB at the paper rate) travel through PutCodebookStream /
// GetCodebookStream in chunks of a quarter of max_message_bytes.
//
// The backend's channels are made inside a ScopedClientPoller
// (client/grpc/client_poller.h): when gRPC starts with the first of them, it
// starts with the "poll" poller unless GRPC_POLL_STRATEGY says otherwise.
// A call that fails UNAVAILABLE before it commits (typically: a connection
// that has not yet noticed a server restart) is tried once more by gRPC
// after 20 ms (a retry policy in the channels' service config).
//
// Thread safety: as Backend; `connections` channels shared by all calls.
#ifndef VQKV_CLIENT_GRPC_GRPC_BACKEND_H_
#define VQKV_CLIENT_GRPC_GRPC_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/backend.h"

namespace vqkv::client {

// TLS to the server: a CA bundle the server's certificate must chain to,
// with its name checked against the target's host (or server_name), and
// for servers that require client certificates (vqkv-server
// --tls-client-ca) a certificate and key to present. gRPC re-reads the
// files every reload_seconds, so a rotated client certificate or CA bundle
// is used for new connections without restarting the engine.
struct TlsClientOptions {
  // PEM CA bundle; non-empty turns TLS on.
  std::string ca_file;
  // PEM client certificate chain and its private key: both or neither.
  std::string cert_file;
  std::string key_file;
  // The name the server's certificate must carry, when it differs from the
  // target's host (a cluster's members are dialled by address, e.g. the
  // pods behind dns:///vqkv-headless...: give the name their certificates
  // have). Empty = the target's host.
  std::string server_name;
  // Seconds between re-reads of the files; 1..86400.
  unsigned reload_seconds = 60;

  bool enabled() const { return !ca_file.empty(); }
};

// Checks `tls` without connecting: the fields' combinations and that every
// file named is readable PEM. Errors: kInvalidArgument for a client
// certificate without a key (or the reverse), client files or a server
// name without ca_file, reload_seconds out of range, a file that is not
// PEM; kNotFound for a file that cannot be read.
absl::Status ValidateTlsClientOptions(const TlsClientOptions& tls);

struct GrpcBackendOptions {
  // "host:port" (or any gRPC target, e.g. "dns:///cache:50051").
  std::string target;
  // Sent as "authorization: Bearer <token>" when non-empty.
  std::string auth_token;
  // TLS (off when tls.ca_file is empty: plaintext).
  TlsClientOptions tls;
  // Largest message sent or accepted (the server's default is 64 MiB).
  uint64_t max_message_bytes = uint64_t{64} << 20;
  // Gets over GetBlocksSession streams (false: a unary GetBlocks per get,
  // e.g. behind a proxy that limits a stream's lifetime).
  bool get_sessions = true;
  // TCP connections to the server, 1..kMaxConnections; calls take them in
  // turn, and a calling thread's sessions stay on one of them. Several let
  // concurrent callers read their own sockets under the "poll" poller, and
  // large blocks stream side by side: 16 threads getting 63 KB blocks on 2
  // cores got 47.5-48.3k blocks/s over 16 connections, 40.0-41.9k over 8
  // and about 34k over one (docs/SERVICE.md, "The client's poller and
  // connections"). Each is a socket and HTTP/2 state on the server too:
  // engines with many processes per server may want fewer.
  int connections = 16;
  static constexpr int kMaxConnections = 64;
};

// Without TLS, a bearer token for a target that is not loopback
// (base::IsLoopbackAddress) is sent anyway, with a warning in the log.
// Errors: kInvalidArgument for an empty target or connections out of range;
// ValidateTlsClientOptions's errors.
absl::StatusOr<std::unique_ptr<Backend>> NewGrpcBackend(
    const GrpcBackendOptions& options);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_GRPC_GRPC_BACKEND_H_
