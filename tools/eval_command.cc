
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "eval/compressed_kv_cache.h"
#include "eval/evaluate.h"
#include "eval/stats.h"
#include "kernels/vq_codec.h"
#include "tools/commands.h"
#include "tools/common.h"
#include "tools/memory.h"
#include "tools/passkey.h"
#include "tools/retrieval.h"
#include "tools/retrieval_diagnostic.h"
#include "tools/retrieval_tasks.h"

namespace vqkv::tools {
namespace {

struct EvalArgs {
  std::string model;
  std::string text;
  std::string task = "ppl";  // ppl | passkey | mkniah | vartrack | diagnose
  bool memory = false;
  std::vector<std::string> codecs = {"vq"};
  std::string codebooks;
  int64_t ctx = 2048;
  int64_t window = 1024;
  int64_t sinks = 4;
  int64_t block_tokens = 32;
  bool attend_codes = false;
  int64_t max_tokens = 0;   // 0 = the whole text
  int64_t max_windows = 0;  // 0 = as many as the text holds
  int beam_width = 1;
  int key_sketch_bits = 0;
  int key_sketch_from_layer = 0;
  bool json = false;
  // retrieval tasks
  int trials = 10;
  uint64_t seed = 1;
  // Both above the default sinks + window (4 + 1024), so the needle can
  // fall in the coded region with the default options.
  std::vector<int64_t> lengths = {1536, 2048};
  bool verbose = false;
  // The defaults are the largest variants on which SmolLM2-135M with an
  // fp16 cache scores well enough at 1024 tokens to compare codecs
  // (eval/README.md).
  int keys = 2;          // mkniah needles
  int chains = 1;        // vartrack chains
  int hops = 1;          // vartrack copies per chain
  bool ablation = true;  // diagnose
  // Parts read through the codec (eval::ParseCodedParts).
  std::string coded = "all";
  std::string coded_layers;
  // memory
  double budget_gib = 1.0;
  std::vector<int64_t> memory_ctx = {2048, 8192, 32768, 131072};
};

// A progress callback (runs done, runs in all) that draws on `bar`.
std::function<void(int64_t, int64_t)> RunsProgress(ProgressBar* bar) {
  return [bar](int64_t done, int64_t total) {
    bar->Update(static_cast<double>(done) / total,
                absl::StrFormat("%d/%d runs", done, total));
  };
}

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
      .count();
}

absl::StatusOr<std::vector<EvalCodec>> MakeCodecs(const EvalArgs& a,
                                                  const ModelIdentity& model) {
  std::vector<EvalCodec> out;
  for (const std::string& name : a.codecs) {
    absl::StatusOr<EvalCodec> c =
        MakeEvalCodec(name, a.codebooks, model, a.beam_width, a.key_sketch_bits,
                      a.key_sketch_from_layer);
    if (!c.ok()) return c.status();
    out.push_back(*std::move(c));
  }
  return out;
}

// Memory fields of one codec: bytes per token at `ctx` (fp16 sinks/window
// and codebooks included) and the longest context in the budget.
struct MemoryReport {
  int64_t fp16_bytes_per_token = 0;
  double bytes_per_token_at_ctx = 0;
  double payload_bytes_per_token = 0;  // coded tokens only
  int64_t budget_bytes = 0;
  int64_t max_tokens = 0;
  int64_t fp16_max_tokens = 0;
};

MemoryReport Memory(const EvalCodec& c, const EvalArgs& a, const Codec& fp16,
                    int64_t ctx) {
  MemoryReport r;
  KvMemoryPolicy policy{a.sinks, a.window, c.codebook_bytes};
  r.fp16_bytes_per_token = Fp16BytesPerToken(c.codec->layout());
  r.bytes_per_token_at_ctx =
      static_cast<double>(KvBytes(*c.codec, policy, ctx)) / ctx;
  constexpr int64_t kRef = 1 << 20;
  r.payload_bytes_per_token =
      static_cast<double>(c.codec->EncodedBytes(kRef)) / kRef;
  r.budget_bytes = static_cast<int64_t>(a.budget_gib * (1 << 30));
  r.max_tokens = MaxTokensInBudget(*c.codec, policy, r.budget_bytes);
  r.fp16_max_tokens = MaxTokensInBudget(fp16, {}, r.budget_bytes);
  return r;
}

int RunMemory(const EvalArgs& a, const KvLayout& layout,
              const std::vector<EvalCodec>& codecs, const Codec& fp16) {
  if (!a.json) {
    std::printf(
        "KV memory, %d layers x %d kv heads x %d head_dim; sinks %lld + "
        "window %lld fp16; codebooks counted once; budget %.2f GiB\n",
        layout.layers, layout.kv_heads, layout.head_dim,
        static_cast<long long>(a.sinks), static_cast<long long>(a.window),
        a.budget_gib);
    std::string head =
        absl::StrFormat("%-8s %10s %12s", "codec", "bits/elt", "payload B/t");
    for (int64_t t : a.memory_ctx) {
      absl::StrAppend(&head, absl::StrFormat(" %12s", absl::StrCat("B/t@", t)));
    }
    absl::StrAppend(&head,
                    absl::StrFormat(" %12s %8s", "max tokens", "vs fp16"));
    std::printf("%s\n", head.c_str());
  }
  for (const EvalCodec& c : codecs) {
    const MemoryReport r = Memory(c, a, fp16, a.ctx);
    KvMemoryPolicy policy{a.sinks, a.window, c.codebook_bytes};
    if (a.json) {
      std::string per_ctx;
      for (int64_t t : a.memory_ctx) {
        if (!per_ctx.empty()) per_ctx += ",";
        absl::StrAppend(
            &per_ctx,
            absl::StrFormat(
                "\"%d\":%.2f", t,
                static_cast<double>(KvBytes(*c.codec, policy, t)) / t));
      }
      std::printf(
          "{\"task\":\"memory\",\"codec\":%s,\"descriptor\":%s,"
          "\"bits_per_element\":%.6f,\"compression_ratio\":%.6f,"
          "\"codebook_bytes\":%lld,\"sinks\":%lld,\"window\":%lld,"
          "\"kv_bytes_per_token_fp16\":%lld,"
          "\"payload_bytes_per_token\":%.4f,"
          "\"kv_bytes_per_token_at_ctx\":{%s},\"budget_bytes\":%lld,"
          "\"max_tokens_in_budget\":%lld,\"fp16_max_tokens_in_budget\":%lld,"
          "\"generation_ratio\":%.4f}\n",
          JsonString(c.name).c_str(), JsonString(c.codec->Descriptor()).c_str(),
          c.codec->BitsPerElement(), c.codec->CompressionRatio(),
          static_cast<long long>(c.codebook_bytes),
          static_cast<long long>(a.sinks), static_cast<long long>(a.window),
          static_cast<long long>(r.fp16_bytes_per_token),
          r.payload_bytes_per_token, per_ctx.c_str(),
          static_cast<long long>(r.budget_bytes),
          static_cast<long long>(r.max_tokens),
          static_cast<long long>(r.fp16_max_tokens),
          static_cast<double>(r.max_tokens) / r.fp16_max_tokens);
    } else {
      std::string row =
          absl::StrFormat("%-8s %10.4f %12.1f", c.name,
                          c.codec->BitsPerElement(), r.payload_bytes_per_token);
      for (int64_t t : a.memory_ctx) {
        absl::StrAppend(
            &row, absl::StrFormat(
                      " %12.1f",
                      static_cast<double>(KvBytes(*c.codec, policy, t)) / t));
      }
      absl::StrAppend(
          &row, absl::StrFormat(
                    " %12lld %7.2fx", static_cast<long long>(r.max_tokens),
                    static_cast<double>(r.max_tokens) / r.fp16_max_tokens));
      std::printf("%s\n", row.c_str());
    }
  }
  return 0;
}

std::string JsonInterval(const eval::Interval& i) {
  return absl::StrFormat("[%.4f,%.4f]", i.lo, i.hi);
}

// Intervals over windows: each window is disjoint text, so its log-ppl
// difference, top-1 agreement and mean KL are independent samples.
struct WindowIntervals {
  int64_t windows = 0;
  eval::MeanInterval log_ppl_diff;  // test minus fp16, nats per token
  eval::MeanInterval top1;
  eval::MeanInterval kl;
};

WindowIntervals OverWindows(const eval::CompareResult& r) {
  std::vector<double> diff, top1, kl;
  for (const eval::WindowCompare& w : r.per_window) {
    if (w.tokens_scored == 0) continue;
    const double n = static_cast<double>(w.tokens_scored);
    diff.push_back((w.test_nll_sum - w.reference_nll_sum) / n);
    top1.push_back(static_cast<double>(w.top1_agree) / n);
    kl.push_back(w.kl_sum / n);
  }
  WindowIntervals w{static_cast<int64_t>(diff.size()), eval::Mean95(diff),
                    eval::Mean95(top1), eval::Mean95(kl)};
  // A t interval over a few windows can cross the measure's range; a
  // fraction stays in [0, 1] and a divergence >= 0.
  w.top1.ci95.lo = std::max(w.top1.ci95.lo, 0.0);
  w.top1.ci95.hi = std::min(w.top1.ci95.hi, 1.0);
  w.kl.ci95.lo = std::max(w.kl.ci95.lo, 0.0);
  return w;
}

// A log-ppl difference interval as a perplexity change in percent.
eval::Interval ChangePct(const eval::Interval& log_diff) {
  return {100.0 * std::expm1(log_diff.lo), 100.0 * std::expm1(log_diff.hi)};
}

// What --coded and --coded-layers left exact, for the table header ("; ..."
// ) or the JSON line (",\"coded\":..."); empty when everything is coded.
std::string CodedNote(const eval::CodedParts& coded, bool json) {
  if (coded.everything(eval::CodedParts::kAllLayers)) return "";
  const std::string d = eval::DescribeCodedParts(coded);
  return json ? absl::StrCat(",\"coded\":", JsonString(d))
              : absl::StrCat("; read through the codec: ", d,
                             " (the rest exact)");
}

int RunPerplexity(const EvalArgs& a, const eval::CodedParts& coded,
                  const LoadedModel& m, const std::vector<EvalCodec>& codecs,
                  const Codec& fp16) {
  const model::LlamaModel& model = *m.model;
  if (a.ctx < 2) return Fail(absl::InvalidArgumentError("--ctx must be >= 2"));
  if (a.sinks < 0 || a.window < 1 || a.sinks + a.window + 1 >= a.ctx) {
    return Fail(absl::InvalidArgumentError(absl::StrFormat(
        "--sinks %d + --window %d must leave coded positions in --ctx %d "
        "(sinks + window + 1 < ctx)",
        a.sinks, a.window, a.ctx)));
  }
  if (a.text.empty()) {
    return Fail(absl::InvalidArgumentError("eval needs --text FILE"));
  }
  absl::StatusOr<std::vector<int32_t>> ids =
      TokenizeFiles(*m.tokenizer, {a.text}, 1);
  if (!ids.ok()) return Fail(ids.status());
  if (a.max_tokens > 0 && static_cast<int64_t>(ids->size()) > a.max_tokens) {
    ids->resize(static_cast<size_t>(a.max_tokens));
  }
  if (static_cast<int64_t>(ids->size()) < a.ctx + 1) {
    return Fail(absl::InvalidArgumentError(absl::StrFormat(
        "text %s has %d tokens (after --max-tokens); --ctx %d needs at "
        "least %d",
        a.text, ids->size(), a.ctx, a.ctx + 1)));
  }
  eval::WindowOptions wo;
  wo.ctx = a.ctx;
  wo.score_from = a.sinks + a.window + 1;
  wo.max_windows = a.max_windows;
  if (!a.json) {
    std::printf(
        "%s, ctx %lld, sinks %lld + window %lld fp16, %lld windows, rows "
        ">= %lld scored (their past holds coded tokens)%s\n",
        a.text.c_str(), static_cast<long long>(a.ctx),
        static_cast<long long>(a.sinks), static_cast<long long>(a.window),
        static_cast<long long>(
            eval::WindowCount(static_cast<int64_t>(ids->size()), wo)),
        static_cast<long long>(wo.score_from), CodedNote(coded, false).c_str());
    std::string head =
        absl::StrFormat("%-8s %9s %8s %10s %10s %9s %8s %10s %12s %8s", "codec",
                        "bits/elt", "ratio", "ppl", "ppl fp16", "change",
                        "top-1", "KL (nats)", "B/token@ctx", "tokens");
    if (wo.max_windows != 1) {
      // 95% t intervals over windows, printed when there are >= 2.
      absl::StrAppend(&head, absl::StrFormat(" %18s %18s %20s", "change CI95",
                                             "top-1 CI95", "KL CI95"));
    }
    std::printf("%s\n", head.c_str());
  }
  for (const EvalCodec& c : codecs) {
    const auto t0 = std::chrono::steady_clock::now();
    eval::CompressedKvCacheOptions co;
    co.sinks = a.sinks;
    co.window = a.window;
    co.block_tokens = std::min(a.block_tokens, a.window + 1);
    co.keys_pre_rope = c.keys_pre_rope;
    co.coded = coded;
    // Only the VQ codec has codes to attend over; other codecs decode.
    co.attend_codes = a.attend_codes &&
                      dynamic_cast<const VqCodec*>(c.codec.get()) != nullptr;
    absl::StatusOr<eval::CompareResult> r =
        eval::Compare(model, *ids, wo, eval::ExactCacheFactory(model),
                      eval::CompressedCacheFactory(model, c.codec.get(), co));
    if (!r.ok()) return Fail(r.status());
    const double seconds = Seconds(t0);
    const MemoryReport mem = Memory(c, a, fp16, a.ctx);
    const double ppl = r->test.ppl();
    const double ppl_ref = r->reference.ppl();
    const double change = 100.0 * (ppl / ppl_ref - 1.0);
    const WindowIntervals wi = OverWindows(*r);
    if (a.json) {
      std::string intervals;
      if (wi.windows >= 2) {
        intervals = absl::StrFormat(
            ",\"log_ppl_diff\":%.6f,\"log_ppl_diff_ci95\":%s,"
            "\"ppl_change_pct_ci95\":%s,\"top1_ci95\":%s,\"kl_ci95\":%s",
            wi.log_ppl_diff.mean,
            absl::StrFormat("[%.6f,%.6f]", wi.log_ppl_diff.ci95.lo,
                            wi.log_ppl_diff.ci95.hi),
            JsonInterval(ChangePct(wi.log_ppl_diff.ci95)),
            JsonInterval(wi.top1.ci95),
            absl::StrFormat("[%.6f,%.6f]", wi.kl.ci95.lo, wi.kl.ci95.hi));
      }
      std::printf(
          "{\"task\":\"ppl\",\"codec\":%s,\"descriptor\":%s,\"codebooks\":%s,"
          "\"beam_width\":%d,"
          "\"keys\":\"%s\",\"text\":%s,\"ctx\":%lld,\"window\":%lld,"
          "\"sinks\":%lld,\"block_tokens\":%lld,\"windows\":%lld,"
          "\"tokens_scored\":%lld,\"ppl\":%.6f,\"ppl_fp16\":%.6f,"
          "\"ppl_change_pct\":%.4f,\"top1_agreement\":%.6f,\"kl\":%.6f,"
          "\"bits_per_element\":%.6f,\"key_bits_per_element\":%.6f,"
          "\"value_bits_per_element\":%.6f,\"compression_ratio\":%.6f,"
          "\"codebook_bytes\":%lld,\"kv_bytes_per_token_fp16\":%lld,"
          "\"payload_bytes_per_token\":%.4f,"
          "\"kv_bytes_per_token_at_ctx\":%.4f,\"budget_bytes\":%lld,"
          "\"max_tokens_in_budget\":%lld,\"fp16_max_tokens_in_budget\":%lld,"
          "\"seconds\":%.1f%s%s}\n",
          JsonString(c.name).c_str(), JsonString(c.codec->Descriptor()).c_str(),
          JsonString(c.codebooks).c_str(), a.beam_width,
          c.keys_pre_rope ? "pre" : "post", JsonString(a.text).c_str(),
          static_cast<long long>(a.ctx), static_cast<long long>(a.window),
          static_cast<long long>(a.sinks),
          static_cast<long long>(co.block_tokens),
          static_cast<long long>(r->reference.windows),
          static_cast<long long>(r->tokens_scored), ppl, ppl_ref, change,
          r->top1_agreement, r->mean_kl, c.codec->BitsPerElement(),
          c.codec->KeyBitsPerElement(), c.codec->ValueBitsPerElement(),
          c.codec->CompressionRatio(), static_cast<long long>(c.codebook_bytes),
          static_cast<long long>(mem.fp16_bytes_per_token),
          mem.payload_bytes_per_token, mem.bytes_per_token_at_ctx,
          static_cast<long long>(mem.budget_bytes),
          static_cast<long long>(mem.max_tokens),
          static_cast<long long>(mem.fp16_max_tokens), seconds,
          intervals.c_str(), CodedNote(coded, true).c_str());
    } else {
      std::string row = absl::StrFormat(
          "%-8s %9.4f %7.1f%% %10.3f %10.3f %+8.2f%% %8.4f %10.5f %12.1f "
          "%8lld",
          c.name, c.codec->BitsPerElement(), 100 * c.codec->CompressionRatio(),
          ppl, ppl_ref, change, r->top1_agreement, r->mean_kl,
          mem.bytes_per_token_at_ctx, static_cast<long long>(r->tokens_scored));
      if (wi.windows >= 2) {
        const eval::Interval pct = ChangePct(wi.log_ppl_diff.ci95);
        absl::StrAppend(
            &row,
            absl::StrFormat(
                " %18s %18s %20s",
                absl::StrFormat("[%+.2f,%+.2f]%%", pct.lo, pct.hi),
                absl::StrFormat("[%.4f,%.4f]", wi.top1.ci95.lo,
                                wi.top1.ci95.hi),
                absl::StrFormat("[%.5f,%.5f]", wi.kl.ci95.lo, wi.kl.ci95.hi)));
      } else if (wo.max_windows != 1) {
        absl::StrAppend(&row, "  (1 window: no interval)");
      }
      std::printf("%s\n", row.c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}

// "k/n [lo, hi]" with the Wilson 95% interval in percent.
std::string CountWithInterval(int k, int n) {
  const eval::Interval ci = eval::Wilson95(k, n);
  return absl::StrFormat("%d/%d [%.0f,%.0f]%%", k, n, 100 * ci.lo, 100 * ci.hi);
}

absl::StatusOr<RetrievalTask> MakeRetrievalTask(const EvalArgs& a,
                                                const model::Tokenizer& tok) {
  if (a.task == "passkey") return PasskeyTask(tok);
  if (a.task == "mkniah") {
    if (a.keys < 2 || a.keys > kMultiKeyWords) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--keys must be in [2, %d], not %d", kMultiKeyWords, a.keys));
    }
    return MultiKeyTask(tok, a.keys);
  }
  if (a.chains < 1 || a.chains > 4 || a.hops < 1 || a.hops > 4) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--chains and --hops must be in [1, 4], not %d and %d",
                        a.chains, a.hops));
  }
  return VarTrackTask(tok, a.chains, a.hops);
}

