#include "storage/keys.h"

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace vqkv::storage {

void BlockKey::EncodeTo(char* out) const {
  std::memcpy(out, ns.bytes.data(), NamespaceId::kSize);
  std::memcpy(out + NamespaceId::kSize, hash.bytes.data(), BlockHash::kSize);
}

std::string BlockKey::Encode() const {
  std::string out(kEncodedSize, '\0');
  EncodeTo(out.data());
  return out;
}

absl::StatusOr<BlockKey> BlockKey::Decode(absl::string_view data) {
  if (data.size() != kEncodedSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "an encoded block key must be 32 bytes, got ", data.size()));
  }
  BlockKey key;
  std::memcpy(key.ns.bytes.data(), data.data(), NamespaceId::kSize);
  std::memcpy(key.hash.bytes.data(), data.data() + NamespaceId::kSize,
              BlockHash::kSize);
  return key;
}

std::string BlockKey::DebugString() const {
  return absl::StrCat(ns.ToHex(), "/", hash.ToHex());
}

}  // namespace vqkv::storage
