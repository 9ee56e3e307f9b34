// Small codebook sets fitted on synthetic data, for tests and fuzz targets
// that need a real (complete, serializable) CodebookSet but not a good one:
// every codebook is fitted by 2 k-means iterations on its own
// KeyLikeVectors.
//
// Deterministic for given seeds. Thread safety: free functions, no state.
#ifndef VQKV_TESTS_TESTING_FITTED_CODEBOOK_SET_H_
#define VQKV_TESTS_TESTING_FITTED_CODEBOOK_SET_H_

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/codebook_set.h"
#include "kernels/rvq.h"
#include "tests/unit/kernels/rvq_test_data.h"

namespace vqkv::testing {

// The seed of each codebook of a set: key(layer, slot, group) and
// value(layer, slot). Each caller keeps its own scheme, so the sets (and
// the fuzz corpora made from them) stay what they were.
struct CodebookSeeds {
  std::function<uint64_t(int layer, int slot, int group)> key;
  std::function<uint64_t(int layer, int slot)> value;
};

// A tiny configuration: 2 layers, 2 KV heads, head_dim 8; keys 3 stages x
// 4 bits (2 + 1 in the two RoPE groups when `split`), values 2 x 3 bits.
inline CodebookConfig TinyCodebookConfig(KeySplit split, bool per_head) {
  CodebookConfig c;
  c.layout = KvLayout{2, 2, 8};
  c.key_split = split;
  c.key_group_stages =
      split == KeySplit::kNone ? std::vector<int>{3} : std::vector<int>{2, 1};
  c.key_bits = 4;
  c.value_stages = 2;
  c.value_bits = 3;
  c.per_head = per_head;
  return c;
}

// A complete set for `config`, each codebook fitted on `vectors` vectors.
inline absl::StatusOr<CodebookSet> FitSyntheticCodebookSet(
    const CodebookConfig& config, int vectors, const CodebookSeeds& seeds) {
  absl::StatusOr<CodebookSet> set = CodebookSet::Create(config);
  if (!set.ok()) return set.status();
  auto fit = [vectors](int dim, int stages, int bits,
                       uint64_t seed) -> absl::StatusOr<ResidualQuantizer> {
    RvqParams p;
    p.dim = dim;
    p.stages = stages;
    p.bits = bits;
    p.seed = seed;
    p.training.kmeans_iterations = 2;
    const std::vector<float> x = KeyLikeVectors(vectors, dim, seed);
    ResidualQuantizer q;
    if (absl::Status s = q.Fit(p, x.data(), vectors); !s.ok()) return s;
    return q;
  };
  for (int l = 0; l < config.layout.layers; ++l) {
    for (int s = 0; s < config.slots_per_layer(); ++s) {
      for (size_t g = 0; g < set->key_group_dims().size(); ++g) {
        const int gi = static_cast<int>(g);
        absl::StatusOr<ResidualQuantizer> q = fit(
            static_cast<int>(set->key_group_dims()[g].size()),
            config.key_group_stages[g], config.key_bits, seeds.key(l, s, gi));
        if (!q.ok()) return q.status();
        if (absl::Status st = set->SetKey(l, s, gi, *std::move(q)); !st.ok()) {
          return st;
        }
      }
      absl::StatusOr<ResidualQuantizer> q =
          fit(config.layout.head_dim, config.value_stages, config.value_bits,
              seeds.value(l, s));
      if (!q.ok()) return q.status();
      if (absl::Status st = set->SetValue(l, s, *std::move(q)); !st.ok()) {
        return st;
      }
    }
  }
  return set;
}

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_TESTING_FITTED_CODEBOOK_SET_H_
