#include "kernels/codebook_set.h"

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/coding.h"
#include "base/file.h"
#include "base/status_macros.h"

namespace vqkv {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the codebook file is little-endian; add byte swapping to "
              "support big-endian hosts");

// Version 1's header; version 2 appends the model identity to it, version 3
// (the same header) appends the key gains to the body, version 4 adds the
// key RoPE in reserved header fields, and version 5 the key refinement's
// size in more of them (its layers and codebooks after the gains).
constexpr size_t kHeaderBytes = 64;
constexpr size_t kHeaderBytesV2 = 128;
constexpr size_t kMaxHeaderBytes = kHeaderBytesV2;
constexpr size_t kTrailerBytes = 8;
// Identity fields of the version-2 header.
constexpr size_t kFingerprintOffset = 64;
constexpr size_t kArchitectureBytesOffset = 72;
constexpr size_t kArchitectureOffset = 80;
// Version-4 fields: in version 1-3 reserved (zero) bytes.
constexpr size_t kRopeDimsOffset = 44;
constexpr size_t kRopeThetaOffset = 56;
constexpr size_t kRopePairsOffset = 112;
constexpr size_t kHasKeyGainsOffset = 113;
// End of the identity fields: version 4 uses the bytes after them.
constexpr size_t kIdentityEndV4 = kRopePairsOffset;
// Version-5 fields.
constexpr size_t kRefineStagesOffset = 116;
constexpr size_t kRefinedLayersOffset = 120;
// Bytes 114-115 and 124-127 are reserved (zero) in versions 4 and 5.

struct StringSink {
  std::string* out;
  void Append(const void* p, size_t n) {
    out->append(static_cast<const char*>(p), n);
  }
};

struct HashSink {
  XXH3_state_t* state;
  void Append(const void* p, size_t n) { XXH3_64bits_update(state, p, n); }
};

template <typename T>
void Put(uint8_t* h, size_t off, T v) {
  base::EncodeFixed<T>(reinterpret_cast<char*>(h) + off, v);
}
template <typename T>
T Get(const uint8_t* h, size_t off) {
  return base::DecodeFixed<T>(reinterpret_cast<const char*>(h) + off);
}

uint64_t BodyBytes(const CodebookConfig& c,
                   const std::vector<std::vector<int>>& groups) {
  uint64_t floats = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    floats += uint64_t(c.key_group_stages[g]) * (uint64_t{1} << c.key_bits) *
              groups[g].size();
  }
  floats += uint64_t(c.value_stages) * (uint64_t{1} << c.value_bits) *
            c.layout.head_dim;
  return floats * 4 * c.layout.layers * c.slots_per_layer();
}

uint64_t KeyGainBytes(const CodebookConfig& c) {
  return uint64_t{4} * c.layout.layers * c.layout.kv_heads *
         (1 + uint64_t(c.layout.head_dim));
}

// The refinement section of a version-5 body: the refined layers (u32
// each), then each one's quantizers.
uint64_t RefinementBytes(const CodebookConfig& c, uint64_t refined_layers,
                         uint64_t stages) {
  return refined_layers *
         (4 + 4 * c.slots_per_layer() * stages * (uint64_t{1} << c.key_bits) *
                  c.layout.head_dim);
}

uint64_t RefinementBytes(const CodebookSet& set) {
  return RefinementBytes(set.config(), set.refined_layers().size(),
                         set.key_refine_stages());
}

uint16_t Version(const CodebookSet& set) {
  if (set.has_key_refinement()) return 5;
  if (set.key_rope()) return 4;
  return set.has_key_gains() ? 3 : set.identity() ? 2 : 1;
}

size_t HeaderBytes(uint16_t version) {
  return version == 1 ? kHeaderBytes : kHeaderBytesV2;
}

