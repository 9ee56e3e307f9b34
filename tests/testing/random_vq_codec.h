// Random VQ codecs and payloads for tests and benchmarks of code paths whose
// correctness or timing does not depend on fitted codebooks (code attention,
// decode): random residual codebooks shrinking stage by stage as fitted ones
// do, and payloads of uniformly random codes (and key sketches) in the
// codec's wire layout (kernels/block_format.h's payload).
//
// Deterministic for a given seed. Thread safety: free functions, no state.
#ifndef VQKV_TESTS_TESTING_RANDOM_VQ_CODEC_H_
#define VQKV_TESTS_TESTING_RANDOM_VQ_CODEC_H_

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/bitpack.h"
#include "kernels/codebook_set.h"
#include "kernels/fp16.h"
#include "kernels/vq_codec.h"

namespace vqkv::testing {

// Codebooks of `stages` x 2^bits entries of `dim` floats, stage s drawn from
// N(0, 0.5 * 0.8^s).
inline absl::StatusOr<ResidualQuantizer> RandomRvq(int dim, int stages,
                                                   int bits,
                                                   std::mt19937& rng) {
  RvqParams p;
  p.dim = dim;
  p.stages = stages;
  p.bits = bits;
  std::vector<float> cb(static_cast<size_t>(stages) * p.K() * dim);
  for (int s = 0; s < stages; ++s) {
    std::normal_distribution<float> nd(0.0f, 0.5f * std::pow(0.8f, s));
    for (int64_t i = 0; i < int64_t{p.K()} * dim; ++i) {
      cb[s * int64_t{p.K()} * dim + i] = nd(rng);
    }
  }
  return ResidualQuantizer::FromCodebooks(p, std::move(cb));
}

struct RandomVqCodecSpec {
  KeySplit split = KeySplit::kNone;
  bool per_head = false;
  int sketch_bits = 0;
  int sketch_first_layer = 0;  // VqConfig::key_sketch_first_layer
  bool post_rope = true;
  // Random key gains (CodebookSet::SetKeyGain) in [0.8, 1.6) with centres
  // drawn from N(0, 0.5), on every (layer, kv head) but the first.
  bool key_gains = false;
  // Layers given a random key refinement of refine_stages stages
  // (CodebookSet::SetKeyRefinement), every slot.
  std::vector<int> refine_layers;
  int refine_stages = 0;
  int layers = 2;
  int kv_heads = 2;
  int head_dim = 64;
};

// A VqCodec at the default rate for `spec`'s layout, every layer (and head,
// when per_head) with its own random codebooks.
inline absl::StatusOr<std::unique_ptr<VqCodec>> RandomVqCodec(
    const RandomVqCodecSpec& spec, uint32_t seed) {
  VqConfig cfg;
  cfg.key_split = spec.split;
  cfg.per_head = spec.per_head;
  cfg.keys_post_rope = spec.post_rope;
  absl::StatusOr<CodebookConfig> cc = VqCodec::ResolveConfig(
      KvLayout{spec.layers, spec.kv_heads, spec.head_dim}, cfg);
  if (!cc.ok()) return cc.status();
  absl::StatusOr<CodebookSet> set = CodebookSet::Create(*cc);
  if (!set.ok()) return set.status();
  std::mt19937 rng(seed);
  for (int l = 0; l < spec.layers; ++l) {
    for (int s = 0; s < cc->slots_per_layer(); ++s) {
      for (size_t g = 0; g < cc->key_group_stages.size(); ++g) {
        const int dim = static_cast<int>(set->key_group_dims()[g].size());
        absl::StatusOr<ResidualQuantizer> q =
            RandomRvq(dim, cc->key_group_stages[g], cc->key_bits, rng);
        if (!q.ok()) return q.status();
        absl::Status st = set->SetKey(l, s, static_cast<int>(g), *std::move(q));
        if (!st.ok()) return st;
      }
      absl::StatusOr<ResidualQuantizer> q =
          RandomRvq(spec.head_dim, cc->value_stages, cc->value_bits, rng);
      if (!q.ok()) return q.status();
      absl::Status st = set->SetValue(l, s, *std::move(q));
      if (!st.ok()) return st;
    }
  }
  if (spec.key_gains) {
    std::uniform_real_distribution<float> gain(0.8f, 1.6f);
    std::normal_distribution<float> centre(0.0f, 0.5f);
    for (int l = 0; l < spec.layers; ++l) {
      for (int h = 0; h < spec.kv_heads; ++h) {
        if (l == 0 && h == 0) continue;
        std::vector<float> c(static_cast<size_t>(spec.head_dim));
        for (float& x : c) x = centre(rng);
        absl::Status st = set->SetKeyGain(l, h, gain(rng), c);
        if (!st.ok()) return st;
      }
    }
  }
  for (int l : spec.refine_layers) {
    for (int s = 0; s < cc->slots_per_layer(); ++s) {
      absl::StatusOr<ResidualQuantizer> q =
          RandomRvq(spec.head_dim, spec.refine_stages, cc->key_bits, rng);
      if (!q.ok()) return q.status();
      absl::Status st = set->SetKeyRefinement(l, s, *std::move(q));
      if (!st.ok()) return st;
    }
  }
  return VqCodec::FromCodebookSet(*std::move(set), 1, spec.sketch_bits,
                                  spec.sketch_first_layer);
}

// The payload of `tokens` tokens of uniformly random codes in `codec`'s
// layout (the key refinement's too); key sketches (when the codec has them)
// get a random scale in [0, 0.02) and random sign bits.
inline absl::StatusOr<std::vector<uint8_t>> RandomVqPayload(
    const VqCodec& codec, int64_t tokens, uint32_t seed) {
  const CodebookConfig& c = codec.codebooks().config();
  const int64_t vectors =
      tokens * codec.layout().layers * codec.layout().kv_heads;
  std::mt19937 rng(seed);
  std::vector<uint16_t> k(static_cast<size_t>(vectors * c.key_stages()));
  std::vector<uint16_t> v(static_cast<size_t>(vectors * c.value_stages));
  for (uint16_t& x : k) x = static_cast<uint16_t>(rng() % (1u << c.key_bits));
  for (uint16_t& x : v) {
    x = static_cast<uint16_t>(rng() % (1u << c.value_bits));
  }
  std::vector<uint8_t> out(codec.EncodedBytes(tokens));
  const size_t kb = PackedBytes(vectors * c.key_stages(), c.key_bits);
  const size_t vb = PackedBytes(vectors * c.value_stages, c.value_bits);
  absl::Status st = PackBits(k.data(), static_cast<int64_t>(k.size()),
                             c.key_bits, out.data(), kb);
  if (!st.ok()) return st;
  st = PackBits(v.data(), static_cast<int64_t>(v.size()), c.value_bits,
                out.data() + kb, vb);
  if (!st.ok()) return st;
  if (const SignSketch* sk = codec.key_sketch(); sk != nullptr) {
    std::uniform_real_distribution<float> scale(0.0f, 0.02f);
    for (int64_t i = 0; i < codec.SketchedVectors(tokens); ++i) {
      uint8_t* p = out.data() + kb + vb + i * sk->BytesPerVector();
      const uint16_t h = FloatToHalfRef(scale(rng));
      p[0] = static_cast<uint8_t>(h & 0xff);
      p[1] = static_cast<uint8_t>(h >> 8);
      for (size_t b = 2; b < sk->BytesPerVector(); ++b) {
        p[b] = static_cast<uint8_t>(rng());
      }
    }
  }
  const int64_t refine =
      codec.RefinedVectors(tokens) * codec.codebooks().key_refine_stages();
  if (refine > 0) {
    std::vector<uint16_t> r(static_cast<size_t>(refine));
    for (uint16_t& x : r) {
      x = static_cast<uint16_t>(rng() % (1u << c.key_bits));
    }
    const size_t rb = PackedBytes(refine, c.key_bits);
    st = PackBits(r.data(), refine, c.key_bits, out.data() + out.size() - rb,
                  rb);
    if (!st.ok()) return st;
  }
  return out;
}

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_TESTING_RANDOM_VQ_CODEC_H_
