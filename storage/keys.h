// How the cache service addresses what it stores.
//
// A stored block is addressed by (namespace id, block hash):
//  - NamespaceId: 16 bytes, XXH3-128 of the canonical namespace text (tenant,
//    model id + weight revision, codec descriptor including the codebook
//    hash, block size in tokens, KV layout). Computed by the client and the
//    service; storage treats it as opaque bytes.
//  - BlockHash: 16 bytes, the XXH3-128 chain hash of the block's tokens and
//    its predecessors (docs/DESIGN.md "Block hash chain"). Opaque to storage.
//
// BlockKey::Encode() is the 32-byte key used on disk: namespace bytes then
// hash bytes, so all blocks of a namespace are one contiguous key range
// (DeleteNamespace is a range delete). operator< orders keys the same way as
// their encodings compare bytewise.
//
// Thread safety: these are plain values; const methods are thread-safe.
#ifndef VQKV_STORAGE_KEYS_H_
#define VQKV_STORAGE_KEYS_H_

#include <array>
#include <compare>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/coding.h"

namespace vqkv::storage {

// 16 opaque bytes. Tag makes NamespaceId and BlockHash distinct types.
template <typename Tag>
struct Id128 {
  static constexpr size_t kSize = 16;
  std::array<uint8_t, kSize> bytes{};

  // kInvalidArgument unless data.size() == 16.
  static absl::StatusOr<Id128> FromBytes(absl::string_view data);
  // Test and tooling convenience: hi is stored big-endian in bytes [0, 8),
  // lo in bytes [8, 16), so ids built this way sort like (hi, lo).
  static Id128 FromPair(uint64_t hi, uint64_t lo);

  // The 16 bytes as a string_view into this object (valid while it lives).
  absl::string_view view() const {
    return absl::string_view(reinterpret_cast<const char*>(bytes.data()),
                             kSize);
  }
  std::string ToString() const { return std::string(view()); }
  // 32 lowercase hex digits.
  std::string ToHex() const;

  friend bool operator==(const Id128&, const Id128&) = default;
  friend std::strong_ordering operator<=>(const Id128&, const Id128&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const Id128& id) {
    return H::combine_contiguous(std::move(h), id.bytes.data(), kSize);
  }
};

struct NamespaceIdTag {};
struct BlockHashTag {};
using NamespaceId = Id128<NamespaceIdTag>;
using BlockHash = Id128<BlockHashTag>;

struct BlockKey {
  static constexpr size_t kEncodedSize = 32;

  NamespaceId ns;
  BlockHash hash;

  // ns bytes then hash bytes (32 bytes).
  std::string Encode() const;
  // REQUIRES: out has room for kEncodedSize bytes.
  void EncodeTo(char* out) const;
  // kInvalidArgument unless data.size() == 32.
  static absl::StatusOr<BlockKey> Decode(absl::string_view data);
  // "<ns hex>/<hash hex>", for logs and error messages.
  std::string DebugString() const;

  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  friend std::strong_ordering operator<=>(const BlockKey&,
                                          const BlockKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    return H::combine(std::move(h), k.ns, k.hash);
  }
};

// Bytes of one stored block (or codebook file), shared and immutable:
// readers hold a reference, so a concurrent eviction never frees bytes a
// caller is still using. Never null in an OK result.
using SharedBytes = std::shared_ptr<const std::string>;

// A put of one block, as the service hands it to storage.
struct BlockPut {
  BlockKey key;
  // Index of the block in its prefix chain (0 = first block of the prompt).
  // Eviction prefers higher positions: the tail of a prefix goes before its
  // head, since a prefix is only useful from its start.
  uint32_t chain_position = 0;
  // The sealed encoded block (kernels/block.h); not owned, must stay valid
  // for the duration of the call.
  absl::string_view block;
  // For the disk tier: the record's write time (Unix micros) when it is not
  // now, i.e. a block re-spilled after a promotion keeps its first write
  // time, so the TTL counts from it. 0: now.
  int64_t write_micros = 0;
};

// What the store knows about one namespace: its owner and its usage. A
// namespace belongs to exactly one tenant, fixed by the first put into it.
struct NamespaceInfo {
  std::string tenant;   // "" is a valid tenant (the one used when auth is off)
  uint64_t bytes = 0;   // bytes of the namespace's blocks held in the store
  uint64_t blocks = 0;  // number of those blocks
  bool has_owner = false;  // an owner record exists, so `tenant` is meaningful
};

// ---------------------------------------------------------------------------
// Implementation of the templates.

template <typename Tag>
absl::StatusOr<Id128<Tag>> Id128<Tag>::FromBytes(absl::string_view data) {
  if (data.size() != kSize) {
    return absl::InvalidArgumentError(
        "a namespace id or block hash must be exactly 16 bytes");
  }
  Id128 id;
  std::memcpy(id.bytes.data(), data.data(), kSize);
  return id;
}

template <typename Tag>
Id128<Tag> Id128<Tag>::FromPair(uint64_t hi, uint64_t lo) {
  Id128 id;
  char* out = reinterpret_cast<char*>(id.bytes.data());
  base::EncodeBigEndian64(out, hi);
  base::EncodeBigEndian64(out + 8, lo);
  return id;
}

template <typename Tag>
std::string Id128<Tag>::ToHex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * kSize, '0');
  for (size_t i = 0; i < kSize; ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return out;
}

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_KEYS_H_
