// Process-wide malloc settings for a process that receives large gRPC
// messages again and again (a serving engine loading cached prefixes).
//
// Why: glibc's malloc gives large freed memory back to the kernel (chunks of
// at least the mmap threshold are unmapped; free space at the top of the heap
// past the trim threshold is trimmed), so each multi-megabyte GetBlocks
// response lands in fresh pages that the kernel must fault in and zero, and
// freeing it unmaps them again. Profiled in a loop of 1 MB gets, page faults
// and page zeroing were a fifth of the client's CPU. Fixing both thresholds
// keeps that memory in the process for the next response: measured with
// client_bench and kv_service_bench in docs/CLIENT.md ("Allocator").
//
// The cost: up to `trim_bytes` of freed heap stays mapped, and allocations
// below `mmap_bytes` come from the heap, so a process that frees a large
// block in the middle of long-lived ones keeps the hole. It is the process's
// allocator, not the library's, so the library never changes it on its own:
// an engine opts in, once, at startup (or sets the same through the
// GLIBC_TUNABLES environment variable, glibc.malloc.mmap_threshold and
// glibc.malloc.trim_threshold, without code).
//
// Thread safety: call before other threads allocate heavily (mallopt is
// safe at any time, but the settings apply to allocations made after it).
#ifndef VQKV_CLIENT_ALLOCATOR_TUNING_H_
#define VQKV_CLIENT_ALLOCATOR_TUNING_H_

#include <cstdint>

#include "absl/status/status.h"

namespace vqkv::client {

struct AllocatorTuning {
  // Allocations below this come from the heap rather than their own
  // mapping (glibc M_MMAP_THRESHOLD; glibc refuses values past its heap
  // maximum, 32 MiB in some builds, so the default stays at that).
  uint64_t mmap_bytes = uint64_t{32} << 20;
  // Free memory at the top of the heap kept rather than returned (glibc
  // M_TRIM_THRESHOLD).
  uint64_t trim_bytes = uint64_t{256} << 20;
};

// Applies `tuning` to this process's malloc.
// Errors: kUnimplemented when the C library is not glibc or a sanitizer
// replaced malloc (nothing changed);
// kInvalidArgument for a value past INT_MAX (nothing changed) or one glibc
// refuses (an mmap threshold past its maximum: nothing changed; a refused
// trim threshold: the mmap threshold is already set).
absl::Status TuneAllocatorForLargeMessages(
    const AllocatorTuning& tuning = AllocatorTuning());

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_ALLOCATOR_TUNING_H_
