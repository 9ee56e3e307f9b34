#include "kernels/block.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/fp16.h"
#define XXH_STATIC_LINKING_ONLY  // for a stack-allocated XXH3_state_t
#include "xxhash.h"

namespace vqkv {
namespace {

// Copies tokens [first, first + count) of a [layer][token][...] tensor with
// `row` elements per (layer, token) between a full and a partial tensor.
template <typename Src, typename Dst, typename Convert>
void CopyTokenRange(const Src* src, int64_t src_tokens, int64_t src_first,
                    Dst* dst, int64_t dst_tokens, int64_t dst_first,
                    int64_t count, int layers, int64_t row, Convert convert) {
  for (int l = 0; l < layers; ++l) {
    const Src* s = src + (l * src_tokens + src_first) * row;
    Dst* d = dst + (l * dst_tokens + dst_first) * row;
    convert(s, count * row, d);
  }
}

}  // namespace

uint64_t BlockChecksum(const BlockHeader& header, const uint8_t* payload,
                       size_t payload_bytes) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, &header, kBlockChecksumOffset);
  if (payload_bytes > 0) XXH3_64bits_update(&state, payload, payload_bytes);
  return XXH3_64bits_digest(&state);
}

namespace {

// A block being encoded: its header and bytes, and the coded tokens' KV
// (copied past the fp16 tokens when there are some).
struct PendingBlock {
  BlockHeader header{};
  std::vector<uint8_t> bytes;
  int64_t coded_tokens = 0;
  const float* coded_keys = nullptr;
  const float* coded_values = nullptr;
  std::vector<float> k_part, v_part;
};

absl::Status StartBlock(const Codec& codec, const BlockInput& in,
                        int64_t tokens, PendingBlock* p) {
  const KvLayout& layout = codec.layout();
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  if (tokens < 1 || tokens > kMaxCodecTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a block holds 1..", kMaxCodecTokens, " tokens, got ", tokens));
  }
  const BlockOptions& options = in.options;
  if (options.fp16_tokens < 0 || options.fp16_tokens > tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fp16_tokens must be in 0..", tokens, ", got ", options.fp16_tokens));
  }
  const int64_t fp16_tokens = options.fp16_tokens;
  const int64_t coded_tokens = tokens - fp16_tokens;
  const int64_t row = int64_t{layout.kv_heads} * layout.head_dim;
  const uint64_t codes_bytes =
      coded_tokens > 0 ? codec.EncodedBytes(coded_tokens) : 0;
  const uint64_t fp16_bytes = Fp16SectionBytes(
      fp16_tokens, layout.layers, layout.kv_heads, layout.head_dim);

  BlockHeader& h = p->header;
  h.magic = kBlockMagic;
  h.format_version = kBlockFormatVersion;
  h.header_bytes = sizeof(BlockHeader);
  h.codec_id = static_cast<uint32_t>(codec.id());
  h.flags = (fp16_tokens > 0 ? kBlockHasFp16Section : 0u) |
            (options.keys_post_rope ? kBlockKeysPostRope : 0u) |
            (codec.PayloadFlags() & kCodecPayloadFlags);
  h.codebook_hash = codec.codebook_hash();
  // 0 without a sketch (Codec::KeySketchFirstLayer's contract).
  h.key_sketch_first_layer = static_cast<uint16_t>(codec.KeySketchFirstLayer());
  h.tokens = static_cast<uint32_t>(tokens);
  h.fp16_tokens = static_cast<uint32_t>(fp16_tokens);
  h.layers = static_cast<uint16_t>(layout.layers);
  h.kv_heads = static_cast<uint16_t>(layout.kv_heads);
  h.head_dim = static_cast<uint16_t>(layout.head_dim);
  h.codes_bytes = codes_bytes;
  h.payload_bytes = codes_bytes + fp16_bytes;
  p->bytes.resize(sizeof(BlockHeader) + h.payload_bytes);
  p->coded_tokens = coded_tokens;
  p->coded_keys = in.keys;
  p->coded_values = in.values;
  if (coded_tokens > 0 && fp16_tokens > 0) {
    // The codec sees only the coded tokens.
    p->k_part.resize(coded_tokens * layout.layers * row);
    p->v_part.resize(p->k_part.size());
    auto copy = [](const float* s, int64_t n, float* d) {
      std::memcpy(d, s, n * sizeof(float));
    };
    CopyTokenRange(in.keys, tokens, fp16_tokens, p->k_part.data(), coded_tokens,
                   0, coded_tokens, layout.layers, row, copy);
    CopyTokenRange(in.values, tokens, fp16_tokens, p->v_part.data(),
                   coded_tokens, 0, coded_tokens, layout.layers, row, copy);
    p->coded_keys = p->k_part.data();
    p->coded_values = p->v_part.data();
  }
  return absl::OkStatus();
}

// Writes the fp16 section and the checksum once the codes are in place.
std::vector<uint8_t> FinishBlock(const Codec& codec, const BlockInput& in,
                                 int64_t tokens, PendingBlock* p) {
  const KvLayout& layout = codec.layout();
  const int64_t row = int64_t{layout.kv_heads} * layout.head_dim;
  BlockHeader& h = p->header;
  uint8_t* payload = p->bytes.data() + sizeof(BlockHeader);
  const int64_t fp16_tokens = h.fp16_tokens;
  if (fp16_tokens > 0) {
    uint16_t* k16 = reinterpret_cast<uint16_t*>(payload + h.codes_bytes);
    uint16_t* v16 = k16 + fp16_tokens * layout.layers * row;
    auto to_half = [](const float* s, int64_t n, uint16_t* d) {
      FloatToHalf(s, n, d);
    };
    CopyTokenRange(in.keys, tokens, 0, k16, fp16_tokens, 0, fp16_tokens,
                   layout.layers, row, to_half);
    CopyTokenRange(in.values, tokens, 0, v16, fp16_tokens, 0, fp16_tokens,
                   layout.layers, row, to_half);
  }
  h.checksum = BlockChecksum(h, payload, h.payload_bytes);
  std::memcpy(p->bytes.data(), &h, sizeof(h));
  return std::move(p->bytes);
}

}  // namespace

