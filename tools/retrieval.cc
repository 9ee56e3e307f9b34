#include "tools/retrieval.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "eval/compressed_kv_cache.h"
#include "eval/evaluate.h"

namespace vqkv::tools {
namespace {

int64_t FloorDiv(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

int64_t CeilDiv(int64_t a, int64_t b) { return -FloorDiv(-a, b); }

absl::StatusOr<std::unique_ptr<model::KvCache>> MakeCache(
    const model::LlamaModel& model, const RetrievalCodec& c,
    const RetrievalOptions& options) {
  if (c.codec == nullptr) return model.NewExactCache();
  eval::CompressedKvCacheOptions co;
  co.sinks = options.sinks;
  co.window = options.window;
  co.block_tokens = options.block_tokens;
  co.keys_pre_rope = c.keys_pre_rope;
  co.coded = options.coded;
  return eval::CompressedCacheFactory(model, c.codec, co)();
}

}  // namespace

absl::StatusOr<Haystack> BuildHaystack(const model::Tokenizer& tokenizer,
                                       int64_t length, const HaystackSpec& spec,
                                       const NeedleRegion& region) {
  if (spec.depths.size() != spec.needles.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("haystack has ", spec.needles.size(), " needles but ",
                     spec.depths.size(), " depths"));
  }
  const std::vector<int32_t> intro = tokenizer.Encode(spec.intro);
  const std::vector<int32_t> filler = tokenizer.Encode(spec.filler);
  const std::vector<int32_t> question = tokenizer.Encode(spec.question);
  std::vector<std::vector<int32_t>> needles;
  int64_t fixed = static_cast<int64_t>(intro.size() + question.size());
  for (const std::string& n : spec.needles) {
    needles.push_back(tokenizer.Encode(n));
    fixed += static_cast<int64_t>(needles.back().size());
  }
  const int64_t unit = static_cast<int64_t>(filler.size());
  if (unit < 1) return absl::InvalidArgumentError("empty filler");
  const int64_t units = (length - fixed) / unit;
  if (units < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt length ", length,
                     " is too short (needs >= ", fixed + unit, " tokens)"));
  }
  const int64_t total = fixed + units * unit;
  // Filler units before each needle; needle i then starts at
  // intro + before[i] * unit + (the needles ahead of it).
  std::vector<int64_t> before(needles.size());
  int64_t base = static_cast<int64_t>(intro.size());
  int64_t prev = 0;
  for (size_t i = 0; i < needles.size(); ++i) {
    const int64_t len = static_cast<int64_t>(needles[i].size());
    int64_t lo = region.sinks;
    int64_t hi = total - region.window - len;
    if (hi < lo) {  // no coded room for it: spread over the whole prompt
      lo = 0;
      hi = total - len;
    }
    const double target =
        static_cast<double>(lo) +
        std::clamp(spec.depths[i], 0.0, 1.0) * static_cast<double>(hi - lo);
    int64_t b = static_cast<int64_t>(
        std::llround((target - static_cast<double>(base)) / unit));
    // Keep the needle wholly inside [lo, hi] when a filler boundary allows.
    const int64_t bmin = CeilDiv(lo - base, unit);
    const int64_t bmax = FloorDiv(hi - base, unit);
    if (bmin <= bmax) b = std::clamp(b, bmin, bmax);
    b = std::clamp(b, prev, units);
    before[i] = b;
    prev = b;
    base += len;
  }
  Haystack h;
  h.ids = intro;
  int64_t placed = 0;
  for (size_t i = 0; i < needles.size(); ++i) {
    for (; placed < before[i]; ++placed) {
      h.ids.insert(h.ids.end(), filler.begin(), filler.end());
    }
    h.needle_pos.push_back(static_cast<int64_t>(h.ids.size()));
    h.ids.insert(h.ids.end(), needles[i].begin(), needles[i].end());
    h.needle_end.push_back(static_cast<int64_t>(h.ids.size()));
  }
  for (; placed < units; ++placed) {
    h.ids.insert(h.ids.end(), filler.begin(), filler.end());
  }
  h.ids.insert(h.ids.end(), question.begin(), question.end());
  return h;
}

bool SpansCoded(const std::vector<int64_t>& pos,
                const std::vector<int64_t>& end, int64_t prompt_tokens,
                const NeedleRegion& region) {
  if (pos.size() != end.size()) return false;
  for (size_t i = 0; i < pos.size(); ++i) {
    if (pos[i] < region.sinks || end[i] > prompt_tokens - region.window) {
      return false;
    }
  }
  return true;
}

