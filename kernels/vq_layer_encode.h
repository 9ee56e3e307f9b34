// VqEncodeLayerRef: one layer of a batch of blocks encoded on the CPU the
// way the device does it (kernels/vq_encode_element.h): inputs read from
// the engine's keys and values, every quantizer job coded greedily by the
// codec's ResidualQuantizer, each block's K and V slices of the layer
// packed (and, on a layer with a key refinement, its refinement coded
// from what the key codes leave, and packed). The scalar reference of the
// device encode (kernels/cuda/paged_encode.cuh), and the host emulation of a
// device in tests (tests/unit/client/fake_kv_device.h).
//
// The slices are those of VqCodec::Encode's payload for the same keys
// after the client's CPU path (pair reorder into the blocks' order, then
// Rope::Invert at each token's position), byte for byte
// (tests/unit/kernels/vq_decode_plan_test.cc, VqLayerEncodeTest).
//
// Thread safety: reentrant; the codec and plan are read only.
#ifndef VQKV_KERNELS_VQ_LAYER_ENCODE_H_
#define VQKV_KERNELS_VQ_LAYER_ENCODE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/vq_codec.h"
#include "kernels/vq_decode_plan.h"

namespace vqkv {

// One block of the batch: its engine rows of the layer ([tokens][kv_heads]
// [head_dim] floats, keys post-RoPE in the engine's pair order), the
// position of its first token, and where its slices go
// (plan.Slices(tokens, layer).key_bytes / value_bytes / refine_bytes bytes;
// refine_codes is read only on a layer with a key refinement).
struct LayerBlockToEncode {
  const float* keys = nullptr;
  const float* values = nullptr;
  int64_t tokens = 0;
  int64_t first_position = 0;
  uint8_t* key_codes = nullptr;
  uint8_t* value_codes = nullptr;
  uint8_t* refine_codes = nullptr;
};

// `plan` must be MakeVqDecodePlan(codec, ...). Errors: kInvalidArgument
// for a bad layer or a block without tokens or buffers (refine_codes
// included on a refined layer); the quantizers'.
absl::Status VqEncodeLayerRef(const VqCodec& codec, const VqDecodePlan& plan,
                              int layer,
                              absl::Span<const LayerBlockToEncode> blocks);

}  // namespace vqkv

#endif  // VQKV_KERNELS_VQ_LAYER_ENCODE_H_
