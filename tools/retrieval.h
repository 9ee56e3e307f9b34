// Synthetic retrieval on a real model, the machinery shared by the tasks of
// `vqkv eval --task` (passkey.h, retrieval_tasks.h): a haystack builder that
// hides needle sentences in filler text at chosen depths of the coded region,
// and a runner that greedy-decodes the same prompt with an exact fp16 KV
// cache (the reference) and with compressed caches, and checks each answer.
//
// Depths: a needle's depth d in [0, 1] places its first token near
//   lo + d * (hi - lo), lo = sinks, hi = prompt_tokens - window - needle_len,
// i.e. across the positions a CompressedKvCache with those sinks and window
// reads back through the codec for every answer query, so that evenly spread
// depths say something about the codec instead of landing in the fp16
// window. Needles go between filler sentences, so a needle lands within half
// a filler unit of its target, and wholly inside [lo, hi] whenever that
// range holds a filler boundary.
//
// Thread safety: the functions are reentrant; model and tokenizer are only
// read.
#ifndef VQKV_TOOLS_RETRIEVAL_H_
#define VQKV_TOOLS_RETRIEVAL_H_

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "eval/compressed_kv_cache.h"
#include "kernels/codec.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"

namespace vqkv::tools {

// The fp16 regions of the cache the prompt is meant for. {0, 0} spreads
// depths over the whole prompt.
struct NeedleRegion {
  int64_t sinks = 0;
  int64_t window = 0;
};

struct HaystackSpec {
  std::string intro;
  std::string filler;                // one unit, repeated
  std::vector<std::string> needles;  // in prompt order
  std::vector<double> depths;        // one per needle, nondecreasing
  std::string question;
};

struct Haystack {
  std::vector<int32_t> ids;
  std::vector<int64_t> needle_pos;  // first token of needle i
  std::vector<int64_t> needle_end;  // one past its last token
};

// intro, filler units with the needles between them, question: at most
// `length` tokens (as many whole filler units as fit). Needles keep their
// order; a depth below its predecessor's is raised to the predecessor's
// place. Each piece is tokenized on its own, so pieces should start with a
// space. Errors: kInvalidArgument when `length` cannot hold the fixed
// pieces and one filler unit, or the depths and needles differ in count.
absl::StatusOr<Haystack> BuildHaystack(const model::Tokenizer& tokenizer,
                                       int64_t length, const HaystackSpec& spec,
                                       const NeedleRegion& region);

// Whether every span [pos[i], end[i]) lies in the coded region of a prompt
// of `prompt_tokens` tokens: pos >= sinks and end <= prompt_tokens - window
// (then every answer query reads it through the codec).
bool SpansCoded(const std::vector<int64_t>& pos,
                const std::vector<int64_t>& end, int64_t prompt_tokens,
                const NeedleRegion& region);

// The first run of exactly 5 digits in `text` ("" when none).
std::string FirstFiveDigits(const std::string& text);

// One prompt of a task with the answer it expects.
struct RetrievalPrompt {
  std::vector<int32_t> ids;
  std::string expected;  // the 5 digits a correct answer starts with
  // The needles the answer depends on (the asked one, or a whole chain);
  // the trial counts as coded when all of them are.
  std::vector<int64_t> needle_pos;
  std::vector<int64_t> needle_end;
  std::string detail;  // what was asked, for --verbose
};

// A retrieval task: builds trial `trial` of `trials` at `length` tokens,
// drawing its keys from `rng` (depths follow from trial / trials), and
// judges a decoded answer.
struct RetrievalTask {
  std::string name;
  std::function<absl::StatusOr<RetrievalPrompt>(
      int64_t length, int trial, int trials, const NeedleRegion& region,
      std::mt19937_64& rng)>
      build;
  // Judges the last round's answer.
  std::function<bool(const std::string& answer, const RetrievalPrompt& prompt)>
      check;
  // Multi-round tasks: after a round's answer, the text to append (after the
  // prompt and the rounds so far) for another greedy decode in a fresh
  // cache, or "" to stop. Empty function or max_rounds 1: one round.
  std::function<std::string(const std::string& answer)> follow_up;
  int max_rounds = 1;
};

// A random 5-digit number without a leading zero.
std::string RandomFiveDigits(std::mt19937_64& rng);

// The depth of trial `trial` of `trials`: (trial + 0.5) / trials, so that n
// trials cover the coded region evenly.
double SpreadDepth(int trial, int trials);

struct RetrievalCodec {
  std::string name;
  const Codec* codec = nullptr;  // null = the exact fp16 reference cache
  bool keys_pre_rope = false;
};

struct RetrievalOptions {
  std::vector<int64_t> lengths = {1024, 2048};
  int trials = 10;
  uint64_t seed = 1;
  int64_t sinks = 4;
  int64_t window = 256;
  int64_t block_tokens = 32;
  int64_t max_new_tokens = 8;
  eval::CodedParts coded;  // ablation: the rest is read exact
};

struct RetrievalTrial {
  int64_t length = 0;
  int64_t prompt_tokens = 0;
  int64_t needle_pos = 0;  // first token of the first needle that matters
  // Every needle the answer depends on lies wholly in the coded region
  // (SpansCoded with options.sinks and options.window).
  bool needle_coded = false;
  std::string key;     // the expected answer
  std::string detail;  // RetrievalPrompt::detail
  // Per codec, in order; the rounds of a multi-round task joined by " | ".
  std::vector<std::string> answers;
  std::vector<bool> correct;  // per codec
};

// The prompts RunRetrieval runs: options.trials of `task` per length, in
// the order of options.lengths. Each length draws its keys and names from
// a generator seeded with options.seed afresh, so a length's prompts are
// the same whichever other lengths are asked for (`--lengths 4096` alone
// repeats the 4096-token prompts of `--lengths 2048,4096`), and trial t
// holds the same keys at every length. Errors: kInvalidArgument for
// trials < 1; the task's prompt errors.
struct LengthPrompts {
  int64_t length = 0;
  std::vector<RetrievalPrompt> prompts;  // [trial]
};
absl::StatusOr<std::vector<LengthPrompts>> BuildRetrievalPrompts(
    const RetrievalTask& task, const RetrievalOptions& options);

// Runs the prompts of BuildRetrievalPrompts through every codec;
// each prompt is built once and reused for every codec. `progress` (may be
// empty) is called after each (trial, codec) run with the runs done and the
// total. Errors: kInvalidArgument for trials < 1; prompt, cache and model
// errors.
absl::StatusOr<std::vector<RetrievalTrial>> RunRetrieval(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer,
    const std::vector<RetrievalCodec>& codecs, const RetrievalOptions& options,
    const RetrievalTask& task,
    const std::function<void(int64_t, int64_t)>& progress);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_RETRIEVAL_H_
