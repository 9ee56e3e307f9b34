// Whole-file reads and crash-safe whole-file writes.
//
// Thread safety: the functions touch only the named paths; concurrent calls
// on different paths are safe.
#ifndef VQKV_BASE_FILE_H_
#define VQKV_BASE_FILE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace vqkv::base {

// The bytes of the file at `path`. Errors: kNotFound when it does not exist,
// kPermissionDenied when it cannot be opened for reading, kUnavailable for
// other open or read failures (a directory, an I/O error). Messages read
// "cannot read <path>: <strerror>".
absl::StatusOr<std::string> ReadFile(const std::string& path);

// The bytes of a PEM file (a TLS certificate, key or CA bundle) at `path`;
// `what` names the setting in messages ("TLS <what>: ..."). Errors:
// kNotFound when it cannot be read (ReadFile's message), kInvalidArgument
// when it holds no "-----BEGIN" line.
absl::StatusOr<std::string> ReadPemFile(const std::string& path,
                                        absl::string_view what);

// Writes `bytes` to `path` + ".tmp", then renames it over `path`, so a
// reader sees the old file or the whole new one, never a torn one.
// Errors: kUnavailable "cannot write <path>: <strerror>" (the temporary file
// is removed).
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view bytes);

}  // namespace vqkv::base

#endif  // VQKV_BASE_FILE_H_
