// The CUDA steps of the device encode (kernels/cuda/paged_encode.cuh)
// against their host element functions (kernels/vq_encode_element.h, which
// tests/unit/kernels/vq_decode_plan_test.cc checks against the client's CPU
// path): job inputs read from padded NHD and HND pages of every dtype, the
// key refinement's inputs, and the packing of random job codes into block
// slices (a refined layer's too). mini_test, so the CUDA-only GPU check
// builds it.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/paged_encode.cuh"
#include "kernels/vq_encode_element.h"
#include "tests/testing/mini_test.h"
#include "tests/testing/random_decode_view.h"
#include "tests/unit/kernels/cuda/cuda_test_util.h"
#include "tests/unit/kernels/cuda/host_pages.h"

namespace vqkv::cuda {
namespace {

constexpr int kHeads = 3, kDim = 64, kBlocks = 3, kTokens = 32, kSlots = 16;
const int32_t kBlockPages[kBlocks][2] = {{6, 1}, {3, 7}, {0, 4}};

// refine: layer 1's keys refined by 5 more stages.
testing::RandomDecodeSpec Spec(bool plain, bool refine = false) {
  testing::RandomDecodeSpec s = testing::PagedTestSpec(plain, plain ? 31 : 32);
  if (refine) {
    s.refine_layer = 1;
    s.refine_stages = 5;
  }
  return s;
}

// Random codes for every job of a layer of `view` (on a refined layer its
// refinement jobs too) for n tokens, on the host and the device.
struct RandomJobCodes {
  std::vector<std::vector<uint16_t>> host;
  std::vector<std::unique_ptr<DeviceBuffer<uint16_t>>> device;
  std::vector<const uint16_t*> host_ptrs, dev_ptrs;
  std::unique_ptr<DeviceBuffer<const uint16_t*>> dev_table;

