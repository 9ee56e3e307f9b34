// RandomDecodeView: a VqDecodeView (kernels/vq_decode_element.h) over random
// codebooks, with host and device copies of every array, for the CUDA tests
// and benchmark of the paged decode and encode (kernels/cuda/paged_decode.cuh,
// paged_encode.cuh). Needs only the CUDA runtime and the standard library,
// so the CUDA-only GPU check (tests/gpu/CMakeLists.txt) builds what uses it.
//
// Thread safety: none; one owner.
#ifndef VQKV_TESTS_TESTING_RANDOM_DECODE_VIEW_H_
#define VQKV_TESTS_TESTING_RANDOM_DECODE_VIEW_H_

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "kernels/vq_decode_element.h"

namespace vqkv::testing {

struct RandomDecodeSpec {
  int layers = 2;
  int kv_heads = 3;
  int head_dim = 64;
  // One group of all dimensions, or two: the "rotate half" split (frequency
  // pairs [0, head_dim / 4) high, the rest low), each with half the stages.
  bool split = false;
  bool per_head = false;
  bool key_gains = false;
  int key_stages = 28, key_bits = 10;
  int value_stages = 8, value_bits = 9;
  // Keys coded before RoPE: rotated by it over rot_dims in block_pairs
  // order on decode (0: not rotated, rot_dims = head_dim).
  int rot_dims = 0;
  int32_t block_pairs = kDecodeAdjacentPairs;
  int32_t engine_pairs = kDecodeAdjacentPairs;
  // Key refinement of refine_stages stages on layer refine_layer (-1: none),
  // every slot, over all head_dim dimensions.
  int refine_layer = -1;
  int refine_stages = 0;
  uint32_t seed = 1;
};

// The two shapes the paged kernels' tests cover, 3 KV heads of 64: two key
// groups (the "rotate half" split), per-head codebooks, key gains, and keys
// rotated by RoPE in half order over 48 of the 64 dimensions, read and
// written in adjacent order; or (`plain`) one group, shared codebooks, no
// gains and no rotation, in half order (the pair reorder alone).
inline RandomDecodeSpec PagedTestSpec(bool plain, uint32_t seed) {
  RandomDecodeSpec s;
  s.kv_heads = 3;
  s.head_dim = 64;
  s.seed = seed;
  if (plain) {
    s.engine_pairs = kDecodeHalfPairs;
  } else {
    s.split = s.per_head = s.key_gains = true;
    s.rot_dims = 48;
    s.block_pairs = kDecodeHalfPairs;
  }
  return s;
}

class RandomDecodeView {
 public:
  explicit RandomDecodeView(const RandomDecodeSpec& spec) {
    std::mt19937 rng(spec.seed);
    VqDecodeView& w = host_;
    const int D = spec.head_dim;
    w.kv_heads = spec.kv_heads;
    w.head_dim = D;
    w.slots = spec.per_head ? spec.kv_heads : 1;
    w.key_groups = spec.split ? 2 : 1;
    w.key_bits = spec.key_bits;
    w.value_bits = spec.value_bits;
    w.key_stages = spec.key_stages;
    w.value_stages = spec.value_stages;
    dim_group_.resize(D);
    dim_index_.resize(D);
    if (!spec.split) {
      w.group_stages[0] = spec.key_stages;
      w.group_dims[0] = D;
      for (int d = 0; d < D; ++d) {
        dim_group_[d] = 0;
        dim_index_[d] = d;
        group_dim_[0].push_back(d);
      }
    } else {
      w.group_stages[0] = spec.key_stages / 2;
      w.group_stages[1] = spec.key_stages - spec.key_stages / 2;
      w.group_offset[1] = w.group_stages[0];
      int count[2] = {0, 0};
      for (int d = 0; d < D; ++d) {
        const int g = (d % (D / 2)) < D / 4 ? 0 : 1;
        dim_group_[d] = g;
        dim_index_[d] = count[g]++;
        group_dim_[g].push_back(d);
      }
      w.group_dims[0] = count[0];
      w.group_dims[1] = count[1];
    }
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto book = [&](int stages, int bits, int dims) {
      std::vector<float> b((static_cast<size_t>(stages) << bits) * dims);
      for (float& x : b) x = 0.3f * normal(rng);
      books_.push_back(std::move(b));
    };
    for (int l = 0; l < spec.layers; ++l)
      for (int s = 0; s < w.slots; ++s)
        for (int g = 0; g < w.key_groups; ++g)
          book(w.group_stages[g], w.key_bits, w.group_dims[g]);
    key_books_ = books_.size();
    for (int l = 0; l < spec.layers; ++l)
      for (int s = 0; s < w.slots; ++s) book(w.value_stages, w.value_bits, D);
    for (size_t i = 0; i < books_.size(); ++i) {
      (i < key_books_ ? host_keys_ : host_values_).push_back(books_[i].data());
    }
    if (spec.refine_layer >= 0) {
      w.refine_stages = spec.refine_stages;
      host_refine_.assign(static_cast<size_t>(spec.layers) * w.slots, nullptr);
      for (int s = 0; s < w.slots; ++s) {
        book(spec.refine_stages, w.key_bits, D);
        refine_books_.push_back(books_.size() - 1);
        host_refine_[static_cast<size_t>(spec.refine_layer) * w.slots + s] =
            books_.back().data();
      }
    }
    if (spec.key_gains) {
      gains_.resize(static_cast<size_t>(spec.layers) * spec.kv_heads * (1 + D));
      for (size_t i = 0; i < gains_.size(); ++i) {
        // Gains 1.0-1.6 (1 exactly on every seventh head), centres N(0, 0.5).
        gains_[i] = i % (1 + D) == 0
                        ? 1.0f + 0.1f * static_cast<float>((i / (1 + D)) % 7)
                        : 0.5f * normal(rng);
      }
    }
    if (spec.rot_dims > 0) {
      w.rotate = 1;
      w.rot_dims = spec.rot_dims;
      for (int i = 0; i < spec.rot_dims / 2; ++i) {
        inv_freq_.push_back(std::pow(10000.0, -2.0 * i / spec.rot_dims));
      }
    } else {
      w.rot_dims = D;
    }
    w.block_pairs = spec.block_pairs;
    w.engine_pairs = spec.engine_pairs;
    w.dim_group = dim_group_.data();
    w.dim_index = dim_index_.data();
    for (int g = 0; g < w.key_groups; ++g)
      w.group_dim[g] = group_dim_[g].data();
    w.key_codebooks = host_keys_.data();
    w.value_codebooks = host_values_.data();
    w.key_gains = gains_.empty() ? nullptr : gains_.data();
    w.inv_freq = inv_freq_.empty() ? nullptr : inv_freq_.data();
    w.key_refine_codebooks =
        host_refine_.empty() ? nullptr : host_refine_.data();
  }

