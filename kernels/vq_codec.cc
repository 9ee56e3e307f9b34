#include "kernels/vq_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "kernels/bitpack.h"

namespace vqkv {
namespace {

// Row r of codebook slot s in layer l is (token r / H, head r % H) when the
// heads share codebooks, (token r, head s) per head; its index in the
// [layer][token][kv_head] code arrays is (l*T + t)*H + h. Encode and Decode
// walk the codes in the same order through this one mapping.
int64_t SlotRowVectorIndex(bool per_head, int l, int s, int64_t tokens, int H,
                           int64_t r) {
  const int64_t t = per_head ? r : r / H;
  const int64_t h = per_head ? s : r % H;
  return (int64_t{l} * tokens + t) * H + h;
}

// Seed of one quantizer: distinct per (layer, slot, kind, group) so their
// k-means runs are independent, and a pure function of the fit seed.
uint64_t QuantizerSeed(uint64_t seed, int layer, int slot, int kind,
                       int group) {
  uint64_t h = seed ^ 0x6a09e667f3bcc909ULL;
  for (uint64_t v :
       {uint64_t(layer), uint64_t(slot), uint64_t(kind), uint64_t(group)}) {
    h = (h ^ v) * 0x100000001b3ULL;
    h ^= h >> 29;
  }
  return h;
}

RvqParams TrainParams(const VqConfig& c, int dim, int stages, int bits,
                      uint64_t seed) {
  RvqParams p;
  p.dim = dim;
  p.stages = stages;
  p.bits = bits;
  p.training = c.training;
  p.seed = seed;
  p.beam_width = c.beam_width;
  return p;
}

// Copies the vectors of one quantizer slot, restricted to `dims`, out of a
// [token][kv_head][head_dim] layer slice: all heads when slot < 0, else one.
void Gather(const float* layer, int64_t tokens, int kv_heads, int head_dim,
            int slot, const std::vector<int>& dims, float* out) {
  const int g = static_cast<int>(dims.size());
  const bool all_dims = g == head_dim;
  int64_t row = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int h = 0; h < kv_heads; ++h) {
      if (slot >= 0 && h != slot) continue;
      const float* v = layer + (t * kv_heads + h) * head_dim;
      float* o = out + row * g;
      if (all_dims) {
        std::memcpy(o, v, sizeof(float) * head_dim);
      } else {
        for (int d = 0; d < g; ++d) o[d] = v[dims[d]];
      }
      ++row;
    }
  }
}

// Inverse of Gather: writes rows back into their dims of the layer slice.
void Scatter(const float* in, int64_t tokens, int kv_heads, int head_dim,
             int slot, const std::vector<int>& dims, float* layer) {
  const int g = static_cast<int>(dims.size());
  int64_t row = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int h = 0; h < kv_heads; ++h) {
      if (slot >= 0 && h != slot) continue;
      float* v = layer + (t * kv_heads + h) * head_dim;
      const float* r = in + row * g;
      for (int d = 0; d < g; ++d) v[dims[d]] = r[d];
      ++row;
    }
  }
}

// One quantizer's share of a block: the layer, head slot and dimensions it
// codes, and where its stages sit among a vector's Nk key or Nv value codes.
struct QuantizerJob {
  const ResidualQuantizer* q;
  int layer;
  int slot;  // the head when per_head, else -1 (all heads)
  const std::vector<int>* dims;
  bool values;       // false: a key group
  int stage_offset;  // of q's first stage within the vector's codes
};

// Calls fn for every quantizer of `set` in layers [first_layer, end_layer)
// (end_layer -1: every layer), layer by layer, key groups before values,
// stopping at the first error. `all_dims` is 0..head_dim-1.
absl::Status ForEachQuantizer(
    const CodebookSet& set, const std::vector<int>& all_dims,
    const std::function<absl::Status(const QuantizerJob&)>& fn,
    int first_layer = 0, int end_layer = -1) {
  const CodebookConfig& c = set.config();
  const std::vector<std::vector<int>>& groups = set.key_group_dims();
  if (end_layer < 0) end_layer = c.layout.layers;
  for (int l = first_layer; l < end_layer; ++l) {
    for (int s = 0; s < c.slots_per_layer(); ++s) {
      const int slot = c.per_head ? s : -1;
      int stage_offset = 0;
      for (size_t g = 0; g < groups.size(); ++g) {
        const ResidualQuantizer& q = set.key(l, s, static_cast<int>(g));
        VQKV_RETURN_IF_ERROR(
            fn({&q, l, slot, &groups[g], /*values=*/false, stage_offset}));
        stage_offset += q.stages();
      }
      VQKV_RETURN_IF_ERROR(
          fn({&set.value(l, s), l, slot, &all_dims, /*values=*/true, 0}));
    }
  }
  return absl::OkStatus();
}

// Index of row r of a job's gathered rows among the block's vectors
// ([layer][token][head]).
int64_t JobRowVectorIndex(const QuantizerJob& j, int64_t tokens, int H,
                          int64_t r) {
  return SlotRowVectorIndex(j.slot >= 0, j.layer, std::max(j.slot, 0), tokens,
                            H, r);
}

}  // namespace

VqRate ComputeVqRate(int key_stages, int key_bits, int value_stages,
                     int value_bits, int head_dim) {
  VqRate r;
  const double kb = double(key_stages) * key_bits;
  const double vb = double(value_stages) * value_bits;
  r.key_bits_per_element = kb / head_dim;
  r.value_bits_per_element = vb / head_dim;
  r.bits_per_element = (kb + vb) / (2.0 * head_dim);
  r.compression_ratio = 1.0 - (kb + vb) / (16.0 * (2.0 * head_dim));
  return r;
}

