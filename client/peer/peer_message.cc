#include "client/peer/peer_message.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/coding.h"

namespace vqkv::client {
namespace {

constexpr size_t kMaxRequestIdBytes = 1024;
constexpr uint16_t kLastFlag = 1;
constexpr uint16_t kLayerFlag = 2;

// Builds messages of at most max_bytes: entries are appended whole, and a
// message is closed (its flags and entry count written) when the next
// entry would not fit.
class MessageWriter {
 public:
  MessageWriter(absl::string_view request_id, uint16_t flags,
                uint64_t max_bytes)
      : request_id_(request_id), flags_(flags), max_bytes_(max_bytes) {}

  absl::Status CheckRequestId() const {
    if (request_id_.size() > kMaxRequestIdBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("request id of ", request_id_.size(), " bytes; at most ",
                       kMaxRequestIdBytes));
    }
    return absl::OkStatus();
  }

  // Makes room for an entry of `bytes`; `first` is the message's first_block
  // field should a new message start here.
  absl::Status Reserve(size_t bytes, uint32_t first) {
    if (kPeerMessageHeaderBytes + request_id_.size() + bytes > max_bytes_) {
      return absl::InvalidArgumentError(
          absl::StrCat("an entry of ", bytes, " bytes does not fit a ",
                       max_bytes_, "-byte peer message"));
    }
    if (!open_ || message_.size() + bytes > max_bytes_) {
      if (open_) Close(false);
      Start(first);
    }
    ++count_;
    return absl::OkStatus();
  }

  std::string* message() { return &message_; }

  // Closes the open message (or an empty one when none is open).
  std::vector<std::string> Finish(bool last, uint32_t first_if_empty) {
    if (!open_) Start(first_if_empty);
    Close(last);
    return std::move(out_);
  }

  // The messages so far, without opening an empty one.
  std::vector<std::string> FinishNonEmpty() {
    if (open_) Close(false);
    return std::move(out_);
  }

 private:
  void Start(uint32_t first) {
    message_.clear();
    base::PutFixed32(&message_, PeerMessage::kMagic);
    char v[2];
    base::EncodeFixed<uint16_t>(v, PeerMessage::kVersion);
    message_.append(v, 2);
    message_.append(2, '\0');  // flags, set by Close
    base::PutLengthPrefixed(&message_, request_id_);
    base::PutFixed32(&message_, first);
    base::PutFixed32(&message_, 0);  // entry count, set by Close
    count_ = 0;
    open_ = true;
  }
  void Close(bool last) {
    base::EncodeFixed<uint16_t>(message_.data() + 6,
                                flags_ | (last ? kLastFlag : 0));
    base::EncodeFixed32(message_.data() + 12 + request_id_.size() + 4, count_);
    out_.push_back(std::move(message_));
    message_.clear();
    open_ = false;
  }

  const absl::string_view request_id_;
  const uint16_t flags_;
  const uint64_t max_bytes_;
  std::string message_;
  uint32_t count_ = 0;
  bool open_ = false;
  std::vector<std::string> out_;
};

void PutBytes(std::string* out, absl::string_view bytes) {
  out->append(bytes.data(), bytes.size());
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
  bool Fixed8(uint8_t* v) {
    if (in_.empty()) return false;
    *v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return true;
  }
  bool Bytes(size_t n, absl::string_view* out) {
    if (in_.size() < n) return false;
    *out = in_.substr(0, n);
    in_.remove_prefix(n);
    return true;
  }
  bool Hash(BlockHash* h) {
    absl::string_view b;
    if (!Bytes(16, &b)) return false;
    *h = *BlockHash::FromBytes(b);
    return true;
  }
  bool empty() const { return in_.empty(); }

 private:
  absl::string_view in_;
};

}  // namespace

absl::StatusOr<std::vector<std::string>> EncodePeerMessages(
    absl::string_view request_id, uint32_t first_block,
    absl::Span<const EncodedBlock> blocks, uint64_t max_message_bytes,
    const std::vector<bool>& header_only, bool last) {
  MessageWriter w(request_id, 0, max_message_bytes);
  if (absl::Status s = w.CheckRequestId(); !s.ok()) return s;
  if (!header_only.empty() && header_only.size() != blocks.size()) {
    return absl::InvalidArgumentError(absl::StrCat(header_only.size(),
                                                   " header_only flags for ",
                                                   blocks.size(), " blocks"));
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    const absl::Status s =
        w.Reserve(kPeerBlockPrefixBytes + blocks[i].data.size(),
                  first_block + static_cast<uint32_t>(i));
    if (!s.ok()) return s;
    std::string* m = w.message();
    PutBytes(m, blocks[i].hash.view());
    m->push_back(!header_only.empty() && header_only[i] ? 1 : 0);
    base::PutLengthPrefixed(m, blocks[i].data);
  }
  return w.Finish(last, first_block);
}

