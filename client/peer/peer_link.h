// KvPeerLink: how two engines' connectors reach each other for a KV handoff
// (disaggregated serving: a prefill engine computes a prompt's KV, a decode
// engine generates from it). The prefill connector sends each saved
// request's sealed blocks as messages (peer_message.h); the decode
// connector receives them into a PeerInbox and loads a request from there
// (KvConnector::AttachPeer, LoadSpec::from_peer).
//
// Implementations: NewLoopbackPeerLinks (in one process: tests, or two
// engines sharing a process) and NcclPeerLink (client/nccl/
// nccl_peer_link.h: GPU to GPU over NCCL, the id exchanged through the
// cache service).
//
// Messages arrive whole and in the order sent. A link is one-way or
// two-way as its implementation says; Send on a receive-only end and
// Receive on a send-only end answer kFailedPrecondition.
//
// Thread safety: Send and Receive may be called from different threads;
// concurrent Sends (or Receives) are serialized by the link.
#ifndef VQKV_CLIENT_PEER_PEER_LINK_H_
#define VQKV_CLIENT_PEER_PEER_LINK_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace vqkv::client {

class KvPeerLink {
 public:
  virtual ~KvPeerLink() = default;

  // The largest message this link carries.
  virtual uint64_t max_message_bytes() const = 0;

  // Sends one message; returns once the link is done with `message`.
  // Errors: kInvalidArgument for a message over max_message_bytes;
  // kCancelled after Close; the transport's.
  virtual absl::Status Send(absl::string_view message) = 0;

  // The next message, waiting up to `timeout` (a link that cannot time out
  // says so in its header). Errors: kDeadlineExceeded when none came;
  // kCancelled after Close (the peer's or this end's); the transport's.
  virtual absl::StatusOr<std::string> Receive(absl::Duration timeout) = 0;

  // Ends the link: blocked and later calls answer kCancelled. Idempotent.
  virtual void Close() = 0;
};

// Two connected in-process ends: what one Sends the other Receives, both
// ways. Each holds at most `max_queued_bytes` of messages not yet received;
// a Send that would exceed it waits for the receiver. Closing either end
// closes both.
std::pair<std::unique_ptr<KvPeerLink>, std::unique_ptr<KvPeerLink>>
NewLoopbackPeerLinks(uint64_t max_message_bytes = uint64_t{64} << 20,
                     uint64_t max_queued_bytes = uint64_t{256} << 20);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_PEER_PEER_LINK_H_