  cudaError_t Make(const VqDecodeView& w, int64_t n, bool refined,
                   uint32_t seed) {
    const int base = VqEncodeJobCount(w);
    const int jobs = base + (refined ? w.slots : 0);
    const int64_t rows = VqEncodeJobRows(w, n);
    std::mt19937 rng(seed);
    for (int j = 0; j < jobs; ++j) {
      const int bits =
          j < VqEncodeKeyJobs(w) || j >= base ? w.key_bits : w.value_bits;
      const int stages = j < base ? VqEncodeJobStages(w, j) : w.refine_stages;
      host.emplace_back(static_cast<size_t>(rows) * stages);
      for (uint16_t& c : host.back()) {
        c = static_cast<uint16_t>(rng() % (1u << bits));
      }
      device.push_back(
          std::make_unique<DeviceBuffer<uint16_t>>(host.back().size()));
      if (cudaError_t e = device.back()->Upload(host.back());
          e != cudaSuccess) {
        return e;
      }
      host_ptrs.push_back(host.back().data());
      dev_ptrs.push_back(device.back()->get());
    }
    dev_table = std::make_unique<DeviceBuffer<const uint16_t*>>(jobs);
    return dev_table->Upload(dev_ptrs);
  }
};

// The batch's tokens: three blocks of 32, pages of 16 slots out of order,
// positions from 500 on.
std::vector<EncodeTokenRow> Rows() {
  std::vector<EncodeTokenRow> rows;
  for (int b = 0; b < kBlocks; ++b) {
    for (int t = 0; t < kTokens; ++t) {
      rows.push_back({kBlockPages[b][t / kSlots], t % kSlots,
                      500 + int64_t{b} * kTokens + t});
    }
  }
  return rows;
}

// The host pages as VqEncodeInput reads them.
struct HostKv {
  const HostPages* k;
  const HostPages* v;
  const std::vector<EncodeTokenRow>* rows;
  float operator()(int64_t token, int head, int e, bool value) const {
    const EncodeTokenRow& r = (*rows)[token];
    const HostPages& p = value ? *v : *k;
    return p.Get(p.Offset(r.page, r.slot, head, e));
  }
};
struct HostPos {
  const std::vector<EncodeTokenRow>* rows;
  int64_t operator()(int64_t token) const { return (*rows)[token].position; }
};

void CheckInputs(bool plain, int32_t dtype, bool hnd) {
  SCOPED_TRACE(std::string(plain ? "plain" : "split+rope") + " dtype " +
               std::to_string(dtype) + (hnd ? " HND" : " NHD"));
  testing::RandomDecodeView view(Spec(plain));
  ASSERT_CUDA(view.Upload());
  HostPages k(dtype, 8, kSlots, kHeads, kDim, hnd);
  HostPages v(dtype, 8, kSlots, kHeads, kDim, hnd);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (int64_t off = 0; off < 8 * k.strides[0]; ++off) {
    k.Set(off, normal(rng));
    v.Set(off, normal(rng));
  }
  const std::vector<EncodeTokenRow> rows = Rows();
  const int64_t n = static_cast<int64_t>(rows.size());
  const VqDecodeView& w = view.host();
  const int jobs = VqEncodeJobCount(w);
  const int64_t job_rows = VqEncodeJobRows(w, n);
  std::vector<std::unique_ptr<DeviceBuffer<float>>> inputs;
  std::vector<float*> input_ptrs;
  for (int j = 0; j < jobs; ++j) {
    inputs.push_back(std::make_unique<DeviceBuffer<float>>(
        static_cast<size_t>(job_rows) * VqEncodeJobDims(w, j)));
    input_ptrs.push_back(inputs.back()->get());
  }
  DeviceBuffer<float*> d_inputs(input_ptrs.size());
  ASSERT_CUDA(d_inputs.Upload(input_ptrs));
  DeviceBuffer<EncodeTokenRow> d_rows(rows.size());
  ASSERT_CUDA(d_rows.Upload(rows));
  DeviceBuffer<uint8_t> dk(k.bytes.size()), dv(v.bytes.size());
  ASSERT_CUDA(dk.Upload(k.bytes));
  ASSERT_CUDA(dv.Upload(v.bytes));
  PageTensor tk{dk.get(), dtype, {}}, tv{dv.get(), dtype, {}};
  for (int i = 0; i < 4; ++i) tk.strides[i] = tv.strides[i] = k.strides[i];
  ASSERT_CUDA(LaunchVqEncodeInputs(view.device(), tk, tv, d_rows.get(), n,
                                   d_inputs.get(), nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  const HostKv kv{&k, &v, &rows};
  const HostPos pos{&rows};
  int64_t bad = 0, checked = 0;
  for (int j = 0; j < jobs; ++j) {
    std::vector<float> got;
    ASSERT_CUDA(inputs[j]->Download(&got));
    const int dims = VqEncodeJobDims(w, j);
    for (int64_t r = 0; r < job_rows; ++r) {
      for (int i = 0; i < dims; ++i, ++checked) {
        const float want = VqEncodeInput(w, j, r, i, kv, pos);
        bad += std::fabs(got[r * dims + i] - want) >
               1e-6f * (1.0f + std::fabs(want));
      }
    }
  }
  EXPECT_EQ(bad, 0) << "of " << checked << " job inputs differ";
}

TEST(PagedEncodeCudaTest, InputsMatchTheHostElementFunction) {
  SKIP_WITHOUT_GPU();
  for (bool plain : {false, true})
    for (int32_t dtype : {kPageF16, kPageBf16, kPageF32})
      for (bool hnd : {false, true}) CheckInputs(plain, dtype, hnd);
}

// The key refinement's inputs of the refined layer (what random key codes
// leave of the pages' keys), against VqEncodeRefineInput on the host.
void CheckRefineInputs(bool plain, int32_t dtype, bool hnd) {
  SCOPED_TRACE(std::string(plain ? "plain" : "split+rope") + " dtype " +
               std::to_string(dtype) + (hnd ? " HND" : " NHD"));
  testing::RandomDecodeView view(Spec(plain, true));
  ASSERT_CUDA(view.Upload());
  HostPages k(dtype, 8, kSlots, kHeads, kDim, hnd);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (int64_t off = 0; off < 8 * k.strides[0]; ++off) k.Set(off, normal(rng));
  const std::vector<EncodeTokenRow> rows = Rows();
  const int64_t n = static_cast<int64_t>(rows.size());
  const VqDecodeView& w = view.host();
  const int64_t job_rows = VqEncodeJobRows(w, n);
  RandomJobCodes codes;
  ASSERT_CUDA(codes.Make(w, n, false, 6));  // the key jobs' codes
  std::vector<std::unique_ptr<DeviceBuffer<float>>> inputs;
  std::vector<float*> input_ptrs;
  for (int s = 0; s < w.slots; ++s) {
    inputs.push_back(std::make_unique<DeviceBuffer<float>>(
        static_cast<size_t>(job_rows) * kDim));
    input_ptrs.push_back(inputs.back()->get());
  }
  DeviceBuffer<float*> d_inputs(input_ptrs.size());
  ASSERT_CUDA(d_inputs.Upload(input_ptrs));
  DeviceBuffer<EncodeTokenRow> d_rows(rows.size());
  ASSERT_CUDA(d_rows.Upload(rows));
  DeviceBuffer<uint8_t> dk(k.bytes.size());
  ASSERT_CUDA(dk.Upload(k.bytes));
  PageTensor tk{dk.get(), dtype, {}};
  for (int i = 0; i < 4; ++i) tk.strides[i] = k.strides[i];
  const int layer = 1;
  ASSERT_CUDA(LaunchVqEncodeRefineInputs(view.device(), layer, tk, d_rows.get(),
                                         n, codes.dev_table->get(),
                                         d_inputs.get(), nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  const HostKv kv{&k, &k, &rows};
  const HostPos pos{&rows};
  int64_t bad = 0, checked = 0;
  for (int s = 0; s < w.slots; ++s) {
    std::vector<float> got;
    ASSERT_CUDA(inputs[s]->Download(&got));
    for (int64_t r = 0; r < job_rows; ++r) {
      for (int d = 0; d < kDim; ++d, ++checked) {
        const float want = VqEncodeRefineInput(w, layer, s, r, d, kv, pos,
                                               codes.host_ptrs.data());
        bad += std::fabs(got[r * kDim + d] - want) >
               1e-5f * (1.0f + std::fabs(want));
      }
    }
  }
  EXPECT_EQ(bad, 0) << "of " << checked << " refinement inputs differ";
}

TEST(PagedEncodeCudaTest, RefineInputsMatchTheHostElementFunction) {
  SKIP_WITHOUT_GPU();
  for (bool plain : {false, true})
    for (int32_t dtype : {kPageF16, kPageBf16, kPageF32})
      for (bool hnd : {false, true}) CheckRefineInputs(plain, dtype, hnd);
}

// Random codes of every job packed into three blocks' slices (of 16, 32
// and 8 tokens) on the device, byte for byte the host's packing; on the
// refined layer of a set with a key refinement, its slices too.
TEST(PagedEncodeCudaTest, PackingMatchesTheHostElementFunction) {
  SKIP_WITHOUT_GPU();
  for (bool plain : {false, true})
    for (bool refine : {false, true}) {
      SCOPED_TRACE(std::string(plain ? "plain" : "split") +
                   (refine ? ", refined layer" : ""));
      testing::RandomDecodeView view(Spec(plain, refine));
      ASSERT_CUDA(view.Upload());
      const VqDecodeView& w = view.host();
      const int64_t tokens[3] = {16, 32, 8};
      const int64_t n = 56;
      RandomJobCodes codes;
      ASSERT_CUDA(codes.Make(w, n, refine, 4));
      std::vector<PackBlock> blocks;
      std::vector<std::unique_ptr<DeviceBuffer<uint8_t>>> outs;
      int64_t first = 0, total = 0;
      std::vector<std::vector<uint8_t>> want;
      for (int64_t t : tokens) {
        const int64_t kb = view.KeyBytes(t), vb = view.ValueBytes(t);
        const int64_t rb = refine ? view.RefineBytes(t) : 0;
        PackBlock blk{first, t};
        outs.push_back(std::make_unique<DeviceBuffer<uint8_t>>(kb));
        blk.key_codes = outs.back()->get();
        outs.push_back(std::make_unique<DeviceBuffer<uint8_t>>(vb));
        blk.value_codes = outs.back()->get();
        std::vector<uint8_t> wk(kb), wv(vb), wr(rb);
        for (int64_t i = 0; i < kb; ++i) {
          wk[i] = VqPackedByte(w, VqSection::kKeys, codes.host_ptrs.data(),
                               first, t, i);
        }
        for (int64_t i = 0; i < vb; ++i) {
          wv[i] = VqPackedByte(w, VqSection::kValues, codes.host_ptrs.data(),
                               first, t, i);
        }
        want.push_back(std::move(wk));
        want.push_back(std::move(wv));
        if (refine) {
          outs.push_back(std::make_unique<DeviceBuffer<uint8_t>>(rb));
          blk.refine_codes = outs.back()->get();
          for (int64_t i = 0; i < rb; ++i) {
            wr[i] = VqPackedByte(w, VqSection::kKeyRefinement,
                                 codes.host_ptrs.data(), first, t, i);
          }
          want.push_back(std::move(wr));
        }
        blocks.push_back(blk);
        first += t;
        total += kb + vb + rb;
      }
      DeviceBuffer<PackBlock> d_blocks(blocks.size());
      ASSERT_CUDA(d_blocks.Upload(blocks));
      ASSERT_CUDA(LaunchVqPackLayer(view.device(), codes.dev_table->get(),
                                    d_blocks.get(), 3, total, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      for (size_t i = 0; i < outs.size(); ++i) {
        std::vector<uint8_t> got;
        ASSERT_CUDA(outs[i]->Download(&got));
        EXPECT_EQ(got == want[i], true) << "slice " << i;
      }
    }
}

TEST(PagedEncodeCudaTest, EmptyIsANoOpAndBadArgumentsAreRejected) {
  // Argument checks come before any device call, so they run without a GPU.
  testing::RandomDecodeView view(Spec(true));
  const VqDecodeView& w = view.host();  // pointers are not dereferenced
  PageTensor t{reinterpret_cast<void*>(16), kPageF16, {1, 1, 1, 1}};
  const auto* rows = reinterpret_cast<const EncodeTokenRow*>(16);
  float* const* inputs = reinterpret_cast<float* const*>(16);
  EXPECT_EQ(LaunchVqEncodeInputs(w, t, t, nullptr, 0, nullptr, nullptr),
            cudaSuccess);
  EXPECT_EQ(LaunchVqEncodeInputs(w, t, t, rows, -1, inputs, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchVqEncodeInputs(w, t, t, rows, 1, nullptr, nullptr),
            cudaErrorInvalidValue);
  VqDecodeView bad = w;
  bad.group_dim[0] = nullptr;
  EXPECT_EQ(LaunchVqEncodeInputs(bad, t, t, rows, 1, inputs, nullptr),
            cudaErrorInvalidValue);
  PageTensor no_data = t;
  no_data.data = nullptr;
  EXPECT_EQ(LaunchVqEncodeInputs(w, no_data, t, rows, 1, inputs, nullptr),
            cudaErrorInvalidValue);
  const auto* codes = reinterpret_cast<const uint16_t* const*>(16);
  const auto* blocks = reinterpret_cast<const PackBlock*>(16);
  EXPECT_EQ(LaunchVqPackLayer(w, codes, blocks, 0, 0, nullptr), cudaSuccess);
  EXPECT_EQ(LaunchVqPackLayer(w, codes, blocks, -1, 8, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchVqPackLayer(w, nullptr, blocks, 1, 8, nullptr),
            cudaErrorInvalidValue);
  // The refinement inputs need a view with a key refinement.
  float* const* refine_inputs = reinterpret_cast<float* const*>(16);
  EXPECT_EQ(LaunchVqEncodeRefineInputs(w, 1, t, rows, 1, codes, refine_inputs,
                                       nullptr),
            cudaErrorInvalidValue);
  testing::RandomDecodeView refined(Spec(true, true));
  const VqDecodeView& rw = refined.host();
  EXPECT_EQ(
      LaunchVqEncodeRefineInputs(rw, 1, t, rows, 0, nullptr, nullptr, nullptr),
      cudaSuccess);
  EXPECT_EQ(LaunchVqEncodeRefineInputs(rw, 1, t, rows, 1, nullptr,
                                       refine_inputs, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchVqEncodeRefineInputs(rw, -1, t, rows, 1, codes, refine_inputs,
                                       nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace vqkv::cuda

VQKV_MINI_TEST_MAIN()
