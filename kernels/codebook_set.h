// The codebook set of one model: per layer (optionally per KV head) a key
// quantizer (one RVQ per key dimension group, kernels/key_split.h) and a
// value quantizer, plus the config that shaped them.
//
// A set is content-addressed: Hash() is XXH3-64 (seed 0) over its canonical
// serialization, the bytes of the codebook file without its trailing hash
// (docs/CODEBOOK_FORMAT.md). Encoded blocks and cache namespaces carry this
// hash, so codes are never decoded with codebooks other than their own.
//
// A set may carry the identity of the model it was fitted for
// (kernels/model_identity.h). A set with one serializes as format version 2,
// which stores it (so the hash covers it: codebooks for two models never
// share a hash); a set without one serializes as version 1, byte for byte
// what builds before version 2 wrote, so its hash is unchanged.
//
// A set may also carry key gains (SetKeyGain): per layer and KV head a
// decoded key is read as centre + gain * (codewords - centre), which undoes
// the shrinkage of k-means codewords toward the calibration keys' mean that
// costs retrieval (docs/CODEC.md, "Key gain"). A set with gains serializes
// as version 3 (version 2's header, the gains after the codebooks); sets
// without keep their version and hash.
//
// A set of pre-RoPE keys may record the rotation the model applies after
// them (SetKeyRope): then a client can code the post-RoPE keys an engine
// caches by un-rotating them first, and rotate decoded keys back. Such a set
// serializes as version 4 (version 3 with the RoPE fields and a flag for the
// gains).
//
// A set may refine the keys of a few layers (SetKeyRefinement): one more
// RVQ per refined layer and slot, over the whole head_dim, that codes what
// the layer's key codes leave, for the layers whose keys the codebooks
// shrink most (docs/CODEC.md, "Key refinement"). Such a set serializes as
// version 5 (version 4, the RoPE optional, with the refinement after the
// gains).
//
// Thread safety: const methods may run concurrently; Set* must not run
// concurrently with anything else on the same object.
#ifndef VQKV_KERNELS_CODEBOOK_SET_H_
#define VQKV_KERNELS_CODEBOOK_SET_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/codec.h"
#include "kernels/key_split.h"
#include "kernels/model_identity.h"
#include "kernels/rope.h"
#include "kernels/rvq.h"

namespace vqkv {

inline constexpr uint32_t kCodebookMagic = 0x42435156;  // "VQCB" little-endian
// The newest version this build reads and writes; it also reads and writes
// versions 1 (no model identity, no key gains), 2 (no key gains), 3 (no
// key RoPE) and 4 (no key refinement).
inline constexpr uint16_t kCodebookFormatVersion = 5;
// Largest key gain a set accepts.
inline constexpr float kMaxKeyGain = 16.0f;

struct CodebookConfig {
  KvLayout layout;
  KeySplit key_split = KeySplit::kNone;
  // Stages of each key group: one entry for kNone, two (high-frequency group
  // first) for a RoPE split.
  std::vector<int> key_group_stages;
  int key_bits = 10;  // one width for every key stage, 1..16
  int value_stages = 0;
  int value_bits = 9;          // 1..16
  bool per_head = false;       // one quantizer per (layer, kv head)
  bool keys_post_rope = true;  // keys were captured after RoPE

  int key_stages() const;  // sum of key_group_stages
  // Quantizer slots per layer: kv_heads when per_head, else 1.
  int slots_per_layer() const { return per_head ? layout.kv_heads : 1; }
  // kInvalidArgument naming the offending field.
  absl::Status Validate() const;
  bool operator==(const CodebookConfig&) const = default;
};

class CodebookSet {
 public:
  CodebookSet() = default;

  // An empty set (no codebooks yet) for a valid config.
  static absl::StatusOr<CodebookSet> Create(const CodebookConfig& config);

  const CodebookConfig& config() const { return config_; }
  // Dimensions of each key group (KeyGroupDims of the config's split).
  const std::vector<std::vector<int>>& key_group_dims() const {
    return key_group_dims_;
  }

  // Installs a fitted quantizer. slot is the kv head when per_head, else 0.
  // Errors: kInvalidArgument for an out-of-range index or a quantizer whose
  // dim / stages / bits do not match the config.
  absl::Status SetKey(int layer, int slot, int group, ResidualQuantizer q);
  absl::Status SetValue(int layer, int slot, ResidualQuantizer q);

  // REQUIRES: indices in range (unchecked).
  const ResidualQuantizer& key(int layer, int slot, int group) const {
    return keys_[(static_cast<size_t>(layer) * config_.slots_per_layer() +
                  slot) *
                     key_group_dims_.size() +
                 group];
  }
  const ResidualQuantizer& value(int layer, int slot) const {
    return values_[static_cast<size_t>(layer) * config_.slots_per_layer() +
                   slot];
  }
  // The model the set was fitted for; nullopt when unknown (a version-1
  // file, or a set built without a model, as in unit tests).
  const std::optional<ModelIdentity>& identity() const { return identity_; }
  // Records the model the set was fitted for. Errors: kInvalidArgument when
  // the identity does not validate or its layout is not the config's.
  absl::Status SetIdentity(ModelIdentity identity);

