#include "kernels/code_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/bitpack.h"
#include "kernels/cpu/code_attention_kernels.h"
#include "kernels/cpu/softmax.h"
#include "kernels/fp16.h"

namespace vqkv {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Query heads padded to a multiple of 4 lanes, so table rows are whole
// 16-byte vectors.
int PaddedGroup(int group) { return (group + 3) / 4 * 4; }

float SketchScale(const uint8_t* c) {
  return HalfToFloatRef(static_cast<uint16_t>(c[0] | (uint16_t{c[1]} << 8)));
}

// logits[t][0, kGp) = sum over the Nk stages of key_lut[s][code][0, kGp),
// plus the sketch term. Returns the OR of all codes (for the range check).
template <int kGp>
uint32_t ScoreTokens(const float* key_lut, int nk, int bits,
                     const CodedTokens& tok, const float* sketch_lut,
                     int sketch_bytes, float* logits) {
  const uint32_t mask = (1u << bits) - 1;
  uint32_t seen = 0;
  for (int64_t t = 0; t < tok.n; ++t) {
    const uint16_t* c = tok.key_codes + t * tok.key_stride;
    // Four accumulators (stages mod 4) split the add chain.
    float a0[kGp] = {}, a1[kGp] = {}, a2[kGp] = {}, a3[kGp] = {};
    auto row = [&](int st) {
      return key_lut + ((int64_t{st} << bits) + (c[st] & mask)) * kGp;
    };
    int s = 0;
    for (; s + 3 < nk; s += 4) {
      seen |= c[s] | c[s + 1] | c[s + 2] | c[s + 3];
      const float *r0 = row(s), *r1 = row(s + 1), *r2 = row(s + 2),
                  *r3 = row(s + 3);
      for (int h = 0; h < kGp; ++h) a0[h] += r0[h];
      for (int h = 0; h < kGp; ++h) a1[h] += r1[h];
      for (int h = 0; h < kGp; ++h) a2[h] += r2[h];
      for (int h = 0; h < kGp; ++h) a3[h] += r3[h];
    }
    for (; s < nk; ++s) {
      seen |= c[s];
      const float* r0 = row(s);
      for (int h = 0; h < kGp; ++h) a0[h] += r0[h];
    }
    float acc[kGp];
    for (int h = 0; h < kGp; ++h) acc[h] = (a0[h] + a1[h]) + (a2[h] + a3[h]);
    if (sketch_lut != nullptr) {
      const uint8_t* sk = tok.sketch + t * tok.sketch_stride;
      const float w = SketchScale(sk);
      float sacc[kGp] = {};
      for (int j = 0; j < sketch_bytes; ++j) {
        const float* row = sketch_lut + (j * 256 + sk[2 + j]) * kGp;
        for (int h = 0; h < kGp; ++h) sacc[h] += row[h];
      }
      for (int h = 0; h < kGp; ++h) acc[h] += w * sacc[h];
    }
    float* out = logits + t * kGp;
    for (int h = 0; h < kGp; ++h) out[h] = acc[h];
  }
  return seen;
}

uint32_t ScoreTokensAny(int gp, const float* key_lut, int nk, int bits,
                        const CodedTokens& tok, const float* sketch_lut,
                        int sketch_bytes, float* logits) {
  switch (gp) {
    case 4:
      return ScoreTokens<4>(key_lut, nk, bits, tok, sketch_lut, sketch_bytes,
                            logits);
    case 8:
      return ScoreTokens<8>(key_lut, nk, bits, tok, sketch_lut, sketch_bytes,
                            logits);
    case 12:
      return ScoreTokens<12>(key_lut, nk, bits, tok, sketch_lut, sketch_bytes,
                             logits);
    case 16:
      return ScoreTokens<16>(key_lut, nk, bits, tok, sketch_lut, sketch_bytes,
                             logits);
    default:
      break;
  }
  // Generic width: 4 lanes at a time.
  const uint32_t mask = (1u << bits) - 1;
  uint32_t seen = 0;
  for (int64_t t = 0; t < tok.n; ++t) {
    float* out = logits + t * gp;
    std::fill(out, out + gp, 0.0f);
    const uint16_t* c = tok.key_codes + t * tok.key_stride;
    for (int s = 0; s < nk; ++s) {
      seen |= c[s];
      const float* row = key_lut + ((int64_t{s} << bits) + (c[s] & mask)) * gp;
      for (int h = 0; h < gp; ++h) out[h] += row[h];
    }
    if (sketch_lut != nullptr) {
      const uint8_t* sk = tok.sketch + t * tok.sketch_stride;
      const float w = SketchScale(sk);
      for (int j = 0; j < sketch_bytes; ++j) {
        const float* row = sketch_lut + (j * 256 + sk[2 + j]) * gp;
        for (int h = 0; h < gp; ++h) out[h] += w * row[h];
      }
    }
  }
  return seen;
}

// weights[s][code][0, kGp) += p[t][0, kGp) over tokens and value stages;
// sums[h] += p[t][h]. Returns the OR of all codes.
template <int kGp>
uint32_t AccumulateWeights(const float* p, const CodedTokens& tok, int nv,
                           int bits, float* weights, float* sums) {
  const uint32_t mask = (1u << bits) - 1;
  uint32_t seen = 0;
  float total[kGp] = {};
  for (int64_t t = 0; t < tok.n; ++t) {
    float pt[kGp];  // a local copy: no aliasing with weights, so it vectorizes
    std::copy_n(p + t * kGp, kGp, pt);
    const uint16_t* c = tok.value_codes + t * tok.value_stride;
    for (int h = 0; h < kGp; ++h) total[h] += pt[h];
    for (int s = 0; s < nv; ++s) {
      seen |= c[s];
      float* w = weights + ((int64_t{s} << bits) + (c[s] & mask)) * kGp;
      for (int h = 0; h < kGp; ++h) w[h] += pt[h];
    }
  }
  for (int h = 0; h < kGp; ++h) sums[h] = total[h];
  return seen;
}

uint32_t AccumulateWeightsAny(int gp, const float* p, const CodedTokens& tok,
                              int nv, int bits, float* weights, float* sums) {
  switch (gp) {
    case 4:
      return AccumulateWeights<4>(p, tok, nv, bits, weights, sums);
    case 8:
      return AccumulateWeights<8>(p, tok, nv, bits, weights, sums);
    default:
      break;
  }
  const uint32_t mask = (1u << bits) - 1;
  uint32_t seen = 0;
  std::fill(sums, sums + gp, 0.0f);
  for (int64_t t = 0; t < tok.n; ++t) {
    const float* pt = p + t * gp;
    const uint16_t* c = tok.value_codes + t * tok.value_stride;
    for (int h = 0; h < gp; ++h) sums[h] += pt[h];
    for (int s = 0; s < nv; ++s) {
      seen |= c[s];
      float* w = weights + ((int64_t{s} << bits) + (c[s] & mask)) * gp;
      for (int h = 0; h < gp; ++h) w[h] += pt[h];
    }
  }
  return seen;
}

absl::Status CodeOutOfRange(const char* what, int bits) {
  return absl::InvalidArgumentError(absl::StrCat("code attention: a ", what,
                                                 " code is >= ", 1 << bits,
                                                 " (the codebook size)"));
}

}  // namespace