// Writes HeaderBytes(version) bytes at h.
void EncodeHeader(const CodebookSet& set, uint16_t version, uint64_t body_bytes,
                  uint8_t* h) {
  const CodebookConfig& c = set.config();
  const std::optional<ModelIdentity>& identity = set.identity();
  const size_t header_bytes = HeaderBytes(version);
  std::memset(h, 0, header_bytes);
  Put<uint32_t>(h, 0, kCodebookMagic);
  Put<uint16_t>(h, 4, version);
  Put<uint16_t>(h, 6, static_cast<uint16_t>(header_bytes));
  Put<uint32_t>(h, 8, c.layout.layers);
  Put<uint32_t>(h, 12, c.layout.kv_heads);
  Put<uint32_t>(h, 16, c.layout.head_dim);
  Put<uint8_t>(h, 20, static_cast<uint8_t>(c.key_split));
  Put<uint8_t>(h, 21, static_cast<uint8_t>(c.key_group_stages.size()));
  Put<uint8_t>(h, 22, c.per_head ? 1 : 0);
  Put<uint8_t>(h, 23, c.keys_post_rope ? 1 : 0);
  Put<uint32_t>(h, 24, c.key_bits);
  Put<uint32_t>(h, 28, c.value_stages);
  Put<uint32_t>(h, 32, c.value_bits);
  Put<uint32_t>(h, 36, c.key_group_stages.empty() ? 0 : c.key_group_stages[0]);
  Put<uint32_t>(h, 40,
                c.key_group_stages.size() < 2 ? 0 : c.key_group_stages[1]);
  Put<uint64_t>(h, 48, body_bytes);
  if (identity) {
    Put<uint64_t>(h, kFingerprintOffset, identity->fingerprint);
    Put<uint8_t>(h, kArchitectureBytesOffset,
                 static_cast<uint8_t>(identity->architecture.size()));
    std::memcpy(h + kArchitectureOffset, identity->architecture.data(),
                identity->architecture.size());
  }
  if (version >= 4 && set.key_rope()) {
    const RopeSpec& rope = *set.key_rope();
    Put<uint32_t>(h, kRopeDimsOffset, static_cast<uint32_t>(rope.rot_dims));
    Put<uint64_t>(h, kRopeThetaOffset, std::bit_cast<uint64_t>(rope.theta));
    Put<uint8_t>(h, kRopePairsOffset, static_cast<uint8_t>(rope.pairs));
  }
  if (version >= 4) {
    Put<uint8_t>(h, kHasKeyGainsOffset, set.has_key_gains() ? 1 : 0);
  }
  if (version == 5) {
    Put<uint32_t>(h, kRefineStagesOffset,
                  static_cast<uint32_t>(set.key_refine_stages()));
    Put<uint32_t>(h, kRefinedLayersOffset,
                  static_cast<uint32_t>(set.refined_layers().size()));
  }
}

}  // namespace

int CodebookConfig::key_stages() const {
  int s = 0;
  for (int g : key_group_stages) s += g;
  return s;
}

absl::Status CodebookConfig::Validate() const {
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  absl::StatusOr<std::vector<std::vector<int>>> groups =
      KeyGroupDims(key_split, layout.head_dim);
  if (!groups.ok()) return groups.status();
  if (key_group_stages.size() != groups->size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key split ", KeySplitName(key_split), " has ", groups->size(),
        " key groups but the config lists stages for ",
        key_group_stages.size()));
  }
  for (int s : key_group_stages) {
    if (s < 1 || s > 4096) {
      return absl::InvalidArgumentError(
          absl::StrCat("key stages per group must be in 1..4096, got ", s));
    }
  }
  if (value_stages < 1 || value_stages > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("value stages must be in 1..4096, got ", value_stages));
  }
  if (key_bits < 1 || key_bits > 16 || value_bits < 1 || value_bits > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("key and value bits must be in 1..16, got ", key_bits,
                     " and ", value_bits));
  }
  return absl::OkStatus();
}

