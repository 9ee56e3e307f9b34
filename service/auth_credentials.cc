#include "service/auth_credentials.h"

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "grpc/grpc.h"
#include "grpc/grpc_security.h"
#include "grpc/slice.h"

namespace vqkv::service {
namespace {

absl::string_view SliceView(const grpc_slice& s) {
  return absl::string_view(
      reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(s)),
      GRPC_SLICE_LENGTH(s));
}

// grpc_auth_metadata_processor.process: runs for every call, on the thread
// that received its initial metadata, and answers at once (no blocking).
struct AuthState {
  const TokenStore* tokens;
  Metrics* metrics;
};

void ProcessAuthMetadata(void* state, grpc_auth_context* context,
                         const grpc_metadata* md, size_t num_md,
                         grpc_process_auth_metadata_done_cb cb,
                         void* user_data) {
  const auto* auth = static_cast<const AuthState*>(state);
  bool present = false;
  absl::string_view header;
  for (size_t i = 0; i < num_md; ++i) {
    if (SliceView(md[i].key) == "authorization") {
      present = true;
      header = SliceView(md[i].value);
      break;
    }
  }
  const absl::StatusOr<std::string> tenant =
      auth->tokens->Authenticate(present, header);
  if (!tenant.ok()) {
    auth->metrics->AddAuthFailure();
    const std::string message(tenant.status().message());
    cb(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_UNAUTHENTICATED,
       message.c_str());
    return;
  }
  grpc_auth_context_add_property(context, kTenantProperty, tenant->data(),
                                 tenant->size());
  cb(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_OK, nullptr);
}

// TLS core credentials whose certificates come from files re-read every
// tls.reload_seconds (header comment).
grpc_server_credentials* TlsCoreCredentials(const TlsFiles& tls) {
  grpc_tls_certificate_provider* provider =
      grpc_tls_certificate_provider_file_watcher_create(
          tls.key.c_str(), tls.cert.c_str(),
          tls.client_ca.empty() ? nullptr : tls.client_ca.c_str(),
          tls.reload_seconds);
  grpc_tls_credentials_options* options = grpc_tls_credentials_options_create();
  // The options take their own reference to the provider.
  grpc_tls_credentials_options_set_certificate_provider(options, provider);
  grpc_tls_certificate_provider_release(provider);
  grpc_tls_credentials_options_watch_identity_key_cert_pairs(options);
  if (tls.client_ca.empty()) {
    grpc_tls_credentials_options_set_cert_request_type(
        options, GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    grpc_tls_credentials_options_watch_root_certs(options);
    grpc_tls_credentials_options_set_cert_request_type(
        options, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  // Takes ownership of the options.
  return grpc_tls_server_credentials_create(options);
}

// The base class (grpc::GrpcLibraryCodegen) initializes gRPC before the
// constructor body creates the core credentials.
class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  CoreServerCredentials(const TokenStore* tokens, Metrics* metrics,
                        const TlsFiles* tls) {
    creds_ = tls == nullptr ? grpc_insecure_server_credentials_create()
                            : TlsCoreCredentials(*tls);
    if (tokens == nullptr) return;
    grpc_auth_metadata_processor processor;
    processor.process = &ProcessAuthMetadata;
    // The core credentials own the state (they outlive this object: the
    // server's listeners hold them); the tokens and metrics are borrowed.
    processor.destroy = [](void* state) {
      delete static_cast<AuthState*>(state);
    };
    processor.state = new AuthState{tokens, metrics};
    grpc_server_credentials_set_auth_metadata_processor(creds_, processor);
  }
  ~CoreServerCredentials() override { grpc_server_credentials_release(creds_); }
  CoreServerCredentials(const CoreServerCredentials&) = delete;
  CoreServerCredentials& operator=(const CoreServerCredentials&) = delete;

  // The processor is fixed at construction.
  void SetAuthMetadataProcessor(
      const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {
    std::abort();
  }

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), creds_);
  }

  grpc_server_credentials* creds_ = nullptr;
};

}  // namespace

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const TokenStore* tokens, Metrics* metrics, const TlsFiles* tls) {
  if (tokens == nullptr && tls == nullptr) {
    return grpc::InsecureServerCredentials();
  }
  return std::make_shared<CoreServerCredentials>(tokens, metrics, tls);
}

}  // namespace vqkv::service
