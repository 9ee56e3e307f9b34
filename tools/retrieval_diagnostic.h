// Where retrieval breaks under a codec (`vqkv eval --task diagnose`).
//
// Two measurements on passkey prompts (tools/passkey.h) whose needle lies in
// the coded region:
//  - Reconstruction: the exact K and V of every layer and head, coded the way
//    the compressed cache codes them (blocks of block_tokens from `sinks`
//    on), and the relative error ||x - x'||^2 / ||x||^2 of three token
//    classes: the key's digit tokens, the needle's other tokens, and the
//    filler. Per layer, keys and values apart, with the worst head; and
//    over all layers by position in the prompt.
//  - Attention: the prompt's last query (the one that must retrieve the
//    key) per layer and query head, and the softmax mass it puts on the
//    key's digit tokens with exact keys and with the coded positions' keys
//    decoded. Heads that find the key with exact keys and lose it coded are
//    where retrieval breaks.
//  - Ablation: passkey accuracy when only part of the cache is read decoded
//    (keys only, values only, one third of the layers), everything else
//    exact (eval::CompressedKvCacheOptions' code_* fields).
//
// Thread safety: a pure function of its arguments; the model and codec are
// used through their const methods.
#ifndef VQKV_TOOLS_RETRIEVAL_DIAGNOSTIC_H_
#define VQKV_TOOLS_RETRIEVAL_DIAGNOSTIC_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/codec.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"

namespace vqkv::tools {

struct DiagnosticOptions {
  int64_t length = 1024;  // prompt tokens
  int trials = 8;
  uint64_t seed = 1;
  int64_t sinks = 4;
  int64_t window = 256;
  int64_t block_tokens = 32;
  int64_t max_new_tokens = 8;
  bool keys_pre_rope = false;  // how the codec wants its keys
  bool ablation = true;        // also run the passkey ablations
};

// Token classes of the reconstruction table.
enum TokenClass { kKeyDigits = 0, kNeedleOther = 1, kFiller = 2 };
inline constexpr int kTokenClasses = 3;
const char* TokenClassName(int c);

// Relative squared error, summed over all trials' coded positions.
struct ClassError {
  double err = 0;   // sum ||x - x'||^2
  double norm = 0;  // sum ||x||^2
  int64_t vectors = 0;
  double relative() const { return norm > 0 ? err / norm : 0; }
};

struct LayerErrors {
  // [class], and [head][class] for the worst-head column.
  ClassError keys[kTokenClasses];
  ClassError values[kTokenClasses];
  std::vector<std::vector<ClassError>> head_keys, head_values;
};

// Mean over trials of the last query's attention mass on the key digits,
// and how its logits q.k/sqrt(d) move when the keys are decoded: the mean
// change on the digits minus the mean change on the coded filler (softmax
// ignores a shift shared by all tokens, so this is what moves the mass),
// the spread of the change over the coded filler, and the slope of the
// coded filler logits regressed on the exact ones (1 = no shrinkage).
struct HeadAttention {
  int layer = 0;
  int head = 0;  // query head
  double exact = 0;
  double coded = 0;
  double digit_shift = 0;   // mean over trials
  double filler_noise = 0;  // standard deviation, mean over trials
  double slope = 0;         // mean over trials
};

struct AblationRow {
  std::string what;  // e.g. "keys only", "layers 10-19"
  int correct = 0;
  int trials = 0;
};

// Tokens per row of the error-by-position table: post-RoPE keys at
// positions the calibration windows never reached (past its --ctx) are
// coded worse, which this shows.
inline constexpr int64_t kPositionBucketTokens = 512;

struct DiagnosticReport {
  std::vector<LayerErrors> layers;
  // Every coded vector's error, all layers and classes, by position:
  // [position / kPositionBucketTokens].
  std::vector<ClassError> keys_by_position, values_by_position;
  std::vector<HeadAttention> attention;  // [layer * heads + head]
  std::vector<AblationRow> ablations;    // first row: the whole cache coded
  int coded_trials = 0;
  int fp16_correct = 0;  // the exact cache on the same prompts
};

// Errors: kInvalidArgument when length cannot hold a coded needle
// (length <= sinks + window + needle) or trials < 1; model and codec
// errors. `progress` (may be empty) gets (runs done, runs in all).
absl::StatusOr<DiagnosticReport> RunRetrievalDiagnostic(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer,
    const Codec& codec, const DiagnosticOptions& options,
    const std::function<void(int64_t, int64_t)>& progress);

// The report as text tables (per-layer errors, then ablations).
std::string FormatDiagnostic(const DiagnosticReport& r,
                             const DiagnosticOptions& o);
// One JSON object, no trailing newline.
std::string DiagnosticJson(const DiagnosticReport& r,
                           const DiagnosticOptions& o,
                           const std::string& descriptor);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_RETRIEVAL_DIAGNOSTIC_H_