absl::StatusOr<std::vector<uint8_t>> EncodeBlock(const Codec& codec,
                                                 const float* keys,
                                                 const float* values,
                                                 int64_t tokens,
                                                 const BlockOptions& options) {
  const BlockInput in{keys, values, options};
  absl::StatusOr<std::vector<std::vector<uint8_t>>> blocks =
      EncodeBlocks(codec, absl::MakeConstSpan(&in, 1), tokens);
  if (!blocks.ok()) return blocks.status();
  return std::move((*blocks)[0]);
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> EncodeBlocks(
    const Codec& codec, absl::Span<const BlockInput> inputs, int64_t tokens) {
  std::vector<PendingBlock> pending(inputs.size());
  std::vector<Codec::EncodeRequest> requests;
  for (size_t i = 0; i < inputs.size(); ++i) {
    VQKV_RETURN_IF_ERROR(StartBlock(codec, inputs[i], tokens, &pending[i]));
    PendingBlock& p = pending[i];
    if (p.coded_tokens > 0) {
      requests.push_back({p.coded_keys, p.coded_values, p.coded_tokens,
                          p.bytes.data() + sizeof(BlockHeader),
                          static_cast<size_t>(p.header.codes_bytes)});
    }
  }
  VQKV_RETURN_IF_ERROR(codec.EncodeMany(requests));
  std::vector<std::vector<uint8_t>> blocks;
  blocks.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    blocks.push_back(FinishBlock(codec, inputs[i], tokens, &pending[i]));
  }
  return blocks;
}

absl::StatusOr<std::vector<uint8_t>> SealBlock(
    const Codec& codec, absl::Span<const uint8_t> payload, int64_t tokens,
    const BlockOptions& options) {
  if (options.fp16_tokens != 0) {
    return absl::InvalidArgumentError(
        "SealBlock takes payloads without an fp16 section (fp16_tokens 0)");
  }
  const BlockInput in{nullptr, nullptr, options};
  PendingBlock p;
  VQKV_RETURN_IF_ERROR(StartBlock(codec, in, tokens, &p));
  if (payload.size() != p.header.codes_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a payload of ", tokens, " tokens is ",
                     p.header.codes_bytes, " bytes, got ", payload.size()));
  }
  std::memcpy(p.bytes.data() + sizeof(BlockHeader), payload.data(),
              payload.size());
  return FinishBlock(codec, in, tokens, &p);
}

