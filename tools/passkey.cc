#include "tools/passkey.h"

#include "absl/strings/str_format.h"

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
    const std::string& key, const NeedleRegion& region) {
  HaystackSpec spec;
  spec.intro = kIntro;
  spec.filler = kFiller;
  spec.needles = {absl::StrFormat(kNeedleFormat, key, key)};
  spec.depths = {depth};
  spec.question = kQuestion;
  absl::StatusOr<Haystack> h = BuildHaystack(tokenizer, length, spec, region);
  if (!h.ok()) return h.status();
  PasskeyPrompt p;
  p.ids = std::move(h->ids);
  p.key = key;
  p.needle_pos = h->needle_pos[0];
  p.needle_end = h->needle_end[0];
  return p;
}

std::string ExtractPasskey(const std::string& text) {
  return FirstFiveDigits(text);
}

RetrievalTask PasskeyTask(const model::Tokenizer& tokenizer) {
  RetrievalTask task;
  task.name = "passkey";
  task.build = [&tokenizer](
                   int64_t length, int trial, int trials,
                   const NeedleRegion& region,
                   std::mt19937_64& rng) -> absl::StatusOr<RetrievalPrompt> {
    const std::string key = RandomFiveDigits(rng);
    absl::StatusOr<PasskeyPrompt> p = BuildPasskeyPrompt(
        tokenizer, length, SpreadDepth(trial, trials), key, region);
    if (!p.ok()) return p.status();
    RetrievalPrompt r;
    r.ids = std::move(p->ids);
    r.expected = key;
    r.needle_pos = {p->needle_pos};
    r.needle_end = {p->needle_end};
    r.detail = absl::StrFormat("key %s", key);
    return r;
  };
  task.check = [](const std::string& answer, const RetrievalPrompt& p) {
    return ExtractPasskey(answer) == p.expected;
  };
  return task;
}

absl::StatusOr<std::vector<PasskeyTrial>> RunPasskey(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer,
    const std::vector<PasskeyCodec>& codecs, const PasskeyOptions& options,
    const std::function<void(int64_t, int64_t)>& progress) {
  return RunRetrieval(model, tokenizer, codecs, options, PasskeyTask(tokenizer),
                      progress);
}

}  // namespace vqkv::tools
