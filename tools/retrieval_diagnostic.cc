#include "tools/retrieval_diagnostic.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "eval/compressed_kv_cache.h"
#include "eval/evaluate.h"
#include "eval/kv_collector.h"
#include "kernels/fp16.h"
#include "tools/passkey.h"

namespace vqkv::tools {
namespace {

// One ablation: which part of the cache is read decoded.
struct Variant {
  std::string what;
  eval::CodedParts coded;
};

std::vector<Variant> Variants(int layers) {
  std::vector<Variant> v = {{"all coded", {}},
                            {"keys only", {true, false}},
                            {"values only", {false, true}}};
  const int third = (layers + 2) / 3;
  for (int b = 0; b < layers; b += third) {
    const int e = std::min(layers, b + third);
    v.push_back({absl::StrCat("layers ", b, "-", e - 1), {true, true, b, e}});
  }
  return v;
}

bool HasDigit(const std::string& s) {
  return std::any_of(s.begin(), s.end(),
                     [](unsigned char c) { return std::isdigit(c); });
}

void Accumulate(const float* x, const float* y, int dim, ClassError* e) {
  double err = 0, norm = 0;
  for (int d = 0; d < dim; ++d) {
    const double diff = double(x[d]) - double(y[d]);
    err += diff * diff;
    norm += double(x[d]) * double(x[d]);
  }
  e->err += err;
  e->norm += norm;
  ++e->vectors;
}

// Codes positions [sinks, sinks + n*block) of one prompt's K/V (as the
// compressed cache would) and adds their errors to r's layers by class and
// to its by-position rows.
absl::Status AddReconstructionErrors(
    const Codec& codec, const std::vector<float>& keys,
    const std::vector<float>& values, int64_t tokens,
    const std::vector<int>& token_class, const DiagnosticOptions& o,
    DiagnosticReport* r, std::vector<float>* decoded_keys) {
  std::vector<LayerErrors>* layers = &r->layers;
  const size_t buckets = static_cast<size_t>(
      (tokens + kPositionBucketTokens - 1) / kPositionBucketTokens);
  if (r->keys_by_position.size() < buckets) {
    r->keys_by_position.resize(buckets);
    r->values_by_position.resize(buckets);
  }
  const KvLayout& lay = codec.layout();
  const int64_t row = int64_t{lay.kv_heads} * lay.head_dim;
  const int64_t b = o.block_tokens;
  *decoded_keys = keys;  // positions left uncoded read exact
  std::vector<float> bk(static_cast<size_t>(lay.layers * b * row));
  std::vector<float> bv(bk.size()), dk(bk.size()), dv(bk.size());
  std::vector<uint16_t> half(bk.size());
  std::vector<uint8_t> payload(codec.EncodedBytes(b));
  for (int64_t begin = o.sinks; begin + b <= tokens - o.window; begin += b) {
    for (int l = 0; l < lay.layers; ++l) {
      const size_t src = static_cast<size_t>((l * tokens + begin) * row);
      std::copy_n(keys.data() + src, b * row, bk.data() + l * b * row);
      std::copy_n(values.data() + src, b * row, bv.data() + l * b * row);
    }
    // The cache hands the codec fp16-rounded K/V; so does this.
    for (std::vector<float>* v : {&bk, &bv}) {
      FloatToHalf(v->data(), v->size(), half.data());
      HalfToFloat(half.data(), half.size(), v->data());
    }
    if (absl::Status s = codec.Encode(bk.data(), bv.data(), b, payload.data(),
                                      payload.size());
        !s.ok()) {
      return s;
    }
    if (absl::Status s = codec.Decode(payload.data(), payload.size(), b,
                                      dk.data(), dv.data());
        !s.ok()) {
      return s;
    }
    for (int l = 0; l < lay.layers; ++l) {
      std::copy_n(dk.data() + l * b * row, b * row,
                  decoded_keys->data() + (l * tokens + begin) * row);
      LayerErrors& le = (*layers)[l];
      for (int64_t t = 0; t < b; ++t) {
        const int c = token_class[begin + t];
        const size_t bucket =
            static_cast<size_t>((begin + t) / kPositionBucketTokens);
        for (int h = 0; h < lay.kv_heads; ++h) {
          const int64_t off = (l * b + t) * row + int64_t{h} * lay.head_dim;
          for (bool is_value : {false, true}) {
            const float* x = (is_value ? bv : bk).data() + off;
            const float* y = (is_value ? dv : dk).data() + off;
            Accumulate(x, y, lay.head_dim,
                       &(is_value ? le.values : le.keys)[c]);
            Accumulate(x, y, lay.head_dim,
                       &(is_value ? le.head_values : le.head_keys)[h][c]);
            Accumulate(x, y, lay.head_dim,
                       &(is_value ? r->values_by_position
                                  : r->keys_by_position)[bucket]);
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

// A KvCollector that also keeps the queries of the prompt's last position.
class LastQueryCollector : public eval::KvCollector {
 public:
  LastQueryCollector(const KvLayout& layout, int heads,
                     const eval::KvCollectorOptions& options, int64_t last)
      : eval::KvCollector(layout, options),
        heads_(heads),
        last_(last),
        queries_(static_cast<size_t>(layout.layers) * heads * layout.head_dim) {
  }
  void OnQueries(int layer, int64_t pos0, int64_t n,
                 const float* queries) override {
    if (last_ < pos0 || last_ >= pos0 + n) return;
    const int64_t row = int64_t{heads_} * layout().head_dim;
    std::copy_n(queries + (last_ - pos0) * row, row,
                queries_.data() + layer * row);
  }
  // [layer][head][head_dim]
  const std::vector<float>& queries() const { return queries_; }

 private:
  int heads_;
  int64_t last_;
  std::vector<float> queries_;
};

// Softmax mass of query q on the positions marked in `digits`, over keys
// [0, n) of one KV head in a [t][kv_head][head_dim] layer slice.
double DigitMass(const float* q, const float* keys, int64_t n, int kv_heads,
                 int kv_head, int dim, const std::vector<int>& token_class) {
  std::vector<double> logit(static_cast<size_t>(n));
  double mx = -1e300;
  const double scale = 1.0 / std::sqrt(double(dim));
  for (int64_t t = 0; t < n; ++t) {
    const float* k = keys + (t * kv_heads + kv_head) * dim;
    double dot = 0;
    for (int d = 0; d < dim; ++d) dot += double(q[d]) * k[d];
    logit[t] = dot * scale;
    mx = std::max(mx, logit[t]);
  }
  double sum = 0, mass = 0;
  for (int64_t t = 0; t < n; ++t) {
    const double e = std::exp(logit[t] - mx);
    sum += e;
    if (token_class[t] == kKeyDigits) mass += e;
  }
  return mass / sum;
}

// How the logits of query q move from `exact` to `decoded` keys over the
// coded positions [begin, end) of one KV head (see HeadAttention).
struct LogitShift {
  double digit_shift = 0, filler_noise = 0, slope = 0;
};
LogitShift MeasureLogitShift(const float* q, const float* exact,
                             const float* decoded, int64_t begin, int64_t end,
                             int kv_heads, int kv_head, int dim,
                             const std::vector<int>& token_class) {
  const double scale = 1.0 / std::sqrt(double(dim));
  double digit_sum = 0, filler_sum = 0, filler_sq = 0;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int64_t digits = 0, fillers = 0;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t off = (t * kv_heads + kv_head) * dim;
    double x = 0, y = 0;
    for (int d = 0; d < dim; ++d) {
      x += double(q[d]) * exact[off + d];
      y += double(q[d]) * decoded[off + d];
    }
    x *= scale;
    y *= scale;
    if (token_class[t] == kKeyDigits) {
      digit_sum += y - x;
      ++digits;
    } else if (token_class[t] == kFiller) {
      filler_sum += y - x;
      filler_sq += (y - x) * (y - x);
      sx += x;
      sy += y;
      sxx += x * x;
      sxy += x * y;
      ++fillers;
    }
  }
  LogitShift s;
  if (digits == 0 || fillers < 2) return s;
  const double fm = filler_sum / fillers;
  s.digit_shift = digit_sum / digits - fm;
  s.filler_noise = std::sqrt(std::max(0.0, filler_sq / fillers - fm * fm));
  const double vx = sxx / fillers - (sx / fillers) * (sx / fillers);
  const double cxy = sxy / fillers - (sx / fillers) * (sy / fillers);
  s.slope = vx > 0 ? cxy / vx : 0;
  return s;
}

}  // namespace

const char* TokenClassName(int c) {
  switch (c) {
    case kKeyDigits:
      return "key digits";
    case kNeedleOther:
      return "needle other";
    case kFiller:
      return "filler";
  }
  return "?";
}

absl::StatusOr<DiagnosticReport> RunRetrievalDiagnostic(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer,
    const Codec& codec, const DiagnosticOptions& o,
    const std::function<void(int64_t, int64_t)>& progress) {
  if (o.trials < 1) return absl::InvalidArgumentError("--trials must be >= 1");
  const KvLayout lay = model.config().kv_layout();
  DiagnosticReport r;
  r.layers.resize(lay.layers);
  for (LayerErrors& le : r.layers) {
    le.head_keys.assign(lay.kv_heads, std::vector<ClassError>(kTokenClasses));
    le.head_values = le.head_keys;
  }
  const std::vector<Variant> variants =
      o.ablation ? Variants(lay.layers) : std::vector<Variant>{};
  for (const Variant& v : variants) r.ablations.push_back({v.what, 0, 0});

  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int> digit(0, 9);
  const int64_t total =
      int64_t{o.trials} * (1 + static_cast<int64_t>(variants.size()) + 1);
  int64_t done = 0;
  for (int t = 0; t < o.trials; ++t) {
    std::string key(5, '0');
    key[0] = static_cast<char>('1' + digit(rng) % 9);
    for (int i = 1; i < 5; ++i) key[i] = static_cast<char>('0' + digit(rng));
    // Depths spread evenly over the part of the prompt that is coded: the
    // needle starts after the sinks and ends before the fp16 window.
    const double coded_share =
        double(o.length - o.window - o.sinks) / double(o.length);
    const double depth = coded_share * (t + 0.5) / o.trials;
    absl::StatusOr<PasskeyPrompt> p =
        BuildPasskeyPrompt(tokenizer, o.length, depth, key);
    if (!p.ok()) return p.status();
    const int64_t n = static_cast<int64_t>(p->ids.size());
    if (p->needle_pos < o.sinks || p->needle_end > n - o.window) continue;
    ++r.coded_trials;

    std::vector<int> token_class(n, kFiller);
    for (int64_t i = p->needle_pos; i < p->needle_end; ++i) {
      token_class[i] = HasDigit(tokenizer.Decode({&p->ids[i], 1}))
                           ? kKeyDigits
                           : kNeedleOther;
    }
    eval::KvCollectorOptions ko;
    ko.max_tokens = n;
    ko.keys_pre_rope = o.keys_pre_rope;
    const int heads = model.config().heads;
    LastQueryCollector collector(lay, heads, ko, n - 1);
    if (absl::StatusOr<int64_t> ran =
            eval::CollectKv(model, p->ids, n, &collector);
        !ran.ok()) {
      return ran.status();
    }
    std::vector<float> keys, values, decoded_keys;
    collector.Take(&keys, &values);
    if (absl::Status s = AddReconstructionErrors(
            codec, keys, values, n, token_class, o, &r, &decoded_keys);
        !s.ok()) {
      return s;
    }
    // Attention of the last query. Pre-RoPE codecs: rotate both copies so
    // the logits are the ones the model computes.
    const int64_t row = int64_t{lay.kv_heads} * lay.head_dim;
    if (o.keys_pre_rope) {
      for (std::vector<float>* k : {&keys, &decoded_keys}) {
        for (int l = 0; l < lay.layers; ++l) {
          for (int64_t t = 0; t < n; ++t) {
            model.rope().Apply(k->data() + (l * n + t) * row, lay.kv_heads, t);
          }
        }
      }
    }
    if (r.attention.empty()) {
      r.attention.resize(static_cast<size_t>(lay.layers) * heads);
    }
    const int group = heads / lay.kv_heads;
    // AddReconstructionErrors codes whole blocks from the sinks on.
    const int64_t coded_end =
        o.sinks + (n - o.window - o.sinks) / o.block_tokens * o.block_tokens;
    for (int l = 0; l < lay.layers; ++l) {
      for (int j = 0; j < heads; ++j) {
        const float* q = collector.queries().data() +
                         (int64_t{l} * heads + j) * lay.head_dim;
        HeadAttention& ha = r.attention[l * heads + j];
        ha.layer = l;
        ha.head = j;
        ha.exact += DigitMass(q, keys.data() + l * n * row, n, lay.kv_heads,
                              j / group, lay.head_dim, token_class);
        ha.coded +=
            DigitMass(q, decoded_keys.data() + l * n * row, n, lay.kv_heads,
                      j / group, lay.head_dim, token_class);
        const LogitShift ls = MeasureLogitShift(
            q, keys.data() + l * n * row, decoded_keys.data() + l * n * row,
            o.sinks, coded_end, lay.kv_heads, j / group, lay.head_dim,
            token_class);
        ha.digit_shift += ls.digit_shift;
        ha.filler_noise += ls.filler_noise;
        ha.slope += ls.slope;
      }
    }
    if (progress) progress(++done, total);

    auto passes =
        [&](std::unique_ptr<model::KvCache> cache) -> absl::StatusOr<bool> {
      absl::StatusOr<std::vector<int32_t>> gen = eval::GenerateGreedy(
          model, p->ids, o.max_new_tokens, tokenizer.eos_id(), cache.get());
      if (!gen.ok()) return gen.status();
      return ExtractPasskey(tokenizer.Decode(*gen)) == key;
    };
    absl::StatusOr<bool> ref = passes(model.NewExactCache());
    if (!ref.ok()) return ref.status();
    r.fp16_correct += *ref;
    if (progress) progress(++done, total);
    for (size_t i = 0; i < variants.size(); ++i) {
      eval::CompressedKvCacheOptions co;
      co.sinks = o.sinks;
      co.window = o.window;
      co.block_tokens = o.block_tokens;
      co.keys_pre_rope = o.keys_pre_rope;
      co.coded = variants[i].coded;
      absl::StatusOr<std::unique_ptr<model::KvCache>> cache =
          eval::CompressedCacheFactory(model, &codec, co)();
      if (!cache.ok()) return cache.status();
      absl::StatusOr<bool> ok = passes(*std::move(cache));
      if (!ok.ok()) return ok.status();
      r.ablations[i].correct += *ok;
      ++r.ablations[i].trials;
      if (progress) progress(++done, total);
    }
  }
  for (HeadAttention& ha : r.attention) {
    const double trials = std::max(r.coded_trials, 1);
    ha.exact /= trials;
    ha.coded /= trials;
    ha.digit_shift /= trials;
    ha.filler_noise /= trials;
    ha.slope /= trials;
  }
  if (r.coded_trials == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no passkey prompt of length ", o.length,
        " put its needle in the coded region (sinks ", o.sinks, ", window ",
        o.window, "); use a longer --lengths or a smaller --window"));
  }
  return r;
}

namespace {

// Worst head by the key-digit error (the class retrieval needs).
int WorstHead(const std::vector<std::vector<ClassError>>& heads) {
  int worst = 0;
  for (size_t h = 1; h < heads.size(); ++h) {
    if (heads[h][kKeyDigits].relative() > heads[worst][kKeyDigits].relative()) {
      worst = static_cast<int>(h);
    }
  }
  return worst;
}

}  // namespace

std::string FormatDiagnostic(const DiagnosticReport& r,
                             const DiagnosticOptions& o) {
  std::string out = absl::StrFormat(
      "reconstruction: relative squared error ||x - x'||^2 / ||x||^2 over "
      "%d passkey prompts of %d tokens (needles coded; sinks %d, window %d)\n"
      "%5s | %-26s | %-26s | %-20s\n%5s | %8s %8s %8s | %8s %8s %8s | %9s "
      "%10s\n",
      r.coded_trials, o.length, o.sinks, o.window, "layer",
      "keys: digits needle filler", "values: digits needle filler",
      "worst head (digits)", "", "digits", "needle", "filler", "digits",
      "needle", "filler", "keys", "values");
  LayerErrors all;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const LayerErrors& le = r.layers[l];
    const int hk = WorstHead(le.head_keys), hv = WorstHead(le.head_values);
    absl::StrAppendFormat(
        &out,
        "%5d | %8.4f %8.4f %8.4f | %8.4f %8.4f %8.4f | h%d %6.4f h%d %6.4f\n",
        l, le.keys[kKeyDigits].relative(), le.keys[kNeedleOther].relative(),
        le.keys[kFiller].relative(), le.values[kKeyDigits].relative(),
        le.values[kNeedleOther].relative(), le.values[kFiller].relative(), hk,
        le.head_keys[hk][kKeyDigits].relative(), hv,
        le.head_values[hv][kKeyDigits].relative());
    for (int c = 0; c < kTokenClasses; ++c) {
      for (bool v : {false, true}) {
        ClassError& a = (v ? all.values : all.keys)[c];
        const ClassError& e = (v ? le.values : le.keys)[c];
        a.err += e.err;
        a.norm += e.norm;
        a.vectors += e.vectors;
      }
    }
  }
  absl::StrAppendFormat(
      &out, "%5s | %8.4f %8.4f %8.4f | %8.4f %8.4f %8.4f |\n", "all",
      all.keys[kKeyDigits].relative(), all.keys[kNeedleOther].relative(),
      all.keys[kFiller].relative(), all.values[kKeyDigits].relative(),
      all.values[kNeedleOther].relative(), all.values[kFiller].relative());
  absl::StrAppendFormat(
      &out,
      "\nreconstruction by position in the prompt (all layers and token "
      "classes; coded positions only):\n%15s | %8s %8s | %8s\n",
      "positions", "keys", "values", "vectors");
  for (size_t i = 0; i < r.keys_by_position.size(); ++i) {
    const ClassError& k = r.keys_by_position[i];
    if (k.vectors == 0) continue;
    absl::StrAppendFormat(
        &out, "%6d - %6d | %8.4f %8.4f | %8d\n",
        static_cast<int64_t>(i) * kPositionBucketTokens,
        static_cast<int64_t>(i + 1) * kPositionBucketTokens - 1, k.relative(),
        r.values_by_position[i].relative(), k.vectors);
  }
  std::vector<HeadAttention> top = r.attention;
  std::sort(top.begin(), top.end(),
            [](const HeadAttention& a, const HeadAttention& b) {
              return a.exact > b.exact;
            });
  if (top.size() > 12) top.resize(12);
  absl::StrAppendFormat(
      &out,
      "\nattention of the last query on the key's digit tokens (softmax mass, "
      "mean over prompts), the %d heads that attend to them most; the "
      "change of its logits q.k/sqrt(d) when the keys are decoded: on the "
      "digits relative to the filler, its spread over the filler, and the "
      "filler's coded-on-exact slope:\n"
      "%-11s %8s %8s %12s %12s %8s\n",
      static_cast<int>(top.size()), "layer.head", "exact", "coded",
      "digit shift", "filler noise", "slope");
  for (const HeadAttention& h : top) {
    absl::StrAppendFormat(&out, "%5d.%-5d %8.4f %8.4f %12.3f %12.3f %8.3f\n",
                          h.layer, h.head, h.exact, h.coded, h.digit_shift,
                          h.filler_noise, h.slope);
  }
  if (!r.ablations.empty()) {
    absl::StrAppendFormat(
        &out,
        "\nablation: passkey accuracy with only part of the cache read "
        "decoded (the rest exact); fp16 %d/%d\n",
        r.fp16_correct, r.coded_trials);
    for (const AblationRow& a : r.ablations) {
      absl::StrAppendFormat(&out, "%-16s %d/%d\n", a.what, a.correct, a.trials);
    }
  }
  return out;
}

std::string DiagnosticJson(const DiagnosticReport& r,
                           const DiagnosticOptions& o,
                           const std::string& descriptor) {
  std::string layers;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const LayerErrors& le = r.layers[l];
    absl::StrAppendFormat(&layers, "%s{\"layer\":%d", l ? "," : "", l);
    for (int c = 0; c < kTokenClasses; ++c) {
      static constexpr const char* kNames[] = {"digits", "needle", "filler"};
      absl::StrAppendFormat(&layers, ",\"k_%s\":%.6f,\"v_%s\":%.6f", kNames[c],
                            le.keys[c].relative(), kNames[c],
                            le.values[c].relative());
    }
    layers += "}";
  }
  std::string by_position;
  for (size_t i = 0; i < r.keys_by_position.size(); ++i) {
    if (r.keys_by_position[i].vectors == 0) continue;
    absl::StrAppendFormat(&by_position, "%s{\"from\":%d,\"k\":%.6f,\"v\":%.6f}",
                          by_position.empty() ? "" : ",",
                          static_cast<int64_t>(i) * kPositionBucketTokens,
                          r.keys_by_position[i].relative(),
                          r.values_by_position[i].relative());
  }
  std::string ablations;
  for (size_t i = 0; i < r.ablations.size(); ++i) {
    absl::StrAppendFormat(&ablations,
                          "%s{\"what\":\"%s\",\"correct\":%d,"
                          "\"trials\":%d}",
                          i ? "," : "", r.ablations[i].what,
                          r.ablations[i].correct, r.ablations[i].trials);
  }
  std::string attention;
  for (size_t i = 0; i < r.attention.size(); ++i) {
    absl::StrAppendFormat(&attention,
                          "%s{\"layer\":%d,\"head\":%d,\"exact\":%.5f,"
                          "\"coded\":%.5f,\"digit_shift\":%.4f,"
                          "\"filler_noise\":%.4f,\"slope\":%.4f}",
                          i ? "," : "", r.attention[i].layer,
                          r.attention[i].head, r.attention[i].exact,
                          r.attention[i].coded, r.attention[i].digit_shift,
                          r.attention[i].filler_noise, r.attention[i].slope);
  }
  return absl::StrFormat(
      "{\"task\":\"diagnose\",\"descriptor\":\"%s\",\"length\":%d,"
      "\"trials\":%d,\"seed\":%d,\"sinks\":%d,\"window\":%d,"
      "\"fp16_correct\":%d,\"layers\":[%s],\"by_position\":[%s],"
      "\"attention\":[%s],\"ablations\":[%s]}",
      descriptor, o.length, r.coded_trials, o.seed, o.sinks, o.window,
      r.fp16_correct, layers, by_position, attention, ablations);
}

}  // namespace vqkv::tools
