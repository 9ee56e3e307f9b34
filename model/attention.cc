#include "model/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/softmax.h"
#include "model/softmax.h"

namespace vqkv::model {
namespace {

// Queries per tile: bounds the score buffer to (kTile * group) x context and
// keeps the causal waste (scores above the diagonal) to one tile.
constexpr int64_t kTile = 64;

// C[m][c0:c1] (+)= alpha * A[m][k] . B[c0:c1][k]^T, rows of B strided.
void GemmNT(int m, int64_t c0, int64_t c1, int k, float alpha, const float* a,
            int lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) {
  if (c1 <= c0 || m == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m,
              static_cast<int>(c1 - c0), k, alpha, a, lda, b + c0 * ldb,
              static_cast<int>(ldb), beta, c + c0, static_cast<int>(ldc));
}

// C[m][n] += A[m][c0:c1] . B[c0:c1][n], rows of B strided.
void GemmNN(int m, int64_t c0, int64_t c1, int n, const float* a, int64_t lda,
            const float* b, int64_t ldb, float* c, int ldc) {
  if (c1 <= c0 || m == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n,
              static_cast<int>(c1 - c0), 1.0f, a + c0, static_cast<int>(lda),
              b + c0 * ldb, static_cast<int>(ldb), 1.0f, c, ldc);
}

// The queries [i0, i1) when the view carries codes: per query and kv head,
// the softmax state over the coded rows [sinks, DecodedLimit(t)) from
// CodeAttention, merged with the state over the exact rows [0, sinks) and
// [max(limit, sinks), t].
absl::Status CodedRowsAttention(const float* q, int64_t i0, int64_t i1,
                                int64_t pos0, const AttentionShape& shape,
                                const KvCache::LayerView& view, float* out,
                                AttentionScratch* scratch) {
  const int kv_heads = shape.kv_heads;
  const int hd = shape.head_dim;
  const int group = shape.heads / kv_heads;
  const int64_t kv_row = int64_t{kv_heads} * hd;
  const int64_t q_row = int64_t{shape.heads} * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const KvCache::LayerView::CodedRows& c = view.coded;
  AttentionPartial& part = scratch->coded_part;
  AttentionPartial& exact = scratch->exact_part;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t t = pos0 + i;
    const int64_t lim = view.DecodedLimit(t);
    // Exact rows: [0, e1) and [e2, t].
    const int64_t e1 = std::min(view.sinks, t + 1);
    const int64_t e2 = std::min(std::max(lim, view.sinks), t + 1);
    const int64_t ctx = t + 1;
    scratch->scores.resize(static_cast<size_t>(group) * ctx);
    float* s = scratch->scores.data();
    for (int g = 0; g < kv_heads; ++g) {
      const float* qh = q + i * q_row + int64_t{g} * group * hd;
      if (lim > view.sinks) {
        CodedTokens tok;
        tok.n = lim - view.sinks;
        tok.key_codes = c.key_codes + int64_t{g} * c.key_stages;
        tok.key_stride = int64_t{kv_heads} * c.key_stages;
        tok.value_codes = c.value_codes + int64_t{g} * c.value_stages;
        tok.value_stride = int64_t{kv_heads} * c.value_stages;
        if (c.sketch != nullptr) {
          tok.sketch = c.sketch + int64_t{g} * c.sketch_bytes;
          tok.sketch_stride = int64_t{kv_heads} * c.sketch_bytes;
        }
        if (absl::Status st = c.heads[g].Attend(qh, group, scale, tok, &part,
                                                &scratch->code_scratch);
            !st.ok()) {
          return st;
        }
      } else {
        part.Reset(group, hd);
      }
      const float* ke = view.keys + int64_t{g} * hd;
      const float* ve = view.values + int64_t{g} * hd;
      GemmNT(group, 0, e1, hd, scale, qh, hd, ke, kv_row, 0.0f, s, ctx);
      GemmNT(group, e2, ctx, hd, scale, qh, hd, ke, kv_row, 0.0f, s, ctx);
      exact.Reset(group, hd);
      for (int h = 0; h < group; ++h) {
        float* row = s + int64_t{h} * ctx;
        float mx = exact.max[h];
        for (int64_t j = 0; j < e1; ++j) mx = std::max(mx, row[j]);
        for (int64_t j = e2; j < ctx; ++j) mx = std::max(mx, row[j]);
        if (e1 == 0 && e2 == ctx) continue;  // no exact rows
        for (int64_t j = 0; j < e1; ++j) row[j] -= mx;
        for (int64_t j = e2; j < ctx; ++j) row[j] -= mx;
        exact.max[h] = mx;
        exact.sum[h] =
            cpu::ExpInPlace(row, e1) + cpu::ExpInPlace(row + e2, ctx - e2);
      }
      GemmNN(group, 0, e1, hd, s, ctx, ve, kv_row, exact.out.data(), hd);
      GemmNN(group, e2, ctx, hd, s, ctx, ve, kv_row, exact.out.data(), hd);
      if (absl::Status st = MergeAttentionPartial(exact, &part); !st.ok()) {
        return st;
      }
      part.Normalize(out + i * q_row + int64_t{g} * group * hd);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CausalAttention(const float* q, int64_t n, int64_t pos0,
                             const AttentionShape& shape,
                             const KvCache::LayerView& view, float* out,
                             AttentionScratch* scratch) {
  const int heads = shape.heads;
  const int kv_heads = shape.kv_heads;
  const int hd = shape.head_dim;
  if (heads <= 0 || kv_heads <= 0 || hd <= 0 || heads % kv_heads != 0) {
    return absl::InvalidArgumentError("bad attention shape");
  }
  if (view.tokens < pos0 + n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV view holds ", view.tokens, " tokens, attention needs ", pos0 + n));
  }
  const int group = heads / kv_heads;
  const int64_t kv_row = int64_t{kv_heads} * hd;
  const int64_t q_row = int64_t{heads} * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t sinks = view.sinks;
  if (n > 0 && view.DecodedLimit(pos0 + n - 1) > view.decoded_end &&
      view.DecodedLimit(pos0 + n - 1) > sinks) {
    return absl::FailedPreconditionError(absl::StrCat(
        "attention at position ", pos0 + n - 1, " needs decoded rows up to ",
        view.DecodedLimit(pos0 + n - 1), " but only ", view.decoded_end,
        " are decoded"));
  }

  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const int64_t i1 = std::min(n, i0 + kTile);
    const int rows = static_cast<int>((i1 - i0) * group);
    const int64_t ctx = pos0 + i1;  // keys [0, ctx)
    // Every query of the tile reads [sinks, d_lo) decoded; the last one
    // reads up to d_hi. Rows of [d_lo, d_hi) are decoded for some queries
    // only.
    const int64_t d_lo = view.DecodedLimit(pos0 + i0);
    const int64_t d_hi = view.DecodedLimit(pos0 + i1 - 1);
    const bool any_decoded = d_hi > sinks;
    if (any_decoded && view.coded.heads != nullptr) {
      if (absl::Status st =
              CodedRowsAttention(q, i0, i1, pos0, shape, view, out, scratch);
          !st.ok()) {
        return st;
      }
      continue;
    }

    scratch->q.resize(static_cast<size_t>(rows) * hd);
    scratch->scores.resize(static_cast<size_t>(rows) * ctx);
    scratch->out.resize(static_cast<size_t>(rows) * hd);
    float* qg = scratch->q.data();
    float* s = scratch->scores.data();
    float* og = scratch->out.data();

    for (int g = 0; g < kv_heads; ++g) {
      // Row r = (i - i0) * group + h holds query head g * group + h.
      for (int64_t i = i0; i < i1; ++i) {
        std::memcpy(qg + (i - i0) * group * hd,
                    q + i * q_row + int64_t{g} * group * hd,
                    sizeof(float) * group * hd);
      }
      const float* ke = view.keys + int64_t{g} * hd;
      const float* ve = view.values + int64_t{g} * hd;
      const float* kd = nullptr;
      const float* vd = nullptr;
      const float* k = ke;
      const float* v = ve;
      int64_t ld = kv_row;
      if (any_decoded) {
        // The tile's common view: exact rows except [sinks, d_lo), which
        // every query reads decoded. Per-query differences in [d_lo, d_hi)
        // are patched below, only where the decoded row differs from the
        // exact one (so a lossless codec gives bit-identical results).
        kd = view.decoded_keys + int64_t{g} * hd;
        vd = view.decoded_values + int64_t{g} * hd;
        scratch->merged_k.resize(static_cast<size_t>(ctx) * hd);
        scratch->merged_v.resize(static_cast<size_t>(ctx) * hd);
        for (int64_t j = 0; j < ctx; ++j) {
          const bool dec = j >= sinks && j < d_lo;
          std::memcpy(scratch->merged_k.data() + j * hd,
                      (dec ? kd : ke) + j * kv_row, sizeof(float) * hd);
          std::memcpy(scratch->merged_v.data() + j * hd,
                      (dec ? vd : ve) + j * kv_row, sizeof(float) * hd);
        }
        k = scratch->merged_k.data();
        v = scratch->merged_v.data();
        ld = hd;
        scratch->key_differs.assign(static_cast<size_t>(d_hi - d_lo), 0);
        scratch->value_differs.assign(static_cast<size_t>(d_hi - d_lo), 0);
        for (int64_t j = d_lo; j < d_hi; ++j) {
          scratch->key_differs[j - d_lo] =
              std::memcmp(kd + j * kv_row, ke + j * kv_row,
                          sizeof(float) * hd) != 0;
          scratch->value_differs[j - d_lo] =
              std::memcmp(vd + j * kv_row, ve + j * kv_row,
                          sizeof(float) * hd) != 0;
        }
      }
      GemmNT(rows, 0, ctx, hd, scale, qg, hd, k, ld, 0.0f, s, ctx);
      for (int r = 0; r < rows; ++r) {
        const int64_t t = pos0 + i0 + r / group;
        float* row = s + int64_t{r} * ctx;
        if (any_decoded) {
          const float* qr = qg + int64_t{r} * hd;
          const int64_t lim = view.DecodedLimit(t);
          for (int64_t j = d_lo; j < lim; ++j) {
            if (!scratch->key_differs[j - d_lo]) continue;
            const float* kj = kd + j * kv_row;
            float dot = 0.0f;
            for (int x = 0; x < hd; ++x) dot += qr[x] * kj[x];
            row[j] = scale * dot;
          }
        }
        SoftmaxInPlace(row, t + 1);
        std::fill(row + t + 1, row + ctx, 0.0f);
      }
      std::fill(og, og + static_cast<size_t>(rows) * hd, 0.0f);
      GemmNN(rows, 0, ctx, hd, s, ctx, v, ld, og, hd);
      if (any_decoded) {
        // Queries that read a row of [d_lo, d_hi) decoded got its exact
        // value from the common view: add p * (decoded - exact).
        for (int r = 0; r < rows; ++r) {
          const int64_t t = pos0 + i0 + r / group;
          const float* prow = s + int64_t{r} * ctx;
          float* orow = og + int64_t{r} * hd;
          const int64_t lim = view.DecodedLimit(t);
          for (int64_t j = d_lo; j < lim; ++j) {
            if (!scratch->value_differs[j - d_lo] || prow[j] == 0.0f) continue;
            const float* a = vd + j * kv_row;
            const float* b = ve + j * kv_row;
            for (int x = 0; x < hd; ++x) orow[x] += prow[j] * (a[x] - b[x]);
          }
        }
      }
      for (int64_t i = i0; i < i1; ++i) {
        std::memcpy(out + i * q_row + int64_t{g} * group * hd,
                    og + (i - i0) * group * hd, sizeof(float) * group * hd);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace vqkv::model
