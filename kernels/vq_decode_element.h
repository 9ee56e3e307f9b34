// One element of a VqCodec decode, as a function both the host and a CUDA
// kernel run: the scalar reference of kernels/cuda/paged_decode.cuh is the
// same code the kernel executes, so a host test of it
// (tests/unit/kernels/vq_decode_plan_test.cc, against VqCodec::DecodeLayers
// followed by the client's rotation and pair reorder) checks the kernel's
// arithmetic, and the GPU test only has to check the threads and memory.
//
// A VqDecodeView is a VqDecodePlan (kernels/vq_decode_plan.h) as plain
// pointers, host or device. Codes are read straight from a block's packed
// K and V sections (kernels/bitpack.h layout), and a refined layer's key
// refinement codes from the block's refinement section, each sliced to one
// layer: vector v = token * kv_heads + head of that layer.
//
// Arithmetic, in the CPU decode's order: the codeword sum of each key group
// from stage 0 up, in float; for a layer with a key refinement, plus the
// refinement's own codeword sum (stage 0 up, over all head_dim dimensions);
// then centre + gain * (sum - centre) when the head's gain is not 1; then,
// for codebooks of pre-RoPE keys, the rotation of each pair (a, b) by
// pos * inv_freq[i] (angle and its cos/sin in double, rounded to float, as
// Rope::Apply does) as a*c - b*s, a*s + b*c; then the pairs are read in the
// engine's layout. Equal to the CPU path within float
// rounding: FMA contraction on the device, and Rope::ApplyBlock's angle
// recurrence on the host, move results by a few ulp.
//
// Header only, no dependencies outside kernels/: nvcc compiles it into the
// kernel.
#ifndef VQKV_KERNELS_VQ_DECODE_ELEMENT_H_
#define VQKV_KERNELS_VQ_DECODE_ELEMENT_H_

#include <cmath>
#include <cstdint>

#include "kernels/host_device.h"

