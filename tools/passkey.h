// Needle retrieval ("passkey"): a random 5-digit pass key is hidden in
// repeated filler text and asked for at the end; the model greedy-decodes
// the answer. Run with an exact fp16 KV cache (the reference) and with
// compressed caches, on the same prompts (retrieval.h). Trial i of n puts
// the needle at depth (i + 0.5) / n of the coded region.
#ifndef VQKV_TOOLS_PASSKEY_H_
#define VQKV_TOOLS_PASSKEY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"
#include "tools/retrieval.h"

namespace vqkv::tools {

struct PasskeyPrompt {
  std::vector<int32_t> ids;
  std::string key;         // the 5 digits
  int64_t needle_pos = 0;  // first token of the needle sentence
  int64_t needle_end = 0;  // one past its last token
};

// A prompt of about `length` tokens (never more) with the needle at depth
// `depth` (0..1) of `region`'s coded positions (retrieval.h; the default
// region spreads over the whole prompt). Errors: kInvalidArgument when
// `length` cannot hold the intro, needle and question.
absl::StatusOr<PasskeyPrompt> BuildPasskeyPrompt(
    const model::Tokenizer& tokenizer, int64_t length, double depth,
    const std::string& key, const NeedleRegion& region = {});

// The first run of 5 digits in `text` ("" when none).
std::string ExtractPasskey(const std::string& text);

// The passkey task for RunRetrieval: correct iff the answer's first 5-digit
// run is the key.
RetrievalTask PasskeyTask(const model::Tokenizer& tokenizer);

using PasskeyCodec = RetrievalCodec;
using PasskeyOptions = RetrievalOptions;
using PasskeyTrial = RetrievalTrial;

// RunRetrieval over PasskeyTask.
absl::StatusOr<std::vector<PasskeyTrial>> RunPasskey(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer,
    const std::vector<PasskeyCodec>& codecs, const PasskeyOptions& options,
    const std::function<void(int64_t, int64_t)>& progress);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_PASSKEY_H_
