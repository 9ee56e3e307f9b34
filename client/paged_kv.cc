#include "client/paged_kv.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/fp16.h"

namespace vqkv::client {
namespace {

PagedKvCaches MakeCaches(std::vector<void*> keys, std::vector<void*> values,
                         int64_t num_blocks, int64_t block_size, int kv_heads,
                         int head_dim, DType dtype,
                         const std::array<int64_t, 4>& strides) {
  PagedKvCaches c;
  c.num_blocks = num_blocks;
  c.block_size = block_size;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.dtype = dtype;
  const size_t n = std::min(keys.size(), values.size());
  c.layers.resize(std::max(keys.size(), values.size()));
  for (size_t l = 0; l < c.layers.size(); ++l) {
    PagedLayer& p = c.layers[l];
    p.keys = l < keys.size() ? keys[l] : nullptr;
    p.values = l < n ? values[l] : nullptr;
    std::copy(strides.begin(), strides.end(), p.key_strides);
    std::copy(strides.begin(), strides.end(), p.value_strides);
  }
  return c;
}

// Whether distinct (block, slot, head, dim) indices map to distinct offsets:
// sorted by stride, each stride must exceed the span of the smaller ones.
bool NonOverlapping(const int64_t strides[4], const int64_t extents[4]) {
  std::array<int, 4> order = {0, 1, 2, 3};
  std::sort(order.begin(), order.end(),
            [&](int a, int b) { return strides[a] < strides[b]; });
  int64_t span = 1;  // elements covered by the smaller dimensions
  for (int i : order) {
    if (extents[i] == 1) continue;
    if (strides[i] < span) return false;
    span = strides[i] * extents[i];
  }
  return true;
}

float LoadAs(DType dtype, const void* base, int64_t offset) {
  switch (dtype) {
    case DType::kFloat16:
      return HalfToFloatRef(static_cast<const uint16_t*>(base)[offset]);
    case DType::kBfloat16:
      return Bf16ToFloat(static_cast<const uint16_t*>(base)[offset]);
    case DType::kFloat32:
      return static_cast<const float*>(base)[offset];
  }
  return 0.0f;
}

void StoreAs(DType dtype, void* base, int64_t offset, float v) {
  switch (dtype) {
    case DType::kFloat16:
      static_cast<uint16_t*>(base)[offset] = FloatToHalfRef(v);
      return;
    case DType::kBfloat16:
      static_cast<uint16_t*>(base)[offset] = FloatToBf16(v);
      return;
    case DType::kFloat32:
      static_cast<float*>(base)[offset] = v;
      return;
  }
}

// Calls fn(row, offset of element (token's page, slot, head, 0)) for every
// token row t0..t0+n and head; rows are [token][head] in the output.
template <typename Fn>
void ForEachRow(const PagedKvCaches& c, const int64_t strides[4],
                absl::Span<const int32_t> block_ids, int64_t t0, int64_t n,
                Fn fn) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = t0 + i;
    const int64_t page = block_ids[t / c.block_size];
    const int64_t slot = t % c.block_size;
    const int64_t base = page * strides[0] + slot * strides[1];
    for (int h = 0; h < c.kv_heads; ++h) {
      fn(i * c.kv_heads + h, base + h * strides[2]);
    }
  }
}

void GatherOne(const PagedKvCaches& c, const void* src,
               const int64_t strides[4], absl::Span<const int32_t> block_ids,
               int64_t t0, int64_t n, float* out) {
  const int D = c.head_dim;
  const int64_t sd = strides[3];
  ForEachRow(c, strides, block_ids, t0, n, [&](int64_t row, int64_t off) {
    float* dst = out + row * D;
    if (c.dtype == DType::kFloat32 && sd == 1) {
      std::memcpy(dst, static_cast<const float*>(src) + off, D * sizeof(float));
    } else if (c.dtype == DType::kFloat16 && sd == 1) {
      HalfToFloat(static_cast<const uint16_t*>(src) + off, D, dst);
    } else {
      for (int d = 0; d < D; ++d) dst[d] = LoadAs(c.dtype, src, off + d * sd);
    }
  });
}

