// Server credentials that authenticate every call before its request body is
// read: a grpc_auth_metadata_processor checks the `authorization` metadata
// against a TokenStore while gRPC processes the call's initial metadata, so a
// call without a valid bearer token fails with UNAUTHENTICATED before any
// handler runs and before its messages are parsed (gRPC stops reading them).
// The tenant is put in the call's auth context as property kTenantProperty,
// where KvCacheService::Authenticate finds it.
//
// gRPC's C++ InsecureServerCredentials() cannot take a metadata processor
// (it asserts), so these credentials are built on gRPC's C API, for
// plaintext and TLS alike.
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

// PEM key and certificate chain; both empty for plaintext.
struct TlsPem {
  std::string key;
  std::string cert_chain;
};

// Plaintext (tls.key empty) or TLS server credentials whose every call is
// authenticated by `tokens`; each refused call is counted in `metrics`
// (AddAuthFailure). REQUIRES: tokens->enabled(); `tokens` and `metrics`
// outlive every server the credentials are added to.
std::shared_ptr<grpc::ServerCredentials> AuthenticatingServerCredentials(
    const TokenStore* tokens, Metrics* metrics, const TlsPem& tls);

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_AUTH_CREDENTIALS_H_