void AttentionPartial::Reset(int g, int d) {
  group = g;
  head_dim = d;
  max.assign(static_cast<size_t>(g), kNegInf);
  sum.assign(static_cast<size_t>(g), 0.0f);
  out.assign(static_cast<size_t>(g) * d, 0.0f);
}

void AttentionPartial::Normalize(float* y) const {
  for (int h = 0; h < group; ++h) {
    const float inv = sum[h] > 0 ? 1.0f / sum[h] : 0.0f;
    for (int d = 0; d < head_dim; ++d) {
      y[h * head_dim + d] = out[static_cast<size_t>(h) * head_dim + d] * inv;
    }
  }
}

absl::Status MergeAttentionPartial(const AttentionPartial& b,
                                   AttentionPartial* a) {
  if (a == nullptr || a->group != b.group || a->head_dim != b.head_dim) {
    return absl::InvalidArgumentError(
        "MergeAttentionPartial needs two partials of the same shape");
  }
  const int d = a->head_dim;
  for (int h = 0; h < a->group; ++h) {
    if (b.sum[h] == 0) continue;
    if (a->sum[h] == 0) {
      a->max[h] = b.max[h];
      a->sum[h] = b.sum[h];
      std::copy_n(b.out.begin() + static_cast<size_t>(h) * d, d,
                  a->out.begin() + static_cast<size_t>(h) * d);
      continue;
    }
    const float m = std::max(a->max[h], b.max[h]);
    const float fa = std::exp(a->max[h] - m), fb = std::exp(b.max[h] - m);
    a->max[h] = m;
    a->sum[h] = a->sum[h] * fa + b.sum[h] * fb;
    float* ao = a->out.data() + static_cast<size_t>(h) * d;
    const float* bo = b.out.data() + static_cast<size_t>(h) * d;
    for (int x = 0; x < d; ++x) ao[x] = ao[x] * fa + bo[x] * fb;
  }
  return absl::OkStatus();
}

