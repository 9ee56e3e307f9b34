// Argument checks shared by the baseline codecs (internal to
// kernels/baselines/).
#ifndef VQKV_KERNELS_BASELINES_BASELINE_ARGS_H_
#define VQKV_KERNELS_BASELINES_BASELINE_ARGS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/codec.h"

namespace vqkv::baselines_internal {

// kInvalidArgument unless 1 <= tokens <= kMaxCodecTokens and the two pointers
// are non-null. `what` names the call in the message.
absl::Status CheckTensorArgs(const char* what, const void* keys,
                             const void* values, int64_t tokens);

}  // namespace vqkv::baselines_internal

#endif  // VQKV_KERNELS_BASELINES_BASELINE_ARGS_H_
