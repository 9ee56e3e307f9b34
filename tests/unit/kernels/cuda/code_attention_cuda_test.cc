// Attention over codes on the GPU (kernels/cuda/code_attention_cuda.cuh)
// against two scalar references computed here in double precision:
//   - the method itself (per-stage tables q . codeword, logits as sums of
//     look-ups, weights summed per (value stage, codeword), times the value
//     codebooks), which is the definition of CodeAttention::AttendRef;
//   - decode-then-attend: keys and values decoded to float
//     (cpu::RvqDecodeRef), then plain softmax attention.
// Tolerances (the GPU computes in float32, with atomic sums): the maximum
// within 1e-4 * max(1, |max|); the sum, brought to the reference's maximum,
// within 5e-4 relative; the normalized output out / sum within 2e-4 times a
// bound on any value component (sum over stages of the largest |codebook
// entry|). An indexing error moves these by orders of magnitude more.
// The plain fp16 attention (LaunchDenseAttentionHalf) is checked the same
// way after GPU decoding (LaunchRvqDecodeHalf), against a reference over the
// very fp16 keys and values it read.
#include "kernels/cuda/code_attention_cuda.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/rvq_kernels.h"
#include "kernels/cuda/rvq_cuda.cuh"
#include "kernels/fp16.h"
#include "tests/testing/mini_test.h"
#include "tests/unit/kernels/cuda/cuda_test_util.h"

namespace vqkv::cuda {
namespace {

constexpr double kMaxTol = 1e-4;
constexpr double kSumTol = 5e-4;
constexpr double kOutTol = 2e-4;

struct Shape {
  int D, group, nk, kk, nv, kv;
};

// The paper's configurations.
constexpr Shape kD64{64, 1, 28, 1024, 8, 512};
constexpr Shape kD128{128, 1, 56, 1024, 16, 512};

Shape WithGroup(Shape s, int group) {
  s.group = group;
  return s;
}

std::string Describe(const Shape& s) {
  return "D " + std::to_string(s.D) + ", group " + std::to_string(s.group) +
         ", keys " + std::to_string(s.nk) + "x" + std::to_string(s.kk) +
         ", values " + std::to_string(s.nv) + "x" + std::to_string(s.kv);
}

// Which problems have their own codebooks.
enum class Books { kShared, kPerOuter, kPerProblem };

// outer x inner problems of n tokens. Codes are laid out like UnpackVqCodes
// ([outer][token][inner][stages]) plus `pad` unused codes after each token's
// row, so token strides exceed inner * stages when pad > 0.
struct Problem {
  Shape s;
  int outer, inner;
  int64_t n;
  int pad;
  Books books;
  float scale;
  std::vector<float> q;          // [P][group][D]
  std::vector<uint16_t> kcodes;  // [outer][n][key_row]
  std::vector<uint16_t> vcodes;  // [outer][n][value_row]
  std::vector<float> kcb, vcb;   // [sets][stages][K][D]
  double value_bound = 0;        // >= any |value component|

