// The CUDA KvDevice (client/kv_device.h): a stream of its own on the pages'
// device, ordered after the engine's compute stream with events; the rows
// are gathered and scattered by kernels/cuda/paged_copy.cuh straight from
// and into pinned, mapped host staging (no device staging, so the engine's
// GPU memory, mostly its KV pages, is not touched).
//
// Staging comes from a pool of pinned buffers in power-of-two sizes (64 KiB
// and up), reused; up to 1 GiB of free buffers is kept for reuse, the rest
// is returned to the system.
//
// Built only with CUDA (VQKV_HAVE_CUDA); NewKvDevice calls it.
#ifndef VQKV_CLIENT_CUDA_CUDA_KV_DEVICE_H_
#define VQKV_CLIENT_CUDA_CUDA_KV_DEVICE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "client/kv_device.h"
#include "client/paged_kv.h"

namespace vqkv::client {

// Errors: kFailedPrecondition when the device cannot be used (no GPU or
// driver, device index out of range, no unified addressing, pages that are
// not its memory), naming the CUDA error; kInternal when a stream or event
// cannot be created.
absl::StatusOr<std::unique_ptr<KvDevice>> NewCudaKvDevice(
    const PagedKvCaches& caches);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_CUDA_CUDA_KV_DEVICE_H_