std::string FirstFiveDigits(const std::string& text) {
  for (size_t i = 0; i + 5 <= text.size(); ++i) {
    size_t j = i;
    while (j < text.size() &&
           std::isdigit(static_cast<unsigned char>(text[j]))) {
      ++j;
    }
    if (j - i == 5) return text.substr(i, 5);
    if (j > i) i = j;
  }
  return "";
}

std::string RandomFiveDigits(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> digit(0, 9);
  std::string key(5, '0');
  key[0] = static_cast<char>('1' + digit(rng) % 9);  // no leading zero
  for (int i = 1; i < 5; ++i) key[i] = static_cast<char>('0' + digit(rng));
  return key;
}

double SpreadDepth(int trial, int trials) {
  return trials > 0 ? (trial + 0.5) / trials : 0.5;
}

absl::StatusOr<std::vector<LengthPrompts>> BuildRetrievalPrompts(
    const RetrievalTask& task, const RetrievalOptions& options) {
  if (options.trials < 1) {
    return absl::InvalidArgumentError("--trials must be >= 1");
  }
  const NeedleRegion region{options.sinks, options.window};
  std::vector<LengthPrompts> out;
  for (int64_t length : options.lengths) {
    std::mt19937_64 rng(options.seed);
    LengthPrompts& lp = out.emplace_back();
    lp.length = length;
    for (int t = 0; t < options.trials; ++t) {
      absl::StatusOr<RetrievalPrompt> p =
          task.build(length, t, options.trials, region, rng);
      if (!p.ok()) return p.status();
      lp.prompts.push_back(*std::move(p));
    }
  }
  return out;
}

absl::StatusOr<std::vector<RetrievalTrial>> RunRetrieval(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer,
    const std::vector<RetrievalCodec>& codecs, const RetrievalOptions& options,
    const RetrievalTask& task,
    const std::function<void(int64_t, int64_t)>& progress) {
  absl::StatusOr<std::vector<LengthPrompts>> all =
      BuildRetrievalPrompts(task, options);
  if (!all.ok()) return all.status();
  const NeedleRegion region{options.sinks, options.window};
  std::vector<RetrievalTrial> out;
  const int64_t total = static_cast<int64_t>(options.lengths.size()) *
                        options.trials * static_cast<int64_t>(codecs.size());
  int64_t done = 0;
  for (const LengthPrompts& lp : *all) {
    for (const RetrievalPrompt& p : lp.prompts) {
      RetrievalTrial trial;
      trial.length = lp.length;
      trial.prompt_tokens = static_cast<int64_t>(p.ids.size());
      trial.needle_pos =
          p.needle_pos.empty()
              ? 0
              : *std::min_element(p.needle_pos.begin(), p.needle_pos.end());
      trial.needle_coded =
          !p.needle_pos.empty() &&
          SpansCoded(p.needle_pos, p.needle_end, trial.prompt_tokens, region);
      trial.key = p.expected;
      trial.detail = p.detail;
      for (const RetrievalCodec& c : codecs) {
        absl::StatusOr<std::unique_ptr<model::KvCache>> first =
            MakeCache(model, c, options);
        if (!first.ok()) return first.status();
        std::unique_ptr<model::KvCache> cache = *std::move(first);
        std::vector<int32_t> ids = p.ids;
        std::string answer, transcript;
        for (int round = 0;; ++round) {
          if (round > 0) {
            // A fresh cache of the same kind: the follow-up prompt is run
            // from the start, so every round reads the haystack back
            // through the codec.
            absl::StatusOr<std::unique_ptr<model::KvCache>> next =
                MakeCache(model, c, options);
            if (!next.ok()) return next.status();
            cache = *std::move(next);
          }
          absl::StatusOr<std::vector<int32_t>> gen =
              eval::GenerateGreedy(model, ids, options.max_new_tokens,
                                   tokenizer.eos_id(), cache.get());
          if (!gen.ok()) return gen.status();
          answer = tokenizer.Decode(*gen);
          absl::StrAppend(&transcript, round > 0 ? " |" : "", answer);
          if (!task.follow_up || round + 1 >= task.max_rounds) break;
          const std::string more = task.follow_up(answer);
          if (more.empty()) break;
          const std::vector<int32_t> extra = tokenizer.Encode(more);
          ids.insert(ids.end(), extra.begin(), extra.end());
        }
        trial.answers.push_back(transcript);
        trial.correct.push_back(task.check(answer, p));
        if (progress) progress(++done, total);
      }
      out.push_back(std::move(trial));
    }
  }
  return out;
}

}  // namespace vqkv::tools
