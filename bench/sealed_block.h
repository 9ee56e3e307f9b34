// Sealed blocks of an exact size for the storage and service benchmarks:
// a valid header (kernels/block_format.h) over random payload bytes, which
// the store and the service accept (they check the header and the checksum,
// not the codes). Content does not matter to them; sizes do.
#ifndef VQKV_BENCH_SEALED_BLOCK_H_
#define VQKV_BENCH_SEALED_BLOCK_H_

#include <cstdint>
#include <cstring>
#include <random>
#include <string>

#include "kernels/block.h"
#include "kernels/block_format.h"
#include "kernels/codec.h"

namespace vqkv::bench {

// A block of `tokens` tokens of a model with this shape, coded by `codec`,
// whose payload is `payload_bytes` bytes drawn from `seed`.
inline std::string MakeSealedBlock(int layers, int kv_heads, int head_dim,
                                   int tokens, CodecId codec,
                                   uint64_t payload_bytes, uint64_t seed) {
  BlockHeader h{};
  h.magic = kBlockMagic;
  h.format_version = kBlockFormatVersion;
  h.header_bytes = sizeof(BlockHeader);
  h.codec_id = static_cast<uint32_t>(codec);
  h.tokens = tokens;
  h.layers = layers;
  h.kv_heads = kv_heads;
  h.head_dim = head_dim;
  h.codes_bytes = payload_bytes;
  h.payload_bytes = payload_bytes;
  std::string block(sizeof(h) + payload_bytes, '\0');
  std::mt19937_64 rng(seed);
  for (size_t i = sizeof(h); i + 8 <= block.size(); i += 8) {
    const uint64_t r = rng();
    std::memcpy(&block[i], &r, 8);
  }
  h.checksum = BlockChecksum(
      h, reinterpret_cast<const uint8_t*>(block.data()) + sizeof(h),
      payload_bytes);
  std::memcpy(block.data(), &h, sizeof(h));
  return block;
}

}  // namespace vqkv::bench

#endif  // VQKV_BENCH_SEALED_BLOCK_H_
