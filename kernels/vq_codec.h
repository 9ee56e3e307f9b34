// VqCodec: the VQKV codec. Keys and values are coded by residual vector
// quantization with codebooks per layer (optionally per KV head); keys may be
// split into a high- and a low-rotary-frequency group, each with its own RVQ.
//
// Payload of Encode (tokens T, layers L, kv heads H):
//   K section: key codes in order [layer][token][kv_head][group][stage],
//              PackBits at key_bits (kernels/bitpack.h), zero-padded to a
//              whole byte;
//   V section: value codes in order [layer][token][kv_head][stage],
//              PackBits at value_bits, zero-padded to a whole byte;
//   key sketch section (only when key_sketch_bits > 0): per key vector of
//              layers F = key_sketch_first_layer .. L-1, in order
//              [layer][token][kv_head], the SignSketch code
//              (kernels/sign_sketch.h) of what the key codes (and
//              refinement) leave of it;
//   key refinement section (only when the set refines the keys of Lr
//              layers, CodebookSet::SetKeyRefinement): codes in order
//              [refined layer][token][kv_head][stage], R stages each, of
//              what the key codes leave, PackBits at key_bits, zero-padded.
// Decode sums each vector's codewords (a refined key also its refinement's);
// with key gains in the codebook set (CodebookSet::SetKeyGain) a key then
// reads centre + gain * (sum - centre) before the sketch's correction is
// added.
// EncodedBytes(T) = PackedBytes(L*T*H*key_stages, key_bits)
//                 + PackedBytes(L*T*H*value_stages, value_bits)
//                 + (L-F)*T*H*(2 + key_sketch_bits/8)
//                 + PackedBytes(Lr*T*H*R, key_bits).
//
// Thread safety: as Codec (codec.h). FitLayer is a Fit.
#ifndef VQKV_KERNELS_VQ_CODEC_H_
#define VQKV_KERNELS_VQ_CODEC_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/block_format.h"
#include "kernels/codebook_set.h"
#include "kernels/codec.h"
#include "kernels/key_split.h"
#include "kernels/rvq_batch_encoder.h"
#include "kernels/sign_sketch.h"

namespace vqkv {

// Rate of an RVQ key/value configuration; head_dim D for both K and V.
struct VqRate {
  double key_bits_per_element = 0;    // N_k * bits_k / D
  double value_bits_per_element = 0;  // N_v * bits_v / D
  double bits_per_element = 0;        // mean of the two
  // 1 - (N_k*log2(S_k) + N_v*log2(S_v)) / (16 * (D_k + D_v))
  double compression_ratio = 0;
};
VqRate ComputeVqRate(int key_stages, int key_bits, int value_stages,
                     int value_bits, int head_dim);

struct VqConfig {
  // 0 = the paper's rate for the head_dim: key_stages = head_dim*56/128
  // (4.375 bits/element at 10 bits), value_stages = head_dim*16/128
  // (1.125 bits/element at 9 bits). D=128: 56x1024 / 16x512; D=64: 28x1024 /
  // 8x512.
  int key_stages = 0;
  int key_bits = 10;
  int value_stages = 0;
  int value_bits = 9;

  KeySplit key_split = KeySplit::kNone;
  // Stages of the high- and low-frequency key groups when split; both 0 =
  // proportional to each group's dimensions (same bits/element as no split).
  int key_group_stages[2] = {0, 0};

  bool per_head = false;
  bool keys_post_rope = true;

  // Bits of a sign sketch of each key's VQ residual (kernels/sign_sketch.h):
  // 0 = none; else a multiple of 8. It makes attention logits over decoded
  // keys unbiased, which retrieval needs (docs/FIDELITY.md). Costs
  // (16 + key_sketch_bits) / head_dim bits per key element. An encoding
  // setting, not part of the codebooks: it is in the descriptor.
  int key_sketch_bits = 0;
  // The sketch covers layers key_sketch_first_layer..layers-1 only; the
  // earlier layers' keys decode without it. On SmolLM2-135M the sketch's
  // noise costs perplexity on the first half of the layers while retrieval
  // needs it on the second (docs/FIDELITY.md, "The key sketch on the later
  // layers only"). 0 (every layer) unless key_sketch_bits > 0; in the
  // descriptor when not 0.
  int key_sketch_first_layer = 0;

  // Encode: 1 = greedy, B > 1 = beam search of width B. Not part of the
  // descriptor: it changes which codes are chosen, not how codes decode, so
  // greedy and beam encoders share blocks.
  int beam_width = 1;

