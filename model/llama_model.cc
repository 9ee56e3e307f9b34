#include "model/llama_model.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "model/attention.h"

namespace vqkv::model {
namespace {

// Y[n][out] = X[n][in] . W[out][in]^T, with row strides.
void Linear(const float* x, int64_t n, int in, const float* w, int out,
            float* y, int ldy) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), out,
              in, 1.0f, x, in, w, in, 0.0f, y, ldy);
}

// Reads a tensor and checks its ggml shape (ne[0] first).
absl::Status ReadShaped(const GgufFile& gguf, const std::string& name,
                        std::vector<int64_t> ne, std::vector<float>* out) {
  const GgufTensorInfo* info = gguf.FindTensor(name);
  if (info == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("model has no tensor '", name, "'"));
  }
  if (info->ne != ne) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' has shape [", absl::StrJoin(info->ne, ", "),
        "], expected [", absl::StrJoin(ne, ", "), "]"));
  }
  absl::StatusOr<std::vector<float>> data = gguf.ReadTensorF32(name);
  if (!data.ok()) return data.status();
  *out = *std::move(data);
  return absl::OkStatus();
}

absl::Status ReadInt(const GgufFile& gguf, const std::string& key, int* out) {
  absl::StatusOr<uint64_t> v = gguf.GetUint(key);
  if (!v.ok()) return absl::InvalidArgumentError(v.status().message());
  if (*v == 0 || *v > (1u << 24)) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, " = ", *v, " is out of range"));
  }
  *out = static_cast<int>(*v);
  return absl::OkStatus();
}

}  // namespace

LlamaModel::LlamaModel(const LlamaConfig& config)
    : config_(config), rope_(config.head_dim, config.rope_spec()) {}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(
    const std::string& path) {
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(path);
  if (!gguf.ok()) return gguf.status();
  return FromGguf(**gguf);
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::FromGguf(
    const GgufFile& gguf) {
  absl::StatusOr<std::string> arch = gguf.GetString("general.architecture");
  if (!arch.ok()) return absl::InvalidArgumentError(arch.status().message());
  if (*arch != "llama") {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported model architecture '", *arch, "' (supported: llama)"));
  }
  LlamaConfig c;
  if (absl::StatusOr<std::string> name = gguf.GetString("general.name");
      name.ok()) {
    c.name = *name;
  }
  VQKV_RETURN_IF_ERROR(ReadInt(gguf, "llama.block_count", &c.layers));
  VQKV_RETURN_IF_ERROR(ReadInt(gguf, "llama.embedding_length", &c.embd));
  VQKV_RETURN_IF_ERROR(ReadInt(gguf, "llama.feed_forward_length", &c.ff));
  VQKV_RETURN_IF_ERROR(ReadInt(gguf, "llama.attention.head_count", &c.heads));
  c.kv_heads = c.heads;
  if (gguf.Find("llama.attention.head_count_kv") != nullptr) {
    VQKV_RETURN_IF_ERROR(
        ReadInt(gguf, "llama.attention.head_count_kv", &c.kv_heads));
  }
  if (c.embd % c.heads != 0 || c.heads % c.kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("inconsistent head counts: embd ", c.embd, ", heads ",
                     c.heads, ", kv heads ", c.kv_heads));
  }
  c.head_dim = c.embd / c.heads;
  c.rope_dims = c.head_dim;
  if (gguf.Find("llama.rope.dimension_count") != nullptr) {
    VQKV_RETURN_IF_ERROR(
        ReadInt(gguf, "llama.rope.dimension_count", &c.rope_dims));
  }
  if (gguf.Find("llama.rope.freq_base") != nullptr) {
    absl::StatusOr<double> theta = gguf.GetFloat("llama.rope.freq_base");
    if (!theta.ok()) return theta.status();
    c.rope_theta = *theta;
  }
  if (absl::Status s = c.rope_spec().Validate(c.head_dim); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model's RoPE: ", s.message()));
  }
  if (gguf.Find("llama.attention.layer_norm_rms_epsilon") != nullptr) {
    absl::StatusOr<double> eps =
        gguf.GetFloat("llama.attention.layer_norm_rms_epsilon");
    if (!eps.ok()) return eps.status();
    c.rms_eps = static_cast<float>(*eps);
  }
  if (absl::StatusOr<uint64_t> ctx = gguf.GetUint("llama.context_length");
      ctx.ok()) {
    c.context_length = static_cast<int64_t>(*ctx);
  }
  const GgufTensorInfo* embd = gguf.FindTensor("token_embd.weight");
  if (embd == nullptr || embd->ne.size() != 2 || embd->ne[0] != c.embd) {
    return absl::InvalidArgumentError(
        "model has no token_embd.weight of shape [embd, vocab]");
  }
  c.vocab = static_cast<int>(embd->ne[1]);
  c.tied_output = gguf.FindTensor("output.weight") == nullptr;

  // A block count no file of this size could back is an error before the
  // layer table is sized from it (each layer needs tensors of its own;
  // which one is missing is reported below).
  if (static_cast<size_t>(c.layers) > gguf.tensors().size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "llama.block_count = ", c.layers, " but the file has only ",
        gguf.tensors().size(), " tensors"));
  }

  std::unique_ptr<LlamaModel> m(new LlamaModel(c));
  const int64_t kv_dim = int64_t{c.kv_heads} * c.head_dim;
  VQKV_RETURN_IF_ERROR(ReadShaped(gguf, "token_embd.weight", {c.embd, c.vocab},
                                  &m->token_embd_));
  if (!c.tied_output) {
    VQKV_RETURN_IF_ERROR(
        ReadShaped(gguf, "output.weight", {c.embd, c.vocab}, &m->output_));
  }
  VQKV_RETURN_IF_ERROR(
      ReadShaped(gguf, "output_norm.weight", {c.embd}, &m->output_norm_));
  m->layers_.resize(static_cast<size_t>(c.layers));
  for (int l = 0; l < c.layers; ++l) {
    Layer& L = m->layers_[l];
    const std::string p = absl::StrCat("blk.", l, ".");
    std::vector<float> q, k, v, gate, up;
    VQKV_RETURN_IF_ERROR(
        ReadShaped(gguf, p + "attn_norm.weight", {c.embd}, &L.attn_norm));
    VQKV_RETURN_IF_ERROR(
        ReadShaped(gguf, p + "attn_q.weight", {c.embd, c.embd}, &q));
    VQKV_RETURN_IF_ERROR(
        ReadShaped(gguf, p + "attn_k.weight", {c.embd, kv_dim}, &k));
    VQKV_RETURN_IF_ERROR(
        ReadShaped(gguf, p + "attn_v.weight", {c.embd, kv_dim}, &v));
    VQKV_RETURN_IF_ERROR(
        ReadShaped(gguf, p + "attn_output.weight", {c.embd, c.embd}, &L.wo));
    VQKV_RETURN_IF_ERROR(
        ReadShaped(gguf, p + "ffn_norm.weight", {c.embd}, &L.ffn_norm));
    VQKV_RETURN_IF_ERROR(
        ReadShaped(gguf, p + "ffn_gate.weight", {c.embd, c.ff}, &gate));
    VQKV_RETURN_IF_ERROR(
        ReadShaped(gguf, p + "ffn_up.weight", {c.embd, c.ff}, &up));
    VQKV_RETURN_IF_ERROR(
        ReadShaped(gguf, p + "ffn_down.weight", {c.ff, c.embd}, &L.w_down));
    // Fuse the projections that read the same input into one sgemm.
    L.wqkv = std::move(q);
    L.wqkv.insert(L.wqkv.end(), k.begin(), k.end());
    L.wqkv.insert(L.wqkv.end(), v.begin(), v.end());
    L.w_gate_up = std::move(gate);
    L.w_gate_up.insert(L.w_gate_up.end(), up.begin(), up.end());
  }
  return m;
}

