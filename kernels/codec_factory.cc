#include "kernels/codec_factory.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/baselines/kivi_codec.h"
#include "kernels/vq_codec.h"

namespace vqkv {

const char* CodecNames() { return "fp16, kivi2, kivi4, vq"; }

absl::StatusOr<std::unique_ptr<Codec>> MakeCodec(
    std::string_view name, const KvLayout& layout, const CodebookSet* codebooks,
    int beam_width, int key_sketch_bits, int key_sketch_first_layer) {
  if (name == "fp16") {
    absl::StatusOr<std::unique_ptr<Fp16Codec>> c = Fp16Codec::Create(layout);
    if (!c.ok()) return c.status();
    return std::unique_ptr<Codec>(*std::move(c));
  }
  if (name == "kivi2" || name == "kivi4") {
    KiviOptions o;
    o.bits = name == "kivi2" ? 2 : 4;
    absl::StatusOr<std::unique_ptr<KiviCodec>> c = KiviCodec::Create(layout, o);
    if (!c.ok()) return c.status();
    return std::unique_ptr<Codec>(*std::move(c));
  }
  if (name == "vq") {
    if (codebooks == nullptr) {
      return absl::InvalidArgumentError("codec vq needs a codebook set");
    }
    const KvLayout& cb = codebooks->config().layout;
    if (!(cb == layout)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the codebook set was made for another model: layout %d layers x "
          "%d kv heads x %d head_dim, the model has %d x %d x %d",
          cb.layers, cb.kv_heads, cb.head_dim, layout.layers, layout.kv_heads,
          layout.head_dim));
    }
    absl::StatusOr<std::unique_ptr<VqCodec>> c = VqCodec::FromCodebookSet(
        *codebooks, beam_width, key_sketch_bits, key_sketch_first_layer);
    if (!c.ok()) return c.status();
    return std::unique_ptr<Codec>(*std::move(c));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("codec must be one of ", CodecNames(), ", not '",
                   absl::string_view(name.data(), name.size()), "'"));
}

}  // namespace vqkv