  int problems() const { return outer * inner; }
  int64_t key_row() const { return int64_t{inner} * s.nk + pad; }
  int64_t value_row() const { return int64_t{inner} * s.nv + pad; }
  int sets() const {
    return books == Books::kShared     ? 1
           : books == Books::kPerOuter ? outer
                                       : outer * inner;
  }
  int set_of(int o, int i) const {
    return books == Books::kShared     ? 0
           : books == Books::kPerOuter ? o
                                       : o * inner + i;
  }
  size_t kset() const { return size_t(s.nk) * s.kk * s.D; }
  size_t vset() const { return size_t(s.nv) * s.kv * s.D; }
  const uint16_t* key(int o, int i, int64_t t) const {
    return &kcodes[(o * n + t) * key_row() + int64_t{i} * s.nk];
  }
  const uint16_t* value(int o, int i, int64_t t) const {
    return &vcodes[(o * n + t) * value_row() + int64_t{i} * s.nv];
  }
};

// Codebooks whose scale shrinks stage by stage like fitted RVQ codebooks;
// uniform codes, `bad_per_mille` of them >= K (they must contribute nothing).
Problem MakeProblem(const Shape& s, int outer, int inner, int64_t n,
                    uint32_t seed, Books books = Books::kShared, int pad = 0,
                    int bad_per_mille = 0) {
  Problem p{s,  outer, inner, n,  pad, books, 1.0f / std::sqrt(float(s.D)),
            {}, {},    {},    {}, {},  0};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  p.q.resize(size_t(p.problems()) * s.group * s.D);
  for (float& x : p.q) x = 2.0f * normal(rng);
  auto fill_books = [&](std::vector<float>* cb, int stages, int K,
                        bool values) {
    cb->resize(size_t(p.sets()) * stages * K * s.D);
    double bound = 0;
    for (int set = 0; set < p.sets(); ++set) {
      double set_bound = 0;
      float stage_scale = 1.0f;
      for (int st = 0; st < stages; ++st, stage_scale *= 0.8f) {
        float* c = &(*cb)[((size_t(set) * stages + st) * K) * s.D];
        float mx = 0;
        for (int64_t i = 0; i < int64_t{K} * s.D; ++i) {
          c[i] = stage_scale * normal(rng);
          mx = std::max(mx, std::abs(c[i]));
        }
        set_bound += mx;
      }
      bound = std::max(bound, set_bound);
    }
    if (values) p.value_bound = bound;
  };
  fill_books(&p.kcb, s.nk, s.kk, false);
  fill_books(&p.vcb, s.nv, s.kv, true);
  auto fill_codes = [&](std::vector<uint16_t>* codes, int64_t row, int K) {
    codes->resize(size_t(outer) * n * row);
    std::uniform_int_distribution<int> code(0, K - 1), bad(K, 65535);
    std::uniform_int_distribution<int> mille(0, 999);
    for (uint16_t& c : *codes) {
      c = uint16_t(bad_per_mille > 0 && K < 65536 && mille(rng) < bad_per_mille
                       ? bad(rng)
                       : code(rng));
    }
  };
  fill_codes(&p.kcodes, p.key_row(), s.kk);
  fill_codes(&p.vcodes, p.value_row(), s.kv);
  return p;
}

struct Partial {
  std::vector<double> max, sum, out;  // [P][group], [P][group][D]
};

// The method in double: tables, look-ups, per-codeword weights, products.
Partial CodesReference(const Problem& pb) {
  const Shape& s = pb.s;
  const int P = pb.problems();
  Partial r{std::vector<double>(size_t(P) * s.group),
            std::vector<double>(size_t(P) * s.group),
            std::vector<double>(size_t(P) * s.group * s.D)};
  std::vector<double> table(size_t(s.nk) * s.kk), x(pb.n),
      w(size_t(s.nv) * s.kv);
  for (int o = 0; o < pb.outer; ++o) {
    for (int i = 0; i < pb.inner; ++i) {
      const int p = o * pb.inner + i;
      const float* kcb = &pb.kcb[pb.set_of(o, i) * pb.kset()];
      const float* vcb = &pb.vcb[pb.set_of(o, i) * pb.vset()];
      for (int h = 0; h < s.group; ++h) {
        const float* q = &pb.q[(size_t(p) * s.group + h) * s.D];
        for (size_t row = 0; row < table.size(); ++row) {
          double dot = 0;
          for (int d = 0; d < s.D; ++d)
            dot += double(q[d]) * kcb[row * s.D + d];
          table[row] = pb.scale * dot;
        }
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t t = 0; t < pb.n; ++t) {
          const uint16_t* c = pb.key(o, i, t);
          double acc = 0;
          for (int st = 0; st < s.nk; ++st) {
            if (c[st] < s.kk) acc += table[size_t(st) * s.kk + c[st]];
          }
          x[t] = acc;
          mx = std::max(mx, acc);
        }
        std::fill(w.begin(), w.end(), 0.0);
        double sum = 0;
        for (int64_t t = 0; t < pb.n; ++t) {
          const double e = std::exp(x[t] - mx);
          sum += e;
          const uint16_t* c = pb.value(o, i, t);
          for (int st = 0; st < s.nv; ++st) {
            if (c[st] < s.kv) w[size_t(st) * s.kv + c[st]] += e;
          }
        }
        const size_t head = size_t(p) * s.group + h;
        r.max[head] = mx;
        r.sum[head] = sum;
        double* out = &r.out[head * s.D];
        for (size_t row = 0; row < w.size(); ++row) {
          if (w[row] == 0) continue;
          for (int d = 0; d < s.D; ++d) out[d] += w[row] * vcb[row * s.D + d];
        }
      }
    }
  }
  return r;
}

// Softmax attention in double over given float keys and values
// [P][n][D] of every problem.
Partial AttendReference(const Problem& pb, const std::vector<float>& keys,
                        const std::vector<float>& values) {
  const Shape& s = pb.s;
  const int P = pb.problems();
  Partial r{std::vector<double>(size_t(P) * s.group),
            std::vector<double>(size_t(P) * s.group),
            std::vector<double>(size_t(P) * s.group * s.D)};
  std::vector<double> x(pb.n);
  for (int p = 0; p < P; ++p) {
    for (int h = 0; h < s.group; ++h) {
      const float* q = &pb.q[(size_t(p) * s.group + h) * s.D];
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < pb.n; ++t) {
        const float* k = &keys[(size_t(p) * pb.n + t) * s.D];
        double dot = 0;
        for (int d = 0; d < s.D; ++d) dot += double(q[d]) * k[d];
        x[t] = pb.scale * dot;
        mx = std::max(mx, x[t]);
      }
      const size_t head = size_t(p) * s.group + h;
      double sum = 0;
      double* out = &r.out[head * s.D];
      for (int64_t t = 0; t < pb.n; ++t) {
        const double e = std::exp(x[t] - mx);
        sum += e;
        const float* v = &values[(size_t(p) * pb.n + t) * s.D];
        for (int d = 0; d < s.D; ++d) out[d] += e * v[d];
      }
      r.max[head] = mx;
      r.sum[head] = sum;
    }
  }
  return r;
}