absl::StatusOr<CodebookConfig> VqCodec::ResolveConfig(const KvLayout& layout,
                                                      const VqConfig& config) {
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  const int D = layout.head_dim;
  absl::StatusOr<std::vector<std::vector<int>>> groups =
      KeyGroupDims(config.key_split, D);
  if (!groups.ok()) return groups.status();
  if (config.beam_width < 1 || config.beam_width > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("beam_width must be in 1..4096, got ", config.beam_width));
  }
  CodebookConfig c;
  c.layout = layout;
  c.key_split = config.key_split;
  c.key_bits = config.key_bits;
  c.value_bits = config.value_bits;
  c.per_head = config.per_head;
  c.keys_post_rope = config.keys_post_rope;
  const int key_stages =
      config.key_stages != 0 ? config.key_stages : D * 56 / 128;
  c.value_stages =
      config.value_stages != 0 ? config.value_stages : D * 16 / 128;
  if (groups->size() == 1) {
    c.key_group_stages = {key_stages};
  } else if (config.key_group_stages[0] == 0 &&
             config.key_group_stages[1] == 0) {
    // Proportional to each group's dimensions, so bits/element is unchanged.
    const int s0 = static_cast<int>(
        std::lround(double(key_stages) * (*groups)[0].size() / double(D)));
    c.key_group_stages = {s0, key_stages - s0};
  } else {
    c.key_group_stages = {config.key_group_stages[0],
                          config.key_group_stages[1]};
    if (config.key_stages != 0 && config.key_stages != c.key_stages()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "key_stages ", config.key_stages,
          " disagrees with the key group stages ", config.key_group_stages[0],
          "+", config.key_group_stages[1]));
    }
  }
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

absl::StatusOr<std::unique_ptr<VqCodec>> VqCodec::Create(
    const KvLayout& layout, const VqConfig& config) {
  absl::StatusOr<CodebookConfig> cc = ResolveConfig(layout, config);
  if (!cc.ok()) return cc.status();
  RvqParams probe = TrainParams(config, 1, 1, 1, 0);
  if (absl::Status s = probe.Validate(); !s.ok()) return s;
  absl::StatusOr<CodebookSet> set = CodebookSet::Create(*cc);
  if (!set.ok()) return set.status();
  std::unique_ptr<VqCodec> codec(new VqCodec());
  codec->layout_ = layout;
  codec->config_ = config;
  codec->config_.key_stages = cc->key_stages();
  codec->config_.value_stages = cc->value_stages;
  if (cc->key_group_stages.size() == 2) {
    codec->config_.key_group_stages[0] = cc->key_group_stages[0];
    codec->config_.key_group_stages[1] = cc->key_group_stages[1];
  }
  codec->set_ = *std::move(set);
  VQKV_RETURN_IF_ERROR(codec->InitSketch());
  return codec;
}

absl::StatusOr<std::unique_ptr<VqCodec>> VqCodec::FromCodebookSet(
    CodebookSet set, int beam_width, int key_sketch_bits,
    int key_sketch_first_layer) {
  if (!set.complete()) {
    return absl::FailedPreconditionError(
        "VqCodec needs a complete codebook set");
  }
  if (beam_width < 1 || beam_width > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("beam_width must be in 1..4096, got ", beam_width));
  }
  const CodebookConfig& cc = set.config();
  std::unique_ptr<VqCodec> codec(new VqCodec());
  codec->layout_ = cc.layout;
  VqConfig& c = codec->config_;
  c.key_stages = cc.key_stages();
  c.key_bits = cc.key_bits;
  c.value_stages = cc.value_stages;
  c.value_bits = cc.value_bits;
  c.key_split = cc.key_split;
  if (cc.key_group_stages.size() == 2) {
    c.key_group_stages[0] = cc.key_group_stages[0];
    c.key_group_stages[1] = cc.key_group_stages[1];
  }
  c.per_head = cc.per_head;
  c.keys_post_rope = cc.keys_post_rope;
  c.beam_width = beam_width;
  c.key_sketch_bits = key_sketch_bits;
  c.key_sketch_first_layer = key_sketch_first_layer;
  codec->set_ = std::move(set);
  VQKV_RETURN_IF_ERROR(codec->InitSketch());
  if (absl::Status s = codec->Finalize(); !s.ok()) return s;
  return codec;
}

absl::Status VqCodec::InitSketch() {
  const int first = config_.key_sketch_first_layer;
  if (first != 0 &&
      (config_.key_sketch_bits == 0 || first < 0 || first >= layout_.layers)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key_sketch_first_layer must be in 0..", layout_.layers - 1,
        " with a key sketch and 0 without one; got ", first, " with ",
        config_.key_sketch_bits, " sketch bits"));
  }
  if (config_.key_sketch_bits == 0) return absl::OkStatus();
  absl::StatusOr<SignSketch> s =
      SignSketch::Create(layout_.head_dim, config_.key_sketch_bits);
  if (!s.ok()) return s.status();
  sketch_ = *std::move(s);
  return absl::OkStatus();
}

absl::Status VqCodec::Finalize() {
  absl::StatusOr<uint64_t> h = set_.Hash();
  if (!h.ok()) return h.status();
  hash_ = *h;
  fitted_ = true;
  return absl::OkStatus();
}

