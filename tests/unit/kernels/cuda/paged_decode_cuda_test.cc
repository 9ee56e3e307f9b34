// CUDA decode of codes into pages (kernels/cuda/paged_decode.cuh) against the
// host reference VqDecodeTokensRef (kernels/vq_decode_element.h, itself
// checked against VqCodec + Rope + ReorderRopePairs in
// tests/unit/kernels/vq_decode_plan_test.cc), rounded to the page dtype as
// the CPU path rounds. mini_test, so the CUDA-only GPU check builds it.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/paged_decode.cuh"
#include "kernels/vq_decode_element.h"
#include "tests/testing/mini_test.h"
#include "tests/testing/random_decode_view.h"
#include "tests/unit/kernels/cuda/cuda_test_util.h"
#include "tests/unit/kernels/cuda/host_pages.h"

namespace vqkv::cuda {
namespace {

constexpr int kHeads = 3, kDim = 64;

// `refined`: the decoded layer's keys have a key refinement of 5 stages.
testing::RandomDecodeSpec Spec(bool plain, bool refined) {
  testing::RandomDecodeSpec s = testing::PagedTestSpec(plain, plain ? 21 : 22);
  if (refined) {
    s.refine_layer = 1;
    s.refine_stages = 5;
  }
  return s;
}

// Three blocks of 32 tokens (random code bytes: every value is a valid code
// at these widths) decoded for layer 1 into pages of 16 slots, out of page
// order; every written element matches the reference rounded to the dtype
// (fp32 within float rounding of the head's largest key element,
// fp16/bf16 within one unit of the last place), and every other byte of the
// pages stays zero.
void CheckDecode(bool plain, bool refined, int32_t dtype, bool hnd,
                 PagedDecodeKernel kernel) {
  SCOPED_TRACE(std::string(plain ? "plain" : "split+gains+rope") +
               (refined ? "+key refinement" : "") + " dtype " +
               std::to_string(dtype) + (hnd ? " HND" : " NHD") +
               (kernel == PagedDecodeKernel::kAuto ? " warp per vector"
                                                   : " thread per element"));
  testing::RandomDecodeView view(Spec(plain, refined));
  ASSERT_CUDA(view.Upload());
  constexpr int kBlocks = 3, kTokens = 32, kSlots = 16, kLayer = 1;
  const int64_t pages = 8;
  const size_t key_bytes = view.KeyBytes(kTokens);
  const size_t value_bytes = view.ValueBytes(kTokens);
  const size_t refine_bytes = refined ? view.RefineBytes(kTokens) : 0;
  const size_t block_bytes = key_bytes + value_bytes + refine_bytes;
  std::mt19937 rng(5);
  std::vector<uint8_t> codes(kBlocks * block_bytes);
  for (uint8_t& b : codes) b = static_cast<uint8_t>(rng());
  DeviceBuffer<uint8_t> d_codes(codes.size());
  ASSERT_CUDA(d_codes.Upload(codes));
  const int32_t block_pages[kBlocks][2] = {{6, 1}, {3, 7}, {0, 4}};
  std::vector<CodedPageRow> rows, d_rows_host;
  std::vector<CodedToken> ref_rows;
  for (int b = 0; b < kBlocks; ++b) {
    const size_t base = b * block_bytes;
    const size_t refine_at = base + key_bytes + value_bytes;
    for (int t = 0; t < kTokens; ++t) {
      CodedToken host_t{codes.data() + base, codes.data() + base + key_bytes, t,
                        int64_t{b} * kTokens + t + 1000,
                        refined ? codes.data() + refine_at : nullptr};
      CodedToken dev_t = host_t;
      dev_t.key_codes = d_codes.get() + base;
      dev_t.value_codes = d_codes.get() + base + key_bytes;
      dev_t.refine_codes = refined ? d_codes.get() + refine_at : nullptr;
      ref_rows.push_back(host_t);
      d_rows_host.push_back({block_pages[b][t / kSlots], t % kSlots, dev_t});
    }
  }
  const int64_t n = static_cast<int64_t>(d_rows_host.size());
  std::vector<float> want_k(n * kHeads * kDim), want_v(want_k.size());
  VqDecodeTokensRef(view.host(), kLayer, ref_rows.data(), n, want_k.data(),
                    want_v.data());

  HostPages k(dtype, pages, kSlots, kHeads, kDim, hnd);
  HostPages v(dtype, pages, kSlots, kHeads, kDim, hnd);
  DeviceBuffer<uint8_t> dk(k.bytes.size()), dv(v.bytes.size());
  ASSERT_CUDA(dk.Upload(k.bytes));
  ASSERT_CUDA(dv.Upload(v.bytes));
  DeviceBuffer<CodedPageRow> d_rows(n);
  ASSERT_CUDA(d_rows.Upload(d_rows_host));
  PageTensor tk{dk.get(), dtype, {}}, tv{dv.get(), dtype, {}};
  for (int i = 0; i < 4; ++i) tk.strides[i] = tv.strides[i] = k.strides[i];
  ASSERT_CUDA(LaunchVqDecodeToPages(view.device(), kLayer, tk, tv, d_rows.get(),
                                    n, nullptr, kernel));
  ASSERT_CUDA(cudaDeviceSynchronize());
  HostPages gk = k, gv = v;
  ASSERT_CUDA(dk.Download(&gk.bytes));
  ASSERT_CUDA(dv.Download(&gv.bytes));

  const float ulp = dtype == kPageF32   ? 1e-5f
                    : dtype == kPageF16 ? 1.0f / 1024
                                        : 1.0f / 128;
  HostPages round(dtype, 1, 1, 1, 1, false);
  int64_t bad = 0, written = 0;
  std::vector<char> touched(static_cast<size_t>(pages * k.strides[0]));
  for (int64_t r = 0; r < n; ++r)
    for (int h = 0; h < kHeads; ++h) {
      // A rotated key element a*c - b*s cancels; the device contracts it to
      // an FMA, so its rounding error scales with the pair, not the result:
      // keys are compared relative to their head's largest element.
      float key_scale = 0.0f;
      for (int d = 0; d < kDim; ++d)
        key_scale = std::fmax(key_scale,
                              std::fabs(want_k[(r * kHeads + h) * kDim + d]));
      for (int d = 0; d < kDim; ++d) {
        const int64_t off =
            k.Offset(d_rows_host[r].page, d_rows_host[r].slot, h, d);
        touched[off] = 1;
        const int64_t i = (r * kHeads + h) * kDim + d;
        // The reference rounded as the CPU path rounds, then compared.
        round.Set(0, want_k[i]);
        const float rk = round.Get(0);
        round.Set(0, want_v[i]);
        const float rv = round.Get(0);
        const float k_tol = ulp * (1e-3f + std::fabs(rk)) +
                            (dtype == kPageF32 ? ulp * key_scale : 0.0f);
        bad += std::fabs(gk.Get(off) - rk) > k_tol;
        bad += std::fabs(gv.Get(off) - rv) > ulp * (1e-3f + std::fabs(rv));
        written += 2;
      }
    }
  EXPECT_EQ(bad, 0) << "of " << written << " decoded elements differ";
  int64_t stray = 0;
  for (size_t off = 0; off < touched.size(); ++off) {
    if (!touched[off]) stray += gk.Get(off) != 0.0f || gv.Get(off) != 0.0f;
  }
  EXPECT_EQ(stray, 0) << "elements written outside the rows' slots";
}

TEST(PagedDecodeCudaTest, MatchesTheHostReferenceForEveryDtypeAndLayout) {
  SKIP_WITHOUT_GPU();
  for (bool plain : {false, true})
    for (bool refined : {false, true})
      for (int32_t dtype : {kPageF16, kPageBf16, kPageF32})
        for (bool hnd : {false, true})
          for (PagedDecodeKernel kernel :
               {PagedDecodeKernel::kAuto, PagedDecodeKernel::kPerElement})
            CheckDecode(plain, refined, dtype, hnd, kernel);
}

TEST(PagedDecodeCudaTest, EmptyIsANoOpAndBadArgumentsAreRejected) {
  // Argument checks come before any device call, so they run without a GPU.
  testing::RandomDecodeView view(Spec(true, false));
  const VqDecodeView& w = view.host();  // pointers are not dereferenced
  PageTensor t{reinterpret_cast<void*>(16), kPageF16, {1, 1, 1, 1}};
  const CodedPageRow* rows = reinterpret_cast<const CodedPageRow*>(16);
  EXPECT_EQ(LaunchVqDecodeToPages(w, 0, t, t, nullptr, 0, nullptr),
            cudaSuccess);
  EXPECT_EQ(LaunchVqDecodeToPages(w, 0, t, t, rows, -1, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchVqDecodeToPages(w, 0, t, t, nullptr, 1, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchVqDecodeToPages(w, -1, t, t, rows, 1, nullptr),
            cudaErrorInvalidValue);
  VqDecodeView bad = w;
  bad.key_bits = 17;
  EXPECT_EQ(LaunchVqDecodeToPages(bad, 0, t, t, rows, 1, nullptr),
            cudaErrorInvalidValue);
  bad = w;
  bad.key_groups = 3;
  EXPECT_EQ(LaunchVqDecodeToPages(bad, 0, t, t, rows, 1, nullptr),
            cudaErrorInvalidValue);
  bad = w;
  bad.rotate = 1;  // without angles
  EXPECT_EQ(LaunchVqDecodeToPages(bad, 0, t, t, rows, 1, nullptr),
            cudaErrorInvalidValue);
  bad = w;
  bad.key_codebooks = nullptr;
  EXPECT_EQ(LaunchVqDecodeToPages(bad, 0, t, t, rows, 1, nullptr),
            cudaErrorInvalidValue);
  bad = w;
  bad.refine_stages = 4;  // without refinement codebooks
  EXPECT_EQ(LaunchVqDecodeToPages(bad, 0, t, t, rows, 1, nullptr),
            cudaErrorInvalidValue);
  bad.refine_stages = -1;
  EXPECT_EQ(LaunchVqDecodeToPages(bad, 0, t, t, rows, 1, nullptr),
            cudaErrorInvalidValue);
  PageTensor no_data = t;
  no_data.data = nullptr;
  EXPECT_EQ(LaunchVqDecodeToPages(w, 0, no_data, t, rows, 1, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace vqkv::cuda

VQKV_MINI_TEST_MAIN()
