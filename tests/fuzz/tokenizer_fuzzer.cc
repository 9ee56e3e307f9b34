// Fuzz target: the BPE tokenizer (model/tokenizer.h) on arbitrary text and
// arbitrary token ids.
//
// The vocabulary is TokenizerGguf's (all 256 byte tokens, a few merges,
// three control tokens); VQKV_FUZZ_TOKENIZER_GGUF=path uses a real model's
// instead (scripts/fuzz.sh passes SmolLM2's when it is there). The first
// input byte picks the mode, the rest is the text:
//   bit 0: parse_special; bit 1: the GPT-2 pre-tokenizer instead of
//   SmolLM2's digit split (built-in vocabulary only).
// Properties, from the header's contract: the pre-tokenizer's pieces
// concatenate to the text; every id is in the vocabulary; without
// parse_special, Decode(Encode(text)) == text (every byte has a token);
// Decode of the input read as int32 ids (out-of-range ones are skipped)
// does not crash.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/gguf.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

namespace vqkv::fuzz {
namespace {

struct Vocab {
  std::unique_ptr<model::GgufFile> gguf;
  std::unique_ptr<model::Tokenizer> tokenizer;
  bool all_bytes = true;  // every byte has a token (built-in vocabularies)
};

Vocab Load(const std::string& image, const char* path) {
  Vocab v;
  auto gguf = path != nullptr ? model::GgufFile::Open(path)
                              : model::GgufFile::FromBytes(image);
  FUZZ_CHECK(gguf.ok());
  v.gguf = *std::move(gguf);
  auto tok = model::Tokenizer::FromGguf(*v.gguf);
  FUZZ_CHECK(tok.ok());
  v.tokenizer = *std::move(tok);
  v.all_bytes = path == nullptr;
  return v;
}

const Vocab& GetVocab(bool gpt2) {
  static const char* path = std::getenv("VQKV_FUZZ_TOKENIZER_GGUF");
  static const Vocab* smollm = new Vocab(Load(TokenizerGguf("smollm"), path));
  static const Vocab* gpt2_vocab =
      path != nullptr ? smollm
                      : new Vocab(Load(TokenizerGguf("gpt2"), nullptr));
  return gpt2 ? *gpt2_vocab : *smollm;
}

}  // namespace
}  // namespace vqkv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vqkv::fuzz;
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const bool parse_special = (mode & 1) != 0;
  const Vocab& vocab = GetVocab((mode & 2) != 0);
  const vqkv::model::Tokenizer& t = *vocab.tokenizer;
  const std::string_view text(reinterpret_cast<const char*>(data + 1),
                              size - 1);

  std::string joined;
  for (std::string_view piece : t.PreTokenize(text)) {
    FUZZ_CHECK(!piece.empty());
    joined += piece;
  }
  FUZZ_CHECK(joined == text);

  const std::vector<int32_t> ids = t.Encode(text, parse_special);
  for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < t.vocab_size());
  const std::string decoded = t.Decode(ids);
  if (!parse_special && vocab.all_bytes) FUZZ_CHECK(decoded == text);

  std::vector<int32_t> raw((size - 1) / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data + 1, raw.size() * 4);
  (void)t.Decode(raw);
  for (int32_t id : raw) (void)t.TokenText(id);
  return 0;
}
