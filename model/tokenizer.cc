#include "model/tokenizer.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/unicode.h"

namespace vqkv::model {
namespace {

// llama.cpp token types (tokenizer.ggml.token_type).
constexpr int32_t kTypeControl = 3;
constexpr int32_t kTypeUserDefined = 4;

// Pre-tokenizer names whose rule is "each digit alone, then the GPT-2
// split" (llama.cpp groups these under one regex).
constexpr std::string_view kDigitSplitPres[] = {
    "smollm",    "starcoder", "refact",    "command-r",
    "codeshell", "exaone",    "minerva-7b"};
constexpr std::string_view kGpt2Pres[] = {"gpt-2", "default", "gpt2"};

// GPT-2's reversible byte -> printable code point map: printable Latin-1
// bytes map to themselves, the rest to 256, 257, ... in byte order.
void BuildByteMap(uint32_t byte_to_cp[256]) {
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
                           (b >= 0xAE && b <= 0xFF);
    byte_to_cp[b] =
        printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(
    const GgufFile& gguf) {
  absl::StatusOr<std::string> model = gguf.GetString("tokenizer.ggml.model");
  if (!model.ok()) return model.status();
  if (*model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported tokenizer model '", *model, "' (supported: gpt2)"));
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  absl::StatusOr<std::string> pre = gguf.GetString("tokenizer.ggml.pre");
  t->pre_ = pre.ok() ? *pre : "default";
  if (std::find(std::begin(kDigitSplitPres), std::end(kDigitSplitPres),
                t->pre_) != std::end(kDigitSplitPres)) {
    t->split_digits_ = true;
  } else if (std::find(std::begin(kGpt2Pres), std::end(kGpt2Pres), t->pre_) !=
             std::end(kGpt2Pres)) {
    t->split_digits_ = false;
  } else {
    return absl::UnimplementedError(
        absl::StrCat("unsupported pre-tokenizer '", t->pre_,
                     "' (supported: smollm and its llama.cpp peers, gpt-2)"));
  }

  absl::StatusOr<std::vector<std::string>> tokens =
      gguf.GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) return tokens.status();
  if (tokens->empty() ||
      tokens->size() >
          static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError("tokenizer.ggml.tokens is empty");
  }
  t->tokens_ = *std::move(tokens);
  const int32_t vocab = static_cast<int32_t>(t->tokens_.size());
  t->token_types_.assign(t->tokens_.size(), 1);
  if (gguf.Find("tokenizer.ggml.token_type") != nullptr) {
    absl::StatusOr<std::vector<int64_t>> types =
        gguf.GetIntArray("tokenizer.ggml.token_type");
    if (!types.ok()) return types.status();
    if (types->size() != t->tokens_.size()) {
      return absl::InvalidArgumentError(
          "tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in "
          "length");
    }
    for (size_t i = 0; i < types->size(); ++i) {
      t->token_types_[i] = static_cast<int32_t>((*types)[i]);
    }
  }
  t->token_ids_.reserve(t->tokens_.size());
  for (int32_t i = 0; i < vocab; ++i) {
    t->token_ids_.emplace(t->tokens_[i], i);  // first id wins on duplicates
    const int32_t type = t->token_types_[i];
    if ((type == kTypeControl || type == kTypeUserDefined) &&
        !t->tokens_[i].empty()) {
      t->specials_.emplace_back(t->tokens_[i], i);
    }
  }
  // Longest first, so that a special token that prefixes another loses.
  std::stable_sort(t->specials_.begin(), t->specials_.end(),
                   [](const auto& a, const auto& b) {
                     return a.first.size() > b.first.size();
                   });

  absl::StatusOr<std::vector<std::string>> merges =
      gguf.GetStringArray("tokenizer.ggml.merges");
  if (!merges.ok()) return merges.status();
  t->merge_ranks_.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const std::string& m = (*merges)[i];
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos || space + 1 >= m.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed merge rule #", i, ": '", m, "'"));
    }
    t->merge_ranks_.emplace(m, static_cast<int32_t>(i));
  }

