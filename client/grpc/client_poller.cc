#include "client/grpc/client_poller.h"

#include <grpc/grpc.h>

#include <cstdlib>

#include "absl/base/const_init.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace vqkv::client {
namespace {

// Held for a scope's whole life, so one scope cannot unset the variable
// while another is making its channel.
ABSL_CONST_INIT absl::Mutex g_scope_mu(absl::kConstInit);
// This thread's open scopes: only the outermost takes the mutex.
thread_local int t_open_scopes = 0;

}  // namespace

ScopedClientPoller::ScopedClientPoller() {
  if (t_open_scopes++ == 0) g_scope_mu.Lock();
  if (const char* chosen = std::getenv(kEnvVar); chosen != nullptr) {
    poller_ = absl::StrCat(chosen, " (", kEnvVar, ")");
  } else if (grpc_is_initialized() != 0) {
    poller_ = "gRPC's (already running)";
  } else {
    setenv(kEnvVar, "poll", /*overwrite=*/0);
    set_by_scope_ = true;
    poller_ = "poll";
  }
}

ScopedClientPoller::~ScopedClientPoller() {
  if (set_by_scope_) unsetenv(kEnvVar);
  if (--t_open_scopes == 0) g_scope_mu.Unlock();
}

}  // namespace vqkv::client
