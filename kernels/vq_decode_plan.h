// VqDecodePlan: a VqCodec's decode flattened into arrays a device can hold,
// so a GPU decodes loaded blocks straight into an engine's paged KV cache
// (kernels/cuda/paged_decode.cuh) instead of the host decoding them and
// copying float rows over. The plan covers what the client does after
// VqCodec::DecodeLayers as well: the rotation of keys coded before RoPE and
// the reorder of rotary pairs into the engine's layout (client/cache_client.h,
// "Key position" in docs/CLIENT.md).
//
// A plan refers to the codec's codebooks (it does not copy them): it is
// valid as long as the codec lives and is not refitted. view() is the host
// form (VqDecodeView, kernels/vq_decode_element.h); a device makes its own
// by uploading the codebooks (the key refinements' too), dim_group,
// dim_index, group_dim, key_gains and inv_freq. The device encode from the
// pages (kernels/vq_encode_element.h) runs on the same plan: its jobs map to
// quantizers by JobQuantizer, a refined layer's refinement jobs to the
// codec's key refinements (CodebookSet::key_refinement).
//
// What a plan cannot express is refused when it is made: a codec with a key
// sketch (its correction is a random projection per vector; the CPU adds it)
// and more than two key groups. A key refinement is part of the plan: its
// codebooks, and its codes' place in a payload (Slices).
//
// Thread safety: immutable after MakeVqDecodePlan.
#ifndef VQKV_KERNELS_VQ_DECODE_PLAN_H_
#define VQKV_KERNELS_VQ_DECODE_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/rope.h"
#include "kernels/vq_codec.h"
#include "kernels/vq_decode_element.h"

namespace vqkv {

struct VqDecodePlan {
  int layers = 0;
  // The scalars of view(); its pointers are filled by view().
  VqDecodeView shape;
  std::vector<int32_t> dim_group, dim_index;            // [head_dim]
  std::vector<int32_t> group_dim[kMaxDecodeKeyGroups];  // [group_dims[g]]
  std::vector<const float*> key_codebooks;    // [layers][slots][groups]
  std::vector<const float*> value_codebooks;  // [layers][slots]
  std::vector<size_t> key_codebook_floats;    // sizes of the above
  std::vector<size_t> value_codebook_floats;
  std::vector<float> key_gains;  // [layers][kv_heads][1 + head_dim] or empty
  std::vector<double> inv_freq;  // [rot_dims / 2] when rotating
  // Key refinements: [layers][slots] codebooks, null for a layer without
  // one; empty when the codec has none. refined_index[layer] is the
  // layer's place in the payload's refinement section, or -1.
  std::vector<const float*> key_refine_codebooks;
  std::vector<size_t> key_refine_codebook_floats;  // 0 where null
  std::vector<int32_t> refined_index;              // [layers]

  // Where one layer's codes are in a payload of `tokens` tokens: byte offset
  // and size of its slice of the K, of the V and of the key refinement
  // section (refine_bytes 0 for a layer without a refinement). REQUIRES: the
  // slices start on a byte (tokens a multiple of 8 does it; block_tokens,
  // a multiple of 16, always does).
  struct LayerSlices {
    size_t key_offset = 0, key_bytes = 0;
    size_t value_offset = 0, value_bytes = 0;
    size_t refine_offset = 0, refine_bytes = 0;
  };
  LayerSlices Slices(int64_t tokens, int layer) const;

  // The plan with host pointers.
  VqDecodeView view() const;

  // The plan's quantizer order is key_codebooks' ([layer][slot][group])
  // then value_codebooks' ([layer][slot]). The index there of the quantizer
  // of job j of `layer`'s encode (kernels/vq_encode_element.h: key jobs
  // slot * key_groups + group, then the value jobs).
  size_t JobQuantizer(int layer, int j) const;
};

// `codec`'s quantizers in the plan's order (the plan made from it).
std::vector<const ResidualQuantizer*> PlanQuantizers(const VqCodec& codec);

// The plan for `codec`'s payloads as the client delivers them: keys rotated
// by `key_rope` when set (codebooks of pre-RoPE keys; its pairs are the
// blocks' layout), else left as coded with rot_dims = head_dim in adjacent
// layout; then rotary pairs written in `engine_pairs`.
// Errors: kFailedPrecondition for an unfitted codec; kUnimplemented for a
// codec with a key sketch or more than two key groups.
absl::StatusOr<VqDecodePlan> MakeVqDecodePlan(
    const VqCodec& codec, const std::optional<RopeSpec>& key_rope,
    RopePairs engine_pairs);

}  // namespace vqkv

#endif  // VQKV_KERNELS_VQ_DECODE_PLAN_H_
