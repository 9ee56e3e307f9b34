#include "client/hash.h"

#include <xxhash.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/coding.h"

namespace vqkv::client {
namespace {

BlockHash FromXxh(const XXH128_hash_t& h) {
  return BlockHash::FromPair(h.high64, h.low64);
}

}  // namespace

BlockHash ChainRoot(const NamespaceId& ns_digest, absl::string_view salt) {
  std::string in = "vqkv.chain.v1";
  in.append(ns_digest.view().data(), NamespaceId::kSize);
  base::PutLengthPrefixed(&in, salt);
  return FromXxh(XXH3_128bits_withSeed(in.data(), in.size(), kHashSeed));
}

absl::StatusOr<std::vector<BlockHash>> HashChain(
    absl::Span<const int32_t> tokens, int64_t block_tokens,
    absl::string_view salt, const NamespaceId& ns_digest) {
  if (block_tokens < 1 || block_tokens > int64_t{UINT32_MAX}) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_tokens must be >= 1, got ", block_tokens));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token ", i, " is ", tokens[i], ": token ids must be >= 0"));
    }
  }
  const int64_t blocks = static_cast<int64_t>(tokens.size()) / block_tokens;
  std::vector<BlockHash> out;
  out.reserve(blocks);
  BlockHash prev = ChainRoot(ns_digest, salt);
  std::string in;
  in.reserve(BlockHash::kSize + 4 + 4 * block_tokens);
  for (int64_t b = 0; b < blocks; ++b) {
    in.clear();
    in.append(prev.view().data(), BlockHash::kSize);
    base::PutFixed32(&in, static_cast<uint32_t>(block_tokens));
    for (int64_t t = b * block_tokens; t < (b + 1) * block_tokens; ++t) {
      base::PutFixed32(&in, static_cast<uint32_t>(tokens[t]));
    }
    prev = FromXxh(XXH3_128bits_withSeed(in.data(), in.size(), kHashSeed));
    out.push_back(prev);
  }
  return out;
}

absl::StatusOr<std::vector<BlockHash>> HashChain(
    absl::Span<const int32_t> tokens, absl::string_view salt,
    const storage::NamespaceSpec& ns) {
  return HashChain(tokens, ns.block_tokens, salt,
                   storage::ComputeNamespaceId("", ns));
}

}  // namespace vqkv::client
