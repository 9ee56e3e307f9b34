// The message of a KV handoff between two engines (disaggregated serving):
// the prefill side sends the sealed blocks it saved for a request, the
// decode side loads them into its pages (KvConnector, client/peer/
// peer_link.h). Blocks travel sealed (kernels/block.h), exactly the bytes
// the cache service stores, so the receiver verifies them as it verifies
// blocks from the service (checksum, header against its namespace) before
// any byte reaches its pages, and checks each hash against the chain
// hashes of its own tokens: a peer can never hand the model wrong data.
//
// Layout (little-endian; docs/CLIENT.md "Prefill to decode"):
//   u32 magic "VQPT", u16 version (1), u16 flags (bit 0: the request's last
//   message), u32 request id bytes, the request id, u32 first_block (the
//   chain position of the first block in this message), u32 block count,
//   then per block: 16-byte hash, u32 byte count, the sealed block.
// A request's blocks may span several messages (max_message_bytes); their
// first_block fields continue one another.
//
// Thread safety: pure functions.
#ifndef VQKV_CLIENT_PEER_PEER_MESSAGE_H_
#define VQKV_CLIENT_PEER_PEER_MESSAGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "client/cache_client.h"

namespace vqkv::client {

struct PeerMessage {
  static constexpr uint32_t kMagic = 0x54505156;  // "VQPT" little-endian
  static constexpr uint16_t kVersion = 1;
  std::string request_id;
  uint32_t first_block = 0;
  bool last = false;
  // chain_position of each is first_block + its index.
  std::vector<EncodedBlock> blocks;
};

// Bytes of a message's fixed part and of each block's prefix.
inline constexpr size_t kPeerMessageHeaderBytes = 4 + 2 + 2 + 4 + 4 + 4;
inline constexpr size_t kPeerBlockPrefixBytes = 16 + 4;

// Splits a request's blocks (consecutive chain positions from first_block)
// into messages of at most max_message_bytes each, the last one flagged;
// a request without blocks is one empty, last message. Errors:
// kInvalidArgument when one block alone does not fit max_message_bytes,
// or the request id is over 1 KiB.
absl::StatusOr<std::vector<std::string>> EncodePeerMessages(
    absl::string_view request_id, uint32_t first_block,
    absl::Span<const EncodedBlock> blocks, uint64_t max_message_bytes);

// Parses one message. Errors: kDataLoss for bytes that are not one (bad
// magic, truncated, trailing bytes), kUnimplemented for another version.
absl::StatusOr<PeerMessage> ParsePeerMessage(absl::string_view bytes);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_PEER_PEER_MESSAGE_H_
