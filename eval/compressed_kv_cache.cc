#include "eval/compressed_kv_cache.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace vqkv::eval {

absl::StatusOr<CodedParts> ParseCodedParts(const std::string& parts,
                                           const std::string& layers) {
  CodedParts c;
  if (parts == "keys") {
    c.values = false;
  } else if (parts == "values") {
    c.keys = false;
  } else if (parts != "all") {
    return absl::InvalidArgumentError(
        absl::StrCat("--coded must be all, keys or values, not '", parts, "'"));
  }
  if (layers.empty()) return c;
  const std::vector<std::string> be = absl::StrSplit(layers, '-');
  int b = 0, e = 0;
  if (be.size() != 2 || !absl::SimpleAtoi(be[0], &b) ||
      !absl::SimpleAtoi(be[1], &e) || b < 0 || e < b) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--coded-layers must be B-E with 0 <= B <= E (inclusive), not '",
        layers, "'"));
  }
  c.layers_begin = b;
  c.layers_end = e + 1;
  return c;
}

std::string DescribeCodedParts(const CodedParts& c) {
  std::string s = c.keys && c.values ? "all" : c.keys ? "keys" : "values";
  if (c.layers_begin > 0 || c.layers_end < CodedParts::kAllLayers) {
    absl::StrAppend(&s, ", layers ", c.layers_begin, "-", c.layers_end - 1);
  }
  return s;
}

absl::StatusOr<std::unique_ptr<CompressedKvCache>> CompressedKvCache::Create(
    const KvLayout& layout, const Codec* codec, const Rope* rope,
    const CompressedKvCacheOptions& options) {
  if (codec == nullptr) return absl::InvalidArgumentError("no codec given");
  if (!(codec->layout() == layout)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "codec layout (", codec->layout().layers, " layers, ",
        codec->layout().kv_heads, " kv heads, head_dim ",
        codec->layout().head_dim, ") does not match the model's (",
        layout.layers, ", ", layout.kv_heads, ", ", layout.head_dim, ")"));
  }
  if (options.sinks < 0 || options.window < 0 || options.block_tokens < 1 ||
      options.block_tokens > options.window + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad compressed cache options: sinks ", options.sinks, ", window ",
        options.window, ", block_tokens ", options.block_tokens,
        " (need sinks >= 0, window >= 0, 1 <= block_tokens <= window + 1)"));
  }
  if (options.keys_pre_rope &&
      (rope == nullptr || rope->head_dim() != layout.head_dim)) {
    return absl::InvalidArgumentError(
        "keys_pre_rope needs the model's Rope to rotate decoded keys");
  }
  std::unique_ptr<CompressedKvCache> cache(
      new CompressedKvCache(layout, codec, rope, options));
  if (options.attend_codes) {
    const VqCodec* vq = dynamic_cast<const VqCodec*>(codec);
    if (vq == nullptr || !vq->fitted()) {
      return absl::InvalidArgumentError("attend_codes needs a fitted VQ codec");
    }
    if (options.keys_pre_rope || !options.coded.everything(layout.layers)) {
      return absl::InvalidArgumentError(
          "attend_codes needs post-RoPE keys (codebooks calibrated with "
          "--keys post) and everything coded (no ablation)");
    }
    cache->vq_ = vq;
    for (int l = 0; l < layout.layers; ++l) {
      for (int h = 0; h < layout.kv_heads; ++h) {
        absl::StatusOr<CodeAttention> a = CodeAttention::Create(*vq, l, h);
        if (!a.ok()) return a.status();
        cache->code_heads_.push_back(*std::move(a));
      }
    }
    cache->key_codes_.resize(static_cast<size_t>(layout.layers));
    cache->value_codes_.resize(static_cast<size_t>(layout.layers));
    cache->sketch_codes_.resize(static_cast<size_t>(layout.layers));
  }
  return cache;
}