absl::StatusOr<CodeAttention> CodeAttention::Create(const VqCodec& codec,
                                                    int layer, int kv_head) {
  const KvLayout& lay = codec.layout();
  if (layer < 0 || layer >= lay.layers || kv_head < 0 ||
      kv_head >= lay.kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("code attention: layer ", layer, " / kv head ", kv_head,
                     " out of range (", lay.layers, " layers, ", lay.kv_heads,
                     " kv heads)"));
  }
  if (!codec.fitted()) {
    return absl::FailedPreconditionError("code attention needs a fitted codec");
  }
  const CodebookSet& set = codec.codebooks();
  const CodebookConfig& c = set.config();
  if (!c.keys_post_rope) {
    return absl::UnimplementedError(
        "code attention needs keys coded after RoPE: with pre-RoPE codes "
        "q.R(t)c depends on each key's position t, so per-stage tables "
        "cannot be shared across tokens");
  }
  CodeAttention a;
  a.head_dim_ = lay.head_dim;
  const int slot = c.per_head ? kv_head : 0;
  int offset = 0;
  for (size_t g = 0; g < set.key_group_dims().size(); ++g) {
    const ResidualQuantizer* q = &set.key(layer, slot, static_cast<int>(g));
    a.key_groups_.push_back(KeyGroup{q, set.key_group_dims()[g], offset});
    offset += q->stages();
  }
  if (set.RefinedIndex(layer) >= 0) {
    // The refinement codes what the groups leave, over every dimension, and
    // is added before the gain: one more group.
    const ResidualQuantizer* q = &set.key_refinement(layer, slot);
    std::vector<int> all(static_cast<size_t>(lay.head_dim));
    for (int d = 0; d < lay.head_dim; ++d) all[d] = d;
    a.key_groups_.push_back(KeyGroup{q, std::move(all), offset});
    offset += q->stages();
  }
  a.key_stages_ = offset;
  a.values_ = &set.value(layer, slot);
  a.sketch_ = codec.key_sketch_for_layer(layer);
  if (set.has_key_gains()) {
    a.key_gain_ = set.key_gain(layer, kv_head);
    a.key_centre_ = set.key_centre(layer, kv_head);
  }
  return a;
}