std::string VqCodec::Descriptor() const {
  const CodebookConfig& c = set_.config();
  return absl::StrCat(
      "vq:L=", layout_.layers, ":H=", layout_.kv_heads, ":D=", layout_.head_dim,
      ":k=", absl::StrJoin(c.key_group_stages, "+"), "x", c.key_bits,
      ":split=", KeySplitName(c.key_split), ":v=", c.value_stages, "x",
      c.value_bits, ":ph=", c.per_head ? 1 : 0,
      ":rope=", c.keys_post_rope ? "post" : "pre",
      ":cb=", absl::Hex(hash_, absl::kZeroPad16),
      sketch_ ? absl::StrCat(":ks=", sketch_->bits()) : "",
      KeySketchFirstLayer() != 0 ? absl::StrCat("@", KeySketchFirstLayer())
                                 : "",
      set_.has_key_refinement()
          ? absl::StrCat(":kr=", set_.key_refine_stages(), "@",
                         absl::StrJoin(set_.refined_layers(), "+"))
          : "");
}

int64_t VqCodec::RefinedVectors(int64_t tokens) const {
  return tokens * static_cast<int64_t>(set_.refined_layers().size()) *
         layout_.kv_heads;
}

std::pair<int, int> VqCodec::RefinedRange(int first_layer,
                                          int num_layers) const {
  const std::vector<int>& r = set_.refined_layers();
  const auto lo = std::lower_bound(r.begin(), r.end(), first_layer);
  const auto hi = std::lower_bound(lo, r.end(), first_layer + num_layers);
  return {static_cast<int>(lo - r.begin()), static_cast<int>(hi - r.begin())};
}

int64_t VqCodec::SketchedVectors(int64_t tokens) const {
  if (!sketch_) return 0;
  return tokens * (layout_.layers - KeySketchFirstLayer()) * layout_.kv_heads;
}

double VqCodec::KeyBitsPerElement() const {
  // Averaged over the layers: those below the first sketched one have none.
  const double sketch = sketch_ ? 8.0 * sketch_->BytesPerVector() *
                                      (layout_.layers - KeySketchFirstLayer()) /
                                      layout_.layers
                                : 0;
  // Refinement stages too: only the refined layers have them.
  const double refine = double(set_.key_refine_stages()) *
                        set_.config().key_bits * set_.refined_layers().size() /
                        layout_.layers;
  return (double(set_.config().key_stages()) * set_.config().key_bits + sketch +
          refine) /
         layout_.head_dim;
}

double VqCodec::ValueBitsPerElement() const {
  return double(set_.config().value_stages) * set_.config().value_bits /
         layout_.head_dim;
}

size_t VqCodec::EncodedBytes(int64_t tokens) const {
  if (tokens <= 0 || tokens > kMaxCodecTokens) return 0;
  const CodebookConfig& c = set_.config();
  const int64_t vectors = tokens * layout_.layers * layout_.kv_heads;
  return PackedBytes(vectors * c.key_stages(), c.key_bits) +
         PackedBytes(vectors * c.value_stages, c.value_bits) +
         (sketch_ ? static_cast<size_t>(SketchedVectors(tokens)) *
                        sketch_->BytesPerVector()
                  : 0) +
         PackedBytes(RefinedVectors(tokens) * set_.key_refine_stages(),
                     c.key_bits);
}

absl::Status VqCodec::Fit(const float* keys, const float* values,
                          int64_t tokens, const FitOptions& options) {
  if (keys == nullptr || values == nullptr || tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "VqCodec::Fit needs non-null keys/values and tokens >= 1, got ", tokens,
        " tokens"));
  }
  const int64_t per_layer = tokens * layout_.kv_heads * layout_.head_dim;
  for (int l = 0; l < layout_.layers; ++l) {
    FitOptions layer_options = options;
    if (options.progress) {
      layer_options.progress = [&, l](const FitProgress& p) {
        options.progress(FitProgress{p.phase, int64_t{l} * p.total + p.done,
                                     int64_t{layout_.layers} * p.total});
      };
    }
    if (absl::Status s =
            FitLayer(l, keys + l * per_layer, values + l * per_layer, tokens,
                     layer_options);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status VqCodec::FitLayer(int layer, const float* keys,
                               const float* values, int64_t tokens,
                               const FitOptions& options) {
  if (layer < 0 || layer >= layout_.layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " out of range 0..", layout_.layers - 1));
  }
  if (keys == nullptr || values == nullptr || tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "VqCodec::FitLayer needs non-null keys/values and tokens >= 1, got ",
        tokens, " tokens"));
  }
  if (set_.RefinedIndex(layer) >= 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer,
        " has a key refinement fitted on its old codes: refit a layer "
        "before its refinement"));
  }
  batch_encoder_ = nullptr;  // it may hold copies of the old codebooks
  const CodebookConfig& c = set_.config();
  const int H = layout_.kv_heads, D = layout_.head_dim;
  const int slots = c.slots_per_layer();
  const int64_t rows = c.per_head ? tokens : tokens * H;
  const std::vector<std::vector<int>>& groups = set_.key_group_dims();
  std::vector<int> all_dims(D);
  for (int d = 0; d < D; ++d) all_dims[d] = d;

  // Progress in stages fitted within this layer.
  const int64_t total = int64_t{slots} * (c.key_stages() + c.value_stages);
  int64_t done = 0;
  auto report = [&](const std::string& what, int stages) {
    return [&, what, stages](const FitProgress& p) {
      if (!options.progress) return;
      options.progress(FitProgress{absl::StrCat("layer ", layer, " ", what,
                                                " stage ", p.done, "/", stages),
                                   done + p.done, total});
    };
  };

  std::vector<float> buf;
  for (int s = 0; s < slots; ++s) {
    const int slot = c.per_head ? s : -1;
    for (size_t g = 0; g < groups.size(); ++g) {
      const int dim = static_cast<int>(groups[g].size());
      buf.resize(static_cast<size_t>(rows) * dim);
      Gather(keys, tokens, H, D, slot, groups[g], buf.data());
      const RvqParams p =
          TrainParams(config_, dim, c.key_group_stages[g], c.key_bits,
                      QuantizerSeed(options.seed, layer, s, 0, int(g)));
      ResidualQuantizer q;
      const std::string what = c.per_head
                                   ? absl::StrCat("head ", s, " keys[", g, "]")
                                   : absl::StrCat("keys[", g, "]");
      if (absl::Status st = q.Fit(p, buf.data(), rows, report(what, p.stages));
          !st.ok()) {
        return st;
      }
      done += p.stages;
      if (absl::Status st = set_.SetKey(layer, s, int(g), std::move(q));
          !st.ok()) {
        return st;
      }
    }
    buf.resize(static_cast<size_t>(rows) * D);
    Gather(values, tokens, H, D, slot, all_dims, buf.data());
    const RvqParams p =
        TrainParams(config_, D, c.value_stages, c.value_bits,
                    QuantizerSeed(options.seed, layer, s, 1, 0));
    ResidualQuantizer q;
    const std::string what =
        c.per_head ? absl::StrCat("head ", s, " values") : "values";
    if (absl::Status st = q.Fit(p, buf.data(), rows, report(what, p.stages));
        !st.ok()) {
      return st;
    }
    done += p.stages;
    if (absl::Status st = set_.SetValue(layer, s, std::move(q)); !st.ok()) {
      return st;
    }
  }
  if (set_.complete()) return Finalize();
  return absl::OkStatus();
}

