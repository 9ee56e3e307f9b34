// CUDA decode of codes into pages (kernels/cuda/paged_decode.cuh) against the
// host reference VqDecodeTokensRef (kernels/vq_decode_element.h, itself
// checked against VqCodec + Rope + ReorderRopePairs in
// tests/unit/kernels/vq_decode_plan_test.cc), rounded to the page dtype as
// the CPU path rounds. mini_test, so the CUDA-only GPU check builds it.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/paged_decode.cuh"
#include "kernels/vq_decode_element.h"
#include "tests/testing/mini_test.h"
#include "tests/unit/kernels/cuda/cuda_test_util.h"
#include "tests/unit/kernels/cuda/host_pages.h"

namespace vqkv::cuda {
namespace {

constexpr int kLayers = 2, kHeads = 3, kDim = 64;

// A decode view over random codebooks, with host and device copies of every
// array: two key groups (the "rotate half" split: frequency pairs [0, 16)
// high, the rest low), per-head quantizers, key gains, and keys rotated by
// RoPE in half layout over 48 dims, written in adjacent layout; or, with
// `plain`, one group, shared quantizers, no gains and no rotation, written
// in half layout (the reorder alone).
struct RandomView {
  VqDecodeView host, device;
  std::vector<int32_t> dim_group, dim_index;
  std::vector<std::vector<float>> books;  // key quantizers, then values
  std::vector<const float*> host_keys, host_values;
  std::vector<float> gains;
  std::vector<double> inv_freq;
  // Device copies.
  std::vector<std::unique_ptr<DeviceBuffer<float>>> d_books;
  std::unique_ptr<DeviceBuffer<const float*>> d_keys, d_values;
  std::unique_ptr<DeviceBuffer<int32_t>> d_group, d_index;
  std::unique_ptr<DeviceBuffer<float>> d_gains;
  std::unique_ptr<DeviceBuffer<double>> d_freq;

  explicit RandomView(bool plain) {
    std::mt19937 rng(plain ? 21 : 22);
    VqDecodeView& w = host;
    w.kv_heads = kHeads;
    w.head_dim = kDim;
    w.slots = plain ? 1 : kHeads;
    w.key_groups = plain ? 1 : 2;
    w.key_bits = 10;
    w.value_bits = 9;
    w.key_stages = 28;
    w.value_stages = 8;
    dim_group.resize(kDim);
    dim_index.resize(kDim);
    if (plain) {
      w.group_stages[0] = 28;
      w.group_dims[0] = kDim;
      for (int d = 0; d < kDim; ++d) dim_group[d] = 0, dim_index[d] = d;
    } else {
      w.group_stages[0] = 14;
      w.group_stages[1] = 14;
      w.group_offset[1] = 14;
      int count[2] = {0, 0};
      for (int d = 0; d < kDim; ++d) {
        const int g = (d % (kDim / 2)) < kDim / 4 ? 0 : 1;
        dim_group[d] = g;
        dim_index[d] = count[g]++;
      }
      w.group_dims[0] = count[0];
      w.group_dims[1] = count[1];
    }
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto book = [&](int stages, int bits, int dims) {
      std::vector<float> b(static_cast<size_t>(stages) << bits);
      b.resize(b.size() * dims);
      for (float& x : b) x = 0.3f * normal(rng);
      books.push_back(std::move(b));
    };
    for (int l = 0; l < kLayers; ++l)
      for (int s = 0; s < w.slots; ++s)
        for (int g = 0; g < w.key_groups; ++g)
          book(w.group_stages[g], w.key_bits, w.group_dims[g]);
    const size_t key_books = books.size();
    for (int l = 0; l < kLayers; ++l)
      for (int s = 0; s < w.slots; ++s)
        book(w.value_stages, w.value_bits, kDim);
    for (size_t i = 0; i < books.size(); ++i) {
      (i < key_books ? host_keys : host_values).push_back(books[i].data());
    }
    if (!plain) {
      gains.resize(static_cast<size_t>(kLayers) * kHeads * (1 + kDim));
      for (size_t i = 0; i < gains.size(); ++i) {
        gains[i] = i % (1 + kDim) == 0 ? 1.0f + 0.1f * static_cast<float>(i % 7)
                                       : 0.5f * normal(rng);
      }
      w.rotate = 1;
      w.rot_dims = 48;
      w.block_pairs = kDecodeHalfPairs;
      w.engine_pairs = kDecodeAdjacentPairs;
      for (int i = 0; i < w.rot_dims / 2; ++i) {
        inv_freq.push_back(std::pow(10000.0, -2.0 * i / w.rot_dims));
      }
    } else {
      w.rot_dims = kDim;
      w.engine_pairs = kDecodeHalfPairs;
    }
    w.dim_group = dim_group.data();
    w.dim_index = dim_index.data();
    w.key_codebooks = host_keys.data();
    w.value_codebooks = host_values.data();
    w.key_gains = gains.empty() ? nullptr : gains.data();
    w.inv_freq = inv_freq.empty() ? nullptr : inv_freq.data();
  }