  // How each quantizer is fitted (kernels/rvq.h; max_training_points is per
  // quantizer). The defaults, shared seeding and 2 Lloyd iterations on up to
  // 128 points per centroid without refinement, match or beat faiss's
  // ResidualQuantizer error on synthetic KV-like data in about half its fit
  // time (bench/codec_bench).
  RvqTraining training;
};

class VqCodec : public Codec {
 public:
  // An unfitted codec. Errors: kInvalidArgument for a bad layout or config.
  static absl::StatusOr<std::unique_ptr<VqCodec>> Create(
      const KvLayout& layout, const VqConfig& config);
  // A codec that encodes with a complete, loaded codebook set; beam_width,
  // key_sketch_bits and key_sketch_first_layer as in VqConfig (the rest
  // comes from the set). Errors: kFailedPrecondition for an incomplete set;
  // kInvalidArgument for a bad beam width, sketch size or sketch layer.
  static absl::StatusOr<std::unique_ptr<VqCodec>> FromCodebookSet(
      CodebookSet set, int beam_width = 1, int key_sketch_bits = 0,
      int key_sketch_first_layer = 0);

  // The codebook config this codec's config resolves to (stages filled in).
  static absl::StatusOr<CodebookConfig> ResolveConfig(const KvLayout& layout,
                                                      const VqConfig& config);

  CodecId id() const override { return CodecId::kVq; }
  // "vq:L=<layers>:H=<kv_heads>:D=<head_dim>:k=<stages per group joined by
  // '+'>x<bits>:split=<name>:v=<stages>x<bits>:ph=<0|1>:rope=<pre|post>:
  // cb=<16 hex digits>", followed by ":ks=<key_sketch_bits>" when that is
  // not 0, and then by "@<key_sketch_first_layer>" when that is not 0;
  // with a key refinement then ":kr=<stages>@<refined layers joined by
  // '+'>".
  std::string Descriptor() const override;
  const KvLayout& layout() const override { return layout_; }
  uint64_t codebook_hash() const override { return hash_; }
  double KeyBitsPerElement() const override;
  double ValueBitsPerElement() const override;
  size_t EncodedBytes(int64_t tokens) const override;
  uint32_t PayloadFlags() const override {
    return (sketch_ ? uint32_t{kBlockHasKeySketch} : 0u) |
           (set_.has_key_refinement() ? uint32_t{kBlockHasKeyRefinement} : 0u);
  }
  int KeySketchFirstLayer() const override {
    return sketch_ ? config_.key_sketch_first_layer : 0;
  }

  // keys/values: [layer][token][kv_head][head_dim], tokens >= 1 per layer.
  absl::Status Fit(const float* keys, const float* values, int64_t tokens,
                   const FitOptions& options) override;
  // Fits one layer from keys/values [token][kv_head][head_dim], so a
  // calibrator can stream layer by layer. The codec becomes usable once
  // every layer has been fitted (by Fit or FitLayer); refitting a layer
  // changes the codebook hash.
  absl::Status FitLayer(int layer, const float* keys, const float* values,
                        int64_t tokens, const FitOptions& options);
  bool fitted() const { return fitted_; }
  // Fits the key refinement of a fitted layer (CodebookSet::
  // SetKeyRefinement): an RVQ of `stages` stages per slot on what the
  // layer's key codes leave of keys [token][kv_head][head_dim]. Every
  // refined layer has the same stages. Changes the codebook hash; drops the
  // batch encoder. Errors: kInvalidArgument for bad stages or buffers;
  // kFailedPrecondition when the layer is not fitted or already refined.
  absl::Status FitKeyRefinement(int layer, const float* keys, int64_t tokens,
                                int stages, const FitOptions& options);

  absl::Status Encode(const float* keys, const float* values, int64_t tokens,
                      uint8_t* out, size_t out_bytes) const override;
  // Every request's RVQ searches go to the batch encoder in one call (or
  // run on the CPU one quantizer at a time); payloads as Encode gives them.
  absl::Status EncodeMany(
      absl::Span<const EncodeRequest> requests) const override;
  absl::Status Decode(const uint8_t* in, size_t in_bytes, int64_t tokens,
                      float* keys, float* values) const override;
  // Unpacks and sums only the range's codes (and key sketch) when its layers
  // start on a byte boundary of both code sections, which holds whenever
  // tokens is a multiple of 8; otherwise decodes every layer.
  absl::Status DecodeLayers(const uint8_t* in, size_t in_bytes, int64_t tokens,
                            int first_layer, int num_layers, float* keys,
                            float* values) const override;

