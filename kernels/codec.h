// The codec interface: how vqkv turns the keys and values of a run of tokens
// into a compact payload and back.
//
// Tensor layout used everywhere in this interface (and in the encoded block,
// docs/BLOCK_FORMAT.md): keys and values are separate float32 arrays,
// row-major [layer][token][kv_head][head_dim]. A "vector" is one
// (token, layer, kv_head) slice of head_dim floats.
//
// Thread safety: Encode, Decode and the accessors are const and may be called
// concurrently. Fit mutates the codec and must not run concurrently with
// anything else on the same object.
#ifndef VQKV_KERNELS_CODEC_H_
#define VQKV_KERNELS_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace vqkv {

// Largest token count one Encode, Decode or EncodedBytes call accepts, for
// every codec: what the u32 token field of a block header holds
// (kernels/block_format.h). Byte counts derived from it fit in int64.
inline constexpr int64_t kMaxCodecTokens = int64_t{0xFFFFFFFF};

// Shape of one model's KV cache.
struct KvLayout {
  int layers = 0;
  int kv_heads = 0;
  int head_dim = 0;

  // Elements of K (or of V) per token, over all layers and heads.
  int64_t ElementsPerToken() const {
    return int64_t{layers} * kv_heads * head_dim;
  }
  // kInvalidArgument unless every field is in 1..65535.
  absl::Status Validate() const;
  bool operator==(const KvLayout&) const = default;
};

// Stable numeric ids, written into every encoded block header.
enum class CodecId : uint32_t {
  kFp16 = 1,  // fp16 passthrough (the uncompressed reference)
  kVq = 2,    // residual vector quantization (VQKV)
  kKivi = 3,  // KIVI-style asymmetric scalar quantization
};
const char* CodecIdName(CodecId id);

// OK when [first_layer, first_layer + num_layers) is a non-empty range of
// layout's layers; kInvalidArgument, naming the range, otherwise.
absl::Status CheckLayerRange(const KvLayout& layout, int first_layer,
                             int num_layers);

// Progress of a long Fit, reported through FitOptions::progress.
struct FitProgress {
  std::string phase;  // e.g. "layer 3 keys[0] stage 12/28"
  int64_t done = 0;   // units of work finished so far
  int64_t total = 0;  // units of work in all
};

struct FitOptions {
  uint64_t seed = 0x5eed;
  // Called from the fitting thread; may be empty.
  std::function<void(const FitProgress&)> progress;
};

class Codec {
 public:
  virtual ~Codec() = default;

  virtual CodecId id() const = 0;
  // Stable text naming the codec and every parameter that changes its
  // output, including the codebook hash, e.g.
  // "vq:k=2x28x10:v=8x9:cb=0123456789abcdef". Used in namespaces, so two
  // codecs with different descriptors never read each other's blocks.
  virtual std::string Descriptor() const = 0;
  virtual const KvLayout& layout() const = 0;
  // Content hash of the codebook set this codec encodes with; 0 for codecs
  // without trained state.
  virtual uint64_t codebook_hash() const = 0;

  // Payload bits per key / value element, side information (scales, zero
  // points) included, codebooks and fp16 sections excluded.
  virtual double KeyBitsPerElement() const = 0;
  virtual double ValueBitsPerElement() const = 0;
  double BitsPerElement() const {
    return 0.5 * (KeyBitsPerElement() + ValueBitsPerElement());
  }
  // 1 - bits / 16: the paper's compression ratio against fp16.
  double CompressionRatio() const { return 1.0 - BitsPerElement() / 16.0; }

  // Block header flags (kernels/block_format.h, kCodecPayloadFlags) that
  // describe this codec's payload layout; a block is decoded only by a codec
  // with the same ones.
  virtual uint32_t PayloadFlags() const { return 0; }
  // With kBlockHasKeySketch: the first layer whose keys carry a sketch
  // (BlockHeader::key_sketch_first_layer); a block is decoded only by a
  // codec with the same one. 0 otherwise.
  virtual int KeySketchFirstLayer() const { return 0; }

  // Exact payload size in bytes for `tokens` tokens (0 outside
  // 0..kMaxCodecTokens).
  virtual size_t EncodedBytes(int64_t tokens) const = 0;

  // Learns the codec's state from a sample of `tokens` tokens in the layout
  // above. Codecs without trained state return OkStatus.
  virtual absl::Status Fit(const float* keys, const float* values,
                           int64_t tokens, const FitOptions& options) = 0;

  // Encodes `tokens` tokens into out[0, EncodedBytes(tokens)).
  // REQUIRES: out_bytes >= EncodedBytes(tokens); tokens >= 1.
  // Errors: kInvalidArgument for bad sizes, kFailedPrecondition when the
  // codec needs Fit and has not been fitted.
  virtual absl::Status Encode(const float* keys, const float* values,
                              int64_t tokens, uint8_t* out,
                              size_t out_bytes) const = 0;

  // One Encode's arguments.
  struct EncodeRequest {
    const float* keys = nullptr;
    const float* values = nullptr;
    int64_t tokens = 0;
    uint8_t* out = nullptr;
    size_t out_bytes = 0;
  };
  // Encodes each request as Encode would. Codecs that gain from seeing
  // many at once override it (VqCodec with a batch encoder: one device
  // launch for all of them); the default encodes them in turn. Errors:
  // Encode's, for the first request that fails (outputs of the others are
  // then unspecified).
  virtual absl::Status EncodeMany(
      absl::Span<const EncodeRequest> requests) const;

  // Reconstructs `tokens` tokens from in[0, in_bytes) into keys/values.
  // Errors: kInvalidArgument when in_bytes != EncodedBytes(tokens).
  virtual absl::Status Decode(const uint8_t* in, size_t in_bytes,
                              int64_t tokens, float* keys,
                              float* values) const = 0;

  // Reconstructs only layers [first_layer, first_layer + num_layers) of the
  // payload, into keys/values of [num_layers][tokens][kv_heads][head_dim],
  // equal to those layers of Decode's output. Lets a loader hand layer 0 to
  // the model before the later layers are decoded. The default decodes
  // every layer and copies the range out; codecs whose payload is laid out
  // by layer override it to decode the range alone.
  // Errors: those of Decode; kInvalidArgument for a range outside
  // 0..layout().layers.
  virtual absl::Status DecodeLayers(const uint8_t* in, size_t in_bytes,
                                    int64_t tokens, int first_layer,
                                    int num_layers, float* keys,
                                    float* values) const;
};

}  // namespace vqkv

#endif  // VQKV_KERNELS_CODEC_H_
