#include "tools/retrieval_tasks.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace vqkv::tools {
namespace {

// The same filler as passkey, so the tasks differ only in what is hidden.
constexpr char kFiller[] =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. "
    "There and back again.";

constexpr char kMultiKeyIntro[] =
    "Some special magic numbers are hidden inside a lot of irrelevant text. "
    "Find them and memorize them. I will ask you about one of them.";
// Stated twice, like the pass key: a 135M model retrieves a number it has
// seen once far less reliably.
constexpr char kMultiKeyNeedle[] =
    " The special magic number for %s is %s. Remember it. %s is the magic "
    "number for %s.";
constexpr char kMultiKeyQuestion[] =
    " What is the special magic number for %s? The special magic number for "
    "%s is";
// Single-token-ish common nouns, so that no word is a prefix of another.
constexpr const char* kWords[kMultiKeyWords] = {
    "apple",  "river",  "tiger",  "candle", "mountain", "violin",
    "garden", "rocket", "pencil", "ocean",  "dragon",   "lantern",
    "castle", "forest", "mirror", "thunder"};

constexpr char kVarTrackIntro[] =
    "Memorize and track the chain of variable assignments hidden in the "
    "following text. I will ask you about the value of one variable.";
// Templates: {X} the assigned variable, {V} the value, {Y} the source.
// Stated twice like the pass key; with one statement SmolLM2-135M answers
// "1." instead of retrieving anything.
constexpr char kVarRoot[] = " VAR {X} = {V}. Remember it. {X} is {V}.";
constexpr char kVarCopy[] = " VAR {X} = {Y}. Remember it. {X} is {Y}.";
constexpr char kVarQuestion[] = " What is the value of {X}? {X} is";

// The first word of exactly three upper-case letters in `text` ("" when
// none): the variable an answer names.
std::string FirstVariable(const std::string& text) {
  auto upper = [&text](size_t i) {
    return i < text.size() && std::isupper(static_cast<unsigned char>(text[i]));
  };
  auto alnum = [&text](size_t i) {
    return i < text.size() && std::isalnum(static_cast<unsigned char>(text[i]));
  };
  for (size_t i = 0; i + 3 <= text.size(); ++i) {
    if ((i == 0 || !alnum(i - 1)) && upper(i) && upper(i + 1) && upper(i + 2) &&
        !alnum(i + 3)) {
      return text.substr(i, 3);
    }
  }
  return "";
}

// `n` distinct 5-digit numbers.
std::vector<std::string> DistinctNumbers(int n, std::mt19937_64& rng) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  while (static_cast<int>(out.size()) < n) {
    std::string k = RandomFiveDigits(rng);
    if (seen.insert(k).second) out.push_back(std::move(k));
  }
  return out;
}

