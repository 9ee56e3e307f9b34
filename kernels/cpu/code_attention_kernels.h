// Inner kernels of code attention (kernels/code_attention.h) on the CPU:
//
//   cb:     float [rows][dim], codewords (one stage's or several stages')
//   q:      float [group][dim], queries
//   table:  float [rows][gp], gp >= group lanes per row (padding lanes 0)
//   weights float [rows][gp], softmax weight per codeword and query head
//   out:    float [group][dim]
//
// Each has a scalar _Ref version that defines its result; the dispatching
// versions use AVX2+FMA when cpu_features.h allows it and dim % 8 == 0, and
// are tested against the reference (tests/unit/kernels/code_attention_test).
//
// Thread safety: pure functions.
#ifndef VQKV_KERNELS_CPU_CODE_ATTENTION_KERNELS_H_
#define VQKV_KERNELS_CPU_CODE_ATTENTION_KERNELS_H_

#include <cstdint>

namespace vqkv::cpu {

// table[r][h] = scale * <cb[r], q[h]> for h < group; table[r][h] = 0 for
// group <= h < gp.
void QueryTableRef(const float* cb, int64_t rows, int dim, const float* q,
                   int group, int gp, float scale, float* table);
void QueryTable(const float* cb, int64_t rows, int dim, const float* q,
                int group, int gp, float scale, float* table);

// out[h][d] += sum over r of weights[r][h] * cb[r][d], h < group; rows whose
// weights are all zero are skipped.
void WeightedCodewordSumRef(const float* weights, int gp, int group,
                            const float* cb, int64_t rows, int dim, float* out);
void WeightedCodewordSum(const float* weights, int gp, int group,
                         const float* cb, int64_t rows, int dim, float* out);

}  // namespace vqkv::cpu

#endif  // VQKV_KERNELS_CPU_CODE_ATTENTION_KERNELS_H_
