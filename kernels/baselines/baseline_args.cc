#include "kernels/baselines/baseline_args.h"

#include "absl/strings/str_cat.h"

namespace vqkv::baselines_internal {

absl::Status CheckTensorArgs(const char* what, const void* keys,
                             const void* values, int64_t tokens) {
  if (tokens < 1 || tokens > kMaxCodecTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": tokens must be in 1..", kMaxCodecTokens, ", got ", tokens));
  }
  if (keys == nullptr || values == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": keys and values must not be null"));
  }
  return absl::OkStatus();
}

}  // namespace vqkv::baselines_internal