absl::Status VqCodec::Encode(const float* keys, const float* values,
                             int64_t tokens, uint8_t* out,
                             size_t out_bytes) const {
  const EncodeRequest request{keys, values, tokens, out, out_bytes};
  return EncodeMany(absl::MakeConstSpan(&request, 1));
}

absl::Status VqCodec::EncodeMany(
    absl::Span<const EncodeRequest> requests) const {
  if (!fitted_) {
    return absl::FailedPreconditionError(
        "VqCodec::Encode before every layer was fitted");
  }
  for (const EncodeRequest& r : requests) {
    if (r.keys == nullptr || r.values == nullptr || r.out == nullptr ||
        r.tokens < 1 || r.tokens > kMaxCodecTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("VqCodec::Encode needs non-null buffers and 1..",
                       kMaxCodecTokens, " tokens, got ", r.tokens));
    }
    const size_t need = EncodedBytes(r.tokens);
    if (r.out_bytes < need) {
      return absl::InvalidArgumentError(
          absl::StrCat("VqCodec::Encode output too small: ", r.out_bytes,
                       " bytes for ", need));
    }
  }
  const CodebookConfig& c = set_.config();
  const int L = layout_.layers, H = layout_.kv_heads, D = layout_.head_dim;
  const int Nk = c.key_stages(), Nv = c.value_stages;
  std::vector<int> all_dims(D);
  for (int d = 0; d < D; ++d) all_dims[d] = d;

  // Gather every request's rows for every quantizer, encode them all (at
  // once through the batch encoder, else one job at a time), then place
  // each request's codes and pack its payload.
  std::vector<QuantizerJob> jobs;
  VQKV_RETURN_IF_ERROR(ForEachQuantizer(
      set_, all_dims, [&](const QuantizerJob& j) -> absl::Status {
        jobs.push_back(j);
        return absl::OkStatus();
      }));
  const size_t count = requests.size() * jobs.size();
  std::vector<std::vector<float>> inputs(count);
  std::vector<std::vector<uint16_t>> job_codes(count);
  std::vector<RvqBatchEncoder::Job> batch;
  batch.reserve(count);
  for (size_t r = 0; r < requests.size(); ++r) {
    const EncodeRequest& req = requests[r];
    const int64_t rows = c.per_head ? req.tokens : req.tokens * H;
    const int64_t per_layer = req.tokens * H * D;
    for (size_t i = 0; i < jobs.size(); ++i) {
      const QuantizerJob& j = jobs[i];
      const size_t slot = r * jobs.size() + i;
      inputs[slot].resize(static_cast<size_t>(rows) * j.q->dim());
      job_codes[slot].resize(static_cast<size_t>(rows) * j.q->stages());
      Gather((j.values ? req.values : req.keys) + j.layer * per_layer,
             req.tokens, H, D, j.slot, *j.dims, inputs[slot].data());
      batch.push_back({j.q, inputs[slot].data(), rows, job_codes[slot].data()});
    }
  }
  VQKV_RETURN_IF_ERROR(RunEncodeJobs(batch));
  inputs.clear();

  for (size_t r = 0; r < requests.size(); ++r) {
    const int64_t tokens = requests[r].tokens;
    const float* keys = requests[r].keys;
    uint8_t* out = requests[r].out;
    const int64_t rows = c.per_head ? tokens : tokens * H;
    const int64_t vectors = int64_t{L} * tokens * H;
    std::vector<uint16_t> kcodes(static_cast<size_t>(vectors) * Nk);
    std::vector<uint16_t> vcodes(static_cast<size_t>(vectors) * Nv);
    for (size_t i = 0; i < jobs.size(); ++i) {
      const QuantizerJob& j = jobs[i];
      const uint16_t* codes = job_codes[r * jobs.size() + i].data();
      const int S = j.q->stages(), stride = j.values ? Nv : Nk;
      uint16_t* all_codes = j.values ? vcodes.data() : kcodes.data();
      for (int64_t row = 0; row < rows; ++row) {
        std::memcpy(all_codes + JobRowVectorIndex(j, tokens, H, row) * stride +
                        j.stage_offset,
                    codes + row * S, sizeof(uint16_t) * S);
      }
    }
    const size_t kbytes = PackedBytes(vectors * Nk, c.key_bits);
    const size_t vbytes = PackedBytes(vectors * Nv, c.value_bits);
    VQKV_RETURN_IF_ERROR(
        PackBits(kcodes.data(), vectors * Nk, c.key_bits, out, kbytes));
    VQKV_RETURN_IF_ERROR(PackBits(vcodes.data(), vectors * Nv, c.value_bits,
                                  out + kbytes, vbytes));
    const size_t sbytes =
        sketch_ ? SketchedVectors(tokens) * sketch_->BytesPerVector() : 0;
    std::vector<uint16_t> rcodes;
    if (set_.has_key_refinement()) {
      VQKV_RETURN_IF_ERROR(
          EncodeKeyRefinement(keys, tokens, kcodes.data(), &rcodes));
      const int64_t n = static_cast<int64_t>(rcodes.size());
      VQKV_RETURN_IF_ERROR(PackBits(rcodes.data(), n, c.key_bits,
                                    out + kbytes + vbytes + sbytes,
                                    PackedBytes(n, c.key_bits)));
    }
    if (!sketch_) continue;
    // The sketch codes what the key codes (and refinement) leave: keys minus
    // their reconstruction, exactly as Decode will rebuild it, for the
    // sketched layers only.
    const int first = KeySketchFirstLayer();
    const int64_t sketched = SketchedVectors(tokens);
    const int64_t skipped = vectors - sketched;
    std::vector<float> residual(static_cast<size_t>(sketched) * D);
    VQKV_RETURN_IF_ERROR(Reconstruct(kcodes.data() + skipped * Nk, nullptr,
                                     tokens, residual.data(), nullptr, first,
                                     L - first));
    if (!rcodes.empty()) {
      const int from = RefinedRange(first, L - first).first;
      VQKV_RETURN_IF_ERROR(AddKeyRefinement(
          rcodes.data() + from * tokens * H * set_.key_refine_stages(), tokens,
          first, L - first, residual.data()));
    }
    const float* sketched_keys = keys + skipped * D;
    for (size_t i = 0; i < residual.size(); ++i) {
      residual[i] = sketched_keys[i] - residual[i];
    }
    sketch_->Encode(residual.data(), sketched, out + kbytes + vbytes);
  }
  return absl::OkStatus();
}

