#include "model/fingerprint.h"

#include <xxhash.h>

#include <bit>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/coding.h"

namespace vqkv::model {
namespace {

// Feeds XXH3 the byte string of docs/CODEBOOK_FORMAT.md: little-endian
// integers and GGUF's own encodings, so the definition does not depend on
// this reader's in-memory types.
class Hasher {
 public:
  Hasher() : state_(XXH3_createState(), XXH3_freeState) {
    XXH3_64bits_reset(state_.get());
  }
  void Bytes(const void* p, size_t n) {
    XXH3_64bits_update(state_.get(), p, n);
  }
  template <typename T>
  void Fixed(T v) {
    char b[sizeof(T)];
    base::EncodeFixed<T>(b, v);
    Bytes(b, sizeof(T));
  }
  void String(std::string_view s) {
    Fixed<uint64_t>(s.size());
    Bytes(s.data(), s.size());
  }
  // The value as GGUF encodes it after its type tag.
  void Value(const GgufValue& v) {
    std::visit(
        [this](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::string>) {
            String(x);
          } else if constexpr (std::is_same_v<T, GgufArray>) {
            Fixed<uint32_t>(static_cast<uint32_t>(x.element_type));
            Fixed<uint64_t>(x.items.size());
            for (const GgufValue& item : x.items) Value(item);
          } else if constexpr (std::is_same_v<T, bool>) {
            Fixed<uint8_t>(x ? 1 : 0);
          } else if constexpr (std::is_same_v<T, float>) {
            Fixed<uint32_t>(std::bit_cast<uint32_t>(x));
          } else if constexpr (std::is_same_v<T, double>) {
            Fixed<uint64_t>(std::bit_cast<uint64_t>(x));
          } else {
            Fixed<std::make_unsigned_t<T>>(
                static_cast<std::make_unsigned_t<T>>(x));
          }
        },
        v.value);
  }
  uint64_t Digest() const { return XXH3_64bits_digest(state_.get()); }

 private:
  std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> state_;
};

}  // namespace

absl::StatusOr<uint64_t> ModelFingerprint(const GgufFile& gguf) {
  absl::StatusOr<std::string> arch = gguf.GetString("general.architecture");
  if (!arch.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model fingerprint needs general.architecture: ",
                     arch.status().message()));
  }
  Hasher h;
  h.String("vqkv-model-fingerprint-1");
  h.String(*arch);
  // std::map iterates in byte-wise key order.
  const std::string prefix = *arch + ".";
  for (const auto& [key, value] : gguf.metadata()) {
    if (!absl::StartsWith(key, prefix)) continue;
    h.String(key);
    h.Fixed<uint32_t>(static_cast<uint32_t>(value.type()));
    h.Value(value);
  }
  h.Fixed<uint64_t>(gguf.tensors().size());
  for (const GgufTensorInfo& t : gguf.tensors()) {
    h.String(t.name);
    h.Fixed<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) h.Fixed<uint64_t>(static_cast<uint64_t>(d));
    h.Fixed<uint32_t>(t.type);
  }
  // Same-shaped models (a base model and its fine-tune) differ in their
  // weights; the first layer's K/V projections are small and feed the K/V
  // directly.
  for (const char* name : {"blk.0.attn_k.weight", "blk.0.attn_v.weight",
                           "blk.0.attn_qkv.weight"}) {
    if (gguf.FindTensor(name) == nullptr) continue;
    absl::StatusOr<std::string_view> data = gguf.TensorData(name);
    if (!data.ok()) return data.status();
    h.String(name);
    h.String(*data);
  }
  return h.Digest();
}

absl::StatusOr<ModelIdentity> IdentifyModel(const GgufFile& gguf,
                                            const KvLayout& layout) {
  absl::StatusOr<uint64_t> fingerprint = ModelFingerprint(gguf);
  if (!fingerprint.ok()) return fingerprint.status();
  ModelIdentity id;
  id.architecture = *gguf.GetString("general.architecture");
  id.layout = layout;
  id.fingerprint = *fingerprint;
  if (absl::Status s = id.Validate(); !s.ok()) return s;
  return id;
}

}  // namespace vqkv::model