  const auto id_key = [&](std::string_view key, int32_t* out) -> absl::Status {
    if (gguf.Find(key) == nullptr) return absl::OkStatus();
    absl::StatusOr<int64_t> id = gguf.GetInt(key);
    if (!id.ok()) return id.status();
    if (*id < 0 || *id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(key), " = ", *id, " is outside the vocabulary"));
    }
    *out = static_cast<int32_t>(*id);
    return absl::OkStatus();
  };
  if (absl::Status s = id_key("tokenizer.ggml.bos_token_id", &t->bos_id_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = id_key("tokenizer.ggml.eos_token_id", &t->eos_id_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = id_key("tokenizer.ggml.unknown_token_id", &t->unk_id_);
      !s.ok()) {
    return s;
  }

  uint32_t byte_to_cp[256];
  BuildByteMap(byte_to_cp);
  for (int b = 0; b < 256; ++b) {
    AppendUtf8(byte_to_cp[b], &t->byte_symbol_[b]);
    t->symbol_byte_.emplace(byte_to_cp[b], static_cast<uint8_t>(b));
  }
  return t;
}

std::vector<std::string_view> Tokenizer::PreTokenize(
    std::string_view text) const {
  std::vector<std::string_view> out;
  // GPT-2 split of one piece:
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  // The lookahead sees only the piece, as in the tokenizers library where the
  // digit split runs first and the byte-level regex runs on each piece.
  const auto split_gpt2 = [&](size_t begin, size_t end) {
    size_t i = begin;
    const auto cp_at = [&](size_t pos, size_t* len) {
      return DecodeUtf8(text.substr(0, end), pos, len);
    };
    enum Class { kLetter, kNumber, kOther, kSpace };
    const auto classify = [](uint32_t cp) {
      if (IsLetter(cp)) return kLetter;
      if (IsNumber(cp)) return kNumber;
      if (IsWhitespace(cp)) return kSpace;
      return kOther;
    };
    while (i < end) {
      size_t len;
      const uint32_t cp = cp_at(i, &len);
      if (cp == '\'' && i + 1 < end) {
        const char c1 = text[i + 1];
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
          out.push_back(text.substr(i, 2));
          i += 2;
          continue;
        }
        if (i + 2 < end) {
          const std::string_view two = text.substr(i + 1, 2);
          if (two == "re" || two == "ve" || two == "ll") {
            out.push_back(text.substr(i, 3));
            i += 3;
            continue;
          }
        }
      }
      size_t run_start = i;  // where the class run begins
      Class cls = classify(cp);
      size_t cls_len = len;
      if (cp == ' ' && i + 1 < end) {
        size_t len2;
        const uint32_t cp2 = cp_at(i + 1, &len2);
        const Class c2 = classify(cp2);
        if (c2 != kSpace) {
          run_start = i + 1;
          cls = c2;
          cls_len = len2;
        }
      }
      if (cls != kSpace) {
        size_t j = run_start + cls_len;
        while (j < end) {
          size_t l;
          if (classify(cp_at(j, &l)) != cls) break;
          j += l;
        }
        out.push_back(text.substr(i, j - i));
        i = j;
        continue;
      }
      // Whitespace run [i, j); remember where its last character starts.
      size_t j = i + len;
      size_t last_start = i;
      while (j < end) {
        size_t l;
        if (!IsWhitespace(cp_at(j, &l))) break;
        last_start = j;
        j += l;
      }
      if (j == end || last_start == i) {
        // \s+(?!\S) takes the whole run at the end of the piece; a single
        // whitespace before a non-space falls to the final \s+.
        out.push_back(text.substr(i, j - i));
        i = j;
      } else {
        // Leave the last whitespace to prefix the next word.
        out.push_back(text.substr(i, last_start - i));
        i = last_start;
      }
    }
  };

  if (!split_digits_) {
    split_gpt2(0, text.size());
    return out;
  }
  size_t piece_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t len;
    const uint32_t cp = DecodeUtf8(text, i, &len);
    if (IsNumber(cp)) {
      if (piece_start < i) split_gpt2(piece_start, i);
      out.push_back(text.substr(i, len));
      piece_start = i + len;
    }
    i += len;
  }
  if (piece_start < text.size()) split_gpt2(piece_start, text.size());
  return out;
}

