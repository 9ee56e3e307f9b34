// The tensor-core encoder (LaunchRvqEncodeGreedyTc) against the CPU
// reference: every pick must be within the encoder's bf16 bound of the
// nearest codeword (rvq_cuda.cuh), and on codebooks without tight clusters
// almost every vector must get exactly the reference's codes. Each case
// prints the share of identical vectors, the measure of how often bf16
// rounding changes a pick. Every case runs every TcEncodeVariant.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/rvq_kernels.h"
#include "kernels/cuda/cuda_device.h"
#include "kernels/cuda/rvq_cuda.cuh"
#include "kernels/fp16.h"
#include "tests/testing/mini_test.h"
#include "tests/unit/kernels/cuda/cuda_test_util.h"
#include "tests/unit/kernels/cuda/rvq_test_problem.h"

namespace vqkv::cuda {
namespace {

// Encodes `x_bytes` of host input of the given type (p's shape and
// codebooks) on the tensor cores; the first CUDA error, if any. Touches no
// test state, so host threads may call it concurrently.
cudaError_t TcEncodeOnGpu(const Problem& p, InputType type, const void* host_x,
                          size_t x_bytes, cudaStream_t stream,
                          TcEncodeVariant variant,
                          std::vector<uint16_t>* codes) {
  DeviceBuffer<uint8_t> x(x_bytes),
      tc(RvqTcCodebookBytes(p.stages, p.K, p.dim));
  DeviceBuffer<float> cb(p.codebooks.size()), norms(p.norms.size());
  DeviceBuffer<uint16_t> d_codes(static_cast<size_t>(p.n) * p.stages);
  if (x.get() == nullptr || tc.get() == nullptr || cb.get() == nullptr ||
      norms.get() == nullptr || d_codes.get() == nullptr) {
    return cudaErrorMemoryAllocation;
  }
  cudaError_t e = cudaMemcpy(x.get(), host_x, x_bytes, cudaMemcpyHostToDevice);
  if (e == cudaSuccess) e = cb.Upload(p.codebooks);
  if (e == cudaSuccess) e = norms.Upload(p.norms);
  if (e == cudaSuccess) {
    e = LaunchRvqPrepareTcCodebooks(cb.get(), p.stages, p.K, p.dim, tc.get(),
                                    stream);
  }
  if (e == cudaSuccess) {
    e = LaunchRvqEncodeGreedyTc(x.get(), type, p.n, p.dim, cb.get(),
                                norms.get(), tc.get(), p.stages, p.K,
                                d_codes.get(), stream, variant);
  }
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  if (e == cudaSuccess) e = d_codes.Download(codes);
  return e;
}

std::vector<uint16_t> TcEncode(const Problem& p, TcEncodeVariant variant) {
  std::vector<uint16_t> codes;
  EXPECT_EQ(TcEncodeOnGpu(p, InputType::kFloat32, p.x.data(),
                          p.x.size() * sizeof(float), nullptr, variant, &codes),
            cudaSuccess);
  return codes;
}

// The tensor-core encoder's bound (rvq_cuda.cuh): every pick within
// 0.0316 ||r|| max ||c|| of the nearest codeword's score.
constexpr double kTcTolerancePerNorm = 0.032;

void ExpectTcMatchesReference(const Problem& p, int min_identical_percent) {
  for (const TcEncodeVariant variant : kAllTcEncodeVariants) {
    SCOPED_TRACE(TcEncodeVariantName(variant));
    const std::vector<uint16_t> codes = TcEncode(p, variant);
    ASSERT_EQ(codes.size(), static_cast<size_t>(p.n) * p.stages);
    int64_t identical = 0;
    ExpectCodesMatchReference(p, codes, min_identical_percent, &identical,
                              kTcTolerancePerNorm);
    std::printf(
        "  tensor cores (%s), dim %d, K %d, %d stages: %lld of %lld vectors "
        "identical to the reference\n",
        TcEncodeVariantName(variant), p.dim, p.K, p.stages,
        static_cast<long long>(identical), static_cast<long long>(p.n));
  }
}

// The paper's stage counts (keys 28x1024 at head_dim 64 and 56x1024 at 128,
// the split-key groups' 32 dims at 14 stages, values 8x512 and 16x512) with
// codeword scales falling to 5% over the stages, and shorter runs.
TEST(RvqEncodeTcTest, PaperShapesMatchReferenceUpToNearTies) {
  SKIP_WITHOUT_GPU();
  for (const Shape& shape :
       {Shape{64, 1024, 28}, Shape{128, 1024, 56}, Shape{32, 1024, 14},
        Shape{64, 512, 8}, Shape{128, 512, 16}, Shape{64, 256, 4},
        Shape{128, 1024, 9}}) {
    SCOPED_TRACE(Describe(shape));
    const auto [dim, K, stages] = shape;
    const float decay = static_cast<float>(std::pow(0.05, 1.0 / stages));
    const Problem p =
        MakeProblem(dim, K, stages, 1000, dim + K + stages, decay);
    ExpectTcMatchesReference(p, stages >= 14 ? 90 : 98);
  }
}

// Codebooks of tight clusters (groups of 16 codewords within 0.1% of each
// other, like k-means codebooks fitted on few points): many codewords fall
// within the bf16 error of the best, so picks may differ from the
// reference's, but never by more than the bound.
TEST(RvqEncodeTcTest, ClusteredCodebooksMatchReferenceUpToNearTies) {
  SKIP_WITHOUT_GPU();
  for (const Shape& shape :
       {Shape{64, 1024, 6}, Shape{128, 512, 4}, Shape{32, 256, 3}}) {
    SCOPED_TRACE(Describe(shape));
    const auto [dim, K, stages] = shape;
    Problem p = MakeProblem(dim, K, stages, 500, dim + K + stages);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int s = 0; s < stages; ++s) {
      for (int k = 0; k < K; ++k) {
        float* c = &p.codebooks[(static_cast<size_t>(s) * K + k) * dim];
        const float* base =
            &p.codebooks[(static_cast<size_t>(s) * K + k / 16 * 16) * dim];
        float norm = 0.0f;
        for (int d = 0; d < dim; ++d) {
          if (k % 16 != 0) c[d] = base[d] * (1.0f + 1e-3f * normal(rng));
          norm += c[d] * c[d];
        }
        p.norms[static_cast<size_t>(s) * K + k] = norm;
      }
    }
    ExpectTcMatchesReference(p, 0);
  }
}

// Dimensions that are not multiples of 16 (zero padding in the fragments),
// codebooks that are not multiples of the 8-codeword tile or smaller than
// it, a partial last warp and a partial last block.
TEST(RvqEncodeTcTest, OddShapesMatchReferenceUpToNearTies) {
  SKIP_WITHOUT_GPU();
  for (const Shape& shape :
       {Shape{40, 256, 3}, Shape{1, 16, 2}, Shape{96, 2, 5}, Shape{128, 100, 3},
        Shape{17, 37, 4}, Shape{112, 1000, 3}, Shape{80, 7, 2}}) {
    SCOPED_TRACE(Describe(shape));
    const auto [dim, K, stages] = shape;
    ExpectTcMatchesReference(
        MakeProblem(dim, K, stages, 301, dim * 7 + K + stages), 98);
  }
}

// fp16 and bf16 input is read as it is: the codes are those of the
// reference on the input rounded to that type.
TEST(RvqEncodeTcTest, HalfAndBf16InputMatchReferenceOnTheRoundedInput) {
  SKIP_WITHOUT_GPU();
  const Problem base = MakeProblem(
      128, 512, 16, 700, 41, static_cast<float>(std::pow(0.05, 1.0 / 16)));
  for (const InputType type : {InputType::kFloat16, InputType::kBFloat16}) {
    const bool half = type == InputType::kFloat16;
    SCOPED_TRACE(half ? "fp16" : "bf16");
    Problem p = base;
    std::vector<uint16_t> bits(p.x.size());
    for (size_t i = 0; i < p.x.size(); ++i) {
      bits[i] = half ? FloatToHalfRef(p.x[i]) : FloatToBf16(p.x[i]);
      p.x[i] = half ? HalfToFloatRef(bits[i]) : Bf16ToFloat(bits[i]);
    }
    for (const TcEncodeVariant variant : kAllTcEncodeVariants) {
      SCOPED_TRACE(TcEncodeVariantName(variant));
      std::vector<uint16_t> codes;
      ASSERT_CUDA(TcEncodeOnGpu(p, type, bits.data(),
                                bits.size() * sizeof(uint16_t), nullptr,
                                variant, &codes));
      ExpectCodesMatchReference(p, codes, 90, nullptr, kTcTolerancePerNorm);
    }
  }
}

// A NaN makes every score of its vector NaN: no candidate survives and, as
// with the reference, every stage gets codeword 0. The others are coded as
// usual.
TEST(RvqEncodeTcTest, NanInputGetsCodewordZero) {
  SKIP_WITHOUT_GPU();
  constexpr int kDim = 64, kK = 256, kStages = 4;
  Problem p = MakeProblem(kDim, kK, kStages, 200, 23);
  p.x[5 * kDim + 7] = NAN;
  p.x[199 * kDim] = NAN;
  for (const TcEncodeVariant variant : kAllTcEncodeVariants) {
    SCOPED_TRACE(TcEncodeVariantName(variant));
    const std::vector<uint16_t> codes = TcEncode(p, variant);
    ASSERT_EQ(codes.size(), static_cast<size_t>(p.n) * kStages);
    Problem clean = p;
    clean.x.clear();
    std::vector<uint16_t> clean_codes;
    for (int64_t i = 0; i < p.n; ++i) {
      const bool has_nan = i == 5 || i == 199;
      for (int s = 0; s < kStages; ++s) {
        if (has_nan) {
          EXPECT_EQ(codes[i * kStages + s], 0)
              << "vector " << i << " stage " << s;
        } else {
          clean_codes.push_back(codes[i * kStages + s]);
        }
      }
      if (!has_nan) {
        clean.x.insert(clean.x.end(), p.x.begin() + i * kDim,
                       p.x.begin() + (i + 1) * kDim);
      }
    }
    clean.n = p.n - 2;
    ExpectCodesMatchReference(clean, clean_codes, 98, nullptr,
                              kTcTolerancePerNorm);
  }
}

// More than 2^31 input elements (fp16, so 4 GiB): offsets past int32 and
// over 260k blocks. A vector's codes depend on that vector alone, so the
// repeated 4096-vector input must repeat its codes around the boundary and
// at the end.
TEST(RvqEncodeTcTest, LargeNPastInt32Offsets) {
  SKIP_WITHOUT_GPU();
  constexpr int kDim = 64, kK = 16, kStages = 2, kBase = 4096;
  const int64_t n = (int64_t{1} << 31) / kDim + 4099;
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
  const size_t need = static_cast<size_t>(n) * (kDim + kStages) * 2;
  if (free_bytes < need + (size_t{1} << 30)) {
    GTEST_SKIP() << "needs " << need / (1 << 20) << " MiB of device memory, "
                 << free_bytes / (1 << 20) << " MiB free";
  }
  const Problem base = MakeProblem(kDim, kK, kStages, kBase, 29);
  std::vector<uint16_t> half(base.x.size());
  for (size_t i = 0; i < half.size(); ++i) half[i] = FloatToHalfRef(base.x[i]);
  DeviceBuffer<uint16_t> x(static_cast<size_t>(n) * kDim),
      codes(static_cast<size_t>(n) * kStages);
  DeviceBuffer<float> cb(base.codebooks.size()), norms(base.norms.size());
  DeviceBuffer<uint8_t> tc(RvqTcCodebookBytes(kStages, kK, kDim));
  ASSERT_TRUE(x.get() != nullptr && codes.get() != nullptr);
  ASSERT_CUDA(cb.Upload(base.codebooks));
  ASSERT_CUDA(norms.Upload(base.norms));
  ASSERT_CUDA(cudaMemcpy(x.get(), half.data(), half.size() * 2,
                         cudaMemcpyHostToDevice));
  ASSERT_CUDA(RepeatOnDevice(x.get(), kBase * kDim, n * kDim));
  ASSERT_CUDA(LaunchRvqPrepareTcCodebooks(cb.get(), kStages, kK, kDim, tc.get(),
                                          nullptr));
  for (const TcEncodeVariant variant : kAllTcEncodeVariants) {
    SCOPED_TRACE(TcEncodeVariantName(variant));
    std::vector<uint16_t> base_codes;
    ASSERT_CUDA(TcEncodeOnGpu(base, InputType::kFloat16, half.data(),
                              half.size() * 2, nullptr, variant, &base_codes));
    ASSERT_CUDA(
        cudaMemset(codes.get(), 0xff,
                   static_cast<size_t>(n) * kStages * sizeof(uint16_t)));
    ASSERT_CUDA(LaunchRvqEncodeGreedyTc(
        x.get(), InputType::kFloat16, n, kDim, cb.get(), norms.get(), tc.get(),
        kStages, kK, codes.get(), nullptr, variant));
    ASSERT_CUDA(cudaDeviceSynchronize());
    const int64_t boundary = (int64_t{1} << 31) / kDim;
    for (const int64_t first : {boundary - 300, n - 600}) {
      constexpr int64_t count = 600;
      std::vector<uint16_t> got(static_cast<size_t>(count) * kStages);
      ASSERT_CUDA(cudaMemcpy(got.data(), codes.get() + first * kStages,
                             got.size() * 2, cudaMemcpyDeviceToHost));
      for (int64_t j = 0; j < count; ++j) {
        const int64_t b = (first + j) % kBase;
        for (int s = 0; s < kStages; ++s) {
          ASSERT_EQ(got[j * kStages + s], base_codes[b * kStages + s])
              << "vector " << first + j << " stage " << s;
        }
      }
    }
  }
}

// Two host threads encoding at once on their own streams, one with each
// way of keeping variant, get what each gets alone.
TEST(RvqEncodeTcTest, ConcurrentLaunchesFromTwoHostThreads) {
  SKIP_WITHOUT_GPU();
  const Problem a = MakeProblem(64, 1024, 9, 2000, 31);
  const Problem b = MakeProblem(128, 512, 5, 1500, 37);
  const std::vector<uint16_t> alone_a =
                                  TcEncode(a, TcEncodeVariant::kSortedLists),
                              alone_b =
                                  TcEncode(b, TcEncodeVariant::kPackedKeysWide);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::vector<uint16_t> got_a, got_b;
    cudaError_t err_a = cudaSuccess, err_b = cudaSuccess;
    auto run = [](const Problem& p, TcEncodeVariant variant,
                  std::vector<uint16_t>* got, cudaError_t* err) {
      cudaStream_t stream = nullptr;
      *err = cudaStreamCreate(&stream);
      if (*err == cudaSuccess) {
        *err = TcEncodeOnGpu(p, InputType::kFloat32, p.x.data(),
                             p.x.size() * sizeof(float), stream, variant, got);
      }
      if (stream != nullptr) cudaStreamDestroy(stream);
    };
    std::thread ta(run, std::cref(a), TcEncodeVariant::kSortedLists, &got_a,
                   &err_a);
    std::thread tb(run, std::cref(b), TcEncodeVariant::kPackedKeysWide, &got_b,
                   &err_b);
    ta.join();
    tb.join();
    ASSERT_EQ(err_a, cudaSuccess) << cudaGetErrorString(err_a);
    ASSERT_EQ(err_b, cudaSuccess) << cudaGetErrorString(err_b);
    EXPECT_TRUE(got_a == alone_a);
    EXPECT_TRUE(got_b == alone_b);
  }
}

