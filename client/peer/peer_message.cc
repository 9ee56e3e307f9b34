#include "client/peer/peer_message.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/coding.h"

namespace vqkv::client {
namespace {

constexpr size_t kMaxRequestIdBytes = 1024;

void StartMessage(std::string* out, absl::string_view request_id,
                  uint32_t first_block) {
  out->clear();
  base::PutFixed32(out, PeerMessage::kMagic);
  char v[2];
  base::EncodeFixed<uint16_t>(v, PeerMessage::kVersion);
  out->append(v, 2);
  out->append(2, '\0');  // flags, set when the message is closed
  base::PutLengthPrefixed(out, request_id);
  base::PutFixed32(out, first_block);
  base::PutFixed32(out, 0);  // block count, set when the message is closed
}

void CloseMessage(std::string* out, size_t id_bytes, uint32_t count,
                  bool last) {
  base::EncodeFixed<uint16_t>(out->data() + 6, last ? 1 : 0);
  base::EncodeFixed32(out->data() + 12 + id_bytes + 4, count);
}

// Reads fixed-width fields off the front of `in`.
class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  bool Fixed32(uint32_t* v) {
    if (in_.size() < 4) return false;
    *v = base::DecodeFixed32(in_.data());
    in_.remove_prefix(4);
    return true;
  }
  bool Fixed16(uint16_t* v) {
    if (in_.size() < 2) return false;
    *v = base::DecodeFixed<uint16_t>(in_.data());
    in_.remove_prefix(2);
    return true;
  }
  bool Bytes(size_t n, absl::string_view* out) {
    if (in_.size() < n) return false;
    *out = in_.substr(0, n);
    in_.remove_prefix(n);
    return true;
  }
  bool empty() const { return in_.empty(); }

 private:
  absl::string_view in_;
};

}  // namespace

absl::StatusOr<std::vector<std::string>> EncodePeerMessages(
    absl::string_view request_id, uint32_t first_block,
    absl::Span<const EncodedBlock> blocks, uint64_t max_message_bytes) {
  if (request_id.size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("request id of ", request_id.size(), " bytes; at most ",
                     kMaxRequestIdBytes));
  }
  const size_t header = kPeerMessageHeaderBytes + request_id.size();
  std::vector<std::string> out;
  std::string message;
  StartMessage(&message, request_id, first_block);
  uint32_t count = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const size_t need = kPeerBlockPrefixBytes + blocks[i].data.size();
    if (header + need > max_message_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a block of ", blocks[i].data.size(), " bytes does not fit a ",
          max_message_bytes, "-byte peer message"));
    }
    if (message.size() + need > max_message_bytes) {
      CloseMessage(&message, request_id.size(), count, false);
      out.push_back(std::move(message));
      StartMessage(&message, request_id,
                   first_block + static_cast<uint32_t>(i));
      count = 0;
    }
    const absl::string_view hash = blocks[i].hash.view();
    message.append(hash.data(), hash.size());
    base::PutLengthPrefixed(&message, blocks[i].data);
    ++count;
  }
  CloseMessage(&message, request_id.size(), count, true);
  out.push_back(std::move(message));
  return out;
}

absl::StatusOr<PeerMessage> ParsePeerMessage(absl::string_view bytes) {
  Reader r(bytes);
  uint32_t magic = 0, id_bytes = 0, count = 0;
  uint16_t version = 0, flags = 0;
  if (!r.Fixed32(&magic) || magic != PeerMessage::kMagic) {
    return absl::DataLossError("not a vqkv peer message (bad magic)");
  }
  if (!r.Fixed16(&version) || !r.Fixed16(&flags)) {
    return absl::DataLossError("truncated peer message header");
  }
  if (version != PeerMessage::kVersion) {
    return absl::UnimplementedError(absl::StrCat("peer message version ",
                                                 version, "; this build reads ",
                                                 PeerMessage::kVersion));
  }
  PeerMessage m;
  absl::string_view id;
  if (!r.Fixed32(&id_bytes) || id_bytes > kMaxRequestIdBytes ||
      !r.Bytes(id_bytes, &id) || !r.Fixed32(&m.first_block) ||
      !r.Fixed32(&count)) {
    return absl::DataLossError("truncated or bad peer message header");
  }
  m.request_id = std::string(id);
  m.last = (flags & 1) != 0;
  for (uint32_t i = 0; i < count; ++i) {
    absl::string_view hash, data;
    uint32_t size = 0;
    if (!r.Bytes(16, &hash) || !r.Fixed32(&size) || !r.Bytes(size, &data)) {
      return absl::DataLossError(
          absl::StrCat("peer message truncated in block ", i, " of ", count));
    }
    EncodedBlock b;
    b.hash = *BlockHash::FromBytes(hash);
    b.chain_position = m.first_block + i;
    b.data = std::string(data);
    m.blocks.push_back(std::move(b));
  }
  if (!r.empty()) {
    return absl::DataLossError("trailing bytes after a peer message");
  }
  return m;
}

}  // namespace vqkv::client
