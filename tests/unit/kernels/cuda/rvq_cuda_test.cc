// CUDA RVQ kernels against the CPU references (kernels/cpu/rvq_kernels.h).
#include "kernels/cuda/rvq_cuda.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/rvq_kernels.h"
#include "kernels/cuda/cuda_device.h"
#include "kernels/fp16.h"
#include "tests/testing/mini_test.h"

namespace vqkv::cuda {
namespace {

bool RequireGpu() {
  const char* v = std::getenv("VQKV_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

// Skips the test when there is no GPU, or fails it when the environment sets
// VQKV_REQUIRE_GPU=1 (tests/gpu/run.sh does, so a GPU run cannot pass by
// skipping everything).
#define SKIP_WITHOUT_GPU()                                   \
  do {                                                       \
    std::string why_not_;                                    \
    if (CudaDeviceCount(&why_not_) == 0) {                   \
      if (RequireGpu()) FAIL() << why_not_;                  \
      GTEST_SKIP() << why_not_ << " (tests/gpu/run.sh runs " \
                   << "this on a GPU machine)";              \
    }                                                        \
  } while (0)

#define ASSERT_CUDA(expr) \
  ASSERT_EQ((expr), cudaSuccess) << cudaGetErrorString(cudaGetLastError())

// Owns a device allocation of n elements of T.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (cudaMalloc(&ptr_, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) {
      ptr_ = nullptr;
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  T* get() const { return ptr_; }
  cudaError_t Upload(const std::vector<T>& v) {
    return cudaMemcpy(ptr_, v.data(), v.size() * sizeof(T),
                      cudaMemcpyHostToDevice);
  }
  cudaError_t Download(std::vector<T>* v) const {
    v->resize(n_);
    return cudaMemcpy(v->data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
  }

 private:
  T* ptr_ = nullptr;
  size_t n_;
};

// Codebooks whose scale shrinks stage by stage, like fitted RVQ codebooks,
// and inputs with per-dimension scales and one outlier dimension, like keys.
struct Problem {
  int dim, K, stages;
  int64_t n;
  std::vector<float> x, codebooks, norms;
};

Problem MakeProblem(int dim, int K, int stages, int64_t n, uint32_t seed) {
  Problem p{dim, K, stages, n, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> scale(dim);
  for (int d = 0; d < dim; ++d) scale[d] = 0.5f + 1.5f * (d % 7) / 7.0f;
  scale[dim / 3] = 8.0f;
  p.x.resize(n * dim);
  for (int64_t i = 0; i < n; ++i)
    for (int d = 0; d < dim; ++d) p.x[i * dim + d] = scale[d] * normal(rng);
  p.codebooks.resize(static_cast<size_t>(stages) * K * dim);
  p.norms.resize(static_cast<size_t>(stages) * K);
  float stage_scale = 1.0f;
  for (int s = 0; s < stages; ++s, stage_scale *= 0.75f) {
    for (int k = 0; k < K; ++k) {
      float* c = &p.codebooks[(static_cast<size_t>(s) * K + k) * dim];
      float norm = 0.0f;
      for (int d = 0; d < dim; ++d) {
        c[d] = stage_scale * scale[d] * normal(rng);
        norm += c[d] * c[d];
      }
      p.norms[static_cast<size_t>(s) * K + k] = norm;
    }
  }
  return p;
}

// Runs the GPU encoder on p.x; returns its codes.
std::vector<uint16_t> GpuEncode(const Problem& p, cudaStream_t stream) {
  std::vector<uint16_t> codes;
  DeviceBuffer<float> x(p.x.size()), cb(p.codebooks.size()),
      norms(p.norms.size());
  DeviceBuffer<uint16_t> d_codes(static_cast<size_t>(p.n) * p.stages);
  EXPECT_EQ(x.Upload(p.x), cudaSuccess);
  EXPECT_EQ(cb.Upload(p.codebooks), cudaSuccess);
  EXPECT_EQ(norms.Upload(p.norms), cudaSuccess);
  EXPECT_EQ(LaunchRvqEncodeGreedy(x.get(), p.n, p.dim, cb.get(), norms.get(),
                                  p.stages, p.K, d_codes.get(), stream),
            cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(d_codes.Download(&codes), cudaSuccess);
  return codes;
}

// Checks GPU codes against the CPU reference. Replaying the GPU's own choices
// on the CPU, every stage's pick must be the nearest codeword up to float
// rounding: its score (norms[k] - 2 <r, c_k>, in double) within tol of the
// best. Near-ties may thus resolve differently (and the vector's later
// stages then diverge), but almost every vector must match exactly.
void ExpectCodesMatchReference(const Problem& p,
                               const std::vector<uint16_t>& gpu) {
  std::vector<uint16_t> ref(static_cast<size_t>(p.n) * p.stages);
  cpu::RvqEncodeGreedyRef(p.x.data(), p.n, p.dim, p.codebooks.data(),
                          p.norms.data(), p.stages, p.K, ref.data());
  int64_t identical = 0;
  std::vector<double> r(p.dim);
  for (int64_t i = 0; i < p.n; ++i) {
    const uint16_t* g = &gpu[i * p.stages];
    identical +=
        std::equal(g, g + p.stages, ref.begin() + i * p.stages) ? 1 : 0;
    for (int d = 0; d < p.dim; ++d) r[d] = p.x[i * p.dim + d];
    for (int s = 0; s < p.stages; ++s) {
      ASSERT_LT(g[s], p.K) << "vector " << i << " stage " << s;
      const float* cb = &p.codebooks[static_cast<size_t>(s) * p.K * p.dim];
      const float* nm = &p.norms[static_cast<size_t>(s) * p.K];
      double best = INFINITY, rr = 0, max_norm = 0;
      std::vector<double> score(p.K);
      for (int d = 0; d < p.dim; ++d) rr += r[d] * r[d];
      for (int k = 0; k < p.K; ++k) {
        double dot = 0;
        for (int d = 0; d < p.dim; ++d) dot += r[d] * cb[k * p.dim + d];
        score[k] = nm[k] - 2 * dot;
        best = std::min(best, score[k]);
        max_norm = std::max<double>(max_norm, nm[k]);
      }
      const double tol = 1e-5 * (rr + max_norm);
      ASSERT_LE(score[g[s]] - best, tol)
          << "vector " << i << " stage " << s << ": GPU chose " << g[s]
          << ", not a near-tie with the nearest codeword";
      for (int d = 0; d < p.dim; ++d) {
        r[d] = static_cast<float>(r[d]) - cb[g[s] * p.dim + d];
      }
    }
  }
  EXPECT_GE(identical, p.n * 98 / 100)
      << "only " << identical << " of " << p.n
      << " vectors got exactly the reference codes";
}

using Shape = std::tuple<int, int, int>;  // dim, K, stages

std::string Describe(const Shape& shape) {
  return "dim " + std::to_string(std::get<0>(shape)) + ", K " +
         std::to_string(std::get<1>(shape)) + ", " +
         std::to_string(std::get<2>(shape)) + " stages";
}

void ExpectEncodeMatchesReference(const Shape& shape) {
  SCOPED_TRACE(Describe(shape));
  const auto [dim, K, stages] = shape;
  // 300 vectors: several full 64-vector tiles and a partial one.
  const Problem p = MakeProblem(dim, K, stages, 300, dim * 7 + K + stages);
  ExpectCodesMatchReference(p, GpuEncode(p, nullptr));
}

TEST(RvqCudaEncodeTest, PaperShapesMatchReferenceUpToNearTies) {
  SKIP_WITHOUT_GPU();
  for (int dim : {64, 128}) {
    for (int K : {256, 512, 1024}) {
      for (int stages : {1, 4, 9}) {
        ExpectEncodeMatchesReference({dim, K, stages});
      }
    }
  }
}

// Dimensions that are not multiples of the 32-dimension chunk, codebooks
// smaller than a tile, and a dimension whose residuals need more than 48 KiB
// of shared memory.
TEST(RvqCudaEncodeTest, OddShapesMatchReferenceUpToNearTies) {
  SKIP_WITHOUT_GPU();
  for (const Shape& shape :
       {Shape{40, 256, 3}, Shape{1, 16, 2}, Shape{96, 2, 5}, Shape{128, 100, 3},
        Shape{256, 256, 2}}) {
    ExpectEncodeMatchesReference(shape);
  }
}

TEST(RvqCudaTest, ExactTiesGoToTheLowestIndex) {
  SKIP_WITHOUT_GPU();
  // Codeword 700 duplicates codeword 5 (and 900 duplicates 300); inputs equal
  // to those codewords tie exactly and must pick 5 and 300 like the
  // reference.
  Problem p = MakeProblem(64, 1024, 1, 4, 3);
  auto copy_codeword = [&](int from, int to) {
    std::copy_n(&p.codebooks[from * 64], 64, &p.codebooks[to * 64]);
    p.norms[to] = p.norms[from];
  };
  copy_codeword(5, 700);
  copy_codeword(300, 900);
  std::copy_n(&p.codebooks[5 * 64], 64, &p.x[0]);
  std::copy_n(&p.codebooks[300 * 64], 64, &p.x[64]);
  std::copy_n(&p.codebooks[700 * 64], 64, &p.x[128]);
  std::copy_n(&p.codebooks[900 * 64], 64, &p.x[192]);
  const std::vector<uint16_t> codes = GpuEncode(p, nullptr);
  std::vector<uint16_t> ref(4);
  cpu::RvqEncodeGreedyRef(p.x.data(), 4, 64, p.codebooks.data(), p.norms.data(),
                          1, 1024, ref.data());
  EXPECT_EQ(codes, (std::vector<uint16_t>{5, 300, 5, 300}));
  EXPECT_EQ(codes, ref);
}

TEST(RvqCudaTest, ErrorFallsAsStagesAreAdded) {
  SKIP_WITHOUT_GPU();
  const Problem p = MakeProblem(64, 256, 8, 256, 17);
  const std::vector<uint16_t> codes = GpuEncode(p, nullptr);
  double prev = INFINITY;
  for (int used = 1; used <= p.stages; ++used) {
    double err = 0;
    for (int64_t i = 0; i < p.n; ++i) {
      for (int d = 0; d < p.dim; ++d) {
        double rec = 0;
        for (int s = 0; s < used; ++s) {
          rec += p.codebooks[(static_cast<size_t>(s) * p.K +
                              codes[i * p.stages + s]) *
                                 p.dim +
                             d];
        }
        err += std::pow(p.x[i * p.dim + d] - rec, 2);
      }
    }
    EXPECT_LT(err, prev) << used << " stages";
    prev = err;
  }
}

void ExpectDecodeMatchesReference(const Shape& shape) {
  SCOPED_TRACE(Describe(shape));
  const auto [dim, K, stages] = shape;
  const int64_t n = 517;
  const Problem p = MakeProblem(dim, K, stages, 1, dim + K + stages);
  std::mt19937 rng(dim * K + stages);
  std::uniform_int_distribution<int> pick(0, K - 1);
  std::vector<uint16_t> codes(n * stages);
  for (uint16_t& c : codes) c = static_cast<uint16_t>(pick(rng));

  std::vector<float> ref(n * dim);
  std::vector<uint16_t> ref_half(n * dim);
  cpu::RvqDecodeRef(codes.data(), n, stages, p.codebooks.data(), K, dim,
                    ref.data());
  cpu::RvqDecodeHalfRef(codes.data(), n, stages, p.codebooks.data(), K, dim,
                        ref_half.data());

  cudaStream_t stream;
  ASSERT_CUDA(cudaStreamCreate(&stream));
  DeviceBuffer<uint16_t> d_codes(codes.size()), d_half(n * dim);
  DeviceBuffer<float> d_cb(p.codebooks.size()), d_out(n * dim);
  ASSERT_CUDA(d_codes.Upload(codes));
  ASSERT_CUDA(d_cb.Upload(p.codebooks));
  ASSERT_CUDA(LaunchRvqDecode(d_codes.get(), n, stages, d_cb.get(), K, dim,
                              d_out.get(), stream));
  ASSERT_CUDA(LaunchRvqDecodeHalf(d_codes.get(), n, stages, d_cb.get(), K, dim,
                                  d_half.get(), stream));
  ASSERT_CUDA(cudaStreamSynchronize(stream));
  ASSERT_CUDA(cudaStreamDestroy(stream));
  std::vector<float> out;
  std::vector<uint16_t> half;
  ASSERT_CUDA(d_out.Download(&out));
  ASSERT_CUDA(d_half.Download(&half));

  for (int64_t i = 0; i < n; ++i) {
    for (int d = 0; d < dim; ++d) {
      const size_t e = i * dim + d;
      // Summation error bound of `stages` float additions.
      double magnitude = 0;
      for (int s = 0; s < stages; ++s) {
        magnitude += std::abs(
            p.codebooks[(static_cast<size_t>(s) * K + codes[i * stages + s]) *
                            dim +
                        d]);
      }
      ASSERT_LE(std::abs(out[e] - ref[e]), stages * FLT_EPSILON * magnitude)
          << "vector " << i << " dim " << d;
      if (out[e] == ref[e]) {
        ASSERT_EQ(half[e], ref_half[e]) << "vector " << i << " dim " << d;
      } else {
        // Different float sums may round to adjacent halves.
        ASSERT_LE(std::abs(int{half[e]} - int{ref_half[e]}), 1)
            << "vector " << i << " dim " << d;
      }
      ASSERT_EQ(half[e], FloatToHalfRef(out[e]))
          << "GPU half output is not the RNE rounding of its float output";
    }
  }
}

TEST(RvqCudaDecodeTest, FloatAndHalfMatchReference) {
  SKIP_WITHOUT_GPU();
  for (int dim : {64, 128}) {
    for (int K : {256, 512, 1024}) {
      for (int stages : {1, 8, 28, 56}) {
        ExpectDecodeMatchesReference({dim, K, stages});
      }
    }
  }
}

TEST(RvqCudaTest, EmptyInputIsANoOp) {
  SKIP_WITHOUT_GPU();
  EXPECT_EQ(LaunchRvqEncodeGreedy(nullptr, 0, 64, nullptr, nullptr, 2, 256,
                                  nullptr, nullptr),
            cudaSuccess);
  EXPECT_EQ(LaunchRvqDecode(nullptr, 0, 2, nullptr, 256, 64, nullptr, nullptr),
            cudaSuccess);
}

// Argument checks happen on the host before any CUDA call, so this test runs
// with or without a GPU.
TEST(RvqCudaTest, BadArgumentsAreRejectedBeforeLaunch) {
  float f = 0;
  uint16_t c = 0;
  const float* x = &f;
  EXPECT_EQ(LaunchRvqEncodeGreedy(x, -1, 64, x, x, 2, 256, &c, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchRvqEncodeGreedy(x, 1, 0, x, x, 2, 256, &c, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(
      LaunchRvqEncodeGreedy(x, 1, kMaxEncodeDim + 1, x, x, 2, 256, &c, nullptr),
      cudaErrorInvalidValue);
  EXPECT_EQ(LaunchRvqEncodeGreedy(x, 1, 64, x, x, 0, 256, &c, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchRvqEncodeGreedy(x, 1, 64, x, x, 2, 65537, &c, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchRvqEncodeGreedy(x, 1, 64, x, nullptr, 2, 256, &c, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchRvqDecode(&c, 1, 2, x, 0, 64, &f, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchRvqDecode(&c, 1, 0, x, 256, 64, &f, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchRvqDecode(nullptr, 1, 2, x, 256, 64, &f, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchRvqDecodeHalf(&c, 1, 2, x, 256, -3, &c, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchRvqDecodeHalf(&c, 1, 2, x, 256, 64, nullptr, nullptr),
            cudaErrorInvalidValue);
}

TEST(CudaDeviceTest, CountIsPositiveOrZeroWithReason) {
  std::string why_not;
  const int count = CudaDeviceCount(&why_not);
  if (count > 0) {
    EXPECT_EQ(why_not, "");
    bool ok = false;
    const std::string desc = CudaDeviceDescription(0, &ok);
    ASSERT_TRUE(ok) << desc;
    EXPECT_NE(desc.find("sm_"), std::string::npos) << desc;
  } else {
    EXPECT_EQ(count, 0);
    EXPECT_EQ(why_not.rfind("no CUDA device: ", 0), 0u) << why_not;
  }
}

}  // namespace
}  // namespace vqkv::cuda

VQKV_MINI_TEST_MAIN()
