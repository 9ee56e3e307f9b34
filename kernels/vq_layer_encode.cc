#include "kernels/vq_layer_encode.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/vq_encode_element.h"

namespace vqkv {
namespace {

// The batch's tokens as one array, as VqEncodeInput reads them.
struct BatchKv {
  const std::vector<const LayerBlockToEncode*>* block_of;  // per token
  const std::vector<int64_t>* index_in;                    // per token
  int heads, dim;

  float operator()(int64_t token, int head, int e, bool value) const {
    const LayerBlockToEncode& b = *(*block_of)[token];
    const int64_t at = ((*index_in)[token] * heads + head) * dim + e;
    return (value ? b.values : b.keys)[at];
  }
};

struct BatchPos {
  const std::vector<const LayerBlockToEncode*>* block_of;
  const std::vector<int64_t>* index_in;

  int64_t operator()(int64_t token) const {
    return (*block_of)[token]->first_position + (*index_in)[token];
  }
};

}  // namespace

absl::Status VqEncodeLayerRef(const VqCodec& codec, const VqDecodePlan& plan,
                              int layer,
                              absl::Span<const LayerBlockToEncode> blocks) {
  const VqDecodeView w = plan.view();
  if (layer < 0 || layer >= plan.layers) {
    return absl::InvalidArgumentError(absl::StrCat("no layer ", layer));
  }
  const bool refined = VqKeyRefinement(w, layer, 0) != nullptr;
  std::vector<const LayerBlockToEncode*> block_of;
  std::vector<int64_t> index_in;
  for (const LayerBlockToEncode& b : blocks) {
    if (b.tokens < 1 || b.keys == nullptr || b.values == nullptr ||
        b.key_codes == nullptr || b.value_codes == nullptr ||
        (refined && b.refine_codes == nullptr)) {
      return absl::InvalidArgumentError(
          "VqEncodeLayerRef needs blocks of >= 1 token with all buffers");
    }
    for (int64_t t = 0; t < b.tokens; ++t) {
      block_of.push_back(&b);
      index_in.push_back(t);
    }
  }
  const int64_t tokens = static_cast<int64_t>(block_of.size());
  const int64_t rows = VqEncodeJobRows(w, tokens);
  const BatchKv kv{&block_of, &index_in, w.kv_heads, w.head_dim};
  const BatchPos pos{&block_of, &index_in};
  const std::vector<const ResidualQuantizer*> quantizers =
      PlanQuantizers(codec);
  const int jobs = VqEncodeJobCount(w) + (refined ? w.slots : 0);
  std::vector<std::vector<uint16_t>> codes(jobs);
  std::vector<const uint16_t*> code_ptrs(jobs);
  std::vector<float> x;
  for (int j = 0; j < jobs; ++j) {
    // The refinement jobs read the key jobs' codes, coded before them.
    const int refine_slot = j - VqEncodeJobCount(w);
    const int dims = refine_slot < 0 ? VqEncodeJobDims(w, j) : w.head_dim;
    x.resize(static_cast<size_t>(rows) * dims);
    for (int64_t r = 0; r < rows; ++r) {
      for (int i = 0; i < dims; ++i) {
        x[r * dims + i] = refine_slot < 0
                              ? VqEncodeInput(w, j, r, i, kv, pos)
                              : VqEncodeRefineInput(w, layer, refine_slot, r, i,
                                                    kv, pos, code_ptrs.data());
      }
    }
    const ResidualQuantizer& q =
        refine_slot < 0 ? *quantizers[plan.JobQuantizer(layer, j)]
                        : codec.codebooks().key_refinement(layer, refine_slot);
    codes[j].resize(static_cast<size_t>(rows) * q.stages());
    if (absl::Status s = q.EncodeGreedy(x.data(), rows, codes[j].data());
        !s.ok()) {
      return s;
    }
    code_ptrs[j] = codes[j].data();
  }
  int64_t first = 0;
  for (const LayerBlockToEncode& b : blocks) {
    const VqDecodePlan::LayerSlices s = plan.Slices(b.tokens, layer);
    const struct {
      VqSection section;
      uint8_t* out;
      size_t bytes;
    } slices[] = {{VqSection::kKeys, b.key_codes, s.key_bytes},
                  {VqSection::kValues, b.value_codes, s.value_bytes},
                  {VqSection::kKeyRefinement, b.refine_codes, s.refine_bytes}};
    for (const auto& slice : slices) {
      for (size_t i = 0; i < slice.bytes; ++i) {
        slice.out[i] = VqPackedByte(w, slice.section, code_ptrs.data(), first,
                                    b.tokens, static_cast<int64_t>(i));
      }
    }
    first += b.tokens;
  }
  return absl::OkStatus();
}

}  // namespace vqkv
