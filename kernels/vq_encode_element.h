// The element functions of a VqCodec encode of one layer straight from an
// engine's KV (the inverse of kernels/vq_decode_element.h), shared by the
// host reference below and the CUDA kernels of kernels/cuda/paged_encode.cuh,
// so host tests check the kernels' arithmetic.
//
// A layer of a batch of blocks is encoded in three steps:
//   1. inputs: every quantizer job's rows (VqEncodeInput): key dimensions
//      read from the engine's post-RoPE keys in its pair order, moved into
//      the blocks' order and un-rotated for codebooks of pre-RoPE keys
//      (VqPrepareKeyDim), gathered per key group; values as they are;
//   2. greedy RVQ codes of each job (the CPU's ResidualQuantizer or the
//      tensor cores);
//   3. on a layer with a key refinement (VqKeyRefinement), one more job per
//      slot (VqEncodeRefineInput): what the slot's key codes leave of each
//      key, before the gain, as VqCodec::EncodeKeyRefinement codes it;
//   4. packing (VqPackedByte): each block's slice of its payload's K, V
//      and key refinement sections for the layer, in the payload's order
//      (kernels/vq_codec.h: [token][kv_head][group][stage], PackBits).
//
// Jobs of a layer (VqEncodeJobCount): for slot s (a kv head when codebooks
// are per head, else the one slot 0), its key groups s * key_groups + g,
// then the value jobs key_jobs + s. A job's rows are the batch's tokens
// (per head) or its (token, head) vectors in that order (shared codebooks);
// tokens are the concatenation of the blocks' tokens. A refined layer's
// refinement jobs follow them (VqEncodeRefineJob): rows as the slot's key
// jobs', head_dim dimensions in the block layout, refine_stages stages.
//
// Un-rotation computes each angle directly in double, as Rope::Invert does
// (not Rope::InvertBlock's recurrence), so the host reference gives the
// same floats as the client's CPU path with Rope::Invert.
//
// Header only, no dependencies: nvcc compiles it into the kernels.
#ifndef VQKV_KERNELS_VQ_ENCODE_ELEMENT_H_
#define VQKV_KERNELS_VQ_ENCODE_ELEMENT_H_

#include <cmath>
#include <cstdint>

#include "kernels/vq_decode_element.h"

namespace vqkv {

VQKV_HD inline int VqEncodeJobCount(const VqDecodeView& w) {
  return w.slots * (w.key_groups + 1);
}
VQKV_HD inline int VqEncodeKeyJobs(const VqDecodeView& w) {
  return w.slots * w.key_groups;
}
// The index of job j's quantizer in the plan's order over `layers` layers:
// every layer's key quantizers ([layer][slot][group]), then every layer's
// value quantizers ([layer][slot]) (kernels/vq_decode_plan.h).
VQKV_HD inline int64_t VqEncodeJobQuantizer(const VqDecodeView& w, int layers,
                                            int layer, int j) {
  const int64_t keys_per_layer = VqEncodeKeyJobs(w);
  if (j < keys_per_layer) return layer * keys_per_layer + j;
  return layers * keys_per_layer + int64_t{layer} * w.slots +
         (j - keys_per_layer);
}

// Rows of every job for `tokens` tokens.
VQKV_HD inline int64_t VqEncodeJobRows(const VqDecodeView& w, int64_t tokens) {
  return w.slots == 1 ? tokens * w.kv_heads : tokens;
}
// Dimensions and stages of job j.
VQKV_HD inline int VqEncodeJobDims(const VqDecodeView& w, int j) {
  return j < VqEncodeKeyJobs(w) ? w.group_dims[j % w.key_groups] : w.head_dim;
}
VQKV_HD inline int VqEncodeJobStages(const VqDecodeView& w, int j) {
  return j < VqEncodeKeyJobs(w) ? w.group_stages[j % w.key_groups]
                                : w.value_stages;
}

// Block-layout dimension d of a key before coding, from the engine's key
// (engine(e): its dimension e, post-RoPE, in engine pair order) at `pos`.
template <typename EngineKey>
VQKV_HD inline float VqPrepareKeyDim(const VqDecodeView& w, EngineKey engine,
                                     int64_t pos, int d) {
  if (d >= w.rot_dims) return engine(d);
  int i, side, ea, eb;
  RotaryPairOf(w.block_pairs, w.rot_dims, d, &i, &side);
  RotaryPairDims(w.engine_pairs, w.rot_dims, i, &ea, &eb);
  if (!w.rotate) return engine(side ? eb : ea);
  const float ya = engine(ea);
  const float yb = engine(eb);
  const double angle = static_cast<double>(pos) * w.inv_freq[i];
  const float c = static_cast<float>(cos(angle));
  const float s = -static_cast<float>(sin(angle));
  // Rope::Invert: (a, b) -> (a c - b s, a s + b c) with s = -sin.
  return side ? ya * s + yb * c : ya * c - yb * s;
}

// One token's engine key as VqPrepareKeyDim reads it.
template <typename Kv>
struct VqTokenKey {
  Kv kv;
  int64_t token;
  int head;
  VQKV_HD float operator()(int e) const { return kv(token, head, e, false); }
};

// Element i of row r of job j. kv(token, head, e, value) reads the engine's
// key (value when `value`) dimension e of a token of the batch; pos(token)
// is its position.
template <typename Kv, typename Pos>
VQKV_HD inline float VqEncodeInput(const VqDecodeView& w, int j, int64_t r,
                                   int i, Kv kv, Pos pos) {
  const int key_jobs = VqEncodeKeyJobs(w);
  const int slot = j < key_jobs ? j / w.key_groups : j - key_jobs;
  const int64_t token = w.slots == 1 ? r / w.kv_heads : r;
  const int head = w.slots == 1 ? static_cast<int>(r % w.kv_heads) : slot;
  if (j >= key_jobs) return kv(token, head, i, true);
  const int d = w.group_dim[j % w.key_groups][i];
  return VqPrepareKeyDim(w, VqTokenKey<Kv>{kv, token, head}, pos(token), d);
}

// Byte `byte` of n codes of `bits` bits packed as PackBits packs them
// (kernels/bitpack.h); code(i) is code i.
template <typename Code>
VQKV_HD inline uint8_t PackedByteAt(int64_t n, int bits, int64_t byte,
                                    Code code) {
  uint32_t out = 0;
  for (int bit = 0; bit < 8; ++bit) {
    const int64_t b = byte * 8 + bit;
    const int64_t i = b / bits;
    if (i >= n) break;
    out |= ((code(i) >> (b - i * bits)) & 1u) << bit;
  }
  return static_cast<uint8_t>(out);
}

// The refinement job of `slot` on a refined layer: after the key and value
// jobs.
VQKV_HD inline int VqEncodeRefineJob(const VqDecodeView& w, int slot) {
  return VqEncodeJobCount(w) + slot;
}

// Row `row`'s key code of stage s (0 .. key_stages - 1, all groups) of
// `slot`'s key jobs; codes[j] are job j's codes, [rows][stages].
struct VqJobKeyCode {
  const VqDecodeView* w;
  const uint16_t* const* codes;
  int slot;
  int64_t row;

