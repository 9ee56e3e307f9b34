#include "kernels/vq_decode_plan.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/bitpack.h"
#include "kernels/vq_encode_element.h"

namespace vqkv {

absl::StatusOr<VqDecodePlan> MakeVqDecodePlan(
    const VqCodec& codec, const std::optional<RopeSpec>& key_rope,
    RopePairs engine_pairs) {
  if (!codec.fitted()) {
    return absl::FailedPreconditionError(
        "a decode plan needs a codec whose every layer is fitted");
  }
  if (codec.key_sketch() != nullptr) {
    return absl::UnimplementedError(
        "a codec with a key sketch decodes on the CPU only (the sketch's "
        "correction is not in the device decode)");
  }
  const CodebookSet& set = codec.codebooks();
  const CodebookConfig& c = set.config();
  const KvLayout& layout = codec.layout();
  const std::vector<std::vector<int>>& groups = set.key_group_dims();
  if (groups.empty() || groups.size() > kMaxDecodeKeyGroups) {
    return absl::UnimplementedError(absl::StrCat(
        "the device decode handles 1 or 2 key groups, not ", groups.size()));
  }
  VqDecodePlan p;
  p.layers = layout.layers;
  VqDecodeView& w = p.shape;
  w.kv_heads = layout.kv_heads;
  w.head_dim = layout.head_dim;
  w.slots = c.slots_per_layer();
  w.key_groups = static_cast<int32_t>(groups.size());
  w.key_bits = c.key_bits;
  w.value_bits = c.value_bits;
  w.key_stages = c.key_stages();
  w.value_stages = c.value_stages;
  p.dim_group.assign(layout.head_dim, -1);
  p.dim_index.assign(layout.head_dim, -1);
  int offset = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    w.group_stages[g] = set.key(0, 0, static_cast<int>(g)).stages();
    w.group_offset[g] = offset;
    w.group_dims[g] = static_cast<int32_t>(groups[g].size());
    offset += w.group_stages[g];
    for (size_t i = 0; i < groups[g].size(); ++i) {
      p.dim_group[groups[g][i]] = static_cast<int32_t>(g);
      p.dim_index[groups[g][i]] = static_cast<int32_t>(i);
      p.group_dim[g].push_back(groups[g][i]);
    }
  }
  const std::vector<const ResidualQuantizer*> quantizers =
      PlanQuantizers(codec);
  const size_t key_quantizers =
      static_cast<size_t>(layout.layers) * w.slots * groups.size();
  for (size_t i = 0; i < quantizers.size(); ++i) {
    const std::vector<float>& cb = quantizers[i]->codebooks();
    (i < key_quantizers ? p.key_codebooks : p.value_codebooks)
        .push_back(cb.data());
    (i < key_quantizers ? p.key_codebook_floats : p.value_codebook_floats)
        .push_back(cb.size());
  }
  if (set.has_key_gains()) {
    const size_t per_head = 1 + static_cast<size_t>(layout.head_dim);
    p.key_gains.resize(static_cast<size_t>(layout.layers) * layout.kv_heads *
                       per_head);
    for (int l = 0; l < layout.layers; ++l) {
      for (int h = 0; h < layout.kv_heads; ++h) {
        float* out = p.key_gains.data() +
                     (static_cast<size_t>(l) * layout.kv_heads + h) * per_head;
        out[0] = set.key_gain(l, h);
        const float* centre = set.key_centre(l, h);
        std::copy(centre, centre + layout.head_dim, out + 1);
      }
    }
  }
  if (set.has_key_refinement()) {
    w.refine_stages = set.key_refine_stages();
    p.refined_index.assign(layout.layers, -1);
    p.key_refine_codebooks.assign(static_cast<size_t>(layout.layers) * w.slots,
                                  nullptr);
    p.key_refine_codebook_floats.assign(p.key_refine_codebooks.size(), 0);
    for (int l = 0; l < layout.layers; ++l) {
      p.refined_index[l] = set.RefinedIndex(l);
      if (p.refined_index[l] < 0) continue;
      for (int s = 0; s < w.slots; ++s) {
        const std::vector<float>& cb = set.key_refinement(l, s).codebooks();
        p.key_refine_codebooks[static_cast<size_t>(l) * w.slots + s] =
            cb.data();
        p.key_refine_codebook_floats[static_cast<size_t>(l) * w.slots + s] =
            cb.size();
      }
    }
  }
  if (key_rope) {
    const Rope rope(layout.head_dim, *key_rope);
    w.rotate = 1;
    w.rot_dims = key_rope->rot_dims;
    w.block_pairs = static_cast<int32_t>(key_rope->pairs);
    p.inv_freq = rope.inv_freq();
  } else {
    w.rot_dims = layout.head_dim;
    w.block_pairs = kDecodeAdjacentPairs;
  }
  w.engine_pairs = static_cast<int32_t>(engine_pairs);
  return p;
}