  // Whether codebooks named `label` (e.g. "codebooks models/x.vqcb") may be
  // used with `model`. OK when the set's identity equals `model`, and when
  // the set has none (the caller still checks the layout and may warn).
  // Errors: kFailedPrecondition naming both identities and the set's key
  // position (pre/post RoPE) when they differ.
  absl::Status CheckModel(const ModelIdentity& model,
                          std::string_view label) const;

  // The rotation the model applies to the pre-RoPE keys the set codes;
  // nullopt when not recorded (always for post-RoPE sets).
  const std::optional<RopeSpec>& key_rope() const { return key_rope_; }
  // Records it. Errors: kFailedPrecondition for a set of post-RoPE keys;
  // kInvalidArgument for a spec that does not validate for the head_dim.
  absl::Status SetKeyRope(const RopeSpec& rope);

  // Sets the key gain of (layer, kv_head): decoded keys of that head read
  // centre + gain * (reconstruction - centre); centre has head_dim floats
  // (the space the keys are coded in: pre- or post-RoPE). Until the first
  // call the set has no gains; then every other head's gain is 1.
  // Errors: kInvalidArgument for an out-of-range index, a centre of the
  // wrong size, a gain outside (0, kMaxKeyGain] or a non-finite value.
  absl::Status SetKeyGain(int layer, int kv_head, float gain,
                          const std::vector<float>& centre);
  bool has_key_gains() const { return !key_gains_.empty(); }
  // Removes every key gain (the set then serializes without them: version
  // 1 or 2, or 4 with a key RoPE).
  void ClearKeyGains() { key_gains_.clear(); }
  // REQUIRES: has_key_gains() and indices in range (unchecked).
  float key_gain(int layer, int kv_head) const {
    return key_gains_[GainIndex(layer, kv_head)];
  }
  // head_dim floats.
  const float* key_centre(int layer, int kv_head) const {
    return key_gains_.data() + GainIndex(layer, kv_head) + 1;
  }

  // Installs the key refinement of (layer, slot): an RVQ of dim head_dim at
  // key_bits whose codes follow the layer's key codes, decoded and added to
  // their sum before the key gain. Every refinement of a set has the same
  // stages (the first call fixes them). A layer becomes refined with its
  // first slot; the set is complete only when each refined layer has every
  // slot.
  // Errors: kInvalidArgument for an out-of-range index or a quantizer that
  // is unfitted or whose dim / bits / stages do not match.
  absl::Status SetKeyRefinement(int layer, int slot, ResidualQuantizer q);
  bool has_key_refinement() const { return !refined_layers_.empty(); }
  // Stages of every refinement; 0 without refinement.
  int key_refine_stages() const { return refine_stages_; }
  // The refined layers, ascending.
  const std::vector<int>& refined_layers() const { return refined_layers_; }
  // Position of `layer` in refined_layers(); -1 when it is not refined.
  int RefinedIndex(int layer) const;
  // REQUIRES: RefinedIndex(layer) >= 0, slot in range (unchecked).
  const ResidualQuantizer& key_refinement(int layer, int slot) const {
    return refinements_[static_cast<size_t>(RefinedIndex(layer)) *
                            config_.slots_per_layer() +
                        slot];
  }
  // Removes every refinement.
  void ClearKeyRefinement() {
    refined_layers_.clear();
    refinements_.clear();
    refine_stages_ = 0;
  }

  // True when every quantizer of every layer has been set.
  bool complete() const;
  bool layer_complete(int layer) const;

  // Content hash. Errors: kFailedPrecondition unless complete().
  absl::StatusOr<uint64_t> Hash() const;

  // The codebook file, hash trailer included.
  // Errors: kFailedPrecondition unless complete().
  absl::StatusOr<std::string> Serialize() const;
  // Reads format versions 1 (no identity), 2, 3 (key gains), 4 (key RoPE)
  // and 5 (key refinement).
  // Errors: kInvalidArgument for a wrong magic, kFailedPrecondition for an
  // unsupported version, kDataLoss for a truncated/oversized file, a hash
  // mismatch or a config or identity that does not parse.
  static absl::StatusOr<CodebookSet> Deserialize(std::string_view bytes);

  // Errors as Serialize/Deserialize, plus kNotFound / kUnavailable for I/O.
  absl::Status Save(const std::string& path) const;
  static absl::StatusOr<CodebookSet> Load(const std::string& path);

 private:
  size_t GainIndex(int layer, int kv_head) const {
    return (static_cast<size_t>(layer) * config_.layout.kv_heads + kv_head) *
           (1 + config_.layout.head_dim);
  }

  CodebookConfig config_;
  std::optional<ModelIdentity> identity_;
  std::optional<RopeSpec> key_rope_;
  std::vector<std::vector<int>> key_group_dims_;
  std::vector<ResidualQuantizer> keys_;    // [layer][slot][group]
  std::vector<ResidualQuantizer> values_;  // [layer][slot]
  // Empty, or [layer][kv_head] of {gain, centre[head_dim]}.
  std::vector<float> key_gains_;
  std::vector<int> refined_layers_;             // ascending
  std::vector<ResidualQuantizer> refinements_;  // [refined layer][slot]
  int refine_stages_ = 0;
};

}  // namespace vqkv

#endif  // VQKV_KERNELS_CODEBOOK_SET_H_
