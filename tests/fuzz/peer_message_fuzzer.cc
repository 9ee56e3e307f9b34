// Fuzz target: the prefill-to-decode handoff (client/peer/), which takes
// bytes from another process: ParsePeerMessage on any bytes, and the
// decode side's PeerInbox fed what parses.
// Properties: no crash or sanitizer report; a message that parses encodes
// back (EncodePeerMessages / EncodePeerLayerMessages) to bytes that parse
// to the same content; the inbox never holds more than its max_bytes, and
// hands over only blocks that are empty (left to the cache) or, for a
// header-only entry, its header followed by a payload.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "client/peer/peer_inbox.h"
#include "client/peer/peer_message.h"
#include "tests/fuzz/fuzz_common.h"

namespace {

using vqkv::client::EncodedBlock;
using vqkv::client::PeerMessage;

bool SameBlocks(const PeerMessage& a, const PeerMessage& b) {
  if (a.blocks.size() != b.blocks.size()) return false;
  for (size_t i = 0; i < a.blocks.size(); ++i) {
    if (a.blocks[i].hash != b.blocks[i].hash ||
        a.blocks[i].data != b.blocks[i].data ||
        a.blocks[i].chain_position != b.blocks[i].chain_position) {
      return false;
    }
  }
  return a.header_only == b.header_only;
}

bool SameSlices(const PeerMessage& a, const PeerMessage& b) {
  if (a.slices.size() != b.slices.size() || a.layer != b.layer) return false;
  for (size_t i = 0; i < a.slices.size(); ++i) {
    const auto& x = a.slices[i];
    const auto& y = b.slices[i];
    if (x.hash != y.hash || x.chain_position != y.chain_position ||
        x.payload_bytes != y.payload_bytes || x.key_offset != y.key_offset ||
        x.key != y.key || x.value_offset != y.value_offset ||
        x.value != y.value) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vqkv::client;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<PeerMessage> m = ParsePeerMessage(bytes);
  if (!m.ok()) return 0;

  // Round trip through the encoders.
  constexpr uint64_t kMax = uint64_t{1} << 30;
  absl::StatusOr<std::vector<std::string>> again =
      m->is_layer
          ? EncodePeerLayerMessages(m->request_id, m->layer, m->slices, kMax)
          : EncodePeerMessages(m->request_id, m->first_block, m->blocks, kMax,
                               m->header_only, m->last);
  FUZZ_CHECK(again.ok());
  if (!m->is_layer || !m->slices.empty()) {
    FUZZ_CHECK(again->size() == 1);
    absl::StatusOr<PeerMessage> back = ParsePeerMessage((*again)[0]);
    FUZZ_CHECK(back.ok());
    FUZZ_CHECK(back->request_id == m->request_id);
    FUZZ_CHECK(back->is_layer == m->is_layer);
    FUZZ_CHECK(m->is_layer ? SameSlices(*m, *back)
                           : SameBlocks(*m, *back) && back->last == m->last);
  }

  // Into a small inbox: the layer message, then (for its slices) a final
  // header-only message sealing them.
  PeerInbox::Options o;
  o.max_bytes = 1 << 16;
  PeerInbox inbox(o);
  const bool was_layer = m->is_layer;
  std::vector<EncodedBlock> finals;
  for (const PeerSlice& s : m->slices) {
    EncodedBlock b;
    b.hash = s.hash;
    b.chain_position = s.chain_position;
    b.data = std::string(64, 'h');
    finals.push_back(b);
  }
  const std::string id = m->request_id;
  inbox.Add(*std::move(m));
  FUZZ_CHECK(inbox.stats().bytes <= o.max_bytes);
  if (was_layer && !finals.empty()) {
    PeerMessage f;
    f.request_id = id;
    f.last = true;
    f.first_block = finals[0].chain_position;
    for (size_t i = 0; i < finals.size(); ++i) {
      finals[i].chain_position = f.first_block + static_cast<uint32_t>(i);
    }
    f.blocks = finals;
    f.header_only.assign(finals.size(), true);
    inbox.Add(std::move(f));
    FUZZ_CHECK(inbox.stats().bytes <= o.max_bytes);
  }
  absl::StatusOr<PeerTransfer> t = inbox.Take(id, absl::Now());
  if (t.ok()) {
    for (const EncodedBlock& b : t->blocks) {
      FUZZ_CHECK(b.data.empty() || b.data.size() >= 64 || !was_layer);
    }
  }
  FUZZ_CHECK(inbox.stats().bytes <= o.max_bytes);
  return 0;
}