// The task's parameters for the table header and the JSON line.
std::string TaskParams(const EvalArgs& a, bool json) {
  if (a.task == "mkniah") {
    return json ? absl::StrFormat(",\"keys\":%d", a.keys)
                : absl::StrFormat(", %d keys", a.keys);
  }
  if (a.task == "vartrack") {
    return json
               ? absl::StrFormat(",\"chains\":%d,\"hops\":%d", a.chains, a.hops)
               : absl::StrFormat(", %d chains x %d hops", a.chains, a.hops);
  }
  return "";
}

int RunRetrievalTask(const EvalArgs& a, const eval::CodedParts& coded,
                     const LoadedModel& m,
                     const std::vector<EvalCodec>& codecs) {
  std::vector<RetrievalCodec> runs = {{"fp16", nullptr, false}};
  std::vector<std::string> run_codebooks = {""};  // per run, for --json
  for (const EvalCodec& c : codecs) {
    // The fp16 codec through the compressed cache is the reference itself.
    if (c.name == "fp16") continue;
    runs.push_back({c.name, c.codec.get(), c.keys_pre_rope});
    run_codebooks.push_back(c.codebooks);
  }
  RetrievalOptions o;
  o.lengths = a.lengths;
  o.trials = a.trials;
  o.seed = a.seed;
  o.sinks = a.sinks;
  o.window = a.window;
  o.block_tokens = std::min(a.block_tokens, a.window + 1);
  o.coded = coded;
  for (int64_t len : o.lengths) {
    if (len <= a.window + a.sinks) {
      return Fail(absl::InvalidArgumentError(absl::StrFormat(
          "%s length %d must exceed --sinks + --window (%d) so the "
          "needle can fall in the coded region",
          a.task, len, a.sinks + a.window)));
    }
  }
  absl::StatusOr<RetrievalTask> task = MakeRetrievalTask(a, *m.tokenizer);
  if (!task.ok()) return Fail(task.status());
  ProgressBar bar(a.task, 1);
  absl::StatusOr<std::vector<RetrievalTrial>> trials =
      RunRetrieval(*m.model, *m.tokenizer, runs, o, *task, RunsProgress(&bar));
  if (!trials.ok()) return Fail(trials.status());
  bar.Finish();
  if (a.verbose) {
    for (const RetrievalTrial& t : *trials) {
      std::string line = absl::StrFormat(
          "len %d (%d tokens) needle at %d (%s) %s:", t.length, t.prompt_tokens,
          t.needle_pos, t.needle_coded ? "coded" : "exact", t.detail);
      for (size_t i = 0; i < runs.size(); ++i) {
        absl::StrAppend(&line, " ", runs[i].name, "=", JsonString(t.answers[i]),
                        t.correct[i] ? " ok" : " X");
      }
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  }
  if (!a.json) {
    std::printf(
        "%s%s: %d trials per length (needle depths spread over the coded "
        "region), seed %llu, sinks %lld + window %lld fp16; correct/trials "
        "[Wilson 95%% interval]; coded: trials whose needles all lie in the "
        "coded region%s\n",
        a.task.c_str(), TaskParams(a, false).c_str(), a.trials,
        static_cast<unsigned long long>(a.seed),
        static_cast<long long>(a.sinks), static_cast<long long>(a.window),
        CodedNote(coded, false).c_str());
    std::printf("%-8s %8s %20s %20s\n", "codec", "length", "accuracy",
                "coded accuracy");
  }
  for (size_t i = 0; i < runs.size(); ++i) {
    for (int64_t len : a.lengths) {
      int n = 0, ok = 0, nc = 0, okc = 0, ok_ref = 0, okc_ref = 0;
      for (const RetrievalTrial& t : *trials) {
        if (t.length != len) continue;
        ++n;
        ok += t.correct[i];
        ok_ref += t.correct[0];
        if (t.needle_coded) {
          ++nc;
          okc += t.correct[i];
          okc_ref += t.correct[0];
        }
      }
      if (a.json) {
        std::printf(
            "{\"task\":%s,\"codec\":%s,\"descriptor\":%s,\"codebooks\":%s,"
            "\"bits_per_element\":%.6f,\"length\":%lld,\"trials\":%d,\"seed\":%"
            "llu,\"window\":%lld,"
            "\"sinks\":%lld%s,\"correct\":%d,\"accuracy\":%.4f,\"ci95\":%s,"
            "\"fp16_accuracy\":%.4f,\"coded_trials\":%d,\"correct_coded\":%d,"
            "\"accuracy_coded\":%.4f,\"ci95_coded\":%s,"
            "\"fp16_accuracy_coded\":%.4f%s}\n",
            JsonString(a.task).c_str(), JsonString(runs[i].name).c_str(),
            JsonString(runs[i].codec ? runs[i].codec->Descriptor() : "fp16")
                .c_str(),
            JsonString(run_codebooks[i]).c_str(),
            runs[i].codec ? runs[i].codec->BitsPerElement() : 16.0,
            static_cast<long long>(len), n,
            static_cast<unsigned long long>(a.seed),
            static_cast<long long>(a.window), static_cast<long long>(a.sinks),
            TaskParams(a, true).c_str(), ok,
            n ? static_cast<double>(ok) / n : 0.0,
            JsonInterval(eval::Wilson95(ok, n)).c_str(),
            n ? static_cast<double>(ok_ref) / n : 0.0, nc, okc,
            nc ? static_cast<double>(okc) / nc : 0.0,
            JsonInterval(eval::Wilson95(okc, nc)).c_str(),
            nc ? static_cast<double>(okc_ref) / nc : 0.0,
            CodedNote(coded, true).c_str());
      } else {
        std::printf("%-8s %8lld %20s %20s\n", runs[i].name.c_str(),
                    static_cast<long long>(len),
                    CountWithInterval(ok, n).c_str(),
                    CountWithInterval(okc, nc).c_str());
      }
    }
  }
  return 0;
}

int RunDiagnoseTask(const EvalArgs& a, const LoadedModel& m,
                    const std::vector<EvalCodec>& codecs) {
  const EvalCodec* coded = nullptr;
  for (const EvalCodec& c : codecs) {
    if (c.name != "fp16") coded = &c;
  }
  if (coded == nullptr || codecs.size() != 1) {
    return Fail(absl::InvalidArgumentError(
        "--task diagnose takes one compressed --codec (vq, kivi2 or kivi4)"));
  }
  DiagnosticOptions o;
  o.length = a.lengths.front();
  o.trials = a.trials;
  o.seed = a.seed;
  o.sinks = a.sinks;
  o.window = a.window;
  o.block_tokens = std::min(a.block_tokens, a.window + 1);
  o.keys_pre_rope = coded->keys_pre_rope;
  o.ablation = a.ablation;
  ProgressBar bar("diagnose", 1);
  absl::StatusOr<DiagnosticReport> r = RunRetrievalDiagnostic(
      *m.model, *m.tokenizer, *coded->codec, o, RunsProgress(&bar));
  if (!r.ok()) return Fail(r.status());
  bar.Finish();
  if (a.json) {
    std::printf("%s\n",
                DiagnosticJson(*r, o, coded->codec->Descriptor()).c_str());
  } else {
    std::printf("%s", FormatDiagnostic(*r, o).c_str());
  }
  return 0;
}

int Run(const EvalArgs& a) {
  absl::StatusOr<eval::CodedParts> coded =
      eval::ParseCodedParts(a.coded, a.coded_layers);
  if (!coded.ok()) return Fail(coded.status());
  if (a.task == "diagnose" &&
      !coded->everything(eval::CodedParts::kAllLayers)) {
    return Fail(absl::InvalidArgumentError(
        "--task diagnose runs its own ablations; drop --coded and "
        "--coded-layers"));
  }
  if (a.task != "ppl" && a.task != "passkey" && a.task != "mkniah" &&
      a.task != "vartrack" && a.task != "diagnose") {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--task must be ppl, passkey, mkniah, vartrack or diagnose, not '",
        a.task, "'")));
  }
  absl::StatusOr<LoadedModel> m = LoadModel(a.model);
  if (!m.ok()) return Fail(m.status());
  const KvLayout layout = m->model->config().kv_layout();
  absl::StatusOr<std::vector<EvalCodec>> codecs = MakeCodecs(a, m->identity);
  if (!codecs.ok()) return Fail(codecs.status());
  absl::StatusOr<EvalCodec> fp16 = MakeEvalCodec("fp16", "", m->identity, 1);
  if (!fp16.ok()) return Fail(fp16.status());
  if (a.memory) return RunMemory(a, layout, *codecs, *fp16->codec);
  if (a.task == "diagnose") return RunDiagnoseTask(a, *m, *codecs);
  if (a.task != "ppl") return RunRetrievalTask(a, *coded, *m, *codecs);
  return RunPerplexity(a, *coded, *m, *codecs, *fp16->codec);
}

}  // namespace

