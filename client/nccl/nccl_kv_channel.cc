#include "client/nccl/nccl_kv_channel.h"

#include <array>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/nccl/nccl_rendezvous.h"

namespace vqkv::client {
namespace {

static_assert(sizeof(ncclUniqueId) == kNcclUniqueIdBytes);

absl::Status NcclError(const char* call, ncclResult_t r, ncclComm_t comm) {
  std::string detail = ncclGetErrorString(r);
  if (comm != nullptr) {
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && last[0] != '\0')
      absl::StrAppend(&detail, ": ", last);
  }
  return absl::InternalError(absl::StrCat(call, " failed: ", detail));
}

absl::Status CudaError(const char* call, cudaError_t e) {
  return absl::InternalError(absl::StrCat(call,
                                          " failed: ", cudaGetErrorName(e),
                                          " (", cudaGetErrorString(e), ")"));
}

#define VQKV_NCCL_CALL(call, comm)                            \
  do {                                                        \
    const ncclResult_t r_ = (call);                           \
    if (r_ != ncclSuccess) return NcclError(#call, r_, comm); \
  } while (0)

#define VQKV_CUDA_CALL(call)                            \
  do {                                                  \
    const cudaError_t e_ = (call);                      \
    if (e_ != cudaSuccess) return CudaError(#call, e_); \
  } while (0)

}  // namespace

absl::Status CheckNcclLayerFrame(const NcclLayerFrame& frame,
                                 int expected_layer, uint64_t capacity) {
  if (frame.magic != NcclLayerFrame::kMagic ||
      frame.version != NcclLayerFrame::kVersion) {
    return absl::DataLossError(
        absl::StrCat("the NCCL peer sent no vqkv layer frame (magic ",
                     absl::Hex(frame.magic), ", version ", frame.version,
                     "): the two sides run different protocols"));
  }
  if (frame.layer != expected_layer) {
    return absl::FailedPreconditionError(
        absl::StrCat("the NCCL peer sent layer ", frame.layer, " where layer ",
                     expected_layer, " was expected"));
  }
  if (frame.bytes > capacity) {
    return absl::ResourceExhaustedError(
        absl::StrCat("layer ", frame.layer, " carries ", frame.bytes,
                     " bytes; the receive buffer holds ", capacity));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<NcclKvChannel>> NcclKvChannel::Open(
    Backend* backend, absl::string_view channel, Role role, int device,
    const Options& options) {
  int count = 0;
  VQKV_CUDA_CALL(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CUDA device ", device, " does not exist (", count, " devices)"));
  }
  ncclUniqueId id;
  if (role == Role::kSender) {
    VQKV_NCCL_CALL(ncclGetUniqueId(&id), nullptr);
    const absl::Status s = PublishNcclId(
        backend, channel,
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&id), sizeof(id)),
        options.id_ttl);
    if (!s.ok()) return s;
  } else {
    absl::StatusOr<NcclUniqueIdBytes> got =
        AwaitNcclId(backend, channel, options.rendezvous_timeout);
    if (!got.ok()) return got.status();
    std::memcpy(&id, got->data(), sizeof(id));
  }
  auto ch = std::unique_ptr<NcclKvChannel>(new NcclKvChannel(role, device));
  VQKV_CUDA_CALL(cudaSetDevice(device));
  const int slots = role == Role::kSender ? kSendFrames : 1;
  VQKV_CUDA_CALL(cudaMalloc(reinterpret_cast<void**>(&ch->device_frames_),
                            sizeof(NcclLayerFrame) * slots));
  VQKV_CUDA_CALL(cudaMallocHost(reinterpret_cast<void**>(&ch->host_frame_),
                                sizeof(NcclLayerFrame)));
  VQKV_NCCL_CALL(
      ncclCommInitRank(&ch->comm_, 2, id, role == Role::kSender ? 0 : 1),
      nullptr);
  return ch;
}

NcclKvChannel::~NcclKvChannel() {
  // Teardown errors cannot be reported; the device may already be gone.
  (void)cudaSetDevice(device_);
  if (comm_ != nullptr && !aborted_.load()) (void)ncclCommDestroy(comm_);
  if (device_frames_ != nullptr) (void)cudaFree(device_frames_);
  if (host_frame_ != nullptr) (void)cudaFreeHost(host_frame_);
}

void NcclKvChannel::Abort() {
  broken_ = true;
  if (comm_ != nullptr && !aborted_.exchange(true)) {
    (void)ncclCommAbort(comm_);  // frees the communicator's resources too
  }
}

absl::Status NcclKvChannel::Usable(Role needed) const {
  if (broken_) {
    return absl::FailedPreconditionError(
        "the NCCL channel failed earlier; open a new one");
  }
  if (role_ != needed) {
    return absl::FailedPreconditionError(
        role_ == Role::kSender ? "a sending channel cannot receive"
                               : "a receiving channel cannot send");
  }
  return absl::OkStatus();
}

absl::Status NcclKvChannel::Fail(absl::Status s) {
  broken_ = true;
  return s;
}

absl::Status NcclKvChannel::SendLayer(int layer, const void* device_bytes,
                                      uint64_t bytes, cudaStream_t stream) {
  if (absl::Status s = Usable(Role::kSender); !s.ok()) return s;
  if (bytes > 0 && device_bytes == nullptr) {
    return absl::InvalidArgumentError("device_bytes is null");
  }
  absl::Status s = [&]() -> absl::Status {
    VQKV_CUDA_CALL(cudaSetDevice(device_));
    NcclLayerFrame frame;
    frame.layer = layer;
    frame.bytes = bytes;
    NcclLayerFrame* slot = device_frames_ + sent_ % kSendFrames;
    // From pageable memory: the copy has taken `frame` when the call
    // returns, so the local may go.
    VQKV_CUDA_CALL(cudaMemcpyAsync(slot, &frame, sizeof(frame),
                                   cudaMemcpyHostToDevice, stream));
    VQKV_NCCL_CALL(
        ncclSend(slot, sizeof(frame), ncclUint8, /*peer=*/1, comm_, stream),
        comm_);
    if (bytes > 0) {
      VQKV_NCCL_CALL(ncclSend(device_bytes, bytes, ncclUint8, 1, comm_, stream),
                     comm_);
    }
    ++sent_;
    return absl::OkStatus();
  }();
  return s.ok() ? s : Fail(std::move(s));
}

absl::StatusOr<uint64_t> NcclKvChannel::ReceiveLayer(int layer,
                                                     void* device_buffer,
                                                     uint64_t capacity,
                                                     cudaStream_t stream) {
  if (absl::Status s = Usable(Role::kReceiver); !s.ok()) return s;
  if (capacity > 0 && device_buffer == nullptr) {
    return absl::InvalidArgumentError("device_buffer is null");
  }
  uint64_t bytes = 0;
  absl::Status s = [&]() -> absl::Status {
    VQKV_CUDA_CALL(cudaSetDevice(device_));
    VQKV_NCCL_CALL(ncclRecv(device_frames_, sizeof(NcclLayerFrame), ncclUint8,
                            /*peer=*/0, comm_, stream),
                   comm_);
    VQKV_CUDA_CALL(cudaMemcpyAsync(host_frame_, device_frames_,
                                   sizeof(NcclLayerFrame),
                                   cudaMemcpyDeviceToHost, stream));
    VQKV_CUDA_CALL(cudaStreamSynchronize(stream));
    const NcclLayerFrame frame = *host_frame_;
    if (absl::Status c = CheckNcclLayerFrame(frame, layer, capacity); !c.ok()) {
      return c;
    }
    bytes = frame.bytes;
    if (bytes > 0) {
      VQKV_NCCL_CALL(
          ncclRecv(device_buffer, bytes, ncclUint8, 0, comm_, stream), comm_);
    }
    return absl::OkStatus();
  }();
  if (!s.ok()) return Fail(std::move(s));
  return bytes;
}

}  // namespace vqkv::client
