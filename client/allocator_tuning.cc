#include "client/allocator_tuning.h"

#include <climits>

#include "absl/strings/str_cat.h"
#include "base/malloc.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace vqkv::client {

absl::Status TuneAllocatorForLargeMessages(const AllocatorTuning& tuning) {
#if defined(VQKV_SANITIZER_MALLOC)  // it answers mallopt itself
  (void)tuning;
  return absl::UnimplementedError(
      "allocator tuning: a sanitizer's malloc is in use; nothing changed");
#elif defined(__GLIBC__)
  if (tuning.mmap_bytes > INT_MAX || tuning.trim_bytes > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("allocator tuning: thresholds must fit an int; got mmap ",
                     tuning.mmap_bytes, ", trim ", tuning.trim_bytes));
  }
  // The mmap threshold first: it is the one glibc may refuse (past its heap
  // maximum), and then nothing has changed yet.
  if (mallopt(M_MMAP_THRESHOLD, static_cast<int>(tuning.mmap_bytes)) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("allocator tuning: glibc refused an mmap threshold of ",
                     tuning.mmap_bytes, " bytes (past its heap maximum)"));
  }
  if (mallopt(M_TRIM_THRESHOLD, static_cast<int>(tuning.trim_bytes)) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("allocator tuning: glibc refused a trim threshold of ",
                     tuning.trim_bytes, " bytes"));
  }
  return absl::OkStatus();
#else
  (void)tuning;
  return absl::UnimplementedError(
      "allocator tuning: only glibc's malloc is tuned; this C library is "
      "left as it is");
#endif
}

}  // namespace vqkv::client