absl::Status CodeAttention::Check(const float* q, int group,
                                  const CodedTokens& tok,
                                  const AttentionPartial* out) const {
  if (q == nullptr || out == nullptr || group < 1 || group > 4096 ||
      tok.n < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "code attention needs non-null q and out, group in 1..4096 and "
        "n >= 0; got group ",
        group, ", n ", tok.n));
  }
  if (tok.n == 0) return absl::OkStatus();
  if (tok.key_codes == nullptr || tok.value_codes == nullptr ||
      tok.key_stride < key_stages_ || tok.value_stride < values_->stages()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "code attention needs key and value codes with strides >= ",
        key_stages_, " and ", values_->stages(), "; got strides ",
        tok.key_stride, " and ", tok.value_stride));
  }
  if (sketch_ != nullptr &&
      (tok.sketch == nullptr ||
       tok.sketch_stride < static_cast<int64_t>(sketch_->BytesPerVector()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("code attention: the codec has a ", sketch_->bits(),
                     "-bit key sketch; give its bytes with a stride >= ",
                     sketch_->BytesPerVector()));
  }
  return absl::OkStatus();
}

absl::Status CodeAttention::Attend(const float* q, int group, float scale,
                                   const CodedTokens& tok,
                                   AttentionPartial* out,
                                   CodeAttentionScratch* scratch) const {
  if (scratch == nullptr) {
    return absl::InvalidArgumentError("code attention needs a scratch");
  }
  if (absl::Status s = Check(q, group, tok, out); !s.ok()) return s;
  const int D = head_dim_;
  out->Reset(group, D);
  if (tok.n == 0) return absl::OkStatus();
  const int gp = PaddedGroup(group);
  const int kbits = key_groups_[0].q->bits();
  const int64_t kk = int64_t{1} << kbits;

  // Key tables [Nk][K][gp]: every codeword of each group against the
  // queries' dims of that group, scaled.
  scratch->key_lut.resize(static_cast<size_t>(key_stages_ * kk * gp));
  for (const KeyGroup& kg : key_groups_) {
    const int dg = static_cast<int>(kg.dims.size());
    scratch->qg.resize(static_cast<size_t>(group) * dg);
    for (int h = 0; h < group; ++h) {
      for (int d = 0; d < dg; ++d) {
        scratch->qg[static_cast<size_t>(h) * dg + d] = q[h * D + kg.dims[d]];
      }
    }
    cpu::QueryTable(kg.q->codebooks().data(), kg.q->stages() * kk, dg,
                    scratch->qg.data(), group, gp, scale * key_gain_,
                    scratch->key_lut.data() + kg.stage_offset * kk * gp);
  }

  // Sketch tables [m/8][256][gp]: entry x of byte j is
  // sum_{i<8} (bit i of x ? 1 : -1) * scale * (S q)[8j + i].
  const float* sketch_lut = nullptr;
  int sketch_bytes = 0;
  if (sketch_ != nullptr) {
    const int m = sketch_->bits();
    sketch_bytes = m / 8;
    scratch->proj.resize(static_cast<size_t>(m) * gp);
    cpu::QueryTable(sketch_->matrix().data(), m, D, q, group, gp, scale,
                    scratch->proj.data());
    scratch->sketch_lut.resize(static_cast<size_t>(sketch_bytes) * 256 * gp);
    for (int j = 0; j < sketch_bytes; ++j) {
      float* tab =
          scratch->sketch_lut.data() + static_cast<size_t>(j) * 256 * gp;
      const float* p = scratch->proj.data() + static_cast<size_t>(j) * 8 * gp;
      for (int h = 0; h < gp; ++h) {
        float base = 0;
        for (int i = 0; i < 8; ++i) base -= p[i * gp + h];
        tab[h] = base;
      }
      for (int x = 1; x < 256; ++x) {
        const int low = __builtin_ctz(static_cast<unsigned>(x));
        const float* prev = tab + (x & (x - 1)) * gp;
        for (int h = 0; h < gp; ++h) {
          tab[x * gp + h] = prev[h] + 2.0f * p[low * gp + h];
        }
      }
    }
    sketch_lut = scratch->sketch_lut.data();
  }

  // Logits [n][gp].
  scratch->logits.resize(static_cast<size_t>(tok.n) * gp);
  float* logits = scratch->logits.data();
  const uint32_t kseen =
      ScoreTokensAny(gp, scratch->key_lut.data(), key_stages_, kbits, tok,
                     sketch_lut, sketch_bytes, logits);
  if ((kseen >> kbits) != 0) return CodeOutOfRange("key", kbits);
  if (key_gain_ != 1.0f) {
    // The gain's constant term, scale * (1 - gain) * q.centre, per head.
    scratch->qg.assign(static_cast<size_t>(group), 0.0f);
    for (int h = 0; h < group; ++h) {
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += double(q[h * D + d]) * key_centre_[d];
      scratch->qg[h] =
          static_cast<float>(double(scale) * (1.0 - key_gain_) * dot);
    }
    for (int64_t t = 0; t < tok.n; ++t) {
      for (int h = 0; h < group; ++h) logits[t * gp + h] += scratch->qg[h];
    }
  }

  // Softmax numerators exp(x - max), per head; padding lanes stay 0.
  std::vector<float>& mx = out->max;
  for (int64_t t = 0; t < tok.n; ++t) {
    for (int h = 0; h < group; ++h) mx[h] = std::max(mx[h], logits[t * gp + h]);
  }
  float shift[16] = {};
  float* sh = shift;
  std::vector<float> wide;
  if (gp > 16) {
    wide.assign(static_cast<size_t>(gp), 0.0f);
    sh = wide.data();
  }
  for (int h = 0; h < group; ++h) sh[h] = mx[h];
  for (int64_t t = 0; t < tok.n; ++t) {
    for (int h = 0; h < gp; ++h) logits[t * gp + h] -= sh[h];
  }
  cpu::ExpInPlace(logits, tok.n * gp);

  // Values.
  const int nv = values_->stages();
  const int vbits = values_->bits();
  const int64_t vk = int64_t{1} << vbits;
  const float* vcb = values_->codebooks().data();
  float sums[16];
  std::vector<float> wide_sums;
  float* su = sums;
  if (gp > 16) {
    wide_sums.resize(static_cast<size_t>(gp));
    su = wide_sums.data();
  }
  if (tok.n < vk) {
    // Few tokens: add each token's codewords directly (n*Nv*D per head is
    // less than the Nv*K*D of the codebook product).
    const uint32_t mask = static_cast<uint32_t>(vk - 1);
    uint32_t seen = 0;
    std::fill(su, su + gp, 0.0f);
    for (int64_t t = 0; t < tok.n; ++t) {
      const float* pt = logits + t * gp;
      const uint16_t* c = tok.value_codes + t * tok.value_stride;
      for (int h = 0; h < group; ++h) su[h] += pt[h];
      for (int s = 0; s < nv; ++s) {
        seen |= c[s];
        const float* cw = vcb + ((int64_t{s} << vbits) + (c[s] & mask)) * D;
        for (int h = 0; h < group; ++h) {
          float* o = out->out.data() + static_cast<size_t>(h) * D;
          const float p = pt[h];
          for (int d = 0; d < D; ++d) o[d] += p * cw[d];
        }
      }
    }
    if ((seen >> vbits) != 0) return CodeOutOfRange("value", vbits);
  } else {
    scratch->weights.assign(static_cast<size_t>(nv * vk * gp), 0.0f);
    const uint32_t seen = AccumulateWeightsAny(gp, logits, tok, nv, vbits,
                                               scratch->weights.data(), su);
    if ((seen >> vbits) != 0) return CodeOutOfRange("value", vbits);
    // out [group][D] = weights^T [group][Nv*K] . codebooks [Nv*K][D].
    cpu::WeightedCodewordSum(scratch->weights.data(), gp, group, vcb, nv * vk,
                             D, out->out.data());
  }
  for (int h = 0; h < group; ++h) out->sum[h] = su[h];
  return absl::OkStatus();
}