absl::StatusOr<CodebookSet> CodebookSet::Create(const CodebookConfig& config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  CodebookSet set;
  set.config_ = config;
  set.key_group_dims_ = *KeyGroupDims(config.key_split, config.layout.head_dim);
  const size_t slots =
      static_cast<size_t>(config.layout.layers) * config.slots_per_layer();
  set.keys_.resize(slots * set.key_group_dims_.size());
  set.values_.resize(slots);
  return set;
}

absl::Status CodebookSet::SetKey(int layer, int slot, int group,
                                 ResidualQuantizer q) {
  if (layer < 0 || layer >= config_.layout.layers || slot < 0 ||
      slot >= config_.slots_per_layer() || group < 0 ||
      group >= static_cast<int>(key_group_dims_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("key quantizer index out of range: layer ", layer,
                     ", slot ", slot, ", group ", group));
  }
  const int dim = static_cast<int>(key_group_dims_[group].size());
  if (!q.fitted() || q.dim() != dim ||
      q.stages() != config_.key_group_stages[group] ||
      q.bits() != config_.key_bits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key quantizer must be fitted with dim ", dim, ", stages ",
        config_.key_group_stages[group], ", bits ", config_.key_bits,
        "; got dim ", q.dim(), ", stages ", q.stages(), ", bits ", q.bits()));
  }
  keys_[(static_cast<size_t>(layer) * config_.slots_per_layer() + slot) *
            key_group_dims_.size() +
        group] = std::move(q);
  return absl::OkStatus();
}

absl::Status CodebookSet::SetValue(int layer, int slot, ResidualQuantizer q) {
  if (layer < 0 || layer >= config_.layout.layers || slot < 0 ||
      slot >= config_.slots_per_layer()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "value quantizer index out of range: layer ", layer, ", slot ", slot));
  }
  if (!q.fitted() || q.dim() != config_.layout.head_dim ||
      q.stages() != config_.value_stages || q.bits() != config_.value_bits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "value quantizer must be fitted with dim ", config_.layout.head_dim,
        ", stages ", config_.value_stages, ", bits ", config_.value_bits,
        "; got dim ", q.dim(), ", stages ", q.stages(), ", bits ", q.bits()));
  }
  values_[static_cast<size_t>(layer) * config_.slots_per_layer() + slot] =
      std::move(q);
  return absl::OkStatus();
}

absl::Status CodebookSet::SetIdentity(ModelIdentity identity) {
  if (absl::Status s = identity.Validate(); !s.ok()) return s;
  if (identity.layout != config_.layout) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model identity ", identity.ToString(),
        " does not match the codebook layout ", config_.layout.layers, "x",
        config_.layout.kv_heads, "x", config_.layout.head_dim));
  }
  identity_ = std::move(identity);
  return absl::OkStatus();
}

absl::Status CodebookSet::SetKeyGain(int layer, int kv_head, float gain,
                                     const std::vector<float>& centre) {
  const KvLayout& lay = config_.layout;
  if (layer < 0 || layer >= lay.layers || kv_head < 0 ||
      kv_head >= lay.kv_heads ||
      centre.size() != static_cast<size_t>(lay.head_dim)) {
    return absl::InvalidArgumentError(
        absl::StrCat("key gain of layer ", layer, ", kv head ", kv_head,
                     " with a ", centre.size(), "-float centre does not fit a ",
                     lay.layers, "x", lay.kv_heads, "x", lay.head_dim, " set"));
  }
  if (!(gain > 0 && gain <= kMaxKeyGain) ||
      !std::all_of(centre.begin(), centre.end(),
                   [](float x) { return std::isfinite(x); })) {
    return absl::InvalidArgumentError(
        absl::StrCat("key gain must be in (0, ", kMaxKeyGain,
                     "] with a finite centre; got ", gain));
  }
  if (key_gains_.empty()) {
    key_gains_.assign(KeyGainBytes(config_) / 4, 0.0f);
    for (size_t i = 0; i < key_gains_.size(); i += 1 + lay.head_dim) {
      key_gains_[i] = 1.0f;
    }
  }
  const size_t at = GainIndex(layer, kv_head);
  key_gains_[at] = gain;
  std::copy(centre.begin(), centre.end(), key_gains_.begin() + at + 1);
  return absl::OkStatus();
}

