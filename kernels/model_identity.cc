#include "kernels/model_identity.h"

#include "absl/strings/str_cat.h"

namespace vqkv {

absl::Status ModelIdentity::Validate() const {
  if (architecture.empty() ||
      architecture.size() > static_cast<size_t>(kMaxArchitectureBytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model architecture must be 1..", kMaxArchitectureBytes,
                     " bytes, got ", architecture.size()));
  }
  for (char c : architecture) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          "model architecture must be printable ASCII without spaces");
    }
  }
  return layout.Validate();
}

std::string ModelIdentity::ToString() const {
  return absl::StrCat(architecture, " ", layout.layers, "x", layout.kv_heads,
                      "x", layout.head_dim, " model fingerprint ",
                      absl::Hex(fingerprint, absl::kZeroPad16));
}

}  // namespace vqkv
