// Disaggregated serving: a prefill process hands the KV of its requests to a
// decode process GPU to GPU over NCCL, one layer at a time, so the decode
// side can decode (and attend to) layer l while later layers are in flight.
// The two processes meet through the cache service (nccl_rendezvous.h): the
// sender creates the NCCL id and publishes it under a channel name, the
// receiver awaits it, and both join a two-rank communicator.
//
// What travels: each SendLayer is one message, a 32-byte frame (magic
// "VQNC", version 1, the layer index, the payload size) and then the
// payload, device bytes the caller owns: e.g. the layer's codes packed on
// the GPU, or sealed blocks (kernels/block_format.h) copied to the device.
// The receiver checks the frame (magic, version, the layer it expects, the
// size against its buffer) before it receives a byte of payload. The payload
// is opaque here: verifying and decoding it is the receiver's, as for blocks
// from the service.
//
// Built only with CUDA and NCCL (cmake/Cuda.cmake: VQKV_HAVE_NCCL). The
// connector's handoff link runs on it (nccl_peer_link.h).
//
// Errors: a failed NCCL or CUDA call gives kInternal naming the call and
// NCCL's or CUDA's message, and leaves the channel broken: every later call
// answers kFailedPrecondition (a communicator whose peer diverged cannot be
// resynchronized; open a new channel).
//
// Thread safety: Open may run concurrently (e.g. both ranks in one process,
// one thread each); one channel is used by one thread at a time.
#ifndef VQKV_CLIENT_NCCL_NCCL_KV_CHANNEL_H_
#define VQKV_CLIENT_NCCL_NCCL_KV_CHANNEL_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/backend.h"

namespace vqkv::client {

// The frame before each layer's payload (device memory on the wire).
struct NcclLayerFrame {
  static constexpr uint32_t kMagic = 0x434e5156;  // "VQNC" little-endian
  static constexpr uint16_t kVersion = 1;
  uint32_t magic = kMagic;
  uint16_t version = kVersion;
  uint16_t reserved0 = 0;
  int32_t layer = 0;
  uint32_t reserved1 = 0;
  uint64_t bytes = 0;
  uint64_t reserved2 = 0;
};
static_assert(sizeof(NcclLayerFrame) == 32);

// Checks a received frame: magic, version, `expected_layer`, and a payload
// that fits `capacity` bytes. kDataLoss for a frame that is not one (the
// peers disagree on the protocol), kFailedPrecondition for another layer,
// kResourceExhausted for a payload larger than the buffer.
absl::Status CheckNcclLayerFrame(const NcclLayerFrame& frame,
                                 int expected_layer, uint64_t capacity);

class NcclKvChannel {
 public:
  enum class Role { kSender, kReceiver };

  struct Options {
    // How long the receiver waits for the sender's id, and the TTL the
    // sender publishes it with.
    absl::Duration rendezvous_timeout = absl::Seconds(60);
    absl::Duration id_ttl = absl::Minutes(5);
  };

  // Joins channel `channel` as `role` on CUDA device `device`: the sender
  // creates and publishes the NCCL id (PublishNcclId), the receiver awaits
  // it (AwaitNcclId); then both call ncclCommInitRank (sender rank 0), which
  // returns once both have joined. Errors: those of the rendezvous;
  // kInvalidArgument for a bad device; kInternal for a failed NCCL or CUDA
  // call.
  static absl::StatusOr<std::unique_ptr<NcclKvChannel>> Open(
      Backend* backend, absl::string_view channel, Role role, int device,
      const Options& options);
  static absl::StatusOr<std::unique_ptr<NcclKvChannel>> Open(
      Backend* backend, absl::string_view channel, Role role, int device) {
    return Open(backend, channel, role, device, Options{});
  }
  ~NcclKvChannel();  // destroys the communicator and the frame buffers
  NcclKvChannel(const NcclKvChannel&) = delete;
  NcclKvChannel& operator=(const NcclKvChannel&) = delete;

  static constexpr int kSendFrames = 64;

  Role role() const { return role_; }
  int device() const { return device_; }

  // Sender: enqueues layer `layer`'s frame and `bytes` bytes at
  // `device_bytes` on `stream` and returns; the caller keeps the bytes
  // unchanged until `stream` passes this point (e.g. an event after it).
  // bytes may be 0. Frames rotate through kSendFrames device slots: calls
  // on different streams must be ordered by the caller at least every
  // kSendFrames calls (one stream orders them all). kFailedPrecondition on
  // a receiver.
  absl::Status SendLayer(int layer, const void* device_bytes, uint64_t bytes,
                         cudaStream_t stream);

  // Receiver: receives the next frame, checks it (CheckNcclLayerFrame,
  // `layer` expected), then enqueues the payload's receipt into
  // `device_buffer` on `stream`; returns the payload's size. Blocks the
  // calling thread until the frame has arrived (the payload itself is in
  // `device_buffer` once `stream` passes this point). After a frame error
  // the channel is broken (its payload was not taken off the wire).
  // kFailedPrecondition on a sender.
  absl::StatusOr<uint64_t> ReceiveLayer(int layer, void* device_buffer,
                                        uint64_t capacity, cudaStream_t stream);

  // Aborts the communicator (ncclCommAbort): a SendLayer or ReceiveLayer
  // blocked on the peer returns an error, and the channel is broken from
  // then on. The one call that may run concurrently with the others (from
  // another thread, e.g. a shutdown). Idempotent.
  void Abort();

 private:
  NcclKvChannel(Role role, int device) : role_(role), device_(device) {}
  absl::Status Usable(Role needed) const;
  // Records a failure: the channel is broken from now on.
  absl::Status Fail(absl::Status s);

  const Role role_;
  const int device_;
  ncclComm_t comm_ = nullptr;
  NcclLayerFrame* host_frame_ = nullptr;  // pinned: the receiver's copy
  // Device frames: kSendFrames for a sender, one for a receiver.
  NcclLayerFrame* device_frames_ = nullptr;
  uint64_t sent_ = 0;
  std::atomic<bool> broken_{false};
  std::atomic<bool> aborted_{false};
};

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_NCCL_NCCL_KV_CHANNEL_H_