  // Runs the greedy RVQ encodes of every later Encode through `encoder`
  // (kernels/rvq_batch_encoder.h; null: on the CPU, the default). Only with
  // beam width 1: a beam encoder keeps the CPU. Fit and FitLayer drop it
  // (the encoder may hold copies of the old codebooks). Not thread-safe
  // against concurrent Encodes: set it before sharing the codec.
  void SetBatchEncoder(std::shared_ptr<RvqBatchEncoder> encoder) {
    batch_encoder_ = std::move(encoder);
  }
  bool has_batch_encoder() const { return batch_encoder_ != nullptr; }

  // What one layer's key codes reconstruct: keys [token][kv_head][head_dim]
  // of `layer` encoded (greedy or beam, as Encode) and decoded, with its key
  // refinement when it has one but without key gains or sketch, into out
  // (same layout). For fitting key gains
  // while the later layers are not yet fitted (tools/key_gain_fit.h).
  // Errors: kFailedPrecondition when the layer is not fitted;
  // kInvalidArgument for a bad layer, tokens < 1 or null buffers.
  absl::Status ReconstructLayerKeys(int layer, const float* keys,
                                    int64_t tokens, float* out) const;

  const CodebookSet& codebooks() const { return set_; }
  const VqConfig& config() const { return config_; }
  // The key sketch; nullptr when key_sketch_bits is 0.
  const SignSketch* key_sketch() const { return sketch_ ? &*sketch_ : nullptr; }
  // The sketch of `layer`'s keys: nullptr below key_sketch_first_layer.
  const SignSketch* key_sketch_for_layer(int layer) const {
    return layer >= KeySketchFirstLayer() ? key_sketch() : nullptr;
  }
  // Key vectors with a sketch in a payload of `tokens` tokens.
  int64_t SketchedVectors(int64_t tokens) const;
  // Key vectors with a refinement in a payload of `tokens` tokens.
  int64_t RefinedVectors(int64_t tokens) const;

 private:
  VqCodec() = default;
  absl::Status Finalize();
  absl::Status InitSketch();
  // Sums the codewords of key codes [vector][Nk] into keys and, when
  // vcodes is not null, of value codes into values, for layers
  // [first_layer, first_layer + num_layers) (-1: every layer); codes and
  // outputs hold that range's vectors only.
  absl::Status Reconstruct(const uint16_t* kcodes, const uint16_t* vcodes,
                           int64_t tokens, float* keys, float* values,
                           int first_layer = 0, int num_layers = -1) const;
  // The RVQ searches of `jobs`: through the batch encoder (greedy) when
  // there is one, else on the CPU at the configured beam width.
  absl::Status RunEncodeJobs(absl::Span<const RvqBatchEncoder::Job> jobs) const;
  // ReconstructLayerKeys without the refinement.
  absl::Status ReconstructLayerBaseKeys(int layer, const float* keys,
                                        int64_t tokens, float* out) const;
  // Positions [lo, hi) in refined_layers() of the refined layers in
  // [first_layer, first_layer + num_layers).
  std::pair<int, int> RefinedRange(int first_layer, int num_layers) const;
  // Refinement codes [refined layer][token][kv_head][R] of every refined
  // layer, for keys [layer][token][kv_head][head_dim] and their key codes
  // kcodes [vector][Nk].
  absl::Status EncodeKeyRefinement(const float* keys, int64_t tokens,
                                   const uint16_t* kcodes,
                                   std::vector<uint16_t>* rcodes) const;
  // Adds the decoded refinement of the refined layers in [first_layer,
  // +num_layers) to keys (that range's vectors); rcodes starts at the first
  // of them.
  absl::Status AddKeyRefinement(const uint16_t* rcodes, int64_t tokens,
                                int first_layer, int num_layers,
                                float* keys) const;
  // centre + gain * (k - centre) for the keys of layers [first_layer,
  // +num_layers) when the set has key gains.
  void ApplyKeyGains(int64_t tokens, int first_layer, int num_layers,
                     float* keys) const;
  // Decode of a validated payload, layers [first_layer, +num_layers).
  absl::Status DecodeRange(const uint8_t* in, int64_t tokens, int first_layer,
                           int num_layers, float* keys, float* values) const;

  KvLayout layout_;
  VqConfig config_;
  CodebookSet set_;
  bool fitted_ = false;
  uint64_t hash_ = 0;
  std::optional<SignSketch> sketch_;  // when config_.key_sketch_bits > 0
  std::shared_ptr<RvqBatchEncoder> batch_encoder_;
};

}  // namespace vqkv

#endif  // VQKV_KERNELS_VQ_CODEC_H_