absl::StatusOr<std::vector<std::string>> EncodePeerLayerMessages(
    absl::string_view request_id, int32_t layer,
    absl::Span<const PeerSlice> slices, uint64_t max_message_bytes) {
  MessageWriter w(request_id, kLayerFlag, max_message_bytes);
  if (absl::Status s = w.CheckRequestId(); !s.ok()) return s;
  for (const PeerSlice& sl : slices) {
    const absl::Status s = w.Reserve(kPeerSlicePrefixBytes + sl.key.size() +
                                         sl.value.size() + sl.refine.size(),
                                     static_cast<uint32_t>(layer));
    if (!s.ok()) return s;
    std::string* m = w.message();
    PutBytes(m, sl.hash.view());
    base::PutFixed32(m, sl.chain_position);
    base::PutFixed32(m, sl.payload_bytes);
    base::PutFixed32(m, sl.key_offset);
    base::PutLengthPrefixed(m, sl.key);
    base::PutFixed32(m, sl.value_offset);
    base::PutLengthPrefixed(m, sl.value);
    base::PutFixed32(m, sl.refine_offset);
    base::PutLengthPrefixed(m, sl.refine);
  }
  return w.FinishNonEmpty();
}

absl::StatusOr<PeerMessage> ParsePeerMessage(absl::string_view bytes) {
  Reader r(bytes);
  uint32_t magic = 0, id_bytes = 0, first = 0, count = 0;
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
      !r.Bytes(id_bytes, &id) || !r.Fixed32(&first) || !r.Fixed32(&count)) {
    return absl::DataLossError("truncated or bad peer message header");
  }
  m.request_id = std::string(id);
  m.last = (flags & kLastFlag) != 0;
  m.is_layer = (flags & kLayerFlag) != 0;
  auto truncated = [&](uint32_t i) {
    return absl::DataLossError(
        absl::StrCat("peer message truncated in entry ", i, " of ", count));
  };
  if (m.is_layer) {
    m.layer = static_cast<int32_t>(first);
    for (uint32_t i = 0; i < count; ++i) {
      PeerSlice s;
      uint32_t key_bytes = 0, value_bytes = 0, refine_bytes = 0;
      absl::string_view key, value, refine;
      if (!r.Hash(&s.hash) || !r.Fixed32(&s.chain_position) ||
          !r.Fixed32(&s.payload_bytes) || !r.Fixed32(&s.key_offset) ||
          !r.Fixed32(&key_bytes) || !r.Bytes(key_bytes, &key) ||
          !r.Fixed32(&s.value_offset) || !r.Fixed32(&value_bytes) ||
          !r.Bytes(value_bytes, &value) || !r.Fixed32(&s.refine_offset) ||
          !r.Fixed32(&refine_bytes) || !r.Bytes(refine_bytes, &refine)) {
        return truncated(i);
      }
      if (uint64_t{s.key_offset} + key_bytes > s.payload_bytes ||
          uint64_t{s.value_offset} + value_bytes > s.payload_bytes ||
          uint64_t{s.refine_offset} + refine_bytes > s.payload_bytes) {
        return absl::DataLossError(
            absl::StrCat("a slice of entry ", i, " lies outside its ",
                         s.payload_bytes, "-byte payload"));
      }
      s.key = std::string(key);
      s.value = std::string(value);
      s.refine = std::string(refine);
      m.slices.push_back(std::move(s));
    }
  } else {
    m.first_block = first;
    for (uint32_t i = 0; i < count; ++i) {
      EncodedBlock b;
      uint8_t kind = 0;
      uint32_t size = 0;
      absl::string_view data;
      if (!r.Hash(&b.hash) || !r.Fixed8(&kind) || kind > 1 ||
          !r.Fixed32(&size) || !r.Bytes(size, &data)) {
        return truncated(i);
      }
      b.chain_position = first + i;
      b.data = std::string(data);
      m.blocks.push_back(std::move(b));
      m.header_only.push_back(kind == 1);
    }
  }
  if (!r.empty()) {
    return absl::DataLossError("trailing bytes after a peer message");
  }
  return m;
}

}  // namespace vqkv::client
