// The gRPC port's server credentials: plaintext or TLS, optionally with
// client certificates (mTLS), optionally authenticating every call's bearer
// token before its request body is read.
//
// Tokens: a grpc_auth_metadata_processor checks the `authorization` metadata
// against a TokenStore while gRPC processes the call's initial metadata, so a
// call without a valid bearer token fails with UNAUTHENTICATED before any
// handler runs and before its messages are parsed (gRPC stops reading them).
// The tenant is put in the call's auth context as property kTenantProperty,
// where KvCacheService::Authenticate finds it. gRPC's C++
// InsecureServerCredentials() cannot take a metadata processor (it asserts),
// so these credentials are built on gRPC's C API, for plaintext and TLS alike.
//
// TLS: gRPC's file-watcher certificate provider reads the certificate chain,
// the key and the client CA bundle at construction and again every
// `reload_seconds` on a thread of its own; a handshake uses what it last
// read successfully, so rotated files take effect for new connections
// without a restart (established connections keep the certificate they were
// made with). A pair whose files change while they are read is read again.
// Measured with gRPC 1.51 (docs/SECURITY.md): files missing at a reload
// leave the last certificate in use; a certificate read with a key that
// does not match it makes new handshakes fail until a matching pair is read.
//
// Thread safety: the processor only reads the (immutable) TokenStore.
#ifndef VQKV_SERVICE_AUTH_CREDENTIALS_H_
#define VQKV_SERVICE_AUTH_CREDENTIALS_H_

#include <memory>
#include <string>

#include "grpcpp/security/server_credentials.h"
#include "service/auth.h"
#include "service/metrics.h"

namespace vqkv::service {

// Name of the auth-context property holding the caller's tenant.
inline constexpr char kTenantProperty[] = "vqkv.tenant";

// The TLS files of the gRPC port.
struct TlsFiles {
  std::string cert;  // PEM certificate chain (leaf first)
  std::string key;   // PEM private key of the leaf
  // PEM CA bundle that client certificates must chain to; non-empty turns
  // mTLS on: a connection without such a certificate fails its handshake.
  std::string client_ca;
  // How often the three files are re-read. REQUIRES: >= 1.
  unsigned reload_seconds = 60;
};

// Credentials for ServerBuilder::AddListeningPort: plaintext when `tls` is
// null, else TLS from its files. With `tokens` non-null every call is
// authenticated by it and each refused call is counted in `metrics`
// (AddAuthFailure); REQUIRES then tokens->enabled(), and `tokens` and
// `metrics` outlive every server the credentials are added to. The files
// should have been checked by the caller (a missing file is no error here:
// handshakes fail until it appears).
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const TokenStore* tokens, Metrics* metrics, const TlsFiles* tls);

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_AUTH_CREDENTIALS_H_