absl::Status VqCodec::RunEncodeJobs(
    absl::Span<const RvqBatchEncoder::Job> jobs) const {
  if (batch_encoder_ != nullptr && config_.beam_width == 1) {
    return batch_encoder_->EncodeGreedy(jobs);
  }
  for (const RvqBatchEncoder::Job& b : jobs) {
    VQKV_RETURN_IF_ERROR(
        b.q->EncodeBeam(b.x, b.n, config_.beam_width, b.codes));
  }
  return absl::OkStatus();
}

absl::Status VqCodec::EncodeKeyRefinement(const float* keys, int64_t tokens,
                                          const uint16_t* kcodes,
                                          std::vector<uint16_t>* rcodes) const {
  const CodebookConfig& c = set_.config();
  const int H = layout_.kv_heads, D = layout_.head_dim;
  const int Nk = c.key_stages(), R = set_.key_refine_stages();
  const int slots = c.slots_per_layer();
  const int64_t rows = c.per_head ? tokens : tokens * H;
  const int64_t layer_vectors = tokens * H;
  const std::vector<int>& refined = set_.refined_layers();
  std::vector<int> all_dims(D);
  for (int d = 0; d < D; ++d) all_dims[d] = d;
  rcodes->assign(static_cast<size_t>(RefinedVectors(tokens)) * R, 0);
  // The residual each refinement codes: keys minus what the layer's key
  // codes decode to (before any gain), as Decode rebuilds it.
  std::vector<float> residual(static_cast<size_t>(refined.size()) *
                              layer_vectors * D);
  for (size_t i = 0; i < refined.size(); ++i) {
    const int l = refined[i];
    float* r = residual.data() + i * layer_vectors * D;
    VQKV_RETURN_IF_ERROR(Reconstruct(kcodes + l * layer_vectors * Nk, nullptr,
                                     tokens, r, nullptr, l, 1));
    const float* k = keys + l * layer_vectors * D;
    for (int64_t e = 0; e < layer_vectors * D; ++e) r[e] = k[e] - r[e];
  }
  const size_t jobs = refined.size() * slots;
  std::vector<std::vector<float>> inputs(jobs);
  std::vector<std::vector<uint16_t>> codes(jobs);
  std::vector<RvqBatchEncoder::Job> batch;
  batch.reserve(jobs);
  for (size_t i = 0; i < refined.size(); ++i) {
    for (int s = 0; s < slots; ++s) {
      const size_t j = i * slots + s;
      inputs[j].resize(static_cast<size_t>(rows) * D);
      codes[j].resize(static_cast<size_t>(rows) * R);
      Gather(residual.data() + i * layer_vectors * D, tokens, H, D,
             c.per_head ? s : -1, all_dims, inputs[j].data());
      batch.push_back({&set_.key_refinement(refined[i], s), inputs[j].data(),
                       rows, codes[j].data()});
    }
  }
  VQKV_RETURN_IF_ERROR(RunEncodeJobs(batch));
  // Refined layer i's codes sit where layer i's would in a [layer][token]
  // [kv_head] array.
  for (size_t i = 0; i < refined.size(); ++i) {
    for (int s = 0; s < slots; ++s) {
      const uint16_t* from = codes[i * slots + s].data();
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t v = SlotRowVectorIndex(c.per_head, static_cast<int>(i), s,
                                             tokens, H, row);
        std::memcpy(rcodes->data() + v * R, from + row * R,
                    sizeof(uint16_t) * R);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status VqCodec::AddKeyRefinement(const uint16_t* rcodes, int64_t tokens,
                                       int first_layer, int num_layers,
                                       float* keys) const {
  const CodebookConfig& c = set_.config();
  const int H = layout_.kv_heads, D = layout_.head_dim;
  const int R = set_.key_refine_stages();
  const int64_t rows = c.per_head ? tokens : tokens * H;
  const auto [lo, hi] = RefinedRange(first_layer, num_layers);
  std::vector<uint16_t> codes(static_cast<size_t>(rows) * R);
  std::vector<float> buf(static_cast<size_t>(rows) * D);
  for (int i = lo; i < hi; ++i) {
    const int l = set_.refined_layers()[i];
    for (int s = 0; s < c.slots_per_layer(); ++s) {
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t v =
            SlotRowVectorIndex(c.per_head, i - lo, s, tokens, H, row);
        std::memcpy(codes.data() + row * R, rcodes + v * R,
                    sizeof(uint16_t) * R);
      }
      VQKV_RETURN_IF_ERROR(
          set_.key_refinement(l, s).Decode(codes.data(), rows, buf.data()));
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t v =
            SlotRowVectorIndex(c.per_head, l - first_layer, s, tokens, H, row);
        float* k = keys + v * D;
        const float* add = buf.data() + row * D;
        for (int d = 0; d < D; ++d) k[d] += add[d];
      }
    }
  }
  return absl::OkStatus();
}

absl::Status VqCodec::Reconstruct(const uint16_t* kcodes,
                                  const uint16_t* vcodes, int64_t tokens,
                                  float* keys, float* values, int first_layer,
                                  int num_layers) const {
  const CodebookConfig& c = set_.config();
  const int H = layout_.kv_heads, D = layout_.head_dim;
  const int64_t rows = c.per_head ? tokens : tokens * H;
  const int Nk = c.key_stages(), Nv = c.value_stages;
  std::vector<int> all_dims(D);
  for (int d = 0; d < D; ++d) all_dims[d] = d;
  std::vector<float> buf;
  std::vector<uint16_t> codes;
  const int64_t per_layer = tokens * H * D;
  if (num_layers < 0) num_layers = layout_.layers - first_layer;
  // The codes and outputs start at first_layer's first vector.
  const int64_t first_vector = int64_t{first_layer} * tokens * H;
  return ForEachQuantizer(
      set_, all_dims,
      [&](const QuantizerJob& j) -> absl::Status {
        if (j.values && vcodes == nullptr) return absl::OkStatus();
        const int S = j.q->stages(), stride = j.values ? Nv : Nk;
        const uint16_t* all_codes = j.values ? vcodes : kcodes;
        codes.resize(static_cast<size_t>(rows) * S);
        buf.resize(static_cast<size_t>(rows) * j.q->dim());
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(
              codes.data() + r * S,
              all_codes +
                  (JobRowVectorIndex(j, tokens, H, r) - first_vector) * stride +
                  j.stage_offset,
              sizeof(uint16_t) * S);
        }
        VQKV_RETURN_IF_ERROR(j.q->Decode(codes.data(), rows, buf.data()));
        Scatter(
            buf.data(), tokens, H, D, j.slot, *j.dims,
            (j.values ? values : keys) + (j.layer - first_layer) * per_layer);
        return absl::OkStatus();
      },
      first_layer, first_layer + num_layers);
}

