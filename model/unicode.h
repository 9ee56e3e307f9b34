// Minimal Unicode support for the tokenizer: UTF-8 decoding and the
// character classes the pre-tokenizer split uses (\p{L}, \p{N}, \s).
//
// Thread safety: all functions are pure and thread-safe.
#ifndef VQKV_MODEL_UNICODE_H_
#define VQKV_MODEL_UNICODE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace vqkv::model {

// Decodes the UTF-8 sequence starting at text[pos]. Returns the code point
// and sets *len to the number of bytes consumed (>= 1). Invalid or truncated
// sequences decode as one byte with code point 0xFFFD, so that every input
// byte is consumed exactly once and byte-level tokenization stays lossless.
// REQUIRES: pos < text.size().
uint32_t DecodeUtf8(std::string_view text, size_t pos, size_t* len);

// Appends the UTF-8 encoding of cp (REQUIRES: cp <= 0x10FFFF) to out.
void AppendUtf8(uint32_t cp, std::string* out);

bool IsLetter(uint32_t cp);      // general category L*
bool IsNumber(uint32_t cp);      // general category N*
bool IsWhitespace(uint32_t cp);  // Unicode White_Space property

namespace internal {
struct CodepointRange {
  uint32_t first;
  uint32_t last;  // inclusive
};
extern const CodepointRange kLetterRanges[];
extern const size_t kLetterRangesSize;
extern const CodepointRange kNumberRanges[];
extern const size_t kNumberRangesSize;
}  // namespace internal

}  // namespace vqkv::model

#endif  // VQKV_MODEL_UNICODE_H_