// Shape and pointer checks happen on the host before any CUDA call, so this
// test runs with or without a GPU.
TEST(RvqEncodeTcTest, BadArgumentsAreRejectedBeforeLaunch) {
  float f = 0;
  uint16_t c = 0;
  const float* x = &f;
  EXPECT_EQ(RvqTcCodebookBytes(2, 256, kMaxTcEncodeDim + 1), 0u);
  EXPECT_EQ(RvqTcCodebookBytes(0, 256, 64), 0u);
  EXPECT_EQ(RvqTcCodebookBytes(2, 65537, 64), 0u);
  // 2 stages x 32 tiles x 4 k-steps x 32 lanes x 8 bytes.
  EXPECT_EQ(RvqTcCodebookBytes(2, 256, 64), size_t{2} * 32 * 4 * 32 * 8);
  EXPECT_EQ(RvqTcCodebookBytes(1, 9, 33), size_t{1} * 2 * 4 * 32 * 8);
  EXPECT_EQ(LaunchRvqPrepareTcCodebooks(x, 2, 256, 129, &f, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchRvqPrepareTcCodebooks(x, 2, 256, 64, nullptr, nullptr),
            cudaErrorInvalidValue);
  const auto launch = [&](int64_t n, int dim, const void* tc, int stages,
                          int K) {
    return LaunchRvqEncodeGreedyTc(x, InputType::kFloat32, n, dim, x, x, tc,
                                   stages, K, &c, nullptr);
  };
  EXPECT_EQ(launch(-1, 64, &f, 2, 256), cudaErrorInvalidValue);
  EXPECT_EQ(launch(1, 0, &f, 2, 256), cudaErrorInvalidValue);
  EXPECT_EQ(launch(1, kMaxTcEncodeDim + 1, &f, 2, 256), cudaErrorInvalidValue);
  EXPECT_EQ(launch(1, 64, &f, 0, 256), cudaErrorInvalidValue);
  EXPECT_EQ(launch(1, 64, &f, 2, 65537), cudaErrorInvalidValue);
  EXPECT_EQ(launch(1, 64, nullptr, 2, 256), cudaErrorInvalidValue);
  EXPECT_EQ(launch(0, 64, nullptr, 2, 256), cudaSuccess);  // nothing to do
  EXPECT_EQ(
      LaunchRvqEncodeGreedyTc(x, InputType::kFloat32, 1, 64, x, x, &f, 2, 256,
                              &c, nullptr, static_cast<TcEncodeVariant>(7)),
      cudaErrorInvalidValue);
}

// A batch of jobs of different sizes (empty, one vector, partial and whole
// blocks) and codebooks, in one launch, gives each job the codes of its
// own launch.
TEST(RvqEncodeTcTest, BatchGivesEachJobTheCodesOfItsOwnLaunch) {
  SKIP_WITHOUT_GPU();
  const std::vector<Problem> problems = {
      MakeProblem(128, 1024, 9, 300, 51), MakeProblem(128, 512, 4, 0, 52),
      MakeProblem(112, 256, 3, 1, 53),    MakeProblem(128, 1024, 9, 128, 54),
      MakeProblem(100, 64, 5, 129, 55),   MakeProblem(128, 512, 16, 1000, 56)};
  // A job's device buffers.
  struct Device {
    explicit Device(const Problem& p)
        : x(p.x.size()),
          cb(p.codebooks.size()),
          norms(p.norms.size()),
          tc(RvqTcCodebookBytes(p.stages, p.K, p.dim)),
          codes(static_cast<size_t>(p.n) * p.stages) {}
    DeviceBuffer<float> x, cb, norms;
    DeviceBuffer<uint8_t> tc;
    DeviceBuffer<uint16_t> codes;
  };
  std::vector<std::unique_ptr<Device>> dev;
  std::vector<RvqTcJob> jobs;
  for (const Problem& p : problems) {
    dev.push_back(std::make_unique<Device>(p));
    Device& d = *dev.back();
    if (!p.x.empty()) {
      ASSERT_CUDA(d.x.Upload(p.x));
    }
    ASSERT_CUDA(d.cb.Upload(p.codebooks));
    ASSERT_CUDA(d.norms.Upload(p.norms));
    ASSERT_CUDA(LaunchRvqPrepareTcCodebooks(d.cb.get(), p.stages, p.K, p.dim,
                                            d.tc.get(), nullptr));
    jobs.push_back({d.x.get(), p.n, p.dim, p.stages, p.K, d.cb.get(),
                    d.norms.get(), d.tc.get(), d.codes.get()});
  }
  DeviceBuffer<uint8_t> scratch(RvqTcBatchScratchBytes(jobs.size()));
  for (const TcEncodeVariant variant : kAllTcEncodeVariants) {
    SCOPED_TRACE(TcEncodeVariantName(variant));
    ASSERT_CUDA(LaunchRvqEncodeGreedyTcBatch(
        jobs.data(), static_cast<int>(jobs.size()), InputType::kFloat32,
        scratch.get(), RvqTcBatchScratchBytes(jobs.size()), nullptr, variant));
    ASSERT_CUDA(cudaDeviceSynchronize());
    for (size_t i = 0; i < problems.size(); ++i) {
      SCOPED_TRACE("job " + std::to_string(i));
      if (problems[i].n == 0) continue;
      std::vector<uint16_t> batched;
      ASSERT_CUDA(dev[i]->codes.Download(&batched));
      EXPECT_TRUE(batched == TcEncode(problems[i], variant));
    }
  }
}

// Batch arguments are checked on the host before any CUDA call.
TEST(RvqEncodeTcTest, BatchRejectsMixedDimClassesAndSmallScratch) {
  float f[4] = {0, 0, 0, 0};
  uint16_t c = 0;
  alignas(16) uint8_t tc[16] = {};
  const RvqTcJob a{f, 1, 64, 2, 256, f, f, tc, &c};
  RvqTcJob b = a;
  b.dim = 128;  // another layout class
  const RvqTcJob mixed[] = {a, b};
  uint8_t scratch[256];
  EXPECT_EQ(LaunchRvqEncodeGreedyTcBatch(mixed, 2, InputType::kFloat32, scratch,
                                         sizeof(scratch), nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(
      LaunchRvqEncodeGreedyTcBatch(&a, 1, InputType::kFloat32, scratch,
                                   RvqTcBatchScratchBytes(1) - 1, nullptr),
      cudaErrorInvalidValue);
  RvqTcJob bad = a;
  bad.tc = tc + 4;  // misaligned
  EXPECT_EQ(LaunchRvqEncodeGreedyTcBatch(&bad, 1, InputType::kFloat32, scratch,
                                         sizeof(scratch), nullptr),
            cudaErrorInvalidValue);
  RvqTcJob empty = a;
  empty.n = 0;
  EXPECT_EQ(LaunchRvqEncodeGreedyTcBatch(&empty, 1, InputType::kFloat32,
                                         nullptr, 0, nullptr),
            cudaSuccess);
  EXPECT_EQ(RvqTcJobBlocks(0), 0);
  EXPECT_EQ(RvqTcJobBlocks(128), 1);
  EXPECT_EQ(RvqTcJobBlocks(129), 2);
}

}  // namespace
}  // namespace vqkv::cuda

VQKV_MINI_TEST_MAIN()
