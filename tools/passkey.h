// Needle retrieval ("passkey"): a random 5-digit pass key is hidden at a
// random depth in repeated filler text and asked for at the end; the model
// greedy-decodes the answer. Run with an exact fp16 KV cache (the reference)
// and with compressed caches, on the same prompts.
#ifndef VQKV_TOOLS_PASSKEY_H_
#define VQKV_TOOLS_PASSKEY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/codec.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"

namespace vqkv::tools {

struct PasskeyPrompt {
  std::vector<int32_t> ids;
  std::string key;         // the 5 digits
  int64_t needle_pos = 0;  // first token of the needle sentence
  int64_t needle_end = 0;  // one past its last token
};

// A prompt of about `length` tokens (never more) with the needle starting
// at fraction `depth` (0..1) of the filler. Errors: kInvalidArgument when
// `length` cannot hold the intro, needle and question.
absl::StatusOr<PasskeyPrompt> BuildPasskeyPrompt(
    const model::Tokenizer& tokenizer, int64_t length, double depth,
    const std::string& key);

// The first run of 5 digits in `text` ("" when none).
std::string ExtractPasskey(const std::string& text);

struct PasskeyCodec {
  std::string name;
  const Codec* codec = nullptr;  // null = the exact fp16 reference cache
  bool keys_pre_rope = false;
};

struct PasskeyOptions {
  std::vector<int64_t> lengths = {1024, 2048};
  int trials = 10;
  uint64_t seed = 1;
  int64_t sinks = 4;
  int64_t window = 256;
  int64_t block_tokens = 32;
  int64_t max_new_tokens = 8;
};

struct PasskeyTrial {
  int64_t length = 0;
  int64_t prompt_tokens = 0;
  int64_t needle_pos = 0;
  // The needle lies wholly in the coded region for every query of the
  // answer (needle_end <= prompt_tokens - window).
  bool needle_coded = false;
  std::string key;
  std::vector<std::string> answers;  // per codec, in order
  std::vector<bool> correct;         // per codec
};

// Runs options.trials prompts per length through every codec. `progress`
// (may be empty) is called after each (trial, codec) run with the runs done
// and the total.
absl::StatusOr<std::vector<PasskeyTrial>> RunPasskey(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer,
    const std::vector<PasskeyCodec>& codecs, const PasskeyOptions& options,
    const std::function<void(int64_t, int64_t)>& progress);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_PASSKEY_H_
