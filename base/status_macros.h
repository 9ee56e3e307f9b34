// Early-return helpers for absl::Status and absl::StatusOr.
//
//   VQKV_RETURN_IF_ERROR(WriteHeader(out));
//   VQKV_ASSIGN_OR_RETURN(std::string bytes, base::ReadFile(path));
//
// Both evaluate their argument exactly once and return its status unchanged
// (no annotation), so the caller's error is the callee's. Usable in any
// function returning absl::Status or absl::StatusOr<T>.
#ifndef VQKV_BASE_STATUS_MACROS_H_
#define VQKV_BASE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define VQKV_RETURN_IF_ERROR(expr)               \
  do {                                           \
    const ::absl::Status vqkv_status_ = (expr);  \
    if (!vqkv_status_.ok()) return vqkv_status_; \
  } while (false)

#define VQKV_STATUS_MACROS_CONCAT_INNER_(a, b) a##b
#define VQKV_STATUS_MACROS_CONCAT_(a, b) VQKV_STATUS_MACROS_CONCAT_INNER_(a, b)

// `lhs` is a declaration (`auto x`, `std::string x`) or an lvalue (`x`).
#define VQKV_ASSIGN_OR_RETURN(lhs, rexpr) \
  VQKV_ASSIGN_OR_RETURN_IMPL_(            \
      VQKV_STATUS_MACROS_CONCAT_(vqkv_statusor_, __LINE__), lhs, rexpr)

#define VQKV_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)  \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = *std::move(statusor)

#endif  // VQKV_BASE_STATUS_MACROS_H_
