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

// The base class (grpc::GrpcLibraryCodegen) initializes gRPC before the
// constructor body creates the core credentials.
class AuthenticatingCredentials final : public grpc::ServerCredentials {
 public:
  AuthenticatingCredentials(const TokenStore* tokens, Metrics* metrics,
                            const TlsPem& tls) {
    if (tls.key.empty()) {
      creds_ = grpc_insecure_server_credentials_create();
    } else {
      grpc_ssl_pem_key_cert_pair pair{tls.key.c_str(), tls.cert_chain.c_str()};
      creds_ = grpc_ssl_server_credentials_create_ex(
          /*pem_root_certs=*/nullptr, &pair, 1,
          GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE, nullptr);
    }
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
  ~AuthenticatingCredentials() override {
    grpc_server_credentials_release(creds_);
  }
  AuthenticatingCredentials(const AuthenticatingCredentials&) = delete;
  AuthenticatingCredentials& operator=(const AuthenticatingCredentials&) =
      delete;

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

std::shared_ptr<grpc::ServerCredentials> AuthenticatingServerCredentials(
    const TokenStore* tokens, Metrics* metrics, const TlsPem& tls) {
  return std::make_shared<AuthenticatingCredentials>(tokens, metrics, tls);
}

}  // namespace vqkv::service