void ScatterOne(const PagedKvCaches& c, void* dst, const int64_t strides[4],
                absl::Span<const int32_t> block_ids, int64_t t0, int64_t n,
                const float* in) {
  const int D = c.head_dim;
  const int64_t sd = strides[3];
  ForEachRow(c, strides, block_ids, t0, n, [&](int64_t row, int64_t off) {
    const float* src = in + row * D;
    if (c.dtype == DType::kFloat32 && sd == 1) {
      std::memcpy(static_cast<float*>(dst) + off, src, D * sizeof(float));
    } else if (c.dtype == DType::kFloat16 && sd == 1) {
      FloatToHalf(src, D, static_cast<uint16_t*>(dst) + off);
    } else {
      for (int d = 0; d < D; ++d) StoreAs(c.dtype, dst, off + d * sd, src[d]);
    }
  });
}

}  // namespace

int DTypeBytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

PagedKvCaches PagedKvCaches::Nhd(std::vector<void*> keys,
                                 std::vector<void*> values, int64_t num_blocks,
                                 int64_t block_size, int kv_heads, int head_dim,
                                 DType dtype) {
  const std::array<int64_t, 4> s = {block_size * kv_heads * head_dim,
                                    int64_t{kv_heads} * head_dim, head_dim, 1};
  return MakeCaches(std::move(keys), std::move(values), num_blocks, block_size,
                    kv_heads, head_dim, dtype, s);
}

PagedKvCaches PagedKvCaches::Hnd(std::vector<void*> keys,
                                 std::vector<void*> values, int64_t num_blocks,
                                 int64_t block_size, int kv_heads, int head_dim,
                                 DType dtype) {
  const std::array<int64_t, 4> s = {int64_t{kv_heads} * block_size * head_dim,
                                    head_dim, block_size * head_dim, 1};
  return MakeCaches(std::move(keys), std::move(values), num_blocks, block_size,
                    kv_heads, head_dim, dtype, s);
}

absl::Status PagedKvCaches::Validate(const KvLayout& layout) const {
  if (static_cast<int>(layers.size()) != layout.layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("the KV caches have ", layers.size(),
                     " layers, the model has ", layout.layers));
  }
  if (kv_heads != layout.kv_heads || head_dim != layout.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the KV caches have ", kv_heads, " kv heads x ", head_dim,
        " head_dim, the model has ", layout.kv_heads, " x ", layout.head_dim));
  }
  if (num_blocks < 1 || num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_blocks must be in 1..2^31-1, got ", num_blocks));
  }
  if (block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size must be >= 1, got ", block_size));
  }
  if (dtype != DType::kFloat16 && dtype != DType::kBfloat16 &&
      dtype != DType::kFloat32) {
    return absl::InvalidArgumentError("dtype must be fp16, bf16 or fp32");
  }
  const int64_t extents[4] = {num_blocks, block_size, kv_heads, head_dim};
  for (size_t l = 0; l < layers.size(); ++l) {
    const PagedLayer& p = layers[l];
    if (p.keys == nullptr || p.values == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, ": keys and values must not be null"));
    }
    for (int i = 0; i < 4; ++i) {
      if (p.key_strides[i] < 1 || p.value_strides[i] < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", l, ": strides must be >= 1"));
      }
    }
    if (!NonOverlapping(p.key_strides, extents) ||
        !NonOverlapping(p.value_strides, extents)) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, ": the strides make elements overlap"));
    }
  }
  return absl::OkStatus();
}

void GatherLayer(const PagedKvCaches& caches, int layer,
                 absl::Span<const int32_t> block_ids, int64_t t0, int64_t n,
                 float* out_keys, float* out_values) {
  const PagedLayer& p = caches.layers[layer];
  GatherOne(caches, p.keys, p.key_strides, block_ids, t0, n, out_keys);
  GatherOne(caches, p.values, p.value_strides, block_ids, t0, n, out_values);
}

void ScatterLayer(const PagedKvCaches& caches, int layer,
                  absl::Span<const int32_t> block_ids, int64_t t0, int64_t n,
                  const float* keys, const float* values) {
  const PagedLayer& p = caches.layers[layer];
  ScatterOne(caches, p.keys, p.key_strides, block_ids, t0, n, keys);
  ScatterOne(caches, p.values, p.value_strides, block_ids, t0, n, values);
}

}  // namespace vqkv::client