CompressedKvCache::CompressedKvCache(const KvLayout& layout, const Codec* codec,
                                     const Rope* rope,
                                     const CompressedKvCacheOptions& options)
    : codec_(codec),
      rope_(rope),
      options_(options),
      exact_(layout, options.round_to_fp16),
      raw_keys_(layout, options.round_to_fp16),
      decoded_(layout, /*round_to_fp16=*/false),
      coded_end_(options.sinks) {}

int64_t CompressedKvCache::MaxChunkTokens() const {
  return std::max<int64_t>(1, options_.window + 2 - options_.block_tokens);
}

absl::Status CompressedKvCache::BeginChunk(int64_t n) {
  if (chunk_ != 0) return absl::FailedPreconditionError("chunk already open");
  if (n < 1 || n > MaxChunkTokens()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk of ", n, " tokens (allowed 1..", MaxChunkTokens(), ")"));
  }
  // The chunk's last query reads [sinks, last - window) decoded.
  const int64_t last = tokens_ + n - 1;
  const int64_t need =
      last - options_.sinks > options_.window ? last - options_.window : 0;
  while (coded_end_ < need) {
    if (absl::Status s = CodeBlock(); !s.ok()) return s;
  }
  chunk_ = n;
  return absl::OkStatus();
}

absl::Status CompressedKvCache::CodeBlock() {
  const KvLayout& lay = exact_.layout();
  const int64_t b = options_.block_tokens;
  const int64_t row = int64_t{lay.kv_heads} * lay.head_dim;
  const int64_t begin = coded_end_;
  if (begin + b > tokens_) {
    return absl::InternalError(absl::StrCat("block [", begin, ", ", begin + b,
                                            ") is not complete at ", tokens_,
                                            " tokens"));
  }
  block_keys_.resize(static_cast<size_t>(lay.layers * b * row));
  block_values_.resize(block_keys_.size());
  for (int l = 0; l < lay.layers; ++l) {
    const float* k =
        options_.keys_pre_rope ? raw_keys_.keys(l) : exact_.keys(l);
    std::memcpy(block_keys_.data() + l * b * row, k + begin * row,
                sizeof(float) * b * row);
    std::memcpy(block_values_.data() + l * b * row,
                exact_.values(l) + begin * row, sizeof(float) * b * row);
  }
  payload_.resize(codec_->EncodedBytes(b));
  if (absl::Status s = codec_->Encode(block_keys_.data(), block_values_.data(),
                                      b, payload_.data(), payload_.size());
      !s.ok()) {
    return s;
  }
  if (vq_ != nullptr) {
    // Keep the codes, layer by layer ([layer][token][kv_head][stages] in
    // the payload); no decoded copy.
    absl::StatusOr<VqCodes> codes =
        UnpackVqCodes(*vq_, payload_.data(), payload_.size(), b);
    if (!codes.ok()) return codes.status();
    const size_t vper = codes->values.size() / lay.layers;
    // The sketch section holds the sketched layers only.
    const int sketch_from = vq_->KeySketchFirstLayer();
    const size_t sper = codes->sketch.size() / (lay.layers - sketch_from);
    for (int l = 0; l < lay.layers; ++l) {
      key_codes_[l].insert(key_codes_[l].end(),
                           codes->keys.begin() + codes->key_begin[l],
                           codes->keys.begin() + codes->key_begin[l + 1]);
      value_codes_[l].insert(value_codes_[l].end(),
                             codes->values.begin() + l * vper,
                             codes->values.begin() + (l + 1) * vper);
      if (l < sketch_from) continue;
      const size_t s = static_cast<size_t>(l - sketch_from) * sper;
      sketch_codes_[l].insert(sketch_codes_[l].end(), codes->sketch.begin() + s,
                              codes->sketch.begin() + s + sper);
    }
    encoded_bytes_ += payload_.size();
    coded_end_ += b;
    return absl::OkStatus();
  }
  if (absl::Status s = codec_->Decode(payload_.data(), payload_.size(), b,
                                      block_keys_.data(), block_values_.data());
      !s.ok()) {
    return s;
  }
  for (int l = 0; l < lay.layers; ++l) {
    const bool keys_coded = options_.coded.keys_in(l);
    decoded_.Resize(l, begin + b);
    float* k = decoded_.mutable_keys(l) + begin * row;
    float* v = decoded_.mutable_values(l) + begin * row;
    if (keys_coded) {
      std::memcpy(k, block_keys_.data() + l * b * row, sizeof(float) * b * row);
    } else {
      std::memcpy(k, exact_.keys(l) + begin * row, sizeof(float) * b * row);
    }
    std::memcpy(v,
                options_.coded.values_in(l) ? block_values_.data() + l * b * row
                                            : exact_.values(l) + begin * row,
                sizeof(float) * b * row);
    if (options_.keys_pre_rope && keys_coded) {
      for (int64_t i = 0; i < b; ++i) {
        rope_->Apply(k + i * row, lay.kv_heads, begin + i);
      }
    }
  }
  encoded_bytes_ += payload_.size();
  coded_end_ += b;
  return absl::OkStatus();
}

