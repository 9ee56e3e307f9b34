// CUDA paged gather/scatter (kernels/cuda/paged_copy.cuh) against a scalar
// reference written here with kernels/fp16.h (the conversions of the CPU
// path, client/paged_kv.cc).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/paged_copy.cuh"
#include "kernels/fp16.h"
#include "tests/testing/mini_test.h"
#include "tests/unit/kernels/cuda/cuda_test_util.h"
#include "tests/unit/kernels/cuda/host_pages.h"

namespace vqkv::cuda {
namespace {

// Values that exercise rounding: random normals, a few large and tiny ones
// (fp16 overflow and subnormals) and a NaN.
float Sample(std::mt19937& rng, int64_t i) {
  std::normal_distribution<float> normal(0.0f, 2.0f);
  if (i % 97 == 3) return 70000.0f;
  if (i % 89 == 5) return 3e-6f;
  if (i % 211 == 7) return std::nanf("");
  return normal(rng);
}

bool SameFloat(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

// Gathers rows {page, slot} from device pages into mapped pinned host rows
// and scatters them back into fresh pages; checks both against the
// reference for one dtype and layout.
void CheckRoundTrip(int32_t dtype, bool hnd) {
  SCOPED_TRACE("dtype " + std::to_string(dtype) + (hnd ? " HND" : " NHD"));
  const int64_t pages = 7, slots = 16, heads = 3, dim = 64;
  HostPages k(dtype, pages, slots, heads, dim, hnd);
  HostPages v(dtype, pages, slots, heads, dim, hnd);
  std::mt19937 rng(7);
  for (int64_t p = 0; p < pages; ++p)
    for (int64_t s = 0; s < slots; ++s)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t d = 0; d < dim; ++d) {
          const int64_t off = k.Offset(p, s, h, d);
          k.Set(off, Sample(rng, off));
          v.Set(off, Sample(rng, off + 1));
        }
  // Rows out of page order, as a request's pages are.
  const int32_t order[] = {5, 2, 6, 0};
  const int64_t n = 4 * slots;
  const int64_t row = heads * dim;
  float* host = nullptr;
  ASSERT_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&host),
                            2 * n * row * sizeof(float), cudaHostAllocMapped));
  std::vector<PagedRow> rows(n);
  for (int64_t i = 0; i < n; ++i) {
    rows[i] = {order[i / slots], static_cast<int32_t>(i % slots),
               host + i * row, host + (n + i) * row};
  }
  DeviceBuffer<PagedRow> d_rows(n);
  ASSERT_CUDA(d_rows.Upload(rows));
  DeviceBuffer<uint8_t> dk(k.bytes.size()), dv(v.bytes.size());
  ASSERT_CUDA(dk.Upload(k.bytes));
  ASSERT_CUDA(dv.Upload(v.bytes));
  PageTensor tk{dk.get(), dtype, {}}, tv{dv.get(), dtype, {}};
  for (int i = 0; i < 4; ++i) tk.strides[i] = tv.strides[i] = k.strides[i];

  ASSERT_CUDA(LaunchPagedGather(tk, tv, d_rows.get(), n, heads, dim, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t off = k.Offset(rows[i].page, rows[i].slot, h, d);
        bad += !SameFloat(rows[i].keys[h * dim + d], k.Get(off));
        bad += !SameFloat(rows[i].values[h * dim + d], v.Get(off));
      }
  EXPECT_EQ(bad, 0) << "gathered elements differing from the pages";

  // Scatter rows of new values (not yet representable in the dtype) into
  // zeroed pages; compare with the reference rounding.
  for (int64_t i = 0; i < 2 * n * row; ++i) host[i] = 1.0f / 3 + Sample(rng, i);
  HostPages k2(dtype, pages, slots, heads, dim, hnd);
  HostPages v2(dtype, pages, slots, heads, dim, hnd);
  ASSERT_CUDA(dk.Upload(k2.bytes));
  ASSERT_CUDA(dv.Upload(v2.bytes));
  ASSERT_CUDA(LaunchPagedScatter(tk, tv, d_rows.get(), n, heads, dim, nullptr));
  std::vector<uint8_t> got_k, got_v;
  ASSERT_CUDA(dk.Download(&got_k));
  ASSERT_CUDA(dv.Download(&got_v));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t off = k2.Offset(rows[i].page, rows[i].slot, h, d);
        k2.Set(off, rows[i].keys[h * dim + d]);
        v2.Set(off, rows[i].values[h * dim + d]);
      }
  HostPages gk = k2, gv = v2;
  gk.bytes = got_k;
  gv.bytes = got_v;
  bad = 0;
  for (int64_t off = 0; off < pages * k.strides[0]; ++off) {
    bad += !SameFloat(gk.Get(off), k2.Get(off));
    bad += !SameFloat(gv.Get(off), v2.Get(off));
  }
  EXPECT_EQ(bad, 0) << "scattered elements differing from the reference "
                       "(untouched padding must stay zero)";
  cudaFreeHost(host);
}

TEST(PagedCopyCudaTest, GatherAndScatterMatchTheReferenceForEveryDtype) {
  SKIP_WITHOUT_GPU();
  for (int32_t dtype : {kPageF16, kPageBf16, kPageF32}) {
    for (bool hnd : {false, true}) CheckRoundTrip(dtype, hnd);
  }
}

TEST(PagedCopyCudaTest, EmptyIsANoOpAndBadArgumentsAreRejected) {
  // Argument checks come before any device call, so they run without a GPU.
  PageTensor t{reinterpret_cast<void*>(16), kPageF16, {1, 1, 1, 1}};
  const PagedRow* rows = reinterpret_cast<const PagedRow*>(16);
  EXPECT_EQ(LaunchPagedGather(t, t, nullptr, 0, 1, 1, nullptr), cudaSuccess);
  EXPECT_EQ(LaunchPagedGather(t, t, rows, -1, 1, 1, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchPagedGather(t, t, nullptr, 1, 1, 1, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(LaunchPagedScatter(t, t, rows, 1, 0, 1, nullptr),
            cudaErrorInvalidValue);
  PageTensor bad = t;
  bad.dtype = 9;
  EXPECT_EQ(LaunchPagedScatter(t, bad, rows, 1, 1, 1, nullptr),
            cudaErrorInvalidValue);
  bad = t;
  bad.data = nullptr;
  EXPECT_EQ(LaunchPagedGather(bad, t, rows, 1, 1, 1, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace vqkv::cuda

VQKV_MINI_TEST_MAIN()