void VqCodec::ApplyKeyGains(int64_t tokens, int first_layer, int num_layers,
                            float* keys) const {
  if (!set_.has_key_gains()) return;
  const int H = layout_.kv_heads, D = layout_.head_dim;
  for (int l = 0; l < num_layers; ++l) {
    for (int h = 0; h < H; ++h) {
      const float g = set_.key_gain(first_layer + l, h);
      if (g == 1.0f) continue;
      const float* c = set_.key_centre(first_layer + l, h);
      for (int64_t t = 0; t < tokens; ++t) {
        float* k = keys + ((int64_t{l} * tokens + t) * H + h) * D;
        for (int d = 0; d < D; ++d) k[d] = c[d] + g * (k[d] - c[d]);
      }
    }
  }
}

absl::Status VqCodec::ReconstructLayerKeys(int layer, const float* keys,
                                           int64_t tokens, float* out) const {
  VQKV_RETURN_IF_ERROR(ReconstructLayerBaseKeys(layer, keys, tokens, out));
  if (set_.RefinedIndex(layer) < 0) return absl::OkStatus();
  const CodebookConfig& c = set_.config();
  const int H = layout_.kv_heads, D = layout_.head_dim;
  const int R = set_.key_refine_stages();
  const int64_t rows = c.per_head ? tokens : tokens * H;
  std::vector<int> all_dims(D);
  for (int d = 0; d < D; ++d) all_dims[d] = d;
  std::vector<float> residual(static_cast<size_t>(tokens) * H * D);
  for (size_t e = 0; e < residual.size(); ++e) residual[e] = keys[e] - out[e];
  std::vector<float> buf(static_cast<size_t>(rows) * D), dec(buf.size());
  std::vector<uint16_t> codes(static_cast<size_t>(rows) * R);
  for (int s = 0; s < c.slots_per_layer(); ++s) {
    const int slot = c.per_head ? s : -1;
    const ResidualQuantizer& q = set_.key_refinement(layer, s);
    Gather(residual.data(), tokens, H, D, slot, all_dims, buf.data());
    VQKV_RETURN_IF_ERROR(
        q.EncodeBeam(buf.data(), rows, config_.beam_width, codes.data()));
    VQKV_RETURN_IF_ERROR(q.Decode(codes.data(), rows, dec.data()));
    // out += the decoded residual, through the same row mapping.
    Gather(out, tokens, H, D, slot, all_dims, buf.data());
    for (size_t e = 0; e < buf.size(); ++e) buf[e] += dec[e];
    Scatter(buf.data(), tokens, H, D, slot, all_dims, out);
  }
  return absl::OkStatus();
}