absl::Status CodeAttention::AttendRef(const float* q, int group, float scale,
                                      const CodedTokens& tok,
                                      AttentionPartial* out) const {
  if (absl::Status s = Check(q, group, tok, out); !s.ok()) return s;
  const int D = head_dim_;
  out->Reset(group, D);
  if (tok.n == 0) return absl::OkStatus();
  std::vector<double> logit(static_cast<size_t>(tok.n));
  std::vector<double> acc(static_cast<size_t>(D));
  for (int h = 0; h < group; ++h) {
    const float* qh = q + h * D;
    for (int64_t t = 0; t < tok.n; ++t) {
      const uint16_t* c = tok.key_codes + t * tok.key_stride;
      double dot = 0;
      for (const KeyGroup& kg : key_groups_) {
        const int dg = static_cast<int>(kg.dims.size());
        for (int s = 0; s < kg.q->stages(); ++s) {
          const uint16_t code = c[kg.stage_offset + s];
          if (code >= kg.q->K()) return CodeOutOfRange("key", kg.q->bits());
          const float* cw = kg.q->codebooks().data() +
                            (static_cast<int64_t>(s) * kg.q->K() + code) * dg;
          for (int d = 0; d < dg; ++d) dot += double(qh[kg.dims[d]]) * cw[d];
        }
      }
      if (key_centre_ != nullptr) {
        double qc = 0;
        for (int d = 0; d < D; ++d) qc += double(qh[d]) * key_centre_[d];
        dot = key_gain_ * dot + (1.0 - double(key_gain_)) * qc;
      }
      if (sketch_ != nullptr) {
        // The sketch adds w * sum_b (+-1) S_b to the key (SignSketch::
        // DecodeAdd).
        const uint8_t* sk = tok.sketch + t * tok.sketch_stride;
        const double w = SketchScale(sk);
        for (int b = 0; b < sketch_->bits(); ++b) {
          const float* row =
              sketch_->matrix().data() + static_cast<size_t>(b) * D;
          double sq = 0;
          for (int d = 0; d < D; ++d) sq += double(row[d]) * qh[d];
          dot += ((sk[2 + b / 8] >> (b % 8)) & 1 ? w : -w) * sq;
        }
      }
      logit[t] = double(scale) * dot;
    }
    const double m = *std::max_element(logit.begin(), logit.end());
    double sum = 0;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t t = 0; t < tok.n; ++t) {
      const double p = std::exp(logit[t] - m);
      sum += p;
      const uint16_t* c = tok.value_codes + t * tok.value_stride;
      for (int s = 0; s < values_->stages(); ++s) {
        if (c[s] >= values_->K()) {
          return CodeOutOfRange("value", values_->bits());
        }
        const float* cw = values_->codebooks().data() +
                          (static_cast<int64_t>(s) * values_->K() + c[s]) * D;
        for (int d = 0; d < D; ++d) acc[d] += p * cw[d];
      }
    }
    out->max[h] = static_cast<float>(m);
    out->sum[h] = static_cast<float>(sum);
    for (int d = 0; d < D; ++d) {
      out->out[static_cast<size_t>(h) * D + d] = static_cast<float>(acc[d]);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<VqCodes> UnpackVqCodes(const VqCodec& codec, const uint8_t* in,
                                      size_t in_bytes, int64_t tokens) {
  if (in == nullptr || tokens < 1 || in_bytes != codec.EncodedBytes(tokens)) {
    return absl::InvalidArgumentError(
        absl::StrCat("UnpackVqCodes: payload of ", in_bytes, " bytes for ",
                     tokens, " tokens, expected ", codec.EncodedBytes(tokens)));
  }
  const CodebookSet& set = codec.codebooks();
  const CodebookConfig& c = set.config();
  const int layers = codec.layout().layers;
  const int64_t layer_vectors = tokens * codec.layout().kv_heads;
  const int64_t vectors = layers * layer_vectors;
  const int nk = c.key_stages();
  VqCodes out;
  out.key_begin.assign(static_cast<size_t>(layers) + 1, 0);
  for (int l = 0; l < layers; ++l) {
    out.key_begin[l + 1] =
        out.key_begin[l] +
        static_cast<size_t>(layer_vectors * VqKeyCodeStages(codec, l));
  }
  out.keys.resize(out.key_begin[layers]);
  out.values.resize(static_cast<size_t>(vectors * c.value_stages));
  const size_t kbytes = PackedBytes(vectors * nk, c.key_bits);
  const size_t vbytes = PackedBytes(vectors * c.value_stages, c.value_bits);
  const size_t sbytes =
      codec.key_sketch() != nullptr
          ? codec.SketchedVectors(tokens) * codec.key_sketch()->BytesPerVector()
          : 0;
  if (!set.has_key_refinement()) {
    if (absl::Status s =
            UnpackBits(in, kbytes, vectors * nk, c.key_bits, out.keys.data());
        !s.ok()) {
      return s;
    }
  } else {
    // Interleave each refined vector's refinement codes (the section after
    // the sketch, [refined layer][token][kv_head][R]) after its key codes.
    std::vector<uint16_t> k(static_cast<size_t>(vectors * nk));
    if (absl::Status s =
            UnpackBits(in, kbytes, vectors * nk, c.key_bits, k.data());
        !s.ok()) {
      return s;
    }
    const int R = set.key_refine_stages();
    const int64_t refined = codec.RefinedVectors(tokens);
    std::vector<uint16_t> r(static_cast<size_t>(refined * R));
    if (absl::Status s = UnpackBits(in + kbytes + vbytes + sbytes,
                                    PackedBytes(refined * R, c.key_bits),
                                    refined * R, c.key_bits, r.data());
        !s.ok()) {
      return s;
    }
    for (int l = 0; l < layers; ++l) {
      const int ri = set.RefinedIndex(l);
      uint16_t* dst = out.keys.data() + out.key_begin[l];
      const uint16_t* src = k.data() + l * layer_vectors * nk;
      for (int64_t v = 0; v < layer_vectors; ++v) {
        dst = std::copy(src + v * nk, src + (v + 1) * nk, dst);
        if (ri < 0) continue;
        const uint16_t* rv = r.data() + (ri * layer_vectors + v) * R;
        dst = std::copy(rv, rv + R, dst);
      }
    }
  }
  if (absl::Status s = UnpackBits(in + kbytes, vbytes, vectors * c.value_stages,
                                  c.value_bits, out.values.data());
      !s.ok()) {
    return s;
  }
  out.sketch.assign(in + kbytes + vbytes, in + kbytes + vbytes + sbytes);
  return out;
}

int VqKeyCodeStages(const VqCodec& codec, int layer) {
  const CodebookSet& set = codec.codebooks();
  return set.config().key_stages() +
         (set.RefinedIndex(layer) >= 0 ? set.key_refine_stages() : 0);
}

CodedTokens CodedTokensOf(const VqCodec& codec, const VqCodes& codes,
                          int64_t tokens, int layer, int kv_head) {
  const CodebookConfig& c = codec.codebooks().config();
  const int H = codec.layout().kv_heads;
  const int64_t vec = int64_t{layer} * tokens * H + kv_head;
  const int nk = VqKeyCodeStages(codec, layer);
  const SignSketch* sketch = codec.key_sketch_for_layer(layer);
  const int64_t sb =
      sketch != nullptr ? static_cast<int64_t>(sketch->BytesPerVector()) : 0;
  CodedTokens t;
  t.n = tokens;
  t.key_codes =
      codes.keys.data() + codes.key_begin[layer] + int64_t{kv_head} * nk;
  t.key_stride = int64_t{H} * nk;
  t.value_codes = codes.values.data() + vec * c.value_stages;
  t.value_stride = int64_t{H} * c.value_stages;
  if (sb > 0) {
    // The sketch section starts at the first sketched layer.
    const int64_t sketch_vec =
        int64_t{layer - codec.KeySketchFirstLayer()} * tokens * H + kv_head;
    t.sketch = codes.sketch.data() + sketch_vec * sb;
    t.sketch_stride = H * sb;
  }
  return t;
}

}  // namespace vqkv
