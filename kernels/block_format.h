// The encoded block: one header struct shared by C++, CUDA and storage,
// followed by the codec payload (packed K codes, packed V codes, side info)
// and an optional fp16 section. docs/BLOCK_FORMAT.md specifies every byte.
//
// This header is plain C++ with fixed-width fields and no dependencies beyond
// <cstdint>, so .cu files and storage code can include it as is.
#ifndef VQKV_KERNELS_BLOCK_FORMAT_H_
#define VQKV_KERNELS_BLOCK_FORMAT_H_

#include <cstddef>
#include <cstdint>

namespace vqkv {

inline constexpr uint32_t kBlockMagic = 0x424B5156;  // "VQKB" little-endian
inline constexpr uint16_t kBlockFormatVersion = 1;

// Bits of BlockHeader::flags.
enum BlockFlags : uint32_t {
  // The block ends with an fp16 section holding its first fp16_tokens tokens
  // uncoded (attention sinks, or tokens a caller wants kept exact).
  kBlockHasFp16Section = 1u << 0,
  // Keys were captured after RoPE was applied (else before).
  kBlockKeysPostRope = 1u << 1,
  // The VQ payload ends with a key sketch section (VqConfig::key_sketch_bits,
  // docs/BLOCK_FORMAT.md) for layers key_sketch_first_layer.. of the block.
  // Readers that predate it reject the block as an unknown flag instead of
  // misreading it.
  kBlockHasKeySketch = 1u << 2,
  // The VQ payload ends with a key refinement section (more residual stages
  // for the keys of the layers the codebook set refines, docs/
  // BLOCK_FORMAT.md). Readers that predate it reject the block.
  kBlockHasKeyRefinement = 1u << 3,
};
inline constexpr uint32_t kKnownBlockFlags =
    kBlockHasFp16Section | kBlockKeysPostRope | kBlockHasKeySketch |
    kBlockHasKeyRefinement;
// The flags a codec's payload layout sets (Codec::PayloadFlags).
inline constexpr uint32_t kCodecPayloadFlags =
    kBlockHasKeySketch | kBlockHasKeyRefinement;

// All integers little-endian. 64 bytes, 8-byte aligned fields.
struct BlockHeader {
  uint32_t magic;           //  0: kBlockMagic
  uint16_t format_version;  //  4: kBlockFormatVersion
  uint16_t header_bytes;    //  6: sizeof(BlockHeader) == 64
  uint32_t codec_id;        //  8: vqkv::CodecId
  uint32_t flags;           // 12: BlockFlags
  uint64_t codebook_hash;   // 16: codec's codebook set hash, 0 if none
  uint32_t tokens;          // 24: tokens in the block (coded + fp16)
  uint32_t fp16_tokens;     // 28: leading tokens stored in the fp16 section
  uint16_t layers;          // 32
  uint16_t kv_heads;        // 34
  uint16_t head_dim;        // 36
  uint16_t key_sketch_first_layer;  // 38: first layer with a key sketch
                                    //     (kBlockHasKeySketch), else 0
  uint64_t codes_bytes;    // 40: codec payload bytes (codes + side info)
  uint64_t payload_bytes;  // 48: codes_bytes + fp16 section bytes
  uint64_t checksum;       // 56: XXH3-64 (seed 0) of header bytes [0, 56)
                           //     followed by the payload
};

static_assert(sizeof(BlockHeader) == 64, "BlockHeader must be 64 bytes");
static_assert(alignof(BlockHeader) == 8, "BlockHeader must be 8-aligned");
static_assert(offsetof(BlockHeader, codec_id) == 8);
static_assert(offsetof(BlockHeader, codebook_hash) == 16);
static_assert(offsetof(BlockHeader, tokens) == 24);
static_assert(offsetof(BlockHeader, layers) == 32);
static_assert(offsetof(BlockHeader, codes_bytes) == 40);
static_assert(offsetof(BlockHeader, payload_bytes) == 48);
static_assert(offsetof(BlockHeader, checksum) == 56);

inline constexpr size_t kBlockChecksumOffset = offsetof(BlockHeader, checksum);

// Bytes of the fp16 section for `tokens` tokens: K then V, each
// [layer][token][kv_head][head_dim] binary16.
constexpr uint64_t Fp16SectionBytes(uint64_t tokens, uint64_t layers,
                                    uint64_t kv_heads, uint64_t head_dim) {
  return 2 * 2 * tokens * layers * kv_heads * head_dim;
}

}  // namespace vqkv

#endif  // VQKV_KERNELS_BLOCK_FORMAT_H_