  VQKV_HD uint32_t operator()(int s) const {
    int g = 0;
    while (g + 1 < w->key_groups && s >= w->group_offset[g + 1]) ++g;
    return codes[slot * w->key_groups + g]
                [row * w->group_stages[g] + (s - w->group_offset[g])];
  }
};

// Element d (block layout) of row r of `slot`'s refinement job of `layer`,
// once the key jobs are coded (codes: per job, as VqJobKeyCode reads them):
// the prepared key minus what its key codes decode to before the gain,
// summed as the decode sums it (VqKeyDimFromCodes; the CPU's
// ResidualQuantizer::Decode sums in the same order).
template <typename Kv, typename Pos>
VQKV_HD inline float VqEncodeRefineInput(const VqDecodeView& w, int layer,
                                         int slot, int64_t r, int d, Kv kv,
                                         Pos pos,
                                         const uint16_t* const* codes) {
  const int64_t token = w.slots == 1 ? r / w.kv_heads : r;
  const int head = w.slots == 1 ? static_cast<int>(r % w.kv_heads) : slot;
  const float coded =
      VqKeyDimFromCodes(w, layer, head, d, VqJobKeyCode{&w, codes, slot, r},
                        /*base_only=*/true);
  return VqPrepareKeyDim(w, VqTokenKey<Kv>{kv, token, head}, pos(token), d) -
         coded;
}

// A payload section a block's codes of a layer are packed into.
enum class VqSection { kKeys, kValues, kKeyRefinement };

// Codes per vector in `section`, and their width.
VQKV_HD inline int VqSectionStages(const VqDecodeView& w, VqSection section) {
  return section == VqSection::kKeys     ? w.key_stages
         : section == VqSection::kValues ? w.value_stages
                                         : w.refine_stages;
}
VQKV_HD inline int VqSectionBits(const VqDecodeView& w, VqSection section) {
  return section == VqSection::kValues ? w.value_bits : w.key_bits;
}

// Bytes of one block's slice of `section` for a layer of `tokens` tokens
// (VqDecodePlan::Slices; the key refinement's on a refined layer).
VQKV_HD inline int64_t VqSliceBytes(const VqDecodeView& w, VqSection section,
                                    int64_t tokens) {
  return (tokens * w.kv_heads * VqSectionStages(w, section) *
              VqSectionBits(w, section) +
          7) /
         8;
}

// Code i of a block's slice of `section`, in the payload's order
// [token][kv_head][stage], from the jobs' codes.
struct VqSliceCode {
  const VqDecodeView* w;
  const uint16_t* const* codes;
  int64_t first_token;
  VqSection section;

  VQKV_HD uint32_t operator()(int64_t i) const {
    const int stages = VqSectionStages(*w, section);
    const int64_t v = i / stages;
    const int stage = static_cast<int>(i - v * stages);
    const int64_t token = first_token + v / w->kv_heads;
    const int head = static_cast<int>(v % w->kv_heads);
    const int slot = w->slots == 1 ? 0 : head;
    const int64_t row = w->slots == 1 ? token * w->kv_heads + head : token;
    if (section == VqSection::kKeys) {
      return VqJobKeyCode{w, codes, slot, row}(stage);
    }
    const int j = section == VqSection::kValues ? VqEncodeKeyJobs(*w) + slot
                                                : VqEncodeRefineJob(*w, slot);
    return codes[j][row * stages + stage];
  }
};

// Byte `byte` of one block's packed slice of `section` of the layer: the
// block holds the batch's tokens [first_token, first_token + tokens);
// codes[j] are job j's codes, [rows][stages] (on a refined layer its
// refinement jobs' too, VqEncodeRefineJob).
VQKV_HD inline uint8_t VqPackedByte(const VqDecodeView& w, VqSection section,
                                    const uint16_t* const* codes,
                                    int64_t first_token, int64_t tokens,
                                    int64_t byte) {
  return PackedByteAt(tokens * w.kv_heads * VqSectionStages(w, section),
                      VqSectionBits(w, section), byte,
                      VqSliceCode{&w, codes, first_token, section});
}

}  // namespace vqkv

#endif  // VQKV_KERNELS_VQ_ENCODE_ELEMENT_H_