absl::StatusOr<BlockHeader> VerifyBlock(const uint8_t* data, size_t size) {
  if (data == nullptr || size < sizeof(BlockHeader)) {
    return absl::DataLossError(absl::StrCat("block truncated: ", size,
                                            " bytes, header needs ",
                                            sizeof(BlockHeader)));
  }
  BlockHeader h;
  std::memcpy(&h, data, sizeof(h));
  if (h.magic != kBlockMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a vqkv block: magic 0x", absl::Hex(h.magic),
                     ", expected 0x", absl::Hex(kBlockMagic)));
  }
  if (h.format_version != kBlockFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported block format version ", h.format_version,
                     " (this build reads version ", kBlockFormatVersion, ")"));
  }
  if (h.header_bytes != sizeof(BlockHeader) ||
      (h.flags & ~kKnownBlockFlags) != 0 ||
      (h.key_sketch_first_layer != 0 &&
       ((h.flags & kBlockHasKeySketch) == 0 ||
        h.key_sketch_first_layer >= h.layers))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed block header: header_bytes ", h.header_bytes, ", flags 0x",
        absl::Hex(h.flags), ", key sketch from layer ",
        h.key_sketch_first_layer, " of ", h.layers));
  }
  if (h.tokens == 0 || h.layers == 0 || h.kv_heads == 0 || h.head_dim == 0 ||
      h.fp16_tokens > h.tokens ||
      ((h.flags & kBlockHasFp16Section) != 0) != (h.fp16_tokens > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed block header: ", h.tokens, " tokens (",
                     h.fp16_tokens, " fp16), ", h.layers, " layers, ",
                     h.kv_heads, " kv heads, head_dim ", h.head_dim));
  }
  // The fp16 section lies inside the payload, so a header whose section
  // would be larger than payload_bytes is malformed. Checked by division
  // first: the product can pass 2^64 (2^32 tokens of a 65535^3 layout), and
  // a wrapped size must not match a forged payload_bytes.
  const uint64_t fp16_bytes_per_token =
      Fp16SectionBytes(1, h.layers, h.kv_heads, h.head_dim);
  if (h.fp16_tokens > h.payload_bytes / fp16_bytes_per_token) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed block header: a ", h.payload_bytes,
                     "-byte payload cannot hold ", h.fp16_tokens,
                     " fp16 tokens of ", fp16_bytes_per_token, " bytes"));
  }
  const uint64_t fp16_bytes =
      Fp16SectionBytes(h.fp16_tokens, h.layers, h.kv_heads, h.head_dim);
  if (h.payload_bytes < h.codes_bytes ||
      h.payload_bytes - h.codes_bytes != fp16_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed block header: payload ", h.payload_bytes, " bytes with ",
        h.codes_bytes, " code bytes cannot hold a ", fp16_bytes,
        "-byte fp16 section"));
  }
  if (size - sizeof(BlockHeader) != h.payload_bytes) {
    return absl::DataLossError(absl::StrCat(
        "block length mismatch: header says ", h.payload_bytes,
        " payload bytes, record has ", size - sizeof(BlockHeader)));
  }
  const uint64_t sum =
      BlockChecksum(h, data + sizeof(BlockHeader), h.payload_bytes);
  if (sum != h.checksum) {
    return absl::DataLossError(
        absl::StrCat("block checksum mismatch: stored 0x",
                     absl::Hex(h.checksum), ", computed 0x", absl::Hex(sum)));
  }
  return h;
}

absl::Status CheckBlockForCodec(const Codec& codec, const BlockHeader& h,
                                int64_t out_tokens) {
  if (h.codec_id != static_cast<uint32_t>(codec.id())) {
    return absl::FailedPreconditionError(
        absl::StrCat("block was encoded with codec ",
                     CodecIdName(static_cast<CodecId>(h.codec_id)), " (id ",
                     h.codec_id, "), not ", CodecIdName(codec.id())));
  }
  if (h.codebook_hash != codec.codebook_hash()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "block needs codebook set 0x", absl::Hex(h.codebook_hash),
        " but the codec has 0x", absl::Hex(codec.codebook_hash())));
  }
  if ((h.flags & kCodecPayloadFlags) !=
      (codec.PayloadFlags() & kCodecPayloadFlags)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "block payload flags 0x", absl::Hex(h.flags & kCodecPayloadFlags),
        " (key sketch ", (h.flags & kBlockHasKeySketch) ? "on" : "off",
        ", key refinement ", (h.flags & kBlockHasKeyRefinement) ? "on" : "off",
        ") differ from the codec's ", codec.Descriptor()));
  }
  // Both are 0 without a sketch (the header check, the codec's contract).
  if (h.key_sketch_first_layer != codec.KeySketchFirstLayer()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "block has a key sketch from layer ", h.key_sketch_first_layer,
        ", the codec ", codec.Descriptor(), " from layer ",
        codec.KeySketchFirstLayer()));
  }
  const KvLayout& layout = codec.layout();
  if (h.layers != layout.layers || h.kv_heads != layout.kv_heads ||
      h.head_dim != layout.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block layout ", h.layers, "x", h.kv_heads, "x", h.head_dim,
        " (layers x kv heads x head_dim) does not match the codec's ",
        layout.layers, "x", layout.kv_heads, "x", layout.head_dim));
  }
  if (out_tokens != h.tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output holds ", out_tokens, " tokens, block has ", h.tokens));
  }
  return absl::OkStatus();
}