std::unique_ptr<ExactKvCache> LlamaModel::NewExactCache(
    bool round_to_fp16) const {
  return std::make_unique<ExactKvCache>(config_.kv_layout(), round_to_fp16);
}

void LlamaModel::RmsNorm(const float* x, const float* w, int64_t rows,
                         float* y) const {
  const int d = config_.embd;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    double ss = 0.0;
    for (int i = 0; i < d; ++i) ss += double{xr[i]} * xr[i];
    const float inv =
        1.0f / std::sqrt(static_cast<float>(ss / d) + config_.rms_eps);
    for (int i = 0; i < d; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

absl::Status LlamaModel::ForwardChunk(const int32_t* tokens, int64_t n,
                                      int64_t pos0, KvCache* cache,
                                      const ForwardOptions& options,
                                      std::vector<float>* x_out) const {
  const LlamaConfig& c = config_;
  const int d = c.embd;
  const int kv_dim = c.kv_heads * c.head_dim;
  const int qkv_dim = d + 2 * kv_dim;
  std::vector<float>& x = *x_out;
  x.resize(static_cast<size_t>(n) * d);
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(x.data() + i * d, token_embd_.data() + int64_t{tokens[i]} * d,
                sizeof(float) * d);
  }
  std::vector<float> h(static_cast<size_t>(n) * d);
  std::vector<float> qkv(static_cast<size_t>(n) * qkv_dim);
  std::vector<float> q(static_cast<size_t>(n) * d);
  std::vector<float> k_pre(static_cast<size_t>(n) * kv_dim);
  std::vector<float> k(static_cast<size_t>(n) * kv_dim);
  std::vector<float> v(static_cast<size_t>(n) * kv_dim);
  std::vector<float> attn(static_cast<size_t>(n) * d);
  std::vector<float> gu(static_cast<size_t>(n) * 2 * c.ff);
  std::vector<float> act(static_cast<size_t>(n) * c.ff);
  AttentionScratch scratch;
  const AttentionShape shape{c.heads, c.kv_heads, c.head_dim};

  VQKV_RETURN_IF_ERROR(cache->BeginChunk(n));
  for (int l = 0; l < c.layers; ++l) {
    const Layer& L = layers_[l];
    RmsNorm(x.data(), L.attn_norm.data(), n, h.data());
    Linear(h.data(), n, d, L.wqkv.data(), qkv_dim, qkv.data(), qkv_dim);
    for (int64_t i = 0; i < n; ++i) {
      const float* row = qkv.data() + i * qkv_dim;
      float* qi = q.data() + i * d;
      float* ki = k.data() + i * kv_dim;
      std::memcpy(qi, row, sizeof(float) * d);
      std::memcpy(k_pre.data() + i * kv_dim, row + d, sizeof(float) * kv_dim);
      std::memcpy(ki, row + d, sizeof(float) * kv_dim);
      std::memcpy(v.data() + i * kv_dim, row + d + kv_dim,
                  sizeof(float) * kv_dim);
      rope_.Apply(qi, c.heads, pos0 + i);
      rope_.Apply(ki, c.kv_heads, pos0 + i);
    }
    if (options.observer != nullptr) {
      options.observer->OnKv(l, pos0, n, k_pre.data(), k.data(), v.data());
      options.observer->OnQueries(l, pos0, n, q.data());
    }
    VQKV_RETURN_IF_ERROR(cache->Append(l, k_pre.data(), k.data(), v.data()));
    VQKV_RETURN_IF_ERROR(CausalAttention(
        q.data(), n, pos0, shape, cache->View(l), attn.data(), &scratch));
    // x += attn . Wo^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), d,
                d, 1.0f, attn.data(), d, L.wo.data(), d, 1.0f, x.data(), d);
    RmsNorm(x.data(), L.ffn_norm.data(), n, h.data());
    Linear(h.data(), n, d, L.w_gate_up.data(), 2 * c.ff, gu.data(), 2 * c.ff);
    for (int64_t i = 0; i < n; ++i) {
      const float* g = gu.data() + i * 2 * c.ff;
      const float* u = g + c.ff;
      float* a = act.data() + i * c.ff;
      for (int j = 0; j < c.ff; ++j) {
        a[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
      }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), d,
                c.ff, 1.0f, act.data(), c.ff, L.w_down.data(), c.ff, 1.0f,
                x.data(), d);
  }
  return cache->EndChunk();
}