absl::Status VqCodec::FitKeyRefinement(int layer, const float* keys,
                                       int64_t tokens, int stages,
                                       const FitOptions& options) {
  if (stages < 1 || stages > 4096 ||
      (set_.key_refine_stages() != 0 && stages != set_.key_refine_stages())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key refinement stages must be in 1..4096 and the same for every "
        "refined layer; got ",
        stages,
        set_.key_refine_stages() != 0
            ? absl::StrCat(" after ", set_.key_refine_stages())
            : ""));
  }
  if (set_.RefinedIndex(layer) >= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("layer ", layer, " already has a key refinement"));
  }
  const CodebookConfig& c = set_.config();
  const int H = layout_.kv_heads, D = layout_.head_dim;
  const int64_t rows = c.per_head ? tokens : tokens * H;
  std::vector<float> residual(
      static_cast<size_t>(std::max<int64_t>(tokens, 0)) * H * D);
  VQKV_RETURN_IF_ERROR(
      ReconstructLayerBaseKeys(layer, keys, tokens, residual.data()));
  for (size_t e = 0; e < residual.size(); ++e) {
    residual[e] = keys[e] - residual[e];
  }
  batch_encoder_ = nullptr;  // it may hold copies of the old codebooks
  std::vector<int> all_dims(D);
  for (int d = 0; d < D; ++d) all_dims[d] = d;
  std::vector<float> buf(static_cast<size_t>(rows) * D);
  const int slots = c.slots_per_layer();
  for (int s = 0; s < slots; ++s) {
    Gather(residual.data(), tokens, H, D, c.per_head ? s : -1, all_dims,
           buf.data());
    const RvqParams p =
        TrainParams(config_, D, stages, c.key_bits,
                    QuantizerSeed(options.seed, layer, s, 2, 0));
    ResidualQuantizer q;
    VQKV_RETURN_IF_ERROR(
        q.Fit(p, buf.data(), rows, [&, s](const FitProgress& fp) {
          if (!options.progress) return;
          options.progress(FitProgress{
              absl::StrCat("layer ", layer, " key refinement stage ", fp.done,
                           "/", stages),
              int64_t{s} * stages + fp.done, int64_t{slots} * stages});
        }));
    VQKV_RETURN_IF_ERROR(set_.SetKeyRefinement(layer, s, std::move(q)));
  }
  if (set_.complete()) return Finalize();
  return absl::OkStatus();
}

absl::Status VqCodec::ReconstructLayerBaseKeys(int layer, const float* keys,
                                               int64_t tokens,
                                               float* out) const {
  if (layer < 0 || layer >= layout_.layers || tokens < 1 || keys == nullptr ||
      out == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReconstructLayerKeys needs a layer in 0..", layout_.layers - 1,
        ", tokens >= 1 and non-null buffers; got layer ", layer, ", ", tokens,
        " tokens"));
  }
  if (!set_.layer_complete(layer)) {
    return absl::FailedPreconditionError(
        absl::StrCat("ReconstructLayerKeys: layer ", layer, " is not fitted"));
  }
  const CodebookConfig& c = set_.config();
  const int H = layout_.kv_heads, D = layout_.head_dim;
  const int slots = c.slots_per_layer();
  const int64_t rows = c.per_head ? tokens : tokens * H;
  std::vector<float> buf, dec;
  std::vector<uint16_t> codes;
  for (int s = 0; s < slots; ++s) {
    const int slot = c.per_head ? s : -1;
    for (size_t g = 0; g < set_.key_group_dims().size(); ++g) {
      const std::vector<int>& dims = set_.key_group_dims()[g];
      const ResidualQuantizer& q = set_.key(layer, s, static_cast<int>(g));
      buf.resize(static_cast<size_t>(rows) * dims.size());
      dec.resize(buf.size());
      codes.resize(static_cast<size_t>(rows) * q.stages());
      Gather(keys, tokens, H, D, slot, dims, buf.data());
      VQKV_RETURN_IF_ERROR(
          q.EncodeBeam(buf.data(), rows, config_.beam_width, codes.data()));
      VQKV_RETURN_IF_ERROR(q.Decode(codes.data(), rows, dec.data()));
      Scatter(dec.data(), tokens, H, D, slot, dims, out);
    }
  }
  return absl::OkStatus();
}