absl::Status DecodeBlock(const Codec& codec, const uint8_t* data, size_t size,
                         int64_t out_tokens, float* keys, float* values) {
  absl::StatusOr<BlockHeader> header = VerifyBlock(data, size);
  if (!header.ok()) return header.status();
  return DecodeVerifiedBlockLayers(codec, *header, data, size, out_tokens, 0,
                                   codec.layout().layers, keys, values);
}

absl::Status DecodeVerifiedBlockLayers(const Codec& codec, const BlockHeader& h,
                                       const uint8_t* data, size_t size,
                                       int64_t out_tokens, int first_layer,
                                       int num_layers, float* keys,
                                       float* values) {
  if (absl::Status s = CheckBlockForCodec(codec, h, out_tokens); !s.ok()) {
    return s;
  }
  const KvLayout& layout = codec.layout();
  if (absl::Status s = CheckLayerRange(layout, first_layer, num_layers);
      !s.ok()) {
    return s;
  }
  if (size != sizeof(BlockHeader) + h.payload_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("block of ", size, " bytes, its header says ",
                     sizeof(BlockHeader) + h.payload_bytes));
  }
  const int64_t tokens = h.tokens;
  const int64_t fp16_tokens = h.fp16_tokens;
  const int64_t coded_tokens = tokens - fp16_tokens;
  const int64_t row = int64_t{layout.kv_heads} * layout.head_dim;
  const uint8_t* payload = data + sizeof(BlockHeader);
  if (coded_tokens > 0) {
    if (h.codes_bytes != codec.EncodedBytes(coded_tokens)) {
      return absl::DataLossError(absl::StrCat(
          "block code section is ", h.codes_bytes, " bytes, codec expects ",
          codec.EncodedBytes(coded_tokens), " for ", coded_tokens, " tokens"));
    }
    if (fp16_tokens == 0) {
      return codec.DecodeLayers(payload, h.codes_bytes, coded_tokens,
                                first_layer, num_layers, keys, values);
    }
    std::vector<float> k_part(coded_tokens * num_layers * row);
    std::vector<float> v_part(k_part.size());
    if (absl::Status s = codec.DecodeLayers(
            payload, h.codes_bytes, coded_tokens, first_layer, num_layers,
            k_part.data(), v_part.data());
        !s.ok()) {
      return s;
    }
    auto copy = [](const float* s, int64_t n, float* d) {
      std::memcpy(d, s, n * sizeof(float));
    };
    CopyTokenRange(k_part.data(), coded_tokens, 0, keys, tokens, fp16_tokens,
                   coded_tokens, num_layers, row, copy);
    CopyTokenRange(v_part.data(), coded_tokens, 0, values, tokens, fp16_tokens,
                   coded_tokens, num_layers, row, copy);
  } else if (h.codes_bytes != 0) {
    return absl::DataLossError("block with no coded tokens has code bytes");
  }
  if (fp16_tokens > 0) {
    // The fp16 section is [layer][token][row], keys then values.
    const size_t layer_halves = fp16_tokens * row;
    const size_t half_count = layer_halves * layout.layers;
    const size_t range_halves = layer_halves * num_layers;
    const uint8_t* k_base =
        payload + h.codes_bytes + 2 * layer_halves * first_layer;
    const uint8_t* v_base = k_base + 2 * half_count;
    // The payload is not necessarily 2-byte aligned: copy before converting.
    std::vector<uint16_t> k16(range_halves), v16(range_halves);
    std::memcpy(k16.data(), k_base, range_halves * 2);
    std::memcpy(v16.data(), v_base, range_halves * 2);
    auto to_float = [](const uint16_t* s, int64_t n, float* d) {
      HalfToFloat(s, n, d);
    };
    CopyTokenRange(k16.data(), fp16_tokens, 0, keys, tokens, 0, fp16_tokens,
                   num_layers, row, to_float);
    CopyTokenRange(v16.data(), fp16_tokens, 0, values, tokens, 0, fp16_tokens,
                   num_layers, row, to_float);
  }
  return absl::OkStatus();
}

}  // namespace vqkv