// Keys and values of every problem decoded on the CPU: [P][n][D] each.
void DecodeOnCpu(const Problem& pb, std::vector<float>* keys,
                 std::vector<float>* values) {
  const Shape& s = pb.s;
  keys->assign(size_t(pb.problems()) * pb.n * s.D, 0.0f);
  values->assign(keys->size(), 0.0f);
  std::vector<uint16_t> kc(size_t(pb.n) * s.nk), vc(size_t(pb.n) * s.nv);
  for (int o = 0; o < pb.outer; ++o) {
    for (int i = 0; i < pb.inner; ++i) {
      for (int64_t t = 0; t < pb.n; ++t) {
        std::copy_n(pb.key(o, i, t), s.nk, &kc[t * s.nk]);
        std::copy_n(pb.value(o, i, t), s.nv, &vc[t * s.nv]);
      }
      const size_t at = size_t(o * pb.inner + i) * pb.n * s.D;
      cpu::RvqDecodeRef(kc.data(), pb.n, s.nk,
                        &pb.kcb[pb.set_of(o, i) * pb.kset()], s.kk, s.D,
                        keys->data() + at);
      cpu::RvqDecodeRef(vc.data(), pb.n, s.nv,
                        &pb.vcb[pb.set_of(o, i) * pb.vset()], s.kv, s.D,
                        values->data() + at);
    }
  }
}

struct GpuPartial {
  std::vector<float> max, sum, out;
};

bool Ok(cudaError_t e, const char* what) {
  EXPECT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e);
  return e == cudaSuccess;
}

// Device copies of a problem's inputs and the launch parameters over them.
struct DeviceProblem {
  DeviceBuffer<float> q, kcb, vcb, out_max, out_sum, out;
  DeviceBuffer<uint16_t> kcodes, vcodes;
  CodeAttentionParams params;

