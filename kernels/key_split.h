// How key dimensions are split into a high- and a low-rotary-frequency group
// (the paper: RoPE makes the key reconstruction error periodic across
// dimensions, so each group gets its own RVQ).
#ifndef VQKV_KERNELS_KEY_SPLIT_H_
#define VQKV_KERNELS_KEY_SPLIT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace vqkv {

// Stable numeric values: written into codebook files.
enum class KeySplit : uint8_t {
  kNone = 0,  // one group of all head_dim dimensions
  // GGUF / llama.cpp layout: pair (2i, 2i+1) rotates with frequency index i,
  // so dims [0, D/2) are the high-frequency group, [D/2, D) the low one.
  kRopeAdjacentPairs = 1,
  // Hugging Face layout: pair (i, i + D/2) rotates with frequency index i;
  // the high-frequency group is frequency indices [0, D/4), i.e. dims
  // [0, D/4) and [D/2, 3D/4); the rest is the low-frequency group.
  kRopeHalfRotate = 2,
};
// The canonical name, used in codec descriptors and error messages:
// "none", "rope_adjacent_pairs", "rope_half_rotate".
const char* KeySplitName(KeySplit split);

// The split named `name`: a canonical name, or one of the command line's
// short forms "rope" and "rope-adjacent" (kRopeAdjacentPairs) and
// "rope-half" (kRopeHalfRotate). Errors: kInvalidArgument listing the
// accepted names (KeySplitNames()).
absl::StatusOr<KeySplit> ParseKeySplit(absl::string_view name);

// "none, rope (= rope-adjacent = rope_adjacent_pairs, the GGUF layout),
// rope-half (= rope_half_rotate)", for help texts and errors.
const char* KeySplitNames();

// The dimensions of each group, in increasing order; one group for kNone,
// two (high frequency first) otherwise.
// Errors: kInvalidArgument for an unknown split, or head_dim not divisible by
// 2 (kRopeAdjacentPairs) or 4 (kRopeHalfRotate).
absl::StatusOr<std::vector<std::vector<int>>> KeyGroupDims(KeySplit split,
                                                           int head_dim);

}  // namespace vqkv

#endif  // VQKV_KERNELS_KEY_SPLIT_H_