int CodebookSet::RefinedIndex(int layer) const {
  const auto it =
      std::lower_bound(refined_layers_.begin(), refined_layers_.end(), layer);
  if (it == refined_layers_.end() || *it != layer) return -1;
  return static_cast<int>(it - refined_layers_.begin());
}

absl::Status CodebookSet::SetKeyRefinement(int layer, int slot,
                                           ResidualQuantizer q) {
  const int slots = config_.slots_per_layer();
  if (layer < 0 || layer >= config_.layout.layers || slot < 0 ||
      slot >= slots) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key refinement index out of range: layer ", layer, ", slot ", slot));
  }
  const int stages = refine_stages_ > 0 ? refine_stages_ : q.stages();
  if (!q.fitted() || q.dim() != config_.layout.head_dim ||
      q.bits() != config_.key_bits || q.stages() != stages || stages > 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key refinement must be fitted with dim ", config_.layout.head_dim,
        ", bits ", config_.key_bits,
        refine_stages_ > 0 ? absl::StrCat(", stages ", refine_stages_)
                           : ", 1..4096 stages",
        "; got dim ", q.dim(), ", stages ", q.stages(), ", bits ", q.bits()));
  }
  refine_stages_ = stages;
  int index = RefinedIndex(layer);
  if (index < 0) {
    const auto it =
        std::lower_bound(refined_layers_.begin(), refined_layers_.end(), layer);
    index = static_cast<int>(it - refined_layers_.begin());
    refined_layers_.insert(it, layer);
    refinements_.insert(refinements_.begin() + size_t(index) * slots, slots,
                        ResidualQuantizer());
  }
  refinements_[size_t(index) * slots + slot] = std::move(q);
  return absl::OkStatus();
}

absl::Status CodebookSet::SetKeyRope(const RopeSpec& rope) {
  if (config_.keys_post_rope) {
    return absl::FailedPreconditionError(
        "a key RoPE is recorded for sets of pre-RoPE keys only");
  }
  if (absl::Status s = rope.Validate(config_.layout.head_dim); !s.ok()) {
    return s;
  }
  key_rope_ = rope;
  return absl::OkStatus();
}

absl::Status CodebookSet::CheckModel(const ModelIdentity& model,
                                     std::string_view label) const {
  if (!identity_ || *identity_ == model) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      std::string(label), " were fitted for ", identity_->ToString(), ", keys ",
      config_.keys_post_rope ? "post" : "pre", "-RoPE; this model is ",
      model.ToString()));
}

bool CodebookSet::layer_complete(int layer) const {
  if (layer < 0 || layer >= config_.layout.layers) return false;
  const size_t slots = config_.slots_per_layer();
  const size_t groups = key_group_dims_.size();
  for (size_t s = 0; s < slots; ++s) {
    if (!values_[layer * slots + s].fitted()) return false;
    for (size_t g = 0; g < groups; ++g) {
      if (!keys_[(layer * slots + s) * groups + g].fitted()) return false;
    }
  }
  return true;
}

bool CodebookSet::complete() const {
  if (keys_.empty()) return false;
  for (const ResidualQuantizer& q : refinements_) {
    if (!q.fitted()) return false;
  }
  for (int l = 0; l < config_.layout.layers; ++l) {
    if (!layer_complete(l)) return false;
  }
  return true;
}