  explicit DeviceProblem(const Problem& pb)
      : q(pb.q.size()),
        kcb(pb.kcb.size()),
        vcb(pb.vcb.size()),
        out_max(size_t(pb.problems()) * pb.s.group),
        out_sum(size_t(pb.problems()) * pb.s.group),
        out(size_t(pb.problems()) * pb.s.group * pb.s.D),
        kcodes(pb.kcodes.size()),
        vcodes(pb.vcodes.size()) {
    const Shape& s = pb.s;
    CodeAttentionParams& a = params;
    a.head_dim = s.D;
    a.group = s.group;
    a.key_stages = s.nk;
    a.key_codewords = s.kk;
    a.value_stages = s.nv;
    a.value_codewords = s.kv;
    a.outer = pb.outer;
    a.inner = pb.inner;
    a.tokens = pb.n;
    a.scale = pb.scale;
    a.q = q.get();
    a.key_codes = kcodes.get();
    a.key_stride = pb.key_row();
    a.key_codes_stride = {pb.n * pb.key_row(), s.nk};
    a.value_codes = vcodes.get();
    a.value_stride = pb.value_row();
    a.value_codes_stride = {pb.n * pb.value_row(), s.nv};
    a.key_codebooks = kcb.get();
    a.value_codebooks = vcb.get();
    const int64_t ks = int64_t(pb.kset()), vs = int64_t(pb.vset());
    if (pb.books == Books::kPerOuter) {
      a.key_codebooks_stride = {ks, 0};
      a.value_codebooks_stride = {vs, 0};
    } else if (pb.books == Books::kPerProblem) {
      a.key_codebooks_stride = {ks * pb.inner, ks};
      a.value_codebooks_stride = {vs * pb.inner, vs};
    }
    a.out_max = out_max.get();
    a.out_sum = out_sum.get();
    a.out = out.get();
  }

  bool Upload(const Problem& pb) {
    return Ok(q.Upload(pb.q), "upload q") &&
           Ok(kcb.Upload(pb.kcb), "upload key codebooks") &&
           Ok(vcb.Upload(pb.vcb), "upload value codebooks") &&
           Ok(kcodes.Upload(pb.kcodes), "upload key codes") &&
           Ok(vcodes.Upload(pb.vcodes), "upload value codes");
  }

  bool Download(GpuPartial* r) {
    return Ok(out_max.Download(&r->max), "download max") &&
           Ok(out_sum.Download(&r->sum), "download sum") &&
           Ok(out.Download(&r->out), "download out");
  }
};

// Attention over codes on the GPU; false (with a test failure) on an error.
bool RunCodes(const Problem& pb, int tokens_per_split, GpuPartial* r) {
  DeviceProblem dp(pb);
  dp.params.tokens_per_split = tokens_per_split;
  if (!dp.Upload(pb)) return false;
  const size_t ws_bytes = CodeAttentionWorkspaceBytes(dp.params);
  EXPECT_NE(ws_bytes, SIZE_MAX);
  if (ws_bytes == SIZE_MAX) return false;
  DeviceBuffer<char> ws(ws_bytes);
  if (ws_bytes > 0 && ws.get() == nullptr) {
    EXPECT_NE(ws.get(), nullptr) << "cudaMalloc of " << ws_bytes << " bytes";
    return false;
  }
  return Ok(LaunchCodeAttention(dp.params, ws.get(), ws_bytes, nullptr),
            "LaunchCodeAttention") &&
         Ok(cudaDeviceSynchronize(), "synchronize") && dp.Download(r);
}

// The GPU partial against a reference (tolerances at the top of the file).
void ExpectMatches(const Problem& pb, const GpuPartial& g, const Partial& r,
                   const char* reference) {
  SCOPED_TRACE(std::string("against ") + reference);
  const int D = pb.s.D;
  const size_t heads = size_t(pb.problems()) * pb.s.group;
  ASSERT_EQ(g.max.size(), heads);
  for (size_t h = 0; h < heads; ++h) {
    const double rm = r.max[h], gm = g.max[h];
    ASSERT_LE(std::abs(gm - rm), kMaxTol * std::max(1.0, std::abs(rm)))
        << "max of head " << h << " (problem " << h / pb.s.group << ")";
    const double gs = g.sum[h] * std::exp(gm - rm);
    ASSERT_LE(std::abs(gs - r.sum[h]), kSumTol * r.sum[h])
        << "sum of head " << h << ": " << g.sum[h] << " at max " << gm << " vs "
        << r.sum[h] << " at max " << rm;
    for (int d = 0; d < D; ++d) {
      const double gy = g.out[h * D + d] / double(g.sum[h]);
      const double ry = r.out[h * D + d] / r.sum[h];
      ASSERT_LE(std::abs(gy - ry), kOutTol * pb.value_bound)
          << "out / sum of head " << h << " dim " << d << ": " << gy << " vs "
          << ry;
    }
  }
}

