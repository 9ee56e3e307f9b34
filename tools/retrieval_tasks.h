// Two RULER-style retrieval tasks (Hsieh et al. 2024, "RULER: What's the
// Real Context Size of Your Long-Context Language Models?") next to passkey,
// sized for a 135M model: both run through RunRetrieval (retrieval.h), so
// each prompt is built once and decoded with fp16 and every codec.
//
// mkniah (multi-key needle): `keys` needles "The special magic number for
// <word> is NNNNN." with distinct words and numbers; the question asks for
// one word's number, so an answer that copies a distractor's number is
// wrong. Trial i puts the asked needle at depth (i + 0.5) / n of the coded
// region and the others evenly around it.
//
// vartrack (variable tracking): `chains` chains of assignments, each a root
// "VAR AAA = NNNNN." followed by `hops` copies "VAR BBB = AAA." in prompt
// order (each stated twice, like the pass key); the question asks for the
// value of the last variable of one chain, so the model has to follow the
// copies to the right number rather than copy any number in sight, and the
// other chains are distractors. SmolLM2-135M answers "What is the value of
// BBB? BBB is" with " AAA." (the hop, correctly) but never composes the hop
// with the lookup in one answer, so the task asks again: while an answer
// names a variable and no number, the runner appends that answer's first
// sentence and "What is the value of AAA? AAA is" and decodes once more, up
// to hops + 1 rounds. Every round reads the whole chain back from the same
// (compressed) cache, and a wrong name sends the model down the wrong
// chain. The statements sit evenly over half of the coded region, a half
// that slides from its start to its end across the trials (SlidingDepths).
// RULER instead asks which variables hold a value; a 135M model cannot list
// names.
//
// Thread safety: the tasks hold a reference to the tokenizer, which must
// outlive them, and are otherwise stateless.
#ifndef VQKV_TOOLS_RETRIEVAL_TASKS_H_
#define VQKV_TOOLS_RETRIEVAL_TASKS_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer.h"
#include "tools/retrieval.h"

namespace vqkv::tools {

struct MultiKeyPrompt {
  std::vector<int32_t> ids;
  std::vector<std::string> words;    // per needle, in prompt order
  std::vector<std::string> numbers;  // per needle
  int asked = 0;                     // index of the asked needle
  std::vector<int64_t> needle_pos;   // per needle
  std::vector<int64_t> needle_end;
};

// A prompt of at most `length` tokens hiding one needle per (words[i],
// numbers[i]) at depths[i] of `region` (nondecreasing), asking for
// words[asked]. Errors: kInvalidArgument for mismatched sizes, `asked` out
// of range, or a length too short.
absl::StatusOr<MultiKeyPrompt> BuildMultiKeyPrompt(
    const model::Tokenizer& tokenizer, int64_t length,
    const std::vector<std::string>& words,
    const std::vector<std::string>& numbers, const std::vector<double>& depths,
    int asked, const NeedleRegion& region);

// Correct iff the first 5-digit run of `answer` is `number`.
bool CheckNumberAnswer(const std::string& answer, const std::string& number);

// The depths of `needles` needles for trial `trial` of `trials`: the asked
// one (index 0 of the result before sorting) at SpreadDepth(trial, trials),
// the rest at the same spacing 1 / needles around the unit circle. Returns
// (depth, needle index) pairs sorted by depth.
std::vector<std::pair<double, int>> SpreadNeedles(int needles, int trial,
                                                  int trials);

// The depths of `statements` statements for trial `trial` of `trials`:
// evenly over half of the region, a half that slides from the start
// (start = 0.5 * SpreadDepth(trial, trials)), so that a whole chain moves
// through the coded region across trials.
std::vector<double> SlidingDepths(int statements, int trial, int trials);

// The mkniah task: `keys` needles (2..kMultiKeyWords), words and numbers
// drawn from the rng.
inline constexpr int kMultiKeyWords = 16;
RetrievalTask MultiKeyTask(const model::Tokenizer& tokenizer, int keys);

struct VarTrackPrompt {
  std::vector<int32_t> ids;
  // chains[c][0] is the root variable, holding values[c]; chains[c][h] =
  // chains[c][h - 1].
  std::vector<std::vector<std::string>> chains;
  std::vector<std::string> values;
  int asked = 0;  // the question asks for chains[asked].back()
  // Statement spans of the asked chain, root first.
  std::vector<int64_t> chain_pos;
  std::vector<int64_t> chain_end;
};

// A prompt of at most `length` tokens. The statements go in `order` (pairs
// (chain, hop), each chain's hops ascending) at `depths` (nondecreasing, one
// per statement). Errors: kInvalidArgument for inconsistent inputs (a hop
// before its chain's predecessor, sizes) or a length too short.
absl::StatusOr<VarTrackPrompt> BuildVarTrackPrompt(
    const model::Tokenizer& tokenizer, int64_t length,
    const std::vector<std::vector<std::string>>& chains,
    const std::vector<std::string>& values,
    const std::vector<std::pair<int, int>>& order,
    const std::vector<double>& depths, int asked, const NeedleRegion& region);

// The follow-up text after a vartrack answer: "" when the answer holds a
// 5-digit number or names no variable (three upper-case letters), else the
// answer's first sentence and the question about the named variable.
std::string VarTrackFollowUp(const std::string& answer);

// The vartrack task: `chains` (1..4) chains of `hops` (1..4) copies each,
// three-letter variable names and values drawn from the rng; chain 0 is
// asked.
RetrievalTask VarTrackTask(const model::Tokenizer& tokenizer, int chains,
                           int hops);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_RETRIEVAL_TASKS_H_