  RandomDecodeView(const RandomDecodeView&) = delete;
  RandomDecodeView& operator=(const RandomDecodeView&) = delete;
  ~RandomDecodeView() {
    for (void* p : device_memory_) cudaFree(p);
  }

  // The view with host pointers (for VqDecodeTokensRef).
  const VqDecodeView& host() const { return host_; }
  // The view with device pointers; valid after Upload() succeeded.
  const VqDecodeView& device() const { return device_; }

  // Copies every array to the current device.
  cudaError_t Upload() {
    std::vector<const float*> dk, dv;
    cudaError_t e = cudaSuccess;
    device_books_.clear();
    for (size_t i = 0; i < books_.size() && e == cudaSuccess; ++i) {
      const float* p = nullptr;
      e = Copy(books_[i], &p);
      (i < key_books_ ? dk : dv).push_back(p);
      device_books_.push_back(p);
    }
    device_ = host_;
    if (e == cudaSuccess) e = Copy(dk, &device_.key_codebooks);
    if (e == cudaSuccess) e = Copy(dv, &device_.value_codebooks);
    if (e == cudaSuccess) e = Copy(dim_group_, &device_.dim_group);
    if (e == cudaSuccess) e = Copy(dim_index_, &device_.dim_index);
    for (int g = 0; g < host_.key_groups && e == cudaSuccess; ++g) {
      e = Copy(group_dim_[g], &device_.group_dim[g]);
    }
    device_.key_gains = nullptr;
    if (e == cudaSuccess && !gains_.empty()) {
      e = Copy(gains_, &device_.key_gains);
    }
    device_.inv_freq = nullptr;
    if (e == cudaSuccess && !inv_freq_.empty()) {
      e = Copy(inv_freq_, &device_.inv_freq);
    }
    device_.key_refine_codebooks = nullptr;
    if (e == cudaSuccess && !host_refine_.empty()) {
      std::vector<const float*> dr(host_refine_.size(), nullptr);
      for (size_t i = 0; i < dr.size(); ++i) {
        for (size_t b : refine_books_) {
          if (host_refine_[i] == books_[b].data()) dr[i] = device_books_[b];
        }
      }
      e = Copy(dr, &device_.key_refine_codebooks);
    }
    return e;
  }

  // The codebooks, [stages][K][dims] floats each: the key quantizers in
  // the view's order ([layer][slot][group]), then the values', then the
  // refined layer's key refinements ([slot]).
  const std::vector<std::vector<float>>& books() const { return books_; }
  size_t key_books() const { return key_books_; }
  // Device copies of books() in the same order; valid after Upload().
  const std::vector<const float*>& device_books() const {
    return device_books_;
  }

  // Bytes of one layer's packed K (or V) codes of `tokens` tokens.
  size_t KeyBytes(int64_t tokens) const {
    return static_cast<size_t>(
        (tokens * host_.kv_heads * host_.key_stages * host_.key_bits + 7) / 8);
  }
  size_t ValueBytes(int64_t tokens) const {
    return static_cast<size_t>(
        (tokens * host_.kv_heads * host_.value_stages * host_.value_bits + 7) /
        8);
  }
  // Bytes of the refined layer's packed key refinement codes; 0 without one.
  size_t RefineBytes(int64_t tokens) const {
    return static_cast<size_t>(
        (tokens * host_.kv_heads * host_.refine_stages * host_.key_bits + 7) /
        8);
  }

 private:
  template <typename T>
  cudaError_t Copy(const std::vector<T>& v, const T** out) {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, v.size() * sizeof(T) + 1);
    if (e != cudaSuccess) return e;
    device_memory_.push_back(p);
    *out = static_cast<const T*>(p);
    return cudaMemcpy(p, v.data(), v.size() * sizeof(T),
                      cudaMemcpyHostToDevice);
  }

  VqDecodeView host_, device_;
  std::vector<int32_t> dim_group_, dim_index_;
  std::vector<int32_t> group_dim_[kMaxDecodeKeyGroups];
  std::vector<std::vector<float>> books_;  // key quantizers, then values
  size_t key_books_ = 0;
  std::vector<const float*> host_keys_, host_values_, device_books_;
  std::vector<const float*> host_refine_;  // [layers * slots], null: none
  std::vector<size_t> refine_books_;       // their indices in books_
  std::vector<float> gains_;
  std::vector<double> inv_freq_;
  std::vector<void*> device_memory_;
};

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_TESTING_RANDOM_DECODE_VIEW_H_