void Tokenizer::EncodeWord(std::string_view word,
                           std::vector<int32_t>* out) const {
  {
    absl::MutexLock lock(&cache_mu_);
    auto it = word_cache_.find(absl::string_view(word.data(), word.size()));
    if (it != word_cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<std::string> syms;
  syms.reserve(word.size());
  for (char c : word) syms.push_back(byte_symbol_[static_cast<uint8_t>(c)]);
  // GPT-2's BPE: repeatedly merge every occurrence of the lowest-ranked
  // adjacent pair until no adjacent pair has a merge rule.
  std::string key;
  while (syms.size() > 1) {
    int32_t best = std::numeric_limits<int32_t>::max();
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      key.assign(syms[i]).append(" ").append(syms[i + 1]);
      auto it = merge_ranks_.find(key);
      if (it != merge_ranks_.end() && it->second < best) {
        best = it->second;
        best_i = i;
      }
    }
    if (best == std::numeric_limits<int32_t>::max()) break;
    const std::string left = syms[best_i];
    const std::string right = syms[best_i + 1];
    std::vector<std::string> merged;
    merged.reserve(syms.size());
    for (size_t i = 0; i < syms.size();) {
      if (i + 1 < syms.size() && syms[i] == left && syms[i + 1] == right) {
        merged.push_back(left + right);
        i += 2;
      } else {
        merged.push_back(std::move(syms[i]));
        i += 1;
      }
    }
    syms = std::move(merged);
  }
  std::vector<int32_t> ids;
  for (const std::string& s : syms) {
    auto it = token_ids_.find(s);
    if (it != token_ids_.end()) {
      ids.push_back(it->second);
      continue;
    }
    // A merged symbol without a vocabulary entry: fall back to its bytes.
    size_t pos = 0;
    while (pos < s.size()) {
      size_t len;
      const uint32_t cp = DecodeUtf8(s, pos, &len);
      std::string one;
      AppendUtf8(cp, &one);
      auto b = token_ids_.find(one);
      ids.push_back(b != token_ids_.end() ? b->second : unk_id_);
      pos += len;
    }
  }
  out->insert(out->end(), ids.begin(), ids.end());
  absl::MutexLock lock(&cache_mu_);
  word_cache_.emplace(std::string(word), std::move(ids));
}

void Tokenizer::AppendPlain(std::string_view text,
                            std::vector<int32_t>* out) const {
  for (std::string_view piece : PreTokenize(text)) EncodeWord(piece, out);
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text,
                                       bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  if (!parse_special || specials_.empty()) {
    AppendPlain(text, &out);
    return out;
  }
  size_t plain_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    bool matched = false;
    for (const auto& [special, id] : specials_) {
      if (text.compare(i, special.size(), special) == 0) {
        AppendPlain(text.substr(plain_start, i - plain_start), &out);
        out.push_back(id);
        i += special.size();
        plain_start = i;
        matched = true;
        break;
      }
    }
    if (!matched) ++i;
  }
  AppendPlain(text.substr(plain_start), &out);
  return out;
}

std::string Tokenizer::TokenText(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  const int32_t type = token_types_[id];
  const std::string& sym = tokens_[id];
  if (type == kTypeControl || type == kTypeUserDefined) return sym;
  std::string out;
  size_t pos = 0;
  while (pos < sym.size()) {
    size_t len;
    const uint32_t cp = DecodeUtf8(sym, pos, &len);
    auto it = symbol_byte_.find(cp);
    if (it != symbol_byte_.end()) {
      out.push_back(static_cast<char>(it->second));
    } else {
      out.append(sym, pos, len);
    }
    pos += len;
  }
  return out;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) out += TokenText(id);
  return out;
}

}  // namespace vqkv::model