absl::Status CompressedKvCache::Append(int layer, const float* keys_pre_rope,
                                       const float* keys, const float* values) {
  if (chunk_ == 0) return absl::FailedPreconditionError("no open chunk");
  if (layer < 0 || layer >= exact_.layout().layers ||
      exact_.tokens(layer) != tokens_ ||
      (layer > 0 && exact_.tokens(layer - 1) != tokens_ + chunk_)) {
    return absl::FailedPreconditionError(
        absl::StrCat("Append of layer ", layer, " out of order"));
  }
  exact_.Append(layer, chunk_, keys, values);
  if (options_.keys_pre_rope) {
    raw_keys_.Append(layer, chunk_, keys_pre_rope, nullptr);
  }
  return absl::OkStatus();
}

model::KvCache::LayerView CompressedKvCache::View(int layer) const {
  LayerView v;
  v.tokens = exact_.tokens(layer);
  v.keys = exact_.keys(layer);
  v.values = exact_.values(layer);
  v.sinks = options_.sinks;
  v.window = options_.window;
  if (vq_ != nullptr && coded_end_ > options_.sinks) {
    const CodebookConfig& c = vq_->codebooks().config();
    v.coded.heads = code_heads_.data() +
                    static_cast<size_t>(layer) * exact_.layout().kv_heads;
    v.coded.key_codes = key_codes_[layer].data();
    v.coded.value_codes = value_codes_[layer].data();
    v.coded.key_stages = VqKeyCodeStages(*vq_, layer);
    v.coded.value_stages = c.value_stages;
    if (!sketch_codes_[layer].empty()) {
      v.coded.sketch = sketch_codes_[layer].data();
      v.coded.sketch_bytes =
          static_cast<int>(vq_->key_sketch()->BytesPerVector());
    }
    v.decoded_end = coded_end_;
  }
  if (decoded_.tokens(layer) > 0) {
    v.decoded_keys = decoded_.keys(layer);
    v.decoded_values = decoded_.values(layer);
    v.decoded_end = coded_end_;
  }
  return v;
}

absl::Status CompressedKvCache::EndChunk() {
  if (chunk_ == 0) return absl::FailedPreconditionError("no open chunk");
  for (int l = 0; l < exact_.layout().layers; ++l) {
    if (exact_.tokens(l) != tokens_ + chunk_) {
      return absl::FailedPreconditionError(
          absl::StrCat("EndChunk before layer ", l, " was appended"));
    }
  }
  tokens_ += chunk_;
  chunk_ = 0;
  return absl::OkStatus();
}

void CompressedKvCache::Clear() {
  exact_.Clear();
  raw_keys_.Clear();
  decoded_.Clear();
  for (auto& c : key_codes_) c.clear();
  for (auto& c : value_codes_) c.clear();
  for (auto& c : sketch_codes_) c.clear();
  tokens_ = 0;
  chunk_ = 0;
  coded_end_ = options_.sinks;
  encoded_bytes_ = 0;
}

}  // namespace vqkv::eval