namespace vqkv {

inline constexpr int kMaxDecodeKeyGroups = 2;

// RopePairs values (kernels/rope.h), for the view.
inline constexpr int32_t kDecodeAdjacentPairs = 0;
inline constexpr int32_t kDecodeHalfPairs = 1;

struct VqDecodeView {
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int32_t slots = 1;  // quantizers per layer: kv_heads when per head, else 1
  int32_t key_groups = 1;
  int32_t key_bits = 0;
  int32_t value_bits = 0;
  int32_t key_stages = 0;    // Nk, all groups
  int32_t value_stages = 0;  // Nv
  int32_t group_stages[kMaxDecodeKeyGroups] = {0, 0};
  int32_t group_offset[kMaxDecodeKeyGroups] = {0, 0};  // stage of group g
  int32_t group_dims[kMaxDecodeKeyGroups] = {0, 0};
  // [head_dim]: which group a head dimension is in, and its index there;
  // and the inverse, [group_dims[g]]: the head dimension of each index
  // (for encoding, kernels/vq_encode_element.h).
  const int32_t* dim_group = nullptr;
  const int32_t* dim_index = nullptr;
  const int32_t* group_dim[kMaxDecodeKeyGroups] = {nullptr, nullptr};
  // [layers * slots * key_groups] and [layers * slots]: each quantizer's
  // codebooks, [stages][K][dims] floats.
  const float* const* key_codebooks = nullptr;
  const float* const* value_codebooks = nullptr;
  // [layers][kv_heads][1 + head_dim]: gain, then centre; null: no gains.
  const float* key_gains = nullptr;
  // Key refinement (kernels/codebook_set.h, SetKeyRefinement): stages R of
  // every refinement (0: none), and [layers * slots] codebooks,
  // [R][K][head_dim] floats at key_bits, null for a layer without one (or
  // the array null when no layer has one).
  int32_t refine_stages = 0;
  const float* const* key_refine_codebooks = nullptr;
  // Rotary pairs: rot_dims leading dimensions; block_pairs is the layout of
  // the decoded keys, engine_pairs the one to write; rotate when the
  // codebooks are of pre-RoPE keys (inv_freq[rot_dims / 2] is then set).
  int32_t rot_dims = 0;
  int32_t block_pairs = kDecodeAdjacentPairs;
  int32_t engine_pairs = kDecodeAdjacentPairs;
  int32_t rotate = 0;
  const double* inv_freq = nullptr;
};

// Index i of a packed array of `bits`-bit codes (1..16), reading only the
// bytes that hold it.
VQKV_HD inline uint32_t UnpackCodeAt(const uint8_t* packed, int64_t i,
                                     int bits) {
  const int64_t bit = i * bits;
  const uint8_t* p = packed + (bit >> 3);
  const int shift = static_cast<int>(bit & 7);
  const int bytes = (shift + bits + 7) >> 3;
  uint32_t word = p[0];
  if (bytes > 1) word |= uint32_t{p[1]} << 8;
  if (bytes > 2) word |= uint32_t{p[2]} << 16;
  return (word >> shift) & ((1u << bits) - 1u);
}

// The rotary pair i of dimension d < rot_dims, and which of its two
// dimensions d is (side 0 or 1), in pair layout `pairs` (kernels/rope.h).
VQKV_HD inline void RotaryPairOf(int32_t pairs, int rot_dims, int d, int* i,
                                 int* side) {
  if (pairs == kDecodeAdjacentPairs) {
    *i = d / 2;
    *side = d % 2;
  } else {
    *i = d % (rot_dims / 2);
    *side = d / (rot_dims / 2);
  }
}

// The two dimensions of rotary pair i in pair layout `pairs`.
VQKV_HD inline void RotaryPairDims(int32_t pairs, int rot_dims, int i, int* a,
                                   int* b) {
  *a = pairs == kDecodeAdjacentPairs ? 2 * i : i;
  *b = pairs == kDecodeAdjacentPairs ? 2 * i + 1 : i + rot_dims / 2;
}

// The key refinement codebooks of (layer, slot); null when the layer has
// none.
VQKV_HD inline const float* VqKeyRefinement(const VqDecodeView& w, int layer,
                                            int slot) {
  if (w.refine_stages == 0 || w.key_refine_codebooks == nullptr) {
    return nullptr;
  }
  return w.key_refine_codebooks[int64_t{layer} * w.slots + slot];
}

// Block-layout dimension d of a key vector of `layer` and `head`, after the
// key gain, before rotation; code(s) is the vector's code of stage s (0 ..
// key_stages - 1, all groups; then, on a refined layer, key_stages + r for
// refinement stage r). One function for every way of holding the codes:
// packed in the block (VqDecodeKeyDim) or unpacked once per vector (the
// device kernel), so both sum in the same order. base_only: the key codes'
// sum alone, before any refinement and gain (what a refinement codes the
// rest of, kernels/vq_encode_element.h).
template <typename Code>
VQKV_HD inline float VqKeyDimFromCodes(const VqDecodeView& w, int layer,
                                       int head, int d, const Code& code,
                                       bool base_only = false) {
  const int slot = w.slots == 1 ? 0 : head;
  const int g = w.dim_group[d];
  const int gi = w.dim_index[d];
  const int gd = w.group_dims[g];
  const int K = 1 << w.key_bits;
  const float* cb =
      w.key_codebooks[(int64_t{layer} * w.slots + slot) * w.key_groups + g];
  float sum = 0.0f;
  for (int s = 0; s < w.group_stages[g]; ++s) {
    const uint32_t c = code(w.group_offset[g] + s);
    sum += cb[(int64_t{s} * K + c) * gd + gi];
  }
  if (base_only) return sum;
  if (const float* rb = VqKeyRefinement(w, layer, slot)) {
    // Summed on its own, then added, as VqCodec::AddKeyRefinement does.
    float refine = 0.0f;
    for (int s = 0; s < w.refine_stages; ++s) {
      const uint32_t c = code(w.key_stages + s);
      refine += rb[(int64_t{s} * K + c) * w.head_dim + d];
    }
    sum += refine;
  }
  if (w.key_gains != nullptr) {
    const float* gc =
        w.key_gains + (int64_t{layer} * w.kv_heads + head) * (1 + w.head_dim);
    const float gain = gc[0];
    if (gain != 1.0f) sum = gc[1 + d] + gain * (sum - gc[1 + d]);
  }
  return sum;
}

// Block-layout dimension d of key vector v of `layer` (codes: that layer's
// slice of the K section; refine_codes: its slice of the refinement
// section, read only when the layer is refined), after the key gain; before
// rotation.
VQKV_HD inline float VqDecodeKeyDim(const VqDecodeView& w, int layer,
                                    const uint8_t* codes,
                                    const uint8_t* refine_codes, int64_t v,
                                    int d) {
  const int64_t first = v * w.key_stages;
  const int64_t refine_first = v * w.refine_stages - w.key_stages;
  return VqKeyDimFromCodes(
      w, layer, static_cast<int>(v % w.kv_heads), d, [&](int s) {
        return s < w.key_stages
                   ? UnpackCodeAt(codes, first + s, w.key_bits)
                   : UnpackCodeAt(refine_codes, refine_first + s, w.key_bits);
      });
}

// Engine-layout dimension e of a key vector at token position pos, from its
// block-layout dimensions dim(d) (VqKeyDimFromCodes).
template <typename Dim>
VQKV_HD inline float VqKeyElementFromDims(const VqDecodeView& w, int64_t pos,
                                          int e, const Dim& dim) {
  if (e >= w.rot_dims) return dim(e);
  int i, side, a, b;
  RotaryPairOf(w.engine_pairs, w.rot_dims, e, &i, &side);
  RotaryPairDims(w.block_pairs, w.rot_dims, i, &a, &b);
  if (!w.rotate) return dim(side ? b : a);
  const float xa = dim(a);
  const float xb = dim(b);
  const double angle = static_cast<double>(pos) * w.inv_freq[i];
  const float c = static_cast<float>(cos(angle));
  const float s = static_cast<float>(sin(angle));
  return side ? xa * s + xb * c : xa * c - xb * s;
}

// Engine-layout dimension e of key vector v, token position pos.
VQKV_HD inline float VqDecodeKeyElement(const VqDecodeView& w, int layer,
                                        const uint8_t* codes,
                                        const uint8_t* refine_codes, int64_t v,
                                        int64_t pos, int e) {
  return VqKeyElementFromDims(w, pos, e, [&](int d) {
    return VqDecodeKeyDim(w, layer, codes, refine_codes, v, d);
  });
}

// Dimension d of a value vector of `layer` and `head`; code(s) is its code
// of stage s.
template <typename Code>
VQKV_HD inline float VqValueDimFromCodes(const VqDecodeView& w, int layer,
                                         int head, int d, const Code& code) {
  const int slot = w.slots == 1 ? 0 : head;
  const int K = 1 << w.value_bits;
  const float* cb = w.value_codebooks[int64_t{layer} * w.slots + slot];
  float sum = 0.0f;
  for (int s = 0; s < w.value_stages; ++s) {
    sum += cb[(int64_t{s} * K + code(s)) * w.head_dim + d];
  }
  return sum;
}

// Dimension d of value vector v of `layer` (codes: the layer's slice of
// the V section).
VQKV_HD inline float VqDecodeValueElement(const VqDecodeView& w, int layer,
                                          const uint8_t* codes, int64_t v,
                                          int d) {
  const int64_t first = v * w.value_stages;
  return VqValueDimFromCodes(
      w, layer, static_cast<int>(v % w.kv_heads), d,
      [&](int s) { return UnpackCodeAt(codes, first + s, w.value_bits); });
}

// A token to decode: token `token` of a block whose layer slices are
// key_codes / value_codes (and refine_codes), at position `position` of its
// sequence.
struct CodedToken {
  const uint8_t* key_codes = nullptr;    // the layer's K slice of the block
  const uint8_t* value_codes = nullptr;  // the layer's V slice
  int32_t token = 0;                     // within the block
  int64_t position = 0;                  // in the sequence
  // The layer's slice of the key refinement section; null when the layer
  // has no refinement.
  const uint8_t* refine_codes = nullptr;
};

// The scalar reference of the device decode (kernels/cuda/paged_decode.cuh):
// writes rows[i]'s keys and values, [kv_heads][head_dim] floats each, into
// keys + i * kv_heads * head_dim and the same of values.
inline void VqDecodeTokensRef(const VqDecodeView& w, int layer,
                              const CodedToken* rows, int64_t n, float* keys,
                              float* values) {
  const int H = w.kv_heads, D = w.head_dim;
  for (int64_t r = 0; r < n; ++r) {
    const CodedToken& t = rows[r];
    for (int h = 0; h < H; ++h) {
      const int64_t v = int64_t{t.token} * H + h;
      float* k = keys + (r * H + h) * D;
      float* x = values + (r * H + h) * D;
      for (int d = 0; d < D; ++d) {
        k[d] = VqDecodeKeyElement(w, layer, t.key_codes, t.refine_codes, v,
                                  t.position, d);
        x[d] = VqDecodeValueElement(w, layer, t.value_codes, v, d);
      }
    }
  }
}

}  // namespace vqkv

#endif  // VQKV_KERNELS_VQ_DECODE_ELEMENT_H_