void ExpectCodesMatch(const Problem& pb, int tokens_per_split,
                      bool decode_too) {
  GpuPartial g;
  if (!RunCodes(pb, tokens_per_split, &g)) return;
  ExpectMatches(pb, g, CodesReference(pb), "the scalar codes reference");
  if (decode_too) {
    std::vector<float> keys, values;
    DecodeOnCpu(pb, &keys, &values);
    ExpectMatches(pb, g, AttendReference(pb, keys, values),
                  "decode-then-attend");
  }
}

TEST(CodeAttentionCudaTest, TokenCountsAroundTheSplitSize) {
  SKIP_WITHOUT_GPU();
  const Shape s = WithGroup(kD64, 4);
  for (const int64_t n : {1, 2, 31, 255, 256, 257, 1023, 1024, 1025, 3001}) {
    for (const int tps : {0, 256}) {  // 0: the default, 1024
      SCOPED_TRACE(Describe(s) + ", tokens " + std::to_string(n) +
                   ", tokens_per_split " + std::to_string(tps));
      ExpectCodesMatch(MakeProblem(s, 1, 1, n, uint32_t(n * 3 + tps)), tps,
                       /*decode_too=*/n <= 1025);
    }
  }
}

TEST(CodeAttentionCudaTest, PaperShapesGroupsAndProblems) {
  SKIP_WITHOUT_GPU();
  // D=128 with group 8 needs 256 KiB of weight tables: the global-memory
  // accumulation path. Group 4 uses shared memory (128 KiB, opted in).
  struct Case {
    Shape s;
    int outer, inner;
    Books books;
  };
  const Case cases[] = {
      {WithGroup(kD64, 1), 1, 1, Books::kShared},
      {WithGroup(kD64, 4), 2, 2, Books::kPerProblem},
      {WithGroup(kD64, 8), 1, 3, Books::kShared},
      {WithGroup(kD128, 1), 1, 2, Books::kPerProblem},
      {WithGroup(kD128, 4), 2, 2, Books::kPerOuter},
      {WithGroup(kD128, 8), 1, 1, Books::kShared},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(Describe(c.s) + ", problems " + std::to_string(c.outer) + "x" +
                 std::to_string(c.inner));
    ExpectCodesMatch(MakeProblem(c.s, c.outer, c.inner, 1500,
                                 uint32_t(c.s.D + c.s.group * 7 + c.inner),
                                 c.books, /*pad=*/3),
                     0, /*decode_too=*/true);
  }
}

TEST(CodeAttentionCudaTest, LongContexts) {
  SKIP_WITHOUT_GPU();
  struct Case {
    Shape s;
    int64_t n;
  };
  const Case cases[] = {{WithGroup(kD128, 4), 65536},
                        {WithGroup(kD64, 2), 65535},
                        {WithGroup(kD64, 8), 40000}};
  for (const Case& c : cases) {
    SCOPED_TRACE(Describe(c.s) + ", tokens " + std::to_string(c.n));
    ExpectCodesMatch(MakeProblem(c.s, 1, 1, c.n, uint32_t(c.n)), 0,
                     /*decode_too=*/false);
  }
}

