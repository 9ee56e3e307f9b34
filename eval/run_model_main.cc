// vqkv_run_model: a small driver over eval/ for manual measurements.
//
//   vqkv_run_model --model M.gguf --generate "Once upon a time" [--tokens 60]
//   vqkv_run_model --model M.gguf --ppl text.txt [--ctx 512] [--windows 8]
//   vqkv_run_model --model M.gguf --prefill-bench 512 [--repeat 3]
//   vqkv_run_model --model M.gguf --roundtrip text.txt
//   vqkv_run_model --model M.gguf --collect 8192 --ppl text.txt [--ctx 512]
//       (time the KV hook: collect N tokens of K/V instead of perplexity)
//   vqkv_run_model --model M.gguf --ppl text.txt --compare-codec kivi2
//       [--window 128] [--sinks 4] [--block 32]   (codec vs fp16 KV)
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "eval/compressed_kv_cache.h"
#include "eval/evaluate.h"
#include "eval/kv_collector.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/baselines/kivi_codec.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"

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
  std::string ids_out;
  app.add_option("--ids-out", ids_out,
                 "with --roundtrip: write the token ids, one per line");
  std::string compare_codec;
  int64_t window = 128, sinks = 4, block = 32;
  app.add_option("--compare-codec", compare_codec,
                 "with --ppl: compare a compressed cache (fp16, kivi2, "
                 "kivi4) against the fp16 cache");
  app.add_option("--window", window, "exact recent window (compare)");
  app.add_option("--sinks", sinks, "exact leading tokens (compare)");
  app.add_option("--block", block, "tokens per codec block (compare)");
  int64_t collect = 0;
  app.add_option("--collect", collect,
                 "with --ppl: collect K/V of this many tokens (windows of "
                 "--ctx, first 4 positions skipped) instead of perplexity");
  CLI11_PARSE(app, argc, argv);

  auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<model::GgufFile>> gguf =
      model::GgufFile::Open(model_path);
  if (!gguf.ok()) return Fail(gguf.status());
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tok =
      model::Tokenizer::FromGguf(**gguf);
  if (!tok.ok()) return Fail(tok.status());
  absl::StatusOr<std::unique_ptr<model::LlamaModel>> model =
      model::LlamaModel::FromGguf(**gguf);
  if (!model.ok()) return Fail(model.status());
  const model::LlamaConfig& c = (*model)->config();
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
    if (!ids_out.empty()) {
      std::ofstream out(ids_out);
      for (int32_t id : ids) out << id << "\n";
    }
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
    if (collect > 0) {
      KvCollectorOptions ko;
      ko.max_tokens = collect;
      ko.skip_positions_below = 4;
      KvCollector collector(c.kv_layout(), ko);
      absl::StatusOr<int64_t> run = CollectKv(**model, ids, ctx, &collector);
      if (!run.ok()) return Fail(run.status());
      const double s = Seconds(t0);
      std::printf(
          "collected K/V of %lld tokens (%d layers x %d kv heads x %d) from "
          "%lld tokens run in windows of %lld: %.1f s = %.0f tokens/s\n",
          static_cast<long long>(collector.tokens()), c.layers, c.kv_heads,
          c.head_dim, static_cast<long long>(*run), static_cast<long long>(ctx),
          s, *run / s);
    } else if (compare_codec.empty()) {
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
    } else {
      std::unique_ptr<Codec> codec;
      if (compare_codec == "fp16") {
        absl::StatusOr<std::unique_ptr<Fp16Codec>> f =
            Fp16Codec::Create(c.kv_layout());
        if (!f.ok()) return Fail(f.status());
        codec = *std::move(f);
      } else if (compare_codec == "kivi2" || compare_codec == "kivi4") {
        KiviOptions ko;
        ko.bits = compare_codec == "kivi2" ? 2 : 4;
        absl::StatusOr<std::unique_ptr<KiviCodec>> k =
            KiviCodec::Create(c.kv_layout(), ko);
        if (!k.ok()) return Fail(k.status());
        codec = *std::move(k);
      } else {
        return Fail(absl::InvalidArgumentError(
            "--compare-codec must be fp16, kivi2 or kivi4"));
      }
      CompressedKvCacheOptions co;
      co.sinks = sinks;
      co.window = window;
      co.block_tokens = block;
      const model::LlamaModel* m = model->get();
      const Codec* cp = codec.get();
      CacheFactory make_test =
          [m, cp, co]() -> absl::StatusOr<std::unique_ptr<model::KvCache>> {
        absl::StatusOr<std::unique_ptr<CompressedKvCache>> cache =
            CompressedKvCache::Create(m->config().kv_layout(), cp, &m->rope(),
                                      co);
        if (!cache.ok()) return cache.status();
        return std::unique_ptr<model::KvCache>(std::move(*cache));
      };
      wo.score_from = sinks + window + 1;
      absl::StatusOr<CompareResult> r =
          Compare(**model, ids, wo, ExactCacheFactory(**model), make_test);
      if (!r.ok()) return Fail(r.status());
      std::printf(
          "%s vs fp16 KV on %s (ctx %lld, sinks %lld, window %lld, block "
          "%lld, %.3f bits/element): ppl %.3f vs %.3f (%+.2f%%), top-1 "
          "agreement %.4f, mean KL %.5f nats, %lld tokens scored in %lld "
          "windows (%.1f s)\n",
          codec->Descriptor().c_str(), ppl_path.c_str(),
          static_cast<long long>(ctx), static_cast<long long>(sinks),
          static_cast<long long>(window), static_cast<long long>(block),
          codec->BitsPerElement(), r->test.ppl(), r->reference.ppl(),
          100.0 * (r->test.ppl() / r->reference.ppl() - 1.0), r->top1_agreement,
          r->mean_kl, static_cast<long long>(r->tokens_scored),
          static_cast<long long>(r->reference.windows), Seconds(t0));
    }
  }
  if (prefill > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(prefill));
    for (int64_t i = 0; i < prefill; ++i) {
      ids[i] = static_cast<int32_t>((i * 7919 + 13) % c.vocab);
    }
    model::ForwardOptions fo;
    fo.output = model::OutputRows::kNone;
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
