// NcclPeerLink: the prefill-to-decode handoff (client/peer/peer_link.h) GPU
// to GPU over NCCL, for a prefill and a decode engine on different GPUs
// (NVLink, or the network NCCL picks). One NCCL message per handoff
// message, on an NcclKvChannel (the frame's layer field numbers the
// messages): the sender stages each message through pinned memory into a
// device buffer and sends it; the receiver receives into a device buffer
// and copies it to pinned memory, where the connector verifies every block
// before any byte reaches its pages (checksums are checked on the host, as
// for blocks from the cache service).
//
// One-way: a kSender link only Sends, a kReceiver link only Receives. Both
// sides open with the same channel name, through a Backend of the same
// cache service (the NCCL id travels there: nccl_rendezvous.h), and the
// same max_message_bytes.
//
// Receive cannot time out: NCCL has no receive deadline. It blocks until a
// message arrives or Close (which aborts the communicator) ends the link.
//
// Thread safety: one thread Sends (or Receives); Close may come from any.
#ifndef VQKV_CLIENT_NCCL_NCCL_PEER_LINK_H_
#define VQKV_CLIENT_NCCL_NCCL_PEER_LINK_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/backend.h"
#include "client/nccl/nccl_kv_channel.h"
#include "client/peer/peer_link.h"

namespace vqkv::client {

class NcclPeerLink : public KvPeerLink {
 public:
  // Joins `channel` as `role` on CUDA device `device` (NcclKvChannel::Open)
  // and allocates a device and a pinned buffer of max_message_bytes each.
  // Errors: NcclKvChannel::Open's; kResourceExhausted when the buffers
  // cannot be had; kInvalidArgument for max_message_bytes 0.
  static absl::StatusOr<std::unique_ptr<NcclPeerLink>> Open(
      Backend* backend, absl::string_view channel, NcclKvChannel::Role role,
      int device, uint64_t max_message_bytes = uint64_t{64} << 20,
      const NcclKvChannel::Options& options = {});
  ~NcclPeerLink() override;

  uint64_t max_message_bytes() const override { return max_message_bytes_; }
  absl::Status Send(absl::string_view message) override;
  // `timeout` is not honoured (see above).
  absl::StatusOr<std::string> Receive(absl::Duration timeout) override;
  void Close() override;

 private:
  NcclPeerLink(std::unique_ptr<NcclKvChannel> channel, uint64_t max_bytes)
      : channel_(std::move(channel)), max_message_bytes_(max_bytes) {}

  const std::unique_ptr<NcclKvChannel> channel_;
  const uint64_t max_message_bytes_;
  cudaStream_t stream_ = nullptr;
  void* device_buffer_ = nullptr;
  char* pinned_ = nullptr;
  absl::Mutex mu_;                         // one Send or Receive at a time
  int32_t next_ ABSL_GUARDED_BY(mu_) = 0;  // the next message's number
  std::atomic<bool> closed_{false};
};

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_NCCL_NCCL_PEER_LINK_H_