  cudaError_t Upload() {
    std::vector<const float*> dk, dv;
    for (size_t i = 0; i < books.size(); ++i) {
      d_books.push_back(std::make_unique<DeviceBuffer<float>>(books[i].size()));
      if (cudaError_t e = d_books.back()->Upload(books[i]); e != cudaSuccess) {
        return e;
      }
      (i < host_keys.size() ? dk : dv).push_back(d_books.back()->get());
    }
    d_keys = std::make_unique<DeviceBuffer<const float*>>(dk.size());
    d_values = std::make_unique<DeviceBuffer<const float*>>(dv.size());
    d_group = std::make_unique<DeviceBuffer<int32_t>>(kDim);
    d_index = std::make_unique<DeviceBuffer<int32_t>>(kDim);
    cudaError_t e = d_keys->Upload(dk);
    if (e == cudaSuccess) e = d_values->Upload(dv);
    if (e == cudaSuccess) e = d_group->Upload(dim_group);
    if (e == cudaSuccess) e = d_index->Upload(dim_index);
    device = host;
    device.dim_group = d_group->get();
    device.dim_index = d_index->get();
    device.key_codebooks = d_keys->get();
    device.value_codebooks = d_values->get();
    if (!gains.empty()) {
      d_gains = std::make_unique<DeviceBuffer<float>>(gains.size());
      if (e == cudaSuccess) e = d_gains->Upload(gains);
      device.key_gains = d_gains->get();
    }
    if (!inv_freq.empty()) {
      d_freq = std::make_unique<DeviceBuffer<double>>(inv_freq.size());
      if (e == cudaSuccess) e = d_freq->Upload(inv_freq);
      device.inv_freq = d_freq->get();
    }
    return e;
  }
};

// Three blocks of 32 tokens (random code bytes: every value is a valid code
// at these widths) decoded for layer 1 into pages of 16 slots, out of page
// order; every written element matches the reference rounded to the dtype
// (fp32 within float rounding, fp16/bf16 within one unit of the last
// place), and every other byte of the pages stays zero.
void CheckDecode(bool plain, int32_t dtype, bool hnd) {
  SCOPED_TRACE(std::string(plain ? "plain" : "split+gains+rope") + " dtype " +
               std::to_string(dtype) + (hnd ? " HND" : " NHD"));
  RandomView view(plain);
  ASSERT_CUDA(view.Upload());
  constexpr int kBlocks = 3, kTokens = 32, kSlots = 16, kLayer = 1;
  const int64_t pages = 8;
  const size_t key_bytes =
      (int64_t{kTokens} * kHeads * view.host.key_stages * view.host.key_bits +
       7) /
      8;
  const size_t value_bytes =
      (int64_t{kTokens} * kHeads * view.host.value_stages *
           view.host.value_bits +
       7) /
      8;
  std::mt19937 rng(5);
  std::vector<uint8_t> codes(kBlocks * (key_bytes + value_bytes));
  for (uint8_t& b : codes) b = static_cast<uint8_t>(rng());
  DeviceBuffer<uint8_t> d_codes(codes.size());
  ASSERT_CUDA(d_codes.Upload(codes));
  const int32_t block_pages[kBlocks][2] = {{6, 1}, {3, 7}, {0, 4}};
  std::vector<CodedPageRow> rows, d_rows_host;
  std::vector<CodedToken> ref_rows;
  for (int b = 0; b < kBlocks; ++b) {
    const size_t base = b * (key_bytes + value_bytes);
    for (int t = 0; t < kTokens; ++t) {
      CodedToken host_t{codes.data() + base, codes.data() + base + key_bytes, t,
                        int64_t{b} * kTokens + t + 1000};
      CodedToken dev_t = host_t;
      dev_t.key_codes = d_codes.get() + base;
      dev_t.value_codes = d_codes.get() + base + key_bytes;
      ref_rows.push_back(host_t);
      d_rows_host.push_back({block_pages[b][t / kSlots], t % kSlots, dev_t});
    }
  }
  const int64_t n = static_cast<int64_t>(d_rows_host.size());
  std::vector<float> want_k(n * kHeads * kDim), want_v(want_k.size());
  VqDecodeTokensRef(view.host, kLayer, ref_rows.data(), n, want_k.data(),
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
  ASSERT_CUDA(LaunchVqDecodeToPages(view.device, kLayer, tk, tv, d_rows.get(),
                                    n, nullptr));
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
    for (int h = 0; h < kHeads; ++h)
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
        bad += std::fabs(gk.Get(off) - rk) > ulp * (1e-3f + std::fabs(rk));
        bad += std::fabs(gv.Get(off) - rv) > ulp * (1e-3f + std::fabs(rv));
        written += 2;
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
    for (int32_t dtype : {kPageF16, kPageBf16, kPageF32})
      for (bool hnd : {false, true}) CheckDecode(plain, dtype, hnd);
}

TEST(PagedDecodeCudaTest, EmptyIsANoOpAndBadArgumentsAreRejected) {
  // Argument checks come before any device call, so they run without a GPU.
  RandomView view(true);
  const VqDecodeView& w = view.host;  // pointers are not dereferenced
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
  PageTensor no_data = t;
  no_data.data = nullptr;
  EXPECT_EQ(LaunchVqDecodeToPages(w, 0, no_data, t, rows, 1, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace vqkv::cuda

VQKV_MINI_TEST_MAIN()
