// Byte-level BPE tokenizer (GPT-2 family) built from GGUF metadata:
// tokenizer.ggml.tokens, tokenizer.ggml.merges, tokenizer.ggml.token_type and
// the bos/eos ids. The pre-tokenizer split is chosen from
// tokenizer.ggml.pre; supported: "smollm" (and the other names llama.cpp
// maps to the same rule: digits split one at a time, then the GPT-2 split)
// and "gpt-2"/"default" (the GPT-2 split alone).
//
// Encode never fails. Decode(Encode(text)) == text whenever every byte of
// the text has a byte token in the vocabulary (true of all valid UTF-8 text
// except a few C0 control characters for SmolLM2); a byte without one
// becomes the unknown token. Control tokens are only produced when
// parse_special is set.
//
// Thread safety: immutable after construction; Encode/Decode are const and
// thread-safe (the word cache is guarded by a mutex).
#ifndef VQKV_MODEL_TOKENIZER_H_
#define VQKV_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "model/gguf.h"

namespace vqkv::model {

class Tokenizer {
 public:
  // Errors: kNotFound when a required key is missing, kUnimplemented for a
  // tokenizer model other than "gpt2" or an unknown pre-tokenizer,
  // kInvalidArgument for malformed merges or ids out of range.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(
      const GgufFile& gguf);

  // Text -> token ids. With parse_special, occurrences of control tokens'
  // text (e.g. "<|im_start|>") become those tokens; otherwise they are
  // tokenized as plain text.
  std::vector<int32_t> Encode(std::string_view text,
                              bool parse_special = false) const;
  // Token ids -> text. Ids out of range are skipped.
  std::string Decode(absl::Span<const int32_t> ids) const;
  // The text one token stands for (its bytes, for normal tokens).
  std::string TokenText(int32_t id) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  const std::string& pre_tokenizer() const { return pre_; }

  // The pre-tokenizer split alone (exposed for tests): pieces of `text`, in
  // order, whose concatenation is `text`.
  std::vector<std::string_view> PreTokenize(std::string_view text) const;

 private:
  Tokenizer() = default;
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const;
  void AppendPlain(std::string_view text, std::vector<int32_t>* out) const;

  std::vector<std::string> tokens_;  // symbol strings (byte-mapped UTF-8)
  std::vector<int32_t> token_types_;
  absl::flat_hash_map<std::string, int32_t> token_ids_;
  // "left right" -> merge rank (lower merges first).
  absl::flat_hash_map<std::string, int32_t> merge_ranks_;
  std::vector<std::pair<std::string, int32_t>> specials_;  // text, id
  std::string byte_symbol_[256];  // byte -> UTF-8 of its mapped char
  absl::flat_hash_map<uint32_t, uint8_t> symbol_byte_;  // mapped cp -> byte
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t unk_id_ = 0;
  bool split_digits_ = true;
  std::string pre_;

  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> word_cache_
      ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace vqkv::model

#endif  // VQKV_MODEL_TOKENIZER_H_