VqDecodePlan::LayerSlices VqDecodePlan::Slices(int64_t tokens,
                                               int layer) const {
  const int64_t layer_vectors = tokens * shape.kv_heads;
  const int64_t first = layer * layer_vectors;
  const int64_t all = int64_t{layers} * layer_vectors;
  LayerSlices s;
  s.key_offset =
      static_cast<size_t>(first * shape.key_stages * shape.key_bits / 8);
  s.key_bytes = PackedBytes(layer_vectors * shape.key_stages, shape.key_bits);
  s.value_offset =
      PackedBytes(all * shape.key_stages, shape.key_bits) +
      static_cast<size_t>(first * shape.value_stages * shape.value_bits / 8);
  s.value_bytes =
      PackedBytes(layer_vectors * shape.value_stages, shape.value_bits);
  const int refined = refined_index.empty() ? -1 : refined_index[layer];
  if (refined >= 0) {
    // The refinement section follows the V section (a plan has no sketch).
    s.refine_offset =
        PackedBytes(all * shape.key_stages, shape.key_bits) +
        PackedBytes(all * shape.value_stages, shape.value_bits) +
        static_cast<size_t>(refined * layer_vectors * shape.refine_stages *
                            shape.key_bits / 8);
    s.refine_bytes =
        PackedBytes(layer_vectors * shape.refine_stages, shape.key_bits);
  }
  return s;
}

size_t VqDecodePlan::JobQuantizer(int layer, int j) const {
  return static_cast<size_t>(VqEncodeJobQuantizer(shape, layers, layer, j));
}

std::vector<const ResidualQuantizer*> PlanQuantizers(const VqCodec& codec) {
  const CodebookSet& set = codec.codebooks();
  const int layers = codec.layout().layers;
  const int slots = set.config().slots_per_layer();
  const int groups = static_cast<int>(set.key_group_dims().size());
  std::vector<const ResidualQuantizer*> out;
  for (int l = 0; l < layers; ++l)
    for (int s = 0; s < slots; ++s)
      for (int g = 0; g < groups; ++g) out.push_back(&set.key(l, s, g));
  for (int l = 0; l < layers; ++l)
    for (int s = 0; s < slots; ++s) out.push_back(&set.value(l, s));
  return out;
}

VqDecodeView VqDecodePlan::view() const {
  VqDecodeView w = shape;
  w.dim_group = dim_group.data();
  w.dim_index = dim_index.data();
  for (int g = 0; g < kMaxDecodeKeyGroups; ++g) {
    w.group_dim[g] = group_dim[g].empty() ? nullptr : group_dim[g].data();
  }
  w.key_codebooks = key_codebooks.data();
  w.value_codebooks = value_codebooks.data();
  w.key_gains = key_gains.empty() ? nullptr : key_gains.data();
  w.inv_freq = inv_freq.empty() ? nullptr : inv_freq.data();
  w.key_refine_codebooks =
      key_refine_codebooks.empty() ? nullptr : key_refine_codebooks.data();
  return w;
}

}  // namespace vqkv
