// The engine's paged KV cache as the client sees it: per layer, a K and a V
// tensor of pages, addressed through explicit element strides so that both
// of vLLM's layouts (and any other) are described without copies:
//   NHD: [num_blocks][block_size][kv_heads][head_dim]
//   HND: [num_blocks][kv_heads][block_size][head_dim]
// A request's token t lives in page block_ids[t / block_size], slot
// t % block_size. Engine pages (block_size, e.g. vLLM's 16) and vqkv blocks
// (CacheClientOptions::block_tokens) are independent sizes.
//
// Gather/Scatter convert between the pages (fp16, bf16 or fp32) and the
// float32 [token][kv_head][head_dim] rows the codec works on. They are the
// CPU path; pages in device memory (kCuda) are copied by a KvDevice
// (client/kv_device.h) with the same conversions.
//
// Thread safety: plain values and pure functions; concurrent Scatter calls
// must write disjoint pages.
#ifndef VQKV_CLIENT_PAGED_KV_H_
#define VQKV_CLIENT_PAGED_KV_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/codec.h"

namespace vqkv::client {

enum class DType { kFloat16 = 1, kBfloat16 = 2, kFloat32 = 3 };
enum class Device { kHost = 0, kCuda = 1 };

// Bytes of one element.
int DTypeBytes(DType dtype);

// One layer's K and V page tensors. Strides are in elements, in the order
// (block, slot, kv_head, dim).
struct PagedLayer {
  void* keys = nullptr;
  void* values = nullptr;
  int64_t key_strides[4] = {0, 0, 0, 0};
  int64_t value_strides[4] = {0, 0, 0, 0};
};

struct PagedKvCaches {
  int64_t num_blocks = 0;
  int64_t block_size = 0;  // tokens per engine page
  int kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kFloat16;
  Device device = Device::kHost;
  int cuda_device = 0;
  // kCuda only: the engine's compute stream (a cudaStream_t), which the
  // connector's copies are ordered with; null means the legacy default
  // stream.
  void* cuda_stream = nullptr;
  std::vector<PagedLayer> layers;

  // Contiguous NHD / HND tensors for every layer: keys[l], values[l] point
  // to [num_blocks][block_size][kv_heads][head_dim] (NHD) or
  // [num_blocks][kv_heads][block_size][head_dim] (HND) arrays.
  static PagedKvCaches Nhd(std::vector<void*> keys, std::vector<void*> values,
                           int64_t num_blocks, int64_t block_size, int kv_heads,
                           int head_dim, DType dtype);
  static PagedKvCaches Hnd(std::vector<void*> keys, std::vector<void*> values,
                           int64_t num_blocks, int64_t block_size, int kv_heads,
                           int head_dim, DType dtype);

  // kInvalidArgument naming the problem: no layers, null pointers, sizes
  // out of range, a layout other than `layout`, or strides that make two
  // (block, slot, head, dim) elements overlap within one tensor.
  absl::Status Validate(const KvLayout& layout) const;
};

// Copies tokens [t0, t0 + n) of one layer of a request (pages block_ids)
// into out_keys/out_values, float32 [n][kv_heads][head_dim].
// REQUIRES: caches validated; (t0 + n - 1) / block_size < block_ids.size();
// every block id in [0, num_blocks).
void GatherLayer(const PagedKvCaches& caches, int layer,
                 absl::Span<const int32_t> block_ids, int64_t t0, int64_t n,
                 float* out_keys, float* out_values);

// The inverse: writes float32 rows into the pages, converting to the
// caches' dtype (round to nearest even).
void ScatterLayer(const PagedKvCaches& caches, int layer,
                  absl::Span<const int32_t> block_ids, int64_t t0, int64_t n,
                  const float* keys, const float* values);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_PAGED_KV_H_