std::function<int()> AddEvalCommand(CLI::App* app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app->add_subcommand(
      "eval", "Measure a compressed KV cache against fp16 on a model");
  cmd->add_option("--model", args->model, "GGUF model file")->required();
  cmd->add_option("--text", args->text, "text for perplexity");
  cmd->add_option("--task", args->task,
                  "ppl, a retrieval task: passkey, mkniah (multi-key "
                  "needle), vartrack (variable tracking), or diagnose (where "
                  "passkey retrieval breaks under a codec)")
      ->capture_default_str();
  cmd->add_flag("--memory", args->memory,
                "print the KV memory account instead of running the model");
  cmd->add_option("--codec", args->codecs,
                  "fp16, vq, kivi2 or kivi4 (comma-separated for several)")
      ->delimiter(',');
  cmd->add_option("--codebooks", args->codebooks, "codebook file for vq");
  cmd->add_option("--key-sketch-bits", args->key_sketch_bits,
                  "vq: bits of the sign sketch of each key's residual (0 = "
                  "none; a multiple of 8)")
      ->capture_default_str();
  cmd->add_option("--key-sketch-from-layer", args->key_sketch_from_layer,
                  "vq: the sketch covers this layer and the later ones only "
                  "(docs/CODEC.md, Key sketch)")
      ->capture_default_str();
  cmd->add_option("--beam-width", args->beam_width, "vq encoder beam width")
      ->capture_default_str();
  cmd->add_option("--ctx", args->ctx, "window of tokens per run")
      ->capture_default_str();
  cmd->add_option("--window", args->window, "recent tokens kept fp16")
      ->capture_default_str();
  cmd->add_option("--sinks", args->sinks, "leading tokens kept fp16")
      ->capture_default_str();
  cmd->add_option("--block-tokens", args->block_tokens,
                  "tokens per codec block")
      ->capture_default_str();
  cmd->add_flag("--attend-codes", args->attend_codes,
                "perplexity with vq: attend over the coded positions' VQ "
                "codes instead of decoded copies (kernels/code_attention.h)");
  cmd->add_option("--max-tokens", args->max_tokens,
                  "use only the first N tokens of the text (0 = all)");
  cmd->add_option("--max-windows", args->max_windows,
                  "at most this many ctx windows (0 = all)");
  cmd->add_flag("--json", args->json, "one JSON object per line on stdout");
  cmd->add_option("--trials", args->trials,
                  "retrieval trials per length (needle depths spread evenly "
                  "over the coded region)")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "retrieval seed (keys and names)")
      ->capture_default_str();
  cmd->add_option("--lengths", args->lengths, "retrieval prompt lengths")
      ->delimiter(',');
  cmd->add_flag("--verbose", args->verbose,
                "retrieval: print every trial on stderr");
  cmd->add_option("--keys", args->keys,
                  "mkniah: needles per prompt (one asked, the rest "
                  "distractors)")
      ->capture_default_str();
  cmd->add_option("--chains", args->chains,
                  "vartrack: assignment chains (the others are distractors)")
      ->capture_default_str();
  cmd->add_option("--hops", args->hops,
                  "vartrack: copies per chain (the model gets hops + 1 "
                  "rounds)")
      ->capture_default_str();
  cmd->add_flag("--ablation,!--no-ablation", args->ablation,
                "diagnose: also run passkey with only keys, only values or a "
                "third of the layers coded (default on)");
  cmd->add_option("--coded", args->coded,
                  "ablation: the parts read through the codec, all, keys or "
                  "values (the rest exact)")
      ->capture_default_str();
  cmd->add_option("--coded-layers", args->coded_layers,
                  "ablation: only layers B-E (inclusive, 0-based) read "
                  "through the codec (default: all)");
  cmd->add_option("--budget-gib", args->budget_gib,
                  "KV budget for the longest-context figure")
      ->capture_default_str();
  cmd->add_option("--memory-ctx", args->memory_ctx,
                  "--memory: context lengths to amortize over")
      ->delimiter(',');
  return [cmd, args]() { return cmd->parsed() ? Run(*args) : -1; };
}

}  // namespace vqkv::tools