absl::Status VqCodec::Decode(const uint8_t* in, size_t in_bytes, int64_t tokens,
                             float* keys, float* values) const {
  return DecodeLayers(in, in_bytes, tokens, 0, layout_.layers, keys, values);
}

absl::Status VqCodec::DecodeLayers(const uint8_t* in, size_t in_bytes,
                                   int64_t tokens, int first_layer,
                                   int num_layers, float* keys,
                                   float* values) const {
  if (!fitted_) {
    return absl::FailedPreconditionError(
        "VqCodec::Decode before every layer was fitted");
  }
  if (in == nullptr || keys == nullptr || values == nullptr || tokens < 1 ||
      tokens > kMaxCodecTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("VqCodec::Decode needs non-null buffers and 1..",
                     kMaxCodecTokens, " tokens, got ", tokens));
  }
  if (in_bytes != EncodedBytes(tokens)) {
    return absl::InvalidArgumentError(
        absl::StrCat("VqCodec::Decode payload is ", in_bytes, " bytes, ",
                     tokens, " tokens need ", EncodedBytes(tokens)));
  }
  VQKV_RETURN_IF_ERROR(CheckLayerRange(layout_, first_layer, num_layers));
  const CodebookConfig& c = set_.config();
  const int64_t layer_vectors = tokens * layout_.kv_heads;
  const int64_t first_vector = first_layer * layer_vectors;
  const int64_t first_refined =
      RefinedRange(first_layer, num_layers).first * layer_vectors;
  const bool aligned =
      first_vector * c.key_stages() * c.key_bits % 8 == 0 &&
      first_vector * c.value_stages * c.value_bits % 8 == 0 &&
      first_refined * set_.key_refine_stages() * c.key_bits % 8 == 0;
  if (aligned) {
    return DecodeRange(in, tokens, first_layer, num_layers, keys, values);
  }
  return Codec::DecodeLayers(in, in_bytes, tokens, first_layer, num_layers,
                             keys, values);
}

absl::Status VqCodec::DecodeRange(const uint8_t* in, int64_t tokens,
                                  int first_layer, int num_layers, float* keys,
                                  float* values) const {
  const CodebookConfig& c = set_.config();
  const int Nk = c.key_stages(), Nv = c.value_stages;
  // Payload: key codes of every vector, then value codes, then the sketch;
  // vectors in (layer, token, head) order, so a layer range is a slice of
  // each section.
  const int64_t layer_vectors = tokens * layout_.kv_heads;
  const int64_t all = int64_t{layout_.layers} * layer_vectors;
  const int64_t first = first_layer * layer_vectors;
  const int64_t vectors = num_layers * layer_vectors;
  const size_t kbytes = PackedBytes(all * Nk, c.key_bits);
  const size_t vbytes = PackedBytes(all * Nv, c.value_bits);
  const uint8_t* kin = in + first * Nk * c.key_bits / 8;
  const uint8_t* vin = in + kbytes + first * Nv * c.value_bits / 8;
  std::vector<uint16_t> kcodes(static_cast<size_t>(vectors) * Nk);
  std::vector<uint16_t> vcodes(static_cast<size_t>(vectors) * Nv);
  VQKV_RETURN_IF_ERROR(UnpackBits(kin, PackedBytes(vectors * Nk, c.key_bits),
                                  vectors * Nk, c.key_bits, kcodes.data()));
  VQKV_RETURN_IF_ERROR(UnpackBits(vin, PackedBytes(vectors * Nv, c.value_bits),
                                  vectors * Nv, c.value_bits, vcodes.data()));
  VQKV_RETURN_IF_ERROR(Reconstruct(kcodes.data(), vcodes.data(), tokens, keys,
                                   values, first_layer, num_layers));
  const auto [lo, hi] = RefinedRange(first_layer, num_layers);
  if (hi > lo) {
    // The refinement section follows the sketch; refined layer i's codes
    // start at vector i * layer_vectors of it.
    const int R = set_.key_refine_stages();
    const size_t sbytes =
        sketch_ ? SketchedVectors(tokens) * sketch_->BytesPerVector() : 0;
    const int64_t n = (hi - lo) * layer_vectors * R;
    std::vector<uint16_t> rcodes(static_cast<size_t>(n));
    VQKV_RETURN_IF_ERROR(UnpackBits(
        in + kbytes + vbytes + sbytes + lo * layer_vectors * R * c.key_bits / 8,
        PackedBytes(n, c.key_bits), n, c.key_bits, rcodes.data()));
    VQKV_RETURN_IF_ERROR(
        AddKeyRefinement(rcodes.data(), tokens, first_layer, num_layers, keys));
  }
  ApplyKeyGains(tokens, first_layer, num_layers, keys);
  // The sketch section starts at the first sketched layer's first vector.
  const int sketch_from = std::max(first_layer, KeySketchFirstLayer());
  const int sketch_layers = first_layer + num_layers - sketch_from;
  if (sketch_ && sketch_layers > 0) {
    const int64_t skip = (sketch_from - KeySketchFirstLayer()) * layer_vectors;
    sketch_->DecodeAdd(
        in + kbytes + vbytes + skip * sketch_->BytesPerVector(),
        sketch_layers * layer_vectors,
        keys + (sketch_from - first_layer) * layer_vectors * layout_.head_dim);
  }
  return absl::OkStatus();
}

}  // namespace vqkv
