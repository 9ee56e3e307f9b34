// What the C API's files share (c_api.cc: the client; c_api_connector.cc:
// the paged connector): the client handle, the last-error string, Guard
// (no exception crosses the C boundary) and the versioned-struct copies.
// Not installed; include only from the C API's sources.
//
// Thread safety: the last error is per thread; the rest is pure.
#ifndef VQKV_CLIENT_C_API_INTERNAL_H_
#define VQKV_CLIENT_C_API_INTERNAL_H_

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/cache_client.h"
#include "client/include/vqkv/vqkv.h"

struct vqkv_client {
  std::unique_ptr<vqkv::client::CacheClient> impl;
  absl::Duration shutdown_timeout;
};

namespace vqkv::c_api {

// This thread's last error message ("" after a call that succeeded).
const char* LastError() noexcept;
void SetLastError(absl::string_view message) noexcept;
// Records `status`'s message as the last error and returns its code.
vqkv_status_code Report(const absl::Status& status) noexcept;

// Runs fn (returning absl::Status) so that no exception escapes.
template <typename Fn>
vqkv_status_code Guard(Fn&& fn) noexcept {
  try {
    return Report(fn());
  } catch (const std::bad_alloc&) {
    SetLastError("vqkv: out of memory");
    return VQKV_RESOURCE_EXHAUSTED;
  } catch (const std::exception& e) {
    SetLastError(std::string("vqkv: unexpected exception: ") + e.what());
    return VQKV_INTERNAL;
  } catch (...) {
    SetLastError("vqkv: unexpected exception");
    return VQKV_INTERNAL;
  }
}

// A C string argument, NULL as "".
inline std::string Str(const char* s) {
  return s == nullptr ? std::string() : s;
}

inline absl::Status NullArgument(absl::string_view name) {
  return absl::InvalidArgumentError(absl::StrCat(name, " is NULL"));
}

inline absl::Status BadStructSize(absl::string_view name, size_t got,
                                  size_t v1) {
  return absl::InvalidArgumentError(absl::StrCat(
      name, "->struct_size is ", got, "; it must be at least ", v1,
      " (set it to sizeof the struct, or use the *_init function)"));
}

// Copies a caller's input struct of in->struct_size bytes over *out (which
// holds this library's defaults for fields the caller's version lacks).
template <typename T>
absl::Status ReadVersioned(const T* in, size_t v1_size, absl::string_view name,
                           T* out) {
  if (in == nullptr) return NullArgument(name);
  const size_t size = in->struct_size;
  if (size < v1_size) return BadStructSize(name, size, v1_size);
  const auto* bytes = reinterpret_cast<const unsigned char*>(in);
  for (size_t i = sizeof(T); i < size; ++i) {
    if (bytes[i] != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " sets fields this library (vqkv ", VQKV_VERSION_STRING,
          ") does not know: byte ", i, " of ", size, " is not zero"));
    }
  }
  std::memcpy(out, in, std::min(size, sizeof(T)));
  out->struct_size = sizeof(T);
  return absl::OkStatus();
}

// Writes `value` into a caller's output struct of out->struct_size bytes;
// bytes past this library's struct are zeroed.
template <typename T>
absl::Status WriteVersioned(T value, size_t v1_size, absl::string_view name,
                            T* out) {
  if (out == nullptr) return NullArgument(name);
  const size_t size = out->struct_size;
  if (size < v1_size) return BadStructSize(name, size, v1_size);
  value.struct_size = size;
  std::memcpy(out, &value, std::min(size, sizeof(T)));
  if (size > sizeof(T)) {
    std::memset(reinterpret_cast<unsigned char*>(out) + sizeof(T), 0,
                size - sizeof(T));
  }
  return absl::OkStatus();
}

}  // namespace vqkv::c_api

#endif  // VQKV_CLIENT_C_API_INTERNAL_H_
