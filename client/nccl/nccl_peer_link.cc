#include "client/nccl/nccl_peer_link.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace vqkv::client {
namespace {

absl::Status CudaFailed(const char* call, cudaError_t e) {
  return absl::InternalError(
      absl::StrCat(call, " failed: ", cudaGetErrorString(e)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<NcclPeerLink>> NcclPeerLink::Open(
    Backend* backend, absl::string_view channel, NcclKvChannel::Role role,
    int device, uint64_t max_message_bytes,
    const NcclKvChannel::Options& options) {
  if (max_message_bytes == 0) {
    return absl::InvalidArgumentError("max_message_bytes must be > 0");
  }
  absl::StatusOr<std::unique_ptr<NcclKvChannel>> ch =
      NcclKvChannel::Open(backend, channel, role, device, options);
  if (!ch.ok()) return ch.status();
  auto link = std::unique_ptr<NcclPeerLink>(
      new NcclPeerLink(*std::move(ch), max_message_bytes));
  if (cudaError_t e =
          cudaStreamCreateWithFlags(&link->stream_, cudaStreamNonBlocking);
      e != cudaSuccess) {
    return CudaFailed("cudaStreamCreateWithFlags", e);
  }
  if (cudaMalloc(&link->device_buffer_, max_message_bytes) != cudaSuccess ||
      cudaMallocHost(reinterpret_cast<void**>(&link->pinned_),
                     max_message_bytes) != cudaSuccess) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no room for two ", max_message_bytes,
                     "-byte message buffers (device and pinned)"));
  }
  return link;
}

NcclPeerLink::~NcclPeerLink() {
  // Teardown errors cannot be reported; the device may already be gone.
  (void)cudaSetDevice(channel_->device());
  if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
  if (device_buffer_ != nullptr) (void)cudaFree(device_buffer_);
  if (pinned_ != nullptr) (void)cudaFreeHost(pinned_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

absl::Status NcclPeerLink::Send(absl::string_view message) {
  if (message.size() > max_message_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", message.size(), "-byte message; this link carries ",
                     "at most ", max_message_bytes_));
  }
  absl::MutexLock lock(&mu_);
  if (closed_.load()) return absl::CancelledError("peer link closed");
  if (cudaError_t e = cudaSetDevice(channel_->device()); e != cudaSuccess) {
    return CudaFailed("cudaSetDevice", e);
  }
  std::memcpy(pinned_, message.data(), message.size());
  if (cudaError_t e = cudaMemcpyAsync(device_buffer_, pinned_, message.size(),
                                      cudaMemcpyHostToDevice, stream_);
      e != cudaSuccess) {
    return CudaFailed("cudaMemcpyAsync", e);
  }
  absl::Status s =
      channel_->SendLayer(next_, device_buffer_, message.size(), stream_);
  if (!s.ok()) return s;
  next_ = next_ == INT32_MAX ? 0 : next_ + 1;
  // The buffers are reused by the next Send: wait for this one to leave.
  if (cudaError_t e = cudaStreamSynchronize(stream_); e != cudaSuccess) {
    return CudaFailed("cudaStreamSynchronize", e);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> NcclPeerLink::Receive(absl::Duration timeout) {
  (void)timeout;
  absl::MutexLock lock(&mu_);
  if (closed_.load()) return absl::CancelledError("peer link closed");
  if (cudaError_t e = cudaSetDevice(channel_->device()); e != cudaSuccess) {
    return CudaFailed("cudaSetDevice", e);
  }
  absl::StatusOr<uint64_t> bytes = channel_->ReceiveLayer(
      next_, device_buffer_, max_message_bytes_, stream_);
  if (!bytes.ok()) {
    if (closed_.load()) return absl::CancelledError("peer link closed");
    return bytes.status();
  }
  next_ = next_ == INT32_MAX ? 0 : next_ + 1;
  if (*bytes > 0) {
    if (cudaError_t e = cudaMemcpyAsync(pinned_, device_buffer_, *bytes,
                                        cudaMemcpyDeviceToHost, stream_);
        e != cudaSuccess) {
      return CudaFailed("cudaMemcpyAsync", e);
    }
  }
  if (cudaError_t e = cudaStreamSynchronize(stream_); e != cudaSuccess) {
    if (closed_.load()) return absl::CancelledError("peer link closed");
    return CudaFailed("cudaStreamSynchronize", e);
  }
  return std::string(pinned_, *bytes);
}

void NcclPeerLink::Close() {
  if (!closed_.exchange(true)) channel_->Abort();
}

}  // namespace vqkv::client
