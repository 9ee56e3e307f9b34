#include "tools/passkey.h"

#include <algorithm>
#include <cctype>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "eval/compressed_kv_cache.h"
#include "eval/evaluate.h"

namespace vqkv::tools {
namespace {

// Sentences start with a space so that token boundaries between the
// separately tokenized pieces fall where BPE would put them anyway.
constexpr char kIntro[] =
    "There is an important piece of information hidden inside a lot of "
    "irrelevant text. Find it and memorize it. I will ask you about it.";
constexpr char kFiller[] =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. "
    "There and back again.";
// A 135M model needs the key stated twice to retrieve it reliably.
constexpr char kNeedleFormat[] =
    " The pass key is %s. Remember it. %s is the pass key.";
constexpr char kQuestion[] = " What is the pass key? The pass key is";

}  // namespace

absl::StatusOr<PasskeyPrompt> BuildPasskeyPrompt(
    const model::Tokenizer& tokenizer, int64_t length, double depth,
    const std::string& key) {
  const std::vector<int32_t> intro = tokenizer.Encode(kIntro);
  const std::vector<int32_t> filler = tokenizer.Encode(kFiller);
  const std::vector<int32_t> needle =
      tokenizer.Encode(absl::StrFormat(kNeedleFormat, key, key));
  const std::vector<int32_t> question = tokenizer.Encode(kQuestion);
  const int64_t fixed =
      static_cast<int64_t>(intro.size() + needle.size() + question.size());
  const int64_t units = (length - fixed) / static_cast<int64_t>(filler.size());
  if (units < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("passkey length ", length, " is too short (needs > ",
                     fixed + static_cast<int64_t>(filler.size()), " tokens)"));
  }
  const int64_t before = std::clamp<int64_t>(
      static_cast<int64_t>(depth * static_cast<double>(units) + 0.5), 0, units);
  PasskeyPrompt p;
  p.key = key;
  p.ids = intro;
  for (int64_t i = 0; i < before; ++i) {
    p.ids.insert(p.ids.end(), filler.begin(), filler.end());
  }
  p.needle_pos = static_cast<int64_t>(p.ids.size());
  p.ids.insert(p.ids.end(), needle.begin(), needle.end());
  p.needle_end = static_cast<int64_t>(p.ids.size());
  for (int64_t i = before; i < units; ++i) {
    p.ids.insert(p.ids.end(), filler.begin(), filler.end());
  }
  p.ids.insert(p.ids.end(), question.begin(), question.end());
  return p;
}

std::string ExtractPasskey(const std::string& text) {
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

absl::StatusOr<std::vector<PasskeyTrial>> RunPasskey(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer,
    const std::vector<PasskeyCodec>& codecs, const PasskeyOptions& options,
    const std::function<void(int64_t, int64_t)>& progress) {
  if (options.trials < 1) {
    return absl::InvalidArgumentError("--trials must be >= 1");
  }
  std::mt19937_64 rng(options.seed);
  std::uniform_int_distribution<int> digit(0, 9);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<PasskeyTrial> out;
  const int64_t total = static_cast<int64_t>(options.lengths.size()) *
                        options.trials * static_cast<int64_t>(codecs.size());
  int64_t done = 0;
  for (int64_t length : options.lengths) {
    for (int t = 0; t < options.trials; ++t) {
      std::string key(5, '0');
      key[0] = static_cast<char>('1' + digit(rng) % 9);  // no leading zero
      for (int i = 1; i < 5; ++i) key[i] = static_cast<char>('0' + digit(rng));
      absl::StatusOr<PasskeyPrompt> p =
          BuildPasskeyPrompt(tokenizer, length, unit(rng), key);
      if (!p.ok()) return p.status();
      PasskeyTrial trial;
      trial.length = length;
      trial.prompt_tokens = static_cast<int64_t>(p->ids.size());
      trial.needle_pos = p->needle_pos;
      trial.needle_coded =
          p->needle_end <= trial.prompt_tokens - options.window &&
          p->needle_pos >= options.sinks;
      trial.key = key;
      for (const PasskeyCodec& c : codecs) {
        std::unique_ptr<model::KvCache> cache;
        if (c.codec == nullptr) {
          cache = model.NewExactCache();
        } else {
          eval::CompressedKvCacheOptions co;
          co.sinks = options.sinks;
          co.window = options.window;
          co.block_tokens = options.block_tokens;
          co.keys_pre_rope = c.keys_pre_rope;
          absl::StatusOr<std::unique_ptr<model::KvCache>> cc =
              eval::CompressedCacheFactory(model, c.codec, co)();
          if (!cc.ok()) return cc.status();
          cache = *std::move(cc);
        }
        absl::StatusOr<std::vector<int32_t>> gen =
            eval::GenerateGreedy(model, p->ids, options.max_new_tokens,
                                 tokenizer.eos_id(), cache.get());
        if (!gen.ok()) return gen.status();
        const std::string answer = tokenizer.Decode(*gen);
        trial.answers.push_back(answer);
        trial.correct.push_back(ExtractPasskey(answer) == key);
        if (progress) progress(++done, total);
      }
      out.push_back(std::move(trial));
    }
  }
  return out;
}

}  // namespace vqkv::tools
