// The messages of a KV handoff between two engines (disaggregated serving):
// the prefill side sends the blocks it saved for a request, the decode side
// loads them into its pages (KvConnector, client/peer/peer_link.h). Blocks
// arrive sealed (kernels/block.h), exactly the bytes the cache service
// stores, so the receiver verifies them as it verifies blocks from the
// service (checksum, header against its namespace) before any byte reaches
// its pages, and checks each hash against the chain hashes of its own
// tokens: a peer can never hand the model wrong data.
//
// Two kinds of message:
//  - blocks: a run of a request's blocks, each either sealed whole, or as
//    its 64-byte header alone when its payload came in layer messages
//    before it; the request's last message is a blocks message.
//  - layer: one layer's slices of some of a request's blocks, sent as soon
//    as that layer is encoded (a save encoded on the GPU from the pages),
//    so the bulk of a handoff travels while the prefill's forward pass
//    goes on. Each slice says where it goes in its block's payload; the
//    receiver assembles the payload and seals it with the header that
//    follows (PeerInbox).
//
// Layout (little-endian; docs/CLIENT.md "Prefill to decode"):
//   u32 magic "VQPT", u16 version (2), u16 flags (bit 0: the request's last
//   message; bit 1: a layer message), u32 request id bytes, the request id,
//   u32 first_block (blocks: the chain position of the first block; layer:
//   the layer), u32 entry count, then per entry:
//   blocks: 16-byte hash, u8 kind (0: sealed block, 1: header only), u32
//     byte count, the bytes;
//   layer: 16-byte hash, u32 chain position, u32 payload bytes, then three
//     times (the key slice, the value slice, the key refinement slice, empty
//     on a layer without one) u32 offset in the payload, u32 byte count, the
//     bytes. (Version 1 had no refinement slice.)
// A request's blocks may span several blocks messages (max_message_bytes);
// their first_block fields continue one another.
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

// One layer's key, value and key refinement slices of one block's payload
// (refine empty on a layer without a key refinement).
struct PeerSlice {
  BlockHash hash;
  uint32_t chain_position = 0;
  uint32_t payload_bytes = 0;  // the whole payload's size
  uint32_t key_offset = 0;
  std::string key;
  uint32_t value_offset = 0;
  std::string value;
  uint32_t refine_offset = 0;
  std::string refine;
};

struct PeerMessage {
  static constexpr uint32_t kMagic = 0x54505156;  // "VQPT" little-endian
  static constexpr uint16_t kVersion = 2;
  std::string request_id;
  bool last = false;
  // Blocks messages: chain_position of each block is first_block + its
  // index; header_only[i]: blocks[i].data is the block's header alone.
  uint32_t first_block = 0;
  std::vector<EncodedBlock> blocks;
  std::vector<bool> header_only;
  // Layer messages.
  bool is_layer = false;
  int32_t layer = 0;
  std::vector<PeerSlice> slices;
};

// Bytes of a message's fixed part, of each block entry's prefix and of
// each slice entry's fixed part.
inline constexpr size_t kPeerMessageHeaderBytes = 4 + 2 + 2 + 4 + 4 + 4;
inline constexpr size_t kPeerBlockPrefixBytes = 16 + 1 + 4;
inline constexpr size_t kPeerSlicePrefixBytes = 16 + 4 + 4 + 3 * (4 + 4);

// Splits a request's blocks (consecutive chain positions from first_block)
// into blocks messages of at most max_message_bytes each, the last one
// flagged when `last`; a request without blocks is one empty message.
// header_only is empty (all sealed) or one flag per block. Errors:
// kInvalidArgument when one block alone does not fit max_message_bytes, the
// request id is over 1 KiB, or header_only has another size.
absl::StatusOr<std::vector<std::string>> EncodePeerMessages(
    absl::string_view request_id, uint32_t first_block,
    absl::Span<const EncodedBlock> blocks, uint64_t max_message_bytes,
    const std::vector<bool>& header_only = {}, bool last = true);

// Splits one layer's slices into layer messages of at most
// max_message_bytes each (none when there are no slices). Errors: as
// EncodePeerMessages.
absl::StatusOr<std::vector<std::string>> EncodePeerLayerMessages(
    absl::string_view request_id, int32_t layer,
    absl::Span<const PeerSlice> slices, uint64_t max_message_bytes);

// Parses one message. Errors: kDataLoss for bytes that are not one (bad
// magic, truncated, trailing bytes, a slice outside its payload),
// kUnimplemented for another version.
absl::StatusOr<PeerMessage> ParsePeerMessage(absl::string_view bytes);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_PEER_PEER_MESSAGE_H_