// `n` distinct three-letter upper-case names.
std::vector<std::string> DistinctNames(int n, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> letter(0, 25);
  std::vector<std::string> out;
  std::set<std::string> seen;
  while (static_cast<int>(out.size()) < n) {
    std::string s(3, 'A');
    for (char& c : s) c = static_cast<char>('A' + letter(rng));
    if (seen.insert(s).second) out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

bool CheckNumberAnswer(const std::string& answer, const std::string& number) {
  return !number.empty() && FirstFiveDigits(answer) == number;
}

std::vector<std::pair<double, int>> SpreadNeedles(int needles, int trial,
                                                  int trials) {
  std::vector<std::pair<double, int>> out;
  const double first = SpreadDepth(trial, trials);
  for (int i = 0; i < needles; ++i) {
    double d = first + static_cast<double>(i) / needles;
    d -= std::floor(d);
    out.emplace_back(d, i);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<double> SlidingDepths(int statements, int trial, int trials) {
  std::vector<double> out;
  const double start = 0.5 * SpreadDepth(trial, trials);
  for (int k = 0; k < statements; ++k) {
    out.push_back(statements > 1 ? start + 0.5 * k / (statements - 1) : start);
  }
  return out;
}

absl::StatusOr<MultiKeyPrompt> BuildMultiKeyPrompt(
    const model::Tokenizer& tokenizer, int64_t length,
    const std::vector<std::string>& words,
    const std::vector<std::string>& numbers, const std::vector<double>& depths,
    int asked, const NeedleRegion& region) {
  if (words.size() != numbers.size() || words.size() != depths.size() ||
      asked < 0 || asked >= static_cast<int>(words.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "multi-key prompt: ", words.size(), " words, ", numbers.size(),
        " numbers, ", depths.size(), " depths, asked ", asked));
  }
  HaystackSpec spec;
  spec.intro = kMultiKeyIntro;
  spec.filler = kFiller;
  for (size_t i = 0; i < words.size(); ++i) {
    spec.needles.push_back(absl::StrFormat(kMultiKeyNeedle, words[i],
                                           numbers[i], numbers[i], words[i]));
  }
  spec.depths = depths;
  spec.question =
      absl::StrFormat(kMultiKeyQuestion, words[asked], words[asked]);
  absl::StatusOr<Haystack> h = BuildHaystack(tokenizer, length, spec, region);
  if (!h.ok()) return h.status();
  MultiKeyPrompt p;
  p.ids = std::move(h->ids);
  p.words = words;
  p.numbers = numbers;
  p.asked = asked;
  p.needle_pos = std::move(h->needle_pos);
  p.needle_end = std::move(h->needle_end);
  return p;
}

RetrievalTask MultiKeyTask(const model::Tokenizer& tokenizer, int keys) {
  RetrievalTask task;
  task.name = "mkniah";
  task.build = [&tokenizer, keys](
                   int64_t length, int trial, int trials,
                   const NeedleRegion& region,
                   std::mt19937_64& rng) -> absl::StatusOr<RetrievalPrompt> {
    if (keys < 2 || keys > kMultiKeyWords) {
      return absl::InvalidArgumentError(
          absl::StrCat("--keys must be in [2, ", kMultiKeyWords, "]"));
    }
    std::vector<std::string> pool(kWords, kWords + kMultiKeyWords);
    std::shuffle(pool.begin(), pool.end(), rng);
    const std::vector<std::string> numbers = DistinctNumbers(keys, rng);
    // Needle 0 is asked; SpreadNeedles puts it at this trial's depth.
    std::vector<std::string> words, nums;
    std::vector<double> depths;
    int asked = 0;
    for (const auto& [depth, index] : SpreadNeedles(keys, trial, trials)) {
      if (index == 0) asked = static_cast<int>(words.size());
      words.push_back(pool[static_cast<size_t>(index)]);
      nums.push_back(numbers[static_cast<size_t>(index)]);
      depths.push_back(depth);
    }
    absl::StatusOr<MultiKeyPrompt> p = BuildMultiKeyPrompt(
        tokenizer, length, words, nums, depths, asked, region);
    if (!p.ok()) return p.status();
    RetrievalPrompt r;
    r.ids = std::move(p->ids);
    r.expected = nums[static_cast<size_t>(asked)];
    r.needle_pos = {p->needle_pos[static_cast<size_t>(asked)]};
    r.needle_end = {p->needle_end[static_cast<size_t>(asked)]};
    std::vector<std::string> pairs;
    for (size_t i = 0; i < words.size(); ++i) {
      pairs.push_back(absl::StrCat(words[i], "=", nums[i]));
    }
    r.detail = absl::StrCat("asked ", words[static_cast<size_t>(asked)], " of ",
                            absl::StrJoin(pairs, ","));
    return r;
  };
  task.check = [](const std::string& answer, const RetrievalPrompt& p) {
    return CheckNumberAnswer(answer, p.expected);
  };
  return task;
}

absl::StatusOr<VarTrackPrompt> BuildVarTrackPrompt(
    const model::Tokenizer& tokenizer, int64_t length,
    const std::vector<std::vector<std::string>>& chains,
    const std::vector<std::string>& values,
    const std::vector<std::pair<int, int>>& order,
    const std::vector<double>& depths, int asked, const NeedleRegion& region) {
  size_t statements = 0;
  for (const auto& c : chains) statements += c.size();
  if (chains.empty() || chains.size() != values.size() ||
      order.size() != statements || depths.size() != statements || asked < 0 ||
      asked >= static_cast<int>(chains.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "var-track prompt: ", chains.size(), " chains, ", values.size(),
        " values, ", order.size(), " ordered and ", depths.size(),
        " placed statements of ", statements, ", asked ", asked));
  }
  std::vector<int> next(chains.size(), 0);  // next hop expected per chain
  HaystackSpec spec;
  spec.intro = kVarTrackIntro;
  spec.filler = kFiller;
  spec.depths = depths;
  std::vector<size_t> asked_slots;
  for (const auto& [c, hop] : order) {
    if (c < 0 || c >= static_cast<int>(chains.size()) ||
        hop != next[static_cast<size_t>(c)] ||
        hop >= static_cast<int>(chains[static_cast<size_t>(c)].size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "var-track order: statement (", c, ", ", hop, ") out of order"));
    }
    const auto& chain = chains[static_cast<size_t>(c)];
    ++next[static_cast<size_t>(c)];
    if (c == asked) asked_slots.push_back(spec.needles.size());
    spec.needles.push_back(
        hop == 0
            ? absl::StrReplaceAll(
                  kVarRoot,
                  {{"{X}", chain[0]}, {"{V}", values[static_cast<size_t>(c)]}})
            : absl::StrReplaceAll(
                  kVarCopy, {{"{X}", chain[static_cast<size_t>(hop)]},
                             {"{Y}", chain[static_cast<size_t>(hop - 1)]}}));
  }
  const std::string& target = chains[static_cast<size_t>(asked)].back();
  spec.question = absl::StrReplaceAll(kVarQuestion, {{"{X}", target}});
  absl::StatusOr<Haystack> h = BuildHaystack(tokenizer, length, spec, region);
  if (!h.ok()) return h.status();
  VarTrackPrompt p;
  p.ids = std::move(h->ids);
  p.chains = chains;
  p.values = values;
  p.asked = asked;
  for (size_t s : asked_slots) {
    p.chain_pos.push_back(h->needle_pos[s]);
    p.chain_end.push_back(h->needle_end[s]);
  }
  return p;
}

RetrievalTask VarTrackTask(const model::Tokenizer& tokenizer, int chains,
                           int hops) {
  RetrievalTask task;
  task.name = "vartrack";
  task.build = [&tokenizer, chains, hops](
                   int64_t length, int trial, int trials,
                   const NeedleRegion& region,
                   std::mt19937_64& rng) -> absl::StatusOr<RetrievalPrompt> {
    if (chains < 1 || chains > 4 || hops < 1 || hops > 4) {
      return absl::InvalidArgumentError(
          "--chains and --hops must be in [1, 4]");
    }
    const std::vector<std::string> names =
        DistinctNames(chains * (hops + 1), rng);
    const std::vector<std::string> values = DistinctNumbers(chains, rng);
    std::vector<std::vector<std::string>> ch(static_cast<size_t>(chains));
    for (int c = 0; c < chains; ++c) {
      for (int h = 0; h <= hops; ++h) {
        ch[static_cast<size_t>(c)].push_back(
            names[static_cast<size_t>(c * (hops + 1) + h)]);
      }
    }
    // Hop by hop, the chains in a random order at each hop, so the asked
    // chain is neither always first nor always last.
    std::vector<std::pair<int, int>> order;
    std::vector<int> perm(static_cast<size_t>(chains));
    for (int c = 0; c < chains; ++c) perm[static_cast<size_t>(c)] = c;
    for (int h = 0; h <= hops; ++h) {
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int c : perm) order.emplace_back(c, h);
    }
    const std::vector<double> depths =
        SlidingDepths(static_cast<int>(order.size()), trial, trials);
    absl::StatusOr<VarTrackPrompt> p = BuildVarTrackPrompt(
        tokenizer, length, ch, values, order, depths, 0, region);
    if (!p.ok()) return p.status();
    RetrievalPrompt r;
    r.ids = std::move(p->ids);
    r.expected = values[0];
    r.needle_pos = std::move(p->chain_pos);
    r.needle_end = std::move(p->chain_end);
    std::vector<std::string> parts;
    for (int c = 0; c < chains; ++c) {
      parts.push_back(
          absl::StrCat(absl::StrJoin(ch[static_cast<size_t>(c)], "->"), "=",
                       values[static_cast<size_t>(c)]));
    }
    r.detail =
        absl::StrCat("asked ", ch[0].back(), " of ", absl::StrJoin(parts, ","));
    return r;
  };
  task.check = [](const std::string& answer, const RetrievalPrompt& p) {
    return CheckNumberAnswer(answer, p.expected);
  };
  task.max_rounds = hops + 1;
  task.follow_up = [](const std::string& answer) {
    return VarTrackFollowUp(answer);
  };
  return task;
}

std::string VarTrackFollowUp(const std::string& answer) {
  if (!FirstFiveDigits(answer).empty()) return "";
  // Keep the answer's first sentence, which names the variable, and drop
  // the filler the model may ramble on with.
  const size_t dot = answer.find('.');
  const std::string sentence =
      dot == std::string::npos ? answer : answer.substr(0, dot + 1);
  const std::string var = FirstVariable(sentence);
  if (var.empty()) return "";
  return absl::StrCat(sentence,
                      absl::StrReplaceAll(kVarQuestion, {{"{X}", var}}));
}

}  // namespace vqkv::tools