absl::Status LlamaModel::Forward(absl::Span<const int32_t> tokens,
                                 KvCache* cache, const ForwardOptions& options,
                                 std::vector<float>* hidden) const {
  if (tokens.empty()) return absl::InvalidArgumentError("no tokens to run");
  if (!(cache->layout() == config_.kv_layout())) {
    return absl::InvalidArgumentError("KV cache layout does not match model");
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= config_.vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", t, " is outside the vocabulary"));
    }
  }
  const int64_t chunk = std::max<int64_t>(
      1, std::min(options.max_chunk_tokens, cache->MaxChunkTokens()));
  const int64_t total = static_cast<int64_t>(tokens.size());
  const int d = config_.embd;
  if (hidden != nullptr) {
    hidden->clear();
    if (options.output == OutputRows::kAll) {
      hidden->reserve(static_cast<size_t>(total) * d);
    }
  }
  std::vector<float> x;
  for (int64_t c0 = 0; c0 < total; c0 += chunk) {
    const int64_t n = std::min(chunk, total - c0);
    VQKV_RETURN_IF_ERROR(ForwardChunk(tokens.data() + c0, n, cache->tokens(),
                                      cache, options, &x));
    if (hidden == nullptr || options.output == OutputRows::kNone) continue;
    int64_t first = 0;
    if (options.output == OutputRows::kLast) {
      if (c0 + n < total) continue;
      first = n - 1;
    }
    const size_t old = hidden->size();
    hidden->resize(old + static_cast<size_t>(n - first) * d);
    RmsNorm(x.data() + first * d, output_norm_.data(), n - first,
            hidden->data() + old);
  }
  return absl::OkStatus();
}

void LlamaModel::Logits(const float* hidden, int64_t rows,
                        float* logits) const {
  const std::vector<float>& w = output_.empty() ? token_embd_ : output_;
  Linear(hidden, rows, config_.embd, w.data(), config_.vocab, logits,
         config_.vocab);
}

}  // namespace vqkv::model
