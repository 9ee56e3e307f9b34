// Building and reading encoded blocks (kernels/block_format.h,
// docs/BLOCK_FORMAT.md): header + codec payload + optional fp16 section,
// sealed with a checksum.
//
// Thread safety: all functions are pure and thread-safe.
#ifndef VQKV_KERNELS_BLOCK_H_
#define VQKV_KERNELS_BLOCK_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/block_format.h"
#include "kernels/codec.h"

namespace vqkv {

struct BlockOptions {
  // The first fp16_tokens tokens of the block are stored uncoded in an fp16
  // section (attention sinks); the codec codes the rest. 0 = none.
  int64_t fp16_tokens = 0;
  // Recorded in the header: keys were captured after RoPE.
  bool keys_post_rope = false;
};

// Encodes `tokens` tokens (keys/values float32 [layer][token][kv_head][dim]
// in codec.layout()) into a sealed block.
// Errors: kInvalidArgument for tokens outside 1..kMaxCodecTokens or fp16_tokens
// outside 0..tokens; whatever codec.Encode returns.
absl::StatusOr<std::vector<uint8_t>> EncodeBlock(const Codec& codec,
                                                 const float* keys,
                                                 const float* values,
                                                 int64_t tokens,
                                                 const BlockOptions& options);

// One block's KV and options, for EncodeBlocks.
struct BlockInput {
  const float* keys = nullptr;
  const float* values = nullptr;
  BlockOptions options;
};

// EncodeBlock for each input, all `tokens` tokens long, with the codec's
// payloads encoded together (Codec::EncodeMany: one device launch for all
// of them when the codec has a GPU encoder). Errors: EncodeBlock's, for the
// first failing input; no block is returned then.
absl::StatusOr<std::vector<std::vector<uint8_t>>> EncodeBlocks(
    const Codec& codec, absl::Span<const BlockInput> inputs, int64_t tokens);

// Seals a payload the codec's Encode would write for `tokens` tokens (coded
// elsewhere, e.g. on a device: kernels/vq_layer_encode.h) into a block with
// `options` (fp16_tokens must be 0: the payload has no fp16 section).
// Errors: kInvalidArgument for tokens outside 1..kMaxCodecTokens, fp16
// tokens, or a payload of the wrong size.
absl::StatusOr<std::vector<uint8_t>> SealBlock(
    const Codec& codec, absl::Span<const uint8_t> payload, int64_t tokens,
    const BlockOptions& options);

// Checks a block's framing without decoding it: size at least the header,
// magic, format version, header_bytes, known flags, shape fields in range,
// payload_bytes == size - 64, fp16 section size consistent with the shape,
// and the checksum.
// Errors: kInvalidArgument for a record that is not a vqkv block or has an
// impossible header; kDataLoss for truncation or a checksum mismatch.
absl::StatusOr<BlockHeader> VerifyBlock(const uint8_t* data, size_t size);

// Verifies and decodes a block into keys/values, which must hold
// header.tokens tokens in codec.layout().
// Errors: those of VerifyBlock; kFailedPrecondition when the block was made by
// another codec or codebook set (codec id or codebook hash differ) or with
// other payload flags (a key sketch the codec lacks, or the reverse);
// kInvalidArgument when its layout differs from codec.layout() or
// out_tokens != header.tokens.
absl::Status DecodeBlock(const Codec& codec, const uint8_t* data, size_t size,
                         int64_t out_tokens, float* keys, float* values);

// The checks DecodeBlock makes of a verified header against `codec` before
// it decodes (codec id, codebook hash, payload flags, layout, out_tokens),
// with its errors: a loader that verifies first can refuse a block before
// it writes anything.
absl::Status CheckBlockForCodec(const Codec& codec, const BlockHeader& header,
                                int64_t out_tokens);

// DecodeBlock of layers [first_layer, first_layer + num_layers) only, into
// keys/values of [num_layers][header.tokens][kv_heads][head_dim], for a
// block whose `header` VerifyBlock returned for these very bytes (so a
// loader checksums a block once and decodes it a layer at a time).
// Errors: those of DecodeBlock after verification; kInvalidArgument for a
// layer range outside the layout or a size the header does not describe.
absl::Status DecodeVerifiedBlockLayers(const Codec& codec,
                                       const BlockHeader& header,
                                       const uint8_t* data, size_t size,
                                       int64_t out_tokens, int first_layer,
                                       int num_layers, float* keys,
                                       float* values);

// XXH3-64 (seed 0) of header bytes [0, 56) followed by the payload.
uint64_t BlockChecksum(const BlockHeader& header, const uint8_t* payload,
                       size_t payload_bytes);

}  // namespace vqkv

#endif  // VQKV_KERNELS_BLOCK_H_