TEST(CodeAttentionCudaTest, OddShapesMaxGroupAndOutOfRangeCodes) {
  SKIP_WITHOUT_GPU();
  // Group 12 spans two head blocks of the output kernel; D 80 and 300 are
  // not multiples of the warp; codebook sizes not powers of two; 1% of the
  // codes out of range contribute nothing.
  const Shape shapes[] = {{80, 12, 5, 300, 3, 100},
                          {300, 3, 4, 64, 2, 1000},
                          {32, 16, 7, 256, 4, 256},
                          {512, 2, 2, 128, 2, 64}};
  for (const Shape& s : shapes) {
    SCOPED_TRACE(Describe(s));
    ExpectCodesMatch(MakeProblem(s, 2, 1, 777, uint32_t(s.D * s.group),
                                 Books::kPerOuter, /*pad=*/1,
                                 /*bad_per_mille=*/10),
                     100, /*decode_too=*/false);
  }
}

TEST(CodeAttentionCudaTest, ZeroTokensGiveTheEmptyPartial) {
  SKIP_WITHOUT_GPU();
  const Problem pb = MakeProblem(WithGroup(kD64, 4), 1, 2, 0, 1);
  DeviceProblem dp(pb);
  // Garbage first: the launch must overwrite every output.
  const std::vector<float> junk_heads(8, 7.0f), junk_out(8 * 64, 7.0f);
  ASSERT_CUDA(dp.out_max.Upload(junk_heads));
  ASSERT_CUDA(dp.out_sum.Upload(junk_heads));
  ASSERT_CUDA(dp.out.Upload(junk_out));
  EXPECT_EQ(CodeAttentionWorkspaceBytes(dp.params), size_t{0});
  ASSERT_CUDA(LaunchCodeAttention(dp.params, nullptr, 0, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  GpuPartial g;
  ASSERT_TRUE(dp.Download(&g));
  for (int h = 0; h < 8; ++h) {
    EXPECT_TRUE(std::isinf(g.max[h]) && g.max[h] < 0) << "head " << h;
    EXPECT_EQ(g.sum[h], 0.0f) << "head " << h;
  }
  for (float v : g.out) ASSERT_EQ(v, 0.0f);
}

// Decode on the GPU (fp16), then the plain fp16 attention: the peer of the
// benchmark, against a double reference over the same fp16 keys and values.
TEST(DenseAttentionCudaTest, DecodeThenAttendMatchesReference) {
  SKIP_WITHOUT_GPU();
  struct Case {
    Shape s;
    int inner;
    int64_t n;
    int tps;
  };
  const Case cases[] = {{WithGroup(kD64, 1), 1, 1, 0},
                        {WithGroup(kD64, 4), 2, 300, 0},
                        {WithGroup(kD128, 4), 2, 4097, 0},
                        {WithGroup(kD128, 8), 1, 1000, 100},
                        {{80, 12, 3, 64, 2, 64}, 1, 513, 0}};
  for (const Case& c : cases) {
    const Shape& s = c.s;
    SCOPED_TRACE(Describe(s) + ", kv heads " + std::to_string(c.inner) +
                 ", tokens " + std::to_string(c.n));
    // Shared codebooks, so one decode call covers every head.
    const Problem pb = MakeProblem(s, 1, c.inner, c.n, uint32_t(c.n + s.D));
    DeviceProblem dp(pb);
    ASSERT_TRUE(dp.Upload(pb));
    const size_t kv = size_t(c.n) * c.inner * s.D;  // [token][head][D]
    DeviceBuffer<uint16_t> keys(kv), values(kv);
    ASSERT_CUDA(LaunchRvqDecodeHalf(dp.kcodes.get(), c.n * c.inner, s.nk,
                                    dp.kcb.get(), s.kk, s.D, keys.get(),
                                    nullptr));
    ASSERT_CUDA(LaunchRvqDecodeHalf(dp.vcodes.get(), c.n * c.inner, s.nv,
                                    dp.vcb.get(), s.kv, s.D, values.get(),
                                    nullptr));
    DenseAttentionParams a;
    a.head_dim = s.D;
    a.group = s.group;
    a.outer = 1;
    a.inner = c.inner;
    a.tokens = c.n;
    a.tokens_per_split = c.tps;
    a.scale = pb.scale;
    a.q = dp.q.get();
    a.keys = keys.get();
    a.key_stride = int64_t{c.inner} * s.D;
    a.keys_stride = {0, s.D};
    a.values = values.get();
    a.value_stride = int64_t{c.inner} * s.D;
    a.values_stride = {0, s.D};
    a.out_max = dp.out_max.get();
    a.out_sum = dp.out_sum.get();
    a.out = dp.out.get();
    const size_t ws_bytes = DenseAttentionWorkspaceBytes(a);
    ASSERT_NE(ws_bytes, SIZE_MAX);
    DeviceBuffer<char> ws(ws_bytes);
    ASSERT_CUDA(LaunchDenseAttentionHalf(a, ws.get(), ws_bytes, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    GpuPartial g;
    ASSERT_TRUE(dp.Download(&g));

    // The reference reads the GPU's fp16 keys and values, regrouped
    // [head][token][D].
    std::vector<uint16_t> hk, hv;
    ASSERT_CUDA(keys.Download(&hk));
    ASSERT_CUDA(values.Download(&hv));
    std::vector<float> fk(kv), fv(kv);
    for (int64_t t = 0; t < c.n; ++t) {
      for (int i = 0; i < c.inner; ++i) {
        for (int d = 0; d < s.D; ++d) {
          const size_t from = (size_t(t) * c.inner + i) * s.D + d;
          const size_t to = (size_t(i) * c.n + t) * s.D + d;
          fk[to] = HalfToFloatRef(hk[from]);
          fv[to] = HalfToFloatRef(hv[from]);
        }
      }
    }
    ExpectMatches(pb, g, AttendReference(pb, fk, fv),
                  "attention over the fp16 keys and values");
  }
}

TEST(DenseAttentionCudaTest, ZeroTokensGiveTheEmptyPartial) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<float> mx(2), sum(2), out(2 * 64);
  ASSERT_CUDA(mx.Upload(std::vector<float>(2, 7.0f)));
  ASSERT_CUDA(sum.Upload(std::vector<float>(2, 7.0f)));
  ASSERT_CUDA(out.Upload(std::vector<float>(2 * 64, 7.0f)));
  DenseAttentionParams a;
  a.head_dim = 64;
  a.group = 2;
  a.key_stride = a.value_stride = 64;
  a.out_max = mx.get();
  a.out_sum = sum.get();
  a.out = out.get();
  EXPECT_EQ(DenseAttentionWorkspaceBytes(a), size_t{0});
  ASSERT_CUDA(LaunchDenseAttentionHalf(a, nullptr, 0, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<float> hm, hs, ho;
  ASSERT_CUDA(mx.Download(&hm));
  ASSERT_CUDA(sum.Download(&hs));
  ASSERT_CUDA(out.Download(&ho));
  for (int h = 0; h < 2; ++h) {
    EXPECT_TRUE(std::isinf(hm[h]) && hm[h] < 0);
    EXPECT_EQ(hs[h], 0.0f);
  }
  for (float v : ho) ASSERT_EQ(v, 0.0f);
}

// Argument checks happen before any CUDA call, so this runs without a GPU
// (fake, never dereferenced pointers).
TEST(CodeAttentionCudaTest, BadArgumentsAreRejectedBeforeLaunch) {
  float f = 0;
  uint16_t c = 0;
  char w = 0;
  CodeAttentionParams good;
  good.head_dim = 64;
  good.group = 4;
  good.key_stages = 28;
  good.key_codewords = 1024;
  good.value_stages = 8;
  good.value_codewords = 512;
  good.tokens = 100;
  good.q = &f;
  good.key_codes = &c;
  good.key_stride = 28;
  good.value_codes = &c;
  good.value_stride = 8;
  good.key_codebooks = &f;
  good.value_codebooks = &f;
  good.out_max = good.out_sum = good.out = &f;
  const size_t need = CodeAttentionWorkspaceBytes(good);
  ASSERT_NE(need, SIZE_MAX);
  // Key tables 4 x 28 x 1024, logits 4 x 100, split max 4, weights
  // 4 x 8 x 512 floats, each part rounded up to 256 bytes.
  EXPECT_EQ(need, size_t{458752 + 1792 + 256 + 65536});

  using Edit = void (*)(CodeAttentionParams*);
  const Edit edits[] = {
      [](CodeAttentionParams* a) { a->head_dim = 0; },
      [](CodeAttentionParams* a) { a->head_dim = kMaxAttentionHeadDim + 1; },
      [](CodeAttentionParams* a) { a->group = 0; },
      [](CodeAttentionParams* a) { a->group = kMaxAttentionGroup + 1; },
      [](CodeAttentionParams* a) { a->key_stages = 0; },
      [](CodeAttentionParams* a) { a->key_codewords = 0; },
      [](CodeAttentionParams* a) { a->key_codewords = 65537; },
      [](CodeAttentionParams* a) { a->value_stages = 0; },
      [](CodeAttentionParams* a) { a->value_codewords = 65537; },
      [](CodeAttentionParams* a) { a->outer = -1; },
      [](CodeAttentionParams* a) { a->inner = 65536; },
      [](CodeAttentionParams* a) { a->tokens = -1; },
      [](CodeAttentionParams* a) { a->tokens_per_split = -1; },
      [](CodeAttentionParams* a) { a->key_stride = 27; },
      [](CodeAttentionParams* a) { a->value_stride = 7; },
      [](CodeAttentionParams* a) { a->key_codes_stride.outer = -1; },
      [](CodeAttentionParams* a) { a->value_codebooks_stride.inner = -2; },
      [](CodeAttentionParams* a) { a->q = nullptr; },
      [](CodeAttentionParams* a) { a->key_codes = nullptr; },
      [](CodeAttentionParams* a) { a->value_codes = nullptr; },
      [](CodeAttentionParams* a) { a->key_codebooks = nullptr; },
      [](CodeAttentionParams* a) { a->value_codebooks = nullptr; },
      [](CodeAttentionParams* a) { a->out_max = nullptr; },
      [](CodeAttentionParams* a) { a->out_sum = nullptr; },
      [](CodeAttentionParams* a) { a->out = nullptr; },
  };
  int i = 0;
  for (const Edit edit : edits) {
    CodeAttentionParams a = good;
    edit(&a);
    EXPECT_EQ(LaunchCodeAttention(a, &w, SIZE_MAX, nullptr),
              cudaErrorInvalidValue)
        << "edit " << i;
    ++i;
  }
  // The workspace: missing or too small.
  EXPECT_EQ(LaunchCodeAttention(good, nullptr, need, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchCodeAttention(good, &w, need - 1, nullptr),
            cudaErrorInvalidValue);
  // Invalid shapes have no workspace size.
  CodeAttentionParams bad = good;
  bad.group = 0;
  EXPECT_EQ(CodeAttentionWorkspaceBytes(bad), SIZE_MAX);
  // No problems: nothing to do, even without outputs.
  CodeAttentionParams none = good;
  none.outer = 0;
  none.out = nullptr;
  EXPECT_EQ(CodeAttentionWorkspaceBytes(none), size_t{0});
  EXPECT_EQ(LaunchCodeAttention(none, nullptr, 0, nullptr), cudaSuccess);

  DenseAttentionParams d;
  d.head_dim = 64;
  d.group = 2;
  d.tokens = 10;
  d.q = &f;
  d.keys = d.values = &c;
  d.key_stride = d.value_stride = 64;
  d.out_max = d.out_sum = d.out = &f;
  ASSERT_NE(DenseAttentionWorkspaceBytes(d), SIZE_MAX);
  DenseAttentionParams e = d;
  e.key_stride = 63;
  EXPECT_EQ(LaunchDenseAttentionHalf(e, &w, SIZE_MAX, nullptr),
            cudaErrorInvalidValue);
  e = d;
  e.keys = nullptr;
  EXPECT_EQ(LaunchDenseAttentionHalf(e, &w, SIZE_MAX, nullptr),
            cudaErrorInvalidValue);
  e = d;
  e.group = kMaxAttentionGroup + 1;
  EXPECT_EQ(LaunchDenseAttentionHalf(e, &w, SIZE_MAX, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchDenseAttentionHalf(d, &w, 0, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace vqkv::cuda

VQKV_MINI_TEST_MAIN()