namespace {

// Streams the canonical content (header + body, no trailer) into sink.
template <typename Sink>
void WriteContent(const CodebookSet& set, Sink& sink) {
  const CodebookConfig& c = set.config();
  const uint16_t version = Version(set);
  uint8_t header[kMaxHeaderBytes];
  EncodeHeader(set, version,
               BodyBytes(c, set.key_group_dims()) +
                   (set.has_key_gains() ? KeyGainBytes(c) : 0) +
                   RefinementBytes(set),
               header);
  sink.Append(header, HeaderBytes(version));
  const int groups = static_cast<int>(set.key_group_dims().size());
  for (int l = 0; l < c.layout.layers; ++l) {
    for (int s = 0; s < c.slots_per_layer(); ++s) {
      for (int g = 0; g < groups; ++g) {
        const std::vector<float>& cb = set.key(l, s, g).codebooks();
        sink.Append(cb.data(), cb.size() * sizeof(float));
      }
      const std::vector<float>& cb = set.value(l, s).codebooks();
      sink.Append(cb.data(), cb.size() * sizeof(float));
    }
  }
  if (set.has_key_gains()) {
    for (int l = 0; l < c.layout.layers; ++l) {
      for (int h = 0; h < c.layout.kv_heads; ++h) {
        const float gain = set.key_gain(l, h);
        sink.Append(&gain, sizeof(gain));
        sink.Append(set.key_centre(l, h), sizeof(float) * c.layout.head_dim);
      }
    }
  }
  for (int l : set.refined_layers()) {
    const uint32_t layer = static_cast<uint32_t>(l);
    sink.Append(&layer, sizeof(layer));
  }
  for (int l : set.refined_layers()) {
    for (int s = 0; s < c.slots_per_layer(); ++s) {
      const std::vector<float>& cb = set.key_refinement(l, s).codebooks();
      sink.Append(cb.data(), cb.size() * sizeof(float));
    }
  }
}

}  // namespace

absl::StatusOr<uint64_t> CodebookSet::Hash() const {
  if (!complete()) {
    return absl::FailedPreconditionError(
        "codebook set hash needs every quantizer fitted");
  }
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  HashSink sink{state};
  WriteContent(*this, sink);
  const uint64_t h = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return h;
}

absl::StatusOr<std::string> CodebookSet::Serialize() const {
  if (!complete()) {
    return absl::FailedPreconditionError(
        "codebook set serialize needs every quantizer fitted");
  }
  std::string out;
  out.reserve(kMaxHeaderBytes + BodyBytes(config_, key_group_dims_) +
              (has_key_gains() ? KeyGainBytes(config_) : 0) +
              RefinementBytes(*this) + kTrailerBytes);
  StringSink sink{&out};
  WriteContent(*this, sink);
  const uint64_t h = XXH3_64bits(out.data(), out.size());
  out.append(reinterpret_cast<const char*>(&h), sizeof(h));
  return out;
}

