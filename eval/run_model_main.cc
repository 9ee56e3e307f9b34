// vqkv_run_model: a small driver over eval/ for manual measurements.
//
//   vqkv_run_model --model M.gguf --generate "Once upon a time" [--tokens 60]
//   vqkv_run_model --model M.gguf --ppl text.txt [--ctx 512] [--windows 8]
//   vqkv_run_model --model M.gguf --prefill-bench 512 [--repeat 3]
//   vqkv_run_model --model M.gguf --roundtrip text.txt
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "eval/evaluate.h"
#include "eval/gguf.h"
#include "eval/llama_model.h"
#include "eval/tokenizer.h"

namespace vqkv::eval {
namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
      .count();
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 1;
}

int Main(int argc, char** argv) {
  CLI::App app{"Runs SmolLM2-style GGUF models on the CPU (eval/ driver)"};
  std::string model_path, prompt, ppl_path, roundtrip_path;
  int64_t tokens = 60, ctx = 512, windows = 0, prefill = 0, repeat = 3;
  app.add_option("--model", model_path, "GGUF model file")->required();
  app.add_option("--generate", prompt, "greedy continuation of this prompt");
  app.add_option("--tokens", tokens, "tokens to generate");
  app.add_option("--ppl", ppl_path, "perplexity of this text file");
  app.add_option("--ctx", ctx, "window length for --ppl");
  app.add_option("--windows", windows, "max windows for --ppl (0 = all)");
  app.add_option("--prefill-bench", prefill, "time a prefill of N tokens");
  app.add_option("--repeat", repeat, "prefill repetitions");
  app.add_option("--roundtrip", roundtrip_path,
                 "check decode(encode(text)) == text");
  CLI11_PARSE(app, argc, argv);

  auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(model_path);
  if (!gguf.ok()) return Fail(gguf.status());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(**gguf);
  if (!tok.ok()) return Fail(tok.status());
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::FromGguf(**gguf);
  if (!model.ok()) return Fail(model.status());
  const LlamaConfig& c = (*model)->config();
  std::printf(
      "model %s: %d layers, embd %d, heads %d/%d, head_dim %d, vocab %d, "
      "rope theta %.0f, loaded in %.2f s\n",
      c.name.c_str(), c.layers, c.embd, c.heads, c.kv_heads, c.head_dim,
      c.vocab, c.rope_theta, Seconds(t0));

  if (!roundtrip_path.empty()) {
    std::string text;
    if (!ReadFile(roundtrip_path, &text)) {
      return Fail(absl::NotFoundError("cannot read " + roundtrip_path));
    }
    t0 = std::chrono::steady_clock::now();
    std::vector<int32_t> ids = (*tok)->Encode(text);
    const double enc = Seconds(t0);
    const bool ok = (*tok)->Decode(ids) == text;
    std::printf("roundtrip %s: %zu bytes -> %zu tokens in %.2f s: %s\n",
                roundtrip_path.c_str(), text.size(), ids.size(), enc,
                ok ? "identical" : "MISMATCH");
    if (!ok) return 1;
  }
  if (!prompt.empty()) {
    std::vector<int32_t> ids = (*tok)->Encode(prompt);
    auto cache = (*model)->NewExactCache();
    t0 = std::chrono::steady_clock::now();
    absl::StatusOr<std::vector<int32_t>> out =
        GenerateGreedy(**model, ids, tokens, (*tok)->eos_id(), cache.get());
    if (!out.ok()) return Fail(out.status());
    const double s = Seconds(t0);
    std::printf(
        "prompt (%zu tokens): %s\ncontinuation (%zu tokens, %.1f "
        "tokens/s): %s\n",
        ids.size(), prompt.c_str(), out->size(), out->size() / s,
        (*tok)->Decode(*out).c_str());
  }
  if (!ppl_path.empty()) {
    std::string text;
    if (!ReadFile(ppl_path, &text)) {
      return Fail(absl::NotFoundError("cannot read " + ppl_path));
    }
    std::vector<int32_t> ids = (*tok)->Encode(text);
    WindowOptions wo;
    wo.ctx = ctx;
    wo.max_windows = windows;
    t0 = std::chrono::steady_clock::now();
    absl::StatusOr<PerplexityResult> r =
        Perplexity(**model, ids, wo, ExactCacheFactory(**model));
    if (!r.ok()) return Fail(r.status());
    const double s = Seconds(t0);
    std::printf(
        "perplexity %s (fp16 KV, ctx %lld): %.3f over %lld tokens in %lld "
        "windows (%.1f s, %.0f tokens/s incl. logits)\n",
        ppl_path.c_str(), static_cast<long long>(ctx), r->ppl(),
        static_cast<long long>(r->tokens_scored),
        static_cast<long long>(r->windows), s, r->windows * ctx / s);
  }
  if (prefill > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(prefill));
    for (int64_t i = 0; i < prefill; ++i) {
      ids[i] = static_cast<int32_t>((i * 7919 + 13) % c.vocab);
    }
    ForwardOptions fo;
    fo.output = OutputRows::kNone;
    for (int64_t r = 0; r < repeat; ++r) {
      auto cache = (*model)->NewExactCache();
      t0 = std::chrono::steady_clock::now();
      if (absl::Status st = (*model)->Forward(ids, cache.get(), fo, nullptr);
          !st.ok()) {
        return Fail(st);
      }
      const double s = Seconds(t0);
      std::printf("prefill %lld tokens (no logits): %.3f s = %.0f tokens/s\n",
                  static_cast<long long>(prefill), s, prefill / s);
    }
  }
  return 0;
}

}  // namespace
}  // namespace vqkv::eval

int main(int argc, char** argv) { return vqkv::eval::Main(argc, argv); }
