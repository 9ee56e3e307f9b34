#include "client/c_api_internal.h"

namespace vqkv::c_api {
namespace {

thread_local std::string last_error;

}  // namespace

const char* LastError() noexcept { return last_error.c_str(); }

void SetLastError(absl::string_view message) noexcept {
  try {
    last_error.assign(message.data(), message.size());
  } catch (...) {
    last_error.clear();  // out of memory for the message itself
  }
}

vqkv_status_code Report(const absl::Status& status) noexcept {
  SetLastError(status.message());
  return static_cast<vqkv_status_code>(status.code());
}

}  // namespace vqkv::c_api