absl::StatusOr<CodebookSet> CodebookSet::Deserialize(std::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  if (bytes.size() < 4) {
    return absl::DataLossError(absl::StrCat(
        "codebook file truncated: ", bytes.size(), " bytes, no magic"));
  }
  if (Get<uint32_t>(p, 0) != kCodebookMagic) {
    return absl::InvalidArgumentError("not a codebook file (wrong magic)");
  }
  if (bytes.size() < kHeaderBytes + kTrailerBytes) {
    return absl::DataLossError(
        absl::StrCat("codebook file truncated: ", bytes.size(),
                     " bytes, header needs ", kHeaderBytes + kTrailerBytes));
  }
  const uint16_t version = Get<uint16_t>(p, 4);
  if (version < 1 || version > kCodebookFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("codebook file format version ", version,
                     " is not supported (this build reads versions 1 to ",
                     kCodebookFormatVersion, ")"));
  }
  const size_t header_bytes = HeaderBytes(version);
  const uint64_t body = Get<uint64_t>(p, 48);
  if (Get<uint16_t>(p, 6) != header_bytes ||
      bytes.size() < header_bytes + kTrailerBytes ||
      body > bytes.size() - header_bytes - kTrailerBytes ||
      bytes.size() != header_bytes + body + kTrailerBytes) {
    return absl::DataLossError(absl::StrCat(
        "codebook file size ", bytes.size(), " does not match its header (",
        header_bytes, " + ", body, " + ", kTrailerBytes, " bytes)"));
  }
  const size_t content = header_bytes + body;
  const uint64_t stored = Get<uint64_t>(p, content);
  const uint64_t actual = XXH3_64bits(p, content);
  if (stored != actual) {
    return absl::DataLossError(
        absl::StrCat("codebook file hash mismatch: stored ",
                     absl::Hex(stored, absl::kZeroPad16), ", content ",
                     absl::Hex(actual, absl::kZeroPad16)));
  }

  CodebookConfig c;
  c.layout.layers = static_cast<int>(Get<uint32_t>(p, 8));
  c.layout.kv_heads = static_cast<int>(Get<uint32_t>(p, 12));
  c.layout.head_dim = static_cast<int>(Get<uint32_t>(p, 16));
  c.key_split = static_cast<KeySplit>(Get<uint8_t>(p, 20));
  const int groups = Get<uint8_t>(p, 21);
  c.per_head = Get<uint8_t>(p, 22) != 0;
  c.keys_post_rope = Get<uint8_t>(p, 23) != 0;
  c.key_bits = static_cast<int>(Get<uint32_t>(p, 24));
  c.value_stages = static_cast<int>(Get<uint32_t>(p, 28));
  c.value_bits = static_cast<int>(Get<uint32_t>(p, 32));
  if (groups >= 1) c.key_group_stages.push_back(Get<uint32_t>(p, 36));
  if (groups >= 2) c.key_group_stages.push_back(Get<uint32_t>(p, 40));
  if (groups < 1 || groups > 2 || Get<uint8_t>(p, 22) > 1 ||
      Get<uint8_t>(p, 23) > 1) {
    return absl::DataLossError("codebook file header has invalid flags");
  }
  // Reserved fields, and the second group's stages of a one-group set, are
  // zero: one set has one encoding, hence one content hash (found by
  // tests/fuzz/codebook_set_fuzzer: nonzero reserved bytes gave the same
  // codebooks a second hash).
  if ((version < 4 && (Get<uint32_t>(p, kRopeDimsOffset) != 0 ||
                       Get<uint64_t>(p, kRopeThetaOffset) != 0)) ||
      (groups == 1 && Get<uint32_t>(p, 40) != 0)) {
    return absl::DataLossError(
        "codebook file header has a nonzero reserved field");
  }
  if (absl::Status st = c.Validate(); !st.ok()) {
    return absl::DataLossError(
        absl::StrCat("codebook file header does not parse: ", st.message()));
  }
  // Checked before allocating anything the header sizes; the estimate in
  // double guards the integer product against overflow.
  const std::vector<std::vector<int>> dims0 =
      *KeyGroupDims(c.key_split, c.layout.head_dim);
  const double estimate =
      4.0 * c.layout.layers * c.slots_per_layer() *
      (double(c.key_stages()) * std::ldexp(1.0, c.key_bits) *
           c.layout.head_dim +
       double(c.value_stages) * std::ldexp(1.0, c.value_bits) *
           c.layout.head_dim);
  std::optional<RopeSpec> rope;
  bool has_gains = version == 3;
  uint32_t refine_stages = 0, refined_layers = 0;
  if (version >= 4) {
    RopeSpec r;
    r.rot_dims = static_cast<int>(Get<uint32_t>(p, kRopeDimsOffset));
    r.theta = std::bit_cast<double>(Get<uint64_t>(p, kRopeThetaOffset));
    r.pairs = static_cast<RopePairs>(Get<uint8_t>(p, kRopePairsOffset));
    const uint8_t gains_flag = Get<uint8_t>(p, kHasKeyGainsOffset);
    if (version == 5) {
      refine_stages = Get<uint32_t>(p, kRefineStagesOffset);
      refined_layers = Get<uint32_t>(p, kRefinedLayersOffset);
    }
    bool reserved_zero = true;
    for (size_t i = kHasKeyGainsOffset + 1; i < kHeaderBytesV2; ++i) {
      const bool v5_field = version == 5 && i >= kRefineStagesOffset &&
                            i < kRefinedLayersOffset + 4;
      if (!v5_field && p[i] != 0) reserved_zero = false;
    }
    // Version 5 may have no key RoPE: then its fields are zero.
    const bool has_rope = version == 4 || r.rot_dims != 0 || r.theta != 0 ||
                          Get<uint8_t>(p, kRopePairsOffset) != 0;
    if ((has_rope && c.keys_post_rope) || gains_flag > 1 || !reserved_zero) {
      return absl::DataLossError(
          "codebook file key RoPE on post-RoPE keys, or nonzero reserved "
          "bytes");
    }
    if (version == 5 &&
        (refine_stages < 1 || refine_stages > 4096 || refined_layers < 1 ||
         refined_layers > static_cast<uint32_t>(c.layout.layers))) {
      return absl::DataLossError(absl::StrCat(
          "codebook file key refinement of ", refine_stages, " stages on ",
          refined_layers, " layers (need 1..4096 stages, 1..", c.layout.layers,
          " layers)"));
    }
    if (has_rope) {
      if (absl::Status st = r.Validate(c.layout.head_dim); !st.ok()) {
        return absl::DataLossError(
            absl::StrCat("codebook file key RoPE: ", st.message()));
      }
      rope = r;
    }
    has_gains = gains_flag == 1;
  }
  const uint64_t gain_bytes = has_gains ? KeyGainBytes(c) : 0;
  const uint64_t refine_bytes =
      RefinementBytes(c, refined_layers, refine_stages);
  if (estimate > 0x1p62 ||
      4.0 * refined_layers * c.slots_per_layer() * refine_stages *
              std::ldexp(1.0, c.key_bits) * c.layout.head_dim >
          0x1p62 ||
      BodyBytes(c, dims0) + gain_bytes + refine_bytes != body) {
    return absl::DataLossError(
        "codebook file body size does not match its config");
  }
  absl::StatusOr<CodebookSet> set = Create(c);
  if (!set.ok()) return absl::DataLossError(set.status().message());
  // Versions 3 and 4 may have no identity: then every identity byte is
  // zero.
  const size_t identity_end = version >= 4 ? kIdentityEndV4 : kHeaderBytesV2;
  bool has_identity = version == 2;
  if (version >= 3) {
    for (size_t i = kFingerprintOffset; i < identity_end; ++i) {
      if (p[i] != 0) has_identity = true;
    }
  }
  if (has_identity) {
    ModelIdentity id;
    id.layout = c.layout;
    id.fingerprint = Get<uint64_t>(p, kFingerprintOffset);
    const size_t arch_bytes = Get<uint8_t>(p, kArchitectureBytesOffset);
    // Every other identity byte is zero, so one identity has one encoding
    // (and one hash).
    bool canonical = arch_bytes <= size_t{kMaxArchitectureBytes};
    for (size_t i = kArchitectureBytesOffset + 1; i < identity_end; ++i) {
      const bool in_name =
          i >= kArchitectureOffset && i < kArchitectureOffset + arch_bytes;
      if (!in_name && p[i] != 0) canonical = false;
    }
    if (!canonical) {
      return absl::DataLossError(
          "codebook file model identity has nonzero padding or an "
          "architecture over 32 bytes");
    }
    id.architecture.assign(
        reinterpret_cast<const char*>(p + kArchitectureOffset), arch_bytes);
    if (absl::Status st = set->SetIdentity(std::move(id)); !st.ok()) {
      return absl::DataLossError(absl::StrCat(
          "codebook file model identity does not parse: ", st.message()));
    }
  }

  const uint8_t* at = p + header_bytes;
  auto take = [&at](size_t floats) {
    std::vector<float> v(floats);
    std::memcpy(v.data(), at, floats * sizeof(float));
    at += floats * sizeof(float);
    return v;
  };
  const std::vector<std::vector<int>>& dims = set->key_group_dims_;
  for (int l = 0; l < c.layout.layers; ++l) {
    for (int s = 0; s < c.slots_per_layer(); ++s) {
      for (int g = 0; g < groups; ++g) {
        RvqParams rp;
        rp.dim = static_cast<int>(dims[g].size());
        rp.stages = c.key_group_stages[g];
        rp.bits = c.key_bits;
        absl::StatusOr<ResidualQuantizer> q = ResidualQuantizer::FromCodebooks(
            rp, take(size_t(rp.stages) * rp.K() * rp.dim));
        if (!q.ok()) return absl::DataLossError(q.status().message());
        if (absl::Status st = set->SetKey(l, s, g, *std::move(q)); !st.ok()) {
          return absl::DataLossError(st.message());
        }
      }
      RvqParams rp;
      rp.dim = c.layout.head_dim;
      rp.stages = c.value_stages;
      rp.bits = c.value_bits;
      absl::StatusOr<ResidualQuantizer> q = ResidualQuantizer::FromCodebooks(
          rp, take(size_t(rp.stages) * rp.K() * rp.dim));
      if (!q.ok()) return absl::DataLossError(q.status().message());
      if (absl::Status st = set->SetValue(l, s, *std::move(q)); !st.ok()) {
        return absl::DataLossError(st.message());
      }
    }
  }
  if (rope) {
    if (absl::Status st = set->SetKeyRope(*rope); !st.ok()) {
      return absl::DataLossError(st.message());
    }
  }
  if (has_gains) {
    const int D = c.layout.head_dim;
    for (int l = 0; l < c.layout.layers; ++l) {
      for (int h = 0; h < c.layout.kv_heads; ++h) {
        const std::vector<float> entry = take(1 + size_t(D));
        if (absl::Status st = set->SetKeyGain(
                l, h, entry[0],
                std::vector<float>(entry.begin() + 1, entry.end()));
            !st.ok()) {
          return absl::DataLossError(
              absl::StrCat("codebook file key gain: ", st.message()));
        }
      }
    }
  }
  if (refined_layers > 0) {
    std::vector<int> layers(refined_layers);
    for (uint32_t i = 0; i < refined_layers; ++i) {
      const uint32_t l = Get<uint32_t>(at, 4 * i);
      // Ascending, so one set has one encoding (and one hash).
      if (l >= static_cast<uint32_t>(c.layout.layers) ||
          (i > 0 && static_cast<int>(l) <= layers[i - 1])) {
        return absl::DataLossError(absl::StrCat(
            "codebook file refined layers are not ascending layers below ",
            c.layout.layers));
      }
      layers[i] = static_cast<int>(l);
    }
    at += 4 * size_t{refined_layers};
    for (int l : layers) {
      for (int s = 0; s < c.slots_per_layer(); ++s) {
        RvqParams rp;
        rp.dim = c.layout.head_dim;
        rp.stages = static_cast<int>(refine_stages);
        rp.bits = c.key_bits;
        absl::StatusOr<ResidualQuantizer> q = ResidualQuantizer::FromCodebooks(
            rp, take(size_t(rp.stages) * rp.K() * rp.dim));
        if (!q.ok()) return absl::DataLossError(q.status().message());
        if (absl::Status st = set->SetKeyRefinement(l, s, *std::move(q));
            !st.ok()) {
          return absl::DataLossError(st.message());
        }
      }
    }
  }
  return set;
}

absl::Status CodebookSet::Save(const std::string& path) const {
  VQKV_ASSIGN_OR_RETURN(const std::string bytes, Serialize());
  return base::WriteFileAtomically(path, bytes);
}

absl::StatusOr<CodebookSet> CodebookSet::Load(const std::string& path) {
  VQKV_ASSIGN_OR_RETURN(const std::string bytes, base::ReadFile(path));
  return Deserialize(bytes);
}

}  // namespace vqkv
