// CUDA RVQ kernels against the CPU references (kernels/cpu/rvq_kernels.h).
#include "kernels/cuda/rvq_cuda.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "kernels/cpu/rvq_kernels.h"
#include "kernels/cuda/cuda_device.h"
#include "kernels/fp16.h"
#include "tests/testing/mini_test.h"
#include "tests/unit/kernels/cuda/cuda_test_util.h"
#include "tests/unit/kernels/cuda/rvq_test_problem.h"

namespace vqkv::cuda {
namespace {

// Runs the GPU encoder on p.x into *codes; the first CUDA error, if any.
// Touches no test state, so host threads may call it concurrently.
cudaError_t EncodeOnGpu(const Problem& p, cudaStream_t stream,
                        std::vector<uint16_t>* codes) {
  DeviceBuffer<float> x(p.x.size()), cb(p.codebooks.size()),
      norms(p.norms.size());
  DeviceBuffer<uint16_t> d_codes(static_cast<size_t>(p.n) * p.stages);
  cudaError_t e = x.Upload(p.x);
  if (e == cudaSuccess) e = cb.Upload(p.codebooks);
  if (e == cudaSuccess) e = norms.Upload(p.norms);
  if (e == cudaSuccess) {
    e = LaunchRvqEncodeGreedy(x.get(), p.n, p.dim, cb.get(), norms.get(),
                              p.stages, p.K, d_codes.get(), stream);
  }
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  if (e == cudaSuccess) e = d_codes.Download(codes);
  return e;
}

// The same, failing the test on a CUDA error; returns the codes.
std::vector<uint16_t> GpuEncode(const Problem& p, cudaStream_t stream) {
  std::vector<uint16_t> codes;
  EXPECT_EQ(EncodeOnGpu(p, stream, &codes), cudaSuccess);
  return codes;
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

// fp16 codebooks: the fp16 output of the float32 reference on the
// codebooks rounded to fp16 (within one unit where float sums differ).
void ExpectHalfCodebookDecodeMatchesReference(const Shape& shape) {
  SCOPED_TRACE(Describe(shape) + ", fp16 codebooks");
  const auto [dim, K, stages] = shape;
  const int64_t n = 517;
  Problem p = MakeProblem(dim, K, stages, 1, dim + K + stages + 1);
  std::vector<uint16_t> cb_half(p.codebooks.size());
  for (size_t i = 0; i < cb_half.size(); ++i) {
    cb_half[i] = FloatToHalfRef(p.codebooks[i]);
    p.codebooks[i] = HalfToFloatRef(cb_half[i]);
  }
  std::mt19937 rng(dim * K + stages + 1);
  std::uniform_int_distribution<int> pick(0, K - 1);
  std::vector<uint16_t> codes(n * stages);
  for (uint16_t& c : codes) c = static_cast<uint16_t>(pick(rng));
  std::vector<uint16_t> ref(n * dim);
  cpu::RvqDecodeHalfRef(codes.data(), n, stages, p.codebooks.data(), K, dim,
                        ref.data());
  DeviceBuffer<uint16_t> d_codes(codes.size()), d_cb(cb_half.size()),
      d_out(n * dim);
  ASSERT_CUDA(d_codes.Upload(codes));
  ASSERT_CUDA(d_cb.Upload(cb_half));
  ASSERT_CUDA(LaunchRvqDecodeHalfCodebooks(d_codes.get(), n, stages, d_cb.get(),
                                           K, dim, d_out.get(), nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> out;
  ASSERT_CUDA(d_out.Download(&out));
  for (size_t e = 0; e < out.size(); ++e) {
    ASSERT_LE(std::abs(int{out[e]} - int{ref[e]}), 1) << "element " << e;
  }
}

TEST(RvqCudaDecodeTest, HalfCodebooksMatchReferenceOnRoundedCodebooks) {
  SKIP_WITHOUT_GPU();
  for (const Shape& shape :
       {Shape{64, 1024, 28}, Shape{128, 1024, 56}, Shape{128, 512, 16},
        Shape{12, 256, 8}, Shape{17, 256, 8}}) {
    ExpectHalfCodebookDecodeMatchesReference(shape);
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
  // The vectorised kernel's other group sizes (12: 4 lanes a vector; 96: 24
  // of 32 lanes busy) and the scalar kernel (17, 132).
  for (int dim : {12, 96, 17, 132}) {
    ExpectDecodeMatchesReference({dim, 256, 28});
  }
}

// More vectors in flight per lane group (LaunchRvqDecodeHalfInFlight, 2 and
// 4): the same fp16 output as the default kernel, bit for bit, including
// the tail of a count that is not a multiple of the vectors per warp, a
// group of 4 lanes (dim 12) and a group with idle lanes (dim 96), and a
// code >= K, which contributes nothing.
TEST(RvqCudaDecodeTest, MoreVectorsInFlightGiveTheSameBits) {
  SKIP_WITHOUT_GPU();
  for (const Shape& shape :
       {Shape{64, 1024, 28}, Shape{128, 1024, 56}, Shape{128, 512, 16},
        Shape{12, 256, 8}, Shape{96, 256, 28}}) {
    SCOPED_TRACE(Describe(shape));
    const auto [dim, K, stages] = shape;
    const int64_t n = 1031;
    const Problem p = MakeProblem(dim, K, stages, 1, dim + stages);
    std::mt19937 rng(dim + K);
    std::uniform_int_distribution<int> pick(0, K - 1);
    std::vector<uint16_t> codes(n * stages);
    for (uint16_t& c : codes) c = static_cast<uint16_t>(pick(rng));
    codes[5 * stages + 1] = static_cast<uint16_t>(K);  // out of range
    DeviceBuffer<uint16_t> d_codes(codes.size()), d_want(n * dim),
        d_got(n * dim);
    DeviceBuffer<float> d_cb(p.codebooks.size());
    ASSERT_CUDA(d_codes.Upload(codes));
    ASSERT_CUDA(d_cb.Upload(p.codebooks));
    ASSERT_CUDA(LaunchRvqDecodeHalf(d_codes.get(), n, stages, d_cb.get(), K,
                                    dim, d_want.get(), nullptr));
    std::vector<uint16_t> want;
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(d_want.Download(&want));
    for (int in_flight : {1, 2, 4}) {
      ASSERT_CUDA(LaunchRvqDecodeHalfInFlight(d_codes.get(), n, stages,
                                              d_cb.get(), K, dim, in_flight,
                                              d_got.get(), nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      std::vector<uint16_t> got;
      ASSERT_CUDA(d_got.Download(&got));
      EXPECT_TRUE(got == want) << in_flight << " vectors in flight";
    }
  }
}

// The paper's shapes at their stage counts: keys of head_dim 64 at 28
// stages and 128 at 56 (K = 1024), the split-key groups (each of the two
// rope groups of a 64-dim head is 32 dims at 14 stages), values at 8 and 16
// stages of K = 512. Codeword scales fall to 5% over the stages, like
// fitted codebooks (MakeProblem's default would shrink them to nothing).
TEST(RvqCudaEncodeTest, PaperStageCountsAndSplitKeyGroups) {
  SKIP_WITHOUT_GPU();
  for (const Shape& shape :
       {Shape{64, 1024, 28}, Shape{128, 1024, 56}, Shape{32, 1024, 14},
        Shape{64, 512, 8}, Shape{128, 512, 16}}) {
    SCOPED_TRACE(Describe(shape));
    const auto [dim, K, stages] = shape;
    const float decay = static_cast<float>(std::pow(0.05, 1.0 / stages));
    const Problem p = MakeProblem(dim, K, stages, 300, dim + K + stages, decay);
    ExpectCodesMatchReference(p, GpuEncode(p, nullptr), stages >= 14 ? 90 : 98);
  }
}

// A NaN in a vector makes every score NaN, which never beats another: like
// the reference, the encoder then picks codeword 0 at every stage. The other
// vectors of its tile are coded as usual.
TEST(RvqCudaEncodeTest, NanInputGetsCodewordZeroLikeTheReference) {
  SKIP_WITHOUT_GPU();
  constexpr int kDim = 64, kK = 256, kStages = 4;
  Problem p = MakeProblem(kDim, kK, kStages, 130, 23);
  const std::vector<int64_t> nan_vectors = {5, 129};  // 129: a partial tile
  p.x[5 * kDim + 7] = NAN;
  p.x[129 * kDim] = NAN;
  const std::vector<uint16_t> gpu = GpuEncode(p, nullptr);
  std::vector<uint16_t> ref(gpu.size());
  cpu::RvqEncodeGreedyRef(p.x.data(), p.n, kDim, p.codebooks.data(),
                          p.norms.data(), kStages, kK, ref.data());
  Problem clean = p;
  clean.x.clear();
  std::vector<uint16_t> gpu_clean;
  for (int64_t i = 0; i < p.n; ++i) {
    const bool has_nan = std::find(nan_vectors.begin(), nan_vectors.end(), i) !=
                         nan_vectors.end();
    for (int s = 0; s < kStages; ++s) {
      if (has_nan) {
        EXPECT_EQ(gpu[i * kStages + s], 0) << "vector " << i << " stage " << s;
        EXPECT_EQ(ref[i * kStages + s], 0) << "vector " << i << " stage " << s;
      } else {
        gpu_clean.push_back(gpu[i * kStages + s]);
      }
    }
    if (!has_nan) {
      clean.x.insert(clean.x.end(), p.x.begin() + i * kDim,
                     p.x.begin() + (i + 1) * kDim);
    }
  }
  clean.n = p.n - static_cast<int64_t>(nan_vectors.size());
  ExpectCodesMatchReference(clean, gpu_clean);
}

// More than 2^31 elements of input and output: element offsets past int32,
// 500k+ encode blocks, and decode's grid-stride loop. The input repeats a
// 4096-vector problem, so vector i must get the codes (and decode to the
// values) of vector i % 4096, checked around the 2^31-element boundary and
// at the end. Skipped where the device has less than ~18 GiB free.
TEST(RvqCudaTest, LargeNPastInt32Offsets) {
  SKIP_WITHOUT_GPU();
  constexpr int kDim = 64, kK = 16, kStages = 2, kBase = 4096;
  const int64_t n = (int64_t{1} << 31) / kDim + 4099;
  const size_t x_bytes = static_cast<size_t>(n) * kDim * sizeof(float);
  const size_t code_bytes = static_cast<size_t>(n) * kStages * sizeof(uint16_t);
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (free_bytes < 2 * x_bytes + code_bytes + (size_t{1} << 30)) {
    GTEST_SKIP() << "needs " << (2 * x_bytes + code_bytes) / (1 << 20)
                 << " MiB of device memory, " << free_bytes / (1 << 20)
                 << " MiB free";
  }
  const Problem base = MakeProblem(kDim, kK, kStages, kBase, 29);
  const std::vector<uint16_t> base_codes = GpuEncode(base, nullptr);
  ExpectCodesMatchReference(base, base_codes);

  DeviceBuffer<float> x(static_cast<size_t>(n) * kDim),
      cb(base.codebooks.size()), norms(base.norms.size()),
      out(static_cast<size_t>(n) * kDim);
  DeviceBuffer<uint16_t> codes(static_cast<size_t>(n) * kStages);
  ASSERT_TRUE(x.get() != nullptr && out.get() != nullptr &&
              codes.get() != nullptr);
  ASSERT_CUDA(cb.Upload(base.codebooks));
  ASSERT_CUDA(norms.Upload(base.norms));
  ASSERT_CUDA(cudaMemcpy(x.get(), base.x.data(), base.x.size() * sizeof(float),
                         cudaMemcpyHostToDevice));
  ASSERT_CUDA(RepeatOnDevice(x.get(), kBase * kDim, n * kDim));
  ASSERT_CUDA(LaunchRvqEncodeGreedy(x.get(), n, kDim, cb.get(), norms.get(),
                                    kStages, kK, codes.get(), nullptr));
  ASSERT_CUDA(LaunchRvqDecode(codes.get(), n, kStages, cb.get(), kK, kDim,
                              out.get(), nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());

  std::vector<float> base_out(static_cast<size_t>(kBase) * kDim);
  cpu::RvqDecodeRef(base_codes.data(), kBase, kStages, base.codebooks.data(),
                    kK, kDim, base_out.data());
  const int64_t boundary = (int64_t{1} << 31) / kDim;
  for (const int64_t first : {boundary - 300, n - 600}) {
    constexpr int64_t count = 600;
    std::vector<uint16_t> got_codes(static_cast<size_t>(count) * kStages);
    std::vector<float> got(static_cast<size_t>(count) * kDim);
    ASSERT_CUDA(cudaMemcpy(got_codes.data(), codes.get() + first * kStages,
                           got_codes.size() * sizeof(uint16_t),
                           cudaMemcpyDeviceToHost));
    ASSERT_CUDA(cudaMemcpy(got.data(), out.get() + first * kDim,
                           got.size() * sizeof(float), cudaMemcpyDeviceToHost));
    for (int64_t j = 0; j < count; ++j) {
      const int64_t b = (first + j) % kBase;
      for (int s = 0; s < kStages; ++s) {
        ASSERT_EQ(got_codes[j * kStages + s], base_codes[b * kStages + s])
            << "vector " << first + j << " stage " << s;
      }
      for (int d = 0; d < kDim; ++d) {
        ASSERT_LE(
            std::abs(got[j * kDim + d] - base_out[b * kDim + d]),
            kStages * FLT_EPSILON * (1 + std::abs(base_out[b * kDim + d])))
            << "vector " << first + j << " dim " << d;
      }
    }
  }
}

// Launchers called from two host threads at once, each on its own stream,
// give what they give alone (the kernels are deterministic).
TEST(RvqCudaTest, ConcurrentLaunchesFromTwoHostThreads) {
  SKIP_WITHOUT_GPU();
  const Problem a = MakeProblem(64, 1024, 9, 2000, 31);
  const Problem b = MakeProblem(128, 512, 5, 1500, 37);
  const std::vector<uint16_t> alone_a = GpuEncode(a, nullptr);
  const std::vector<uint16_t> alone_b = GpuEncode(b, nullptr);
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::vector<uint16_t> got_a, got_b;
    cudaError_t err_a = cudaSuccess, err_b = cudaSuccess;
    auto run = [](const Problem& p, std::vector<uint16_t>* got,
                  cudaError_t* err) {
      cudaStream_t stream = nullptr;
      *err = cudaStreamCreate(&stream);
      if (*err == cudaSuccess) *err = EncodeOnGpu(p, stream, got);
      if (stream != nullptr) cudaStreamDestroy(stream);
    };
    std::thread ta(run, std::cref(a), &got_a, &err_a);
    std::thread tb(run, std::cref(b), &got_b, &err_b);
    ta.join();
    tb.join();
    ASSERT_EQ(err_a, cudaSuccess) << cudaGetErrorString(err_a);
    ASSERT_EQ(err_b, cudaSuccess) << cudaGetErrorString(err_b);
    EXPECT_TRUE(got_a == alone_a);
    EXPECT_TRUE(got_b == alone_b);
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
  for (int in_flight : {0, 3, 8}) {
    EXPECT_EQ(LaunchRvqDecodeHalfInFlight(&c, 1, 2, x, 256, 64, in_flight, &c,
                                          nullptr),
              cudaErrorInvalidValue)
        << in_flight;
  }
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
