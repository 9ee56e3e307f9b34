// Shared by the fuzz targets (tests/fuzz/): a failure check that works in
// both builds (libFuzzer and the plain replay binaries), a tiny fitted
// codebook set, and a tiny GGUF with a byte-level BPE vocabulary.
//
// Everything here is deterministic: the same seed gives the same bytes, so
// an input replays the same way in the gcc build as in the clang build.
#ifndef VQKV_TESTS_FUZZ_FUZZ_COMMON_H_
#define VQKV_TESTS_FUZZ_FUZZ_COMMON_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels/codebook_set.h"
#include "kernels/rvq.h"
#include "tests/testing/fitted_codebook_set.h"
#include "tests/unit/model/gguf_writer.h"

// A property the code under test must keep: on failure, prints where and
// aborts, which libFuzzer reports as a crash and the replay test as a
// failure.
#define FUZZ_CHECK(...)                                                \
  do {                                                                 \
    if (!(__VA_ARGS__)) {                                              \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, \
                   __LINE__, #__VA_ARGS__);                            \
      std::abort();                                                    \
    }                                                                  \
  } while (0)

namespace vqkv::fuzz {

// The shape every tiny codec of the fuzz targets uses: 2 layers, 2 KV
// heads, head_dim 8 (small enough that a decode costs microseconds).
inline constexpr KvLayout kTinyLayout{2, 2, 8};

// A complete codebook set for kTinyLayout: keys 3 stages x 4 bits (split in
// two RoPE groups when `split`), values 2 stages x 3 bits, fitted by k-means
// on synthetic vectors seeded by `seed`, for post- or pre-RoPE keys. Aborts
// if fitting fails (a bug).
inline CodebookSet TinyCodebookSet(KeySplit split, bool per_head, uint64_t seed,
                                   bool keys_post_rope = true) {
  CodebookConfig c = testing::TinyCodebookConfig(split, per_head);
  c.keys_post_rope = keys_post_rope;
  FUZZ_CHECK(c.layout == kTinyLayout);
  absl::StatusOr<CodebookSet> set = testing::FitSyntheticCodebookSet(
      c, 64,
      {[seed](int l, int s, int g) { return seed + 10 * l + s + 100 * g; },
       [seed](int l, int s) { return seed + 1000 + 10 * l + s; }});
  FUZZ_CHECK(set.ok() && set->complete());
  return *std::move(set);
}

// GPT-2's printable byte map (model/tokenizer.cc BuildByteMap): the UTF-8
// text of the symbol byte `b` stands for.
inline std::string ByteSymbol(int b) {
  static const std::vector<std::string> symbols = [] {
    std::vector<std::string> out(256);
    int n = 0;
    for (int i = 0; i < 256; ++i) {
      const bool printable =
          (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE);
      const uint32_t cp = printable ? static_cast<uint32_t>(i) : 256u + n++;
      std::string u;
      if (cp < 0x80) {
        u.push_back(static_cast<char>(cp));
      } else {
        u.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        u.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      out[i] = u;
    }
    return out;
  }();
  return symbols[b];
}

// A GGUF image holding only tokenizer metadata: the 256 byte tokens, a few
// merges ("t h", "th e", " t", ...), three control tokens (<|im_start|>,
// <|im_end|>, <|endoftext|>) and pre-tokenizer `pre` ("smollm" or "gpt2").
inline std::string TokenizerGguf(const std::string& pre) {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(ByteSymbol(b));
    types.push_back(1);
  }
  const std::string sp = ByteSymbol(' ');
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"t", "h"},  {"th", "e"}, {sp, "the"},
      {"i", "n"},  {sp, "in"},  {"e", "r"},
      {sp, "t"},   {"o", "n"},  {"a", "n"},
      {"an", "d"}, {sp, "and"}, {ByteSymbol('\n'), ByteSymbol('\n')},
      {"1", "2"},  {"'", "s"}};
  std::vector<std::string> merge_rules;
  for (const auto& [a, b] : merges) {
    merge_rules.push_back(a + " " + b);
    tokens.push_back(a + b);
    types.push_back(1);
  }
  const int32_t first_special = static_cast<int32_t>(tokens.size());
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    tokens.push_back(s);
    types.push_back(3);
  }
  model::testing::GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddString("tokenizer.ggml.model", "gpt2");
  w.AddString("tokenizer.ggml.pre", pre);
  w.AddStringArray("tokenizer.ggml.tokens", tokens);
  w.AddArray<int32_t>("tokenizer.ggml.token_type", 5, types);
  w.AddStringArray("tokenizer.ggml.merges", merge_rules);
  w.AddScalar<uint32_t>("tokenizer.ggml.bos_token_id", 4, first_special + 1);
  w.AddScalar<uint32_t>("tokenizer.ggml.eos_token_id", 4, first_special + 2);
  return w.Build();
}

// A GGUF image of a complete (random-weight) LLaMA model: 1 layer, embd 8,
// embd 32, 4 heads, 2 KV heads, ff 32, a 256-byte-token vocabulary; F32 weights
// except one F16, one Q8_0, one Q4_0 and one Q4_1 tensor, so every
// dequantizer is on the path. Deterministic.
inline std::string TinyLlamaGguf() {
  constexpr uint32_t kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8;
  model::testing::GgufWriter w;
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(ByteSymbol(b));
    types.push_back(1);
  }
  w.AddString("general.architecture", "llama");
  w.AddString("general.name", "fuzz-tiny");
  w.AddScalar<uint32_t>("llama.block_count", 4, 1);
  w.AddScalar<uint32_t>("llama.embedding_length", 4, 32);
  w.AddScalar<uint32_t>("llama.feed_forward_length", 4, 32);
  w.AddScalar<uint32_t>("llama.attention.head_count", 4, 4);
  w.AddScalar<uint32_t>("llama.attention.head_count_kv", 4, 2);
  w.AddScalar<uint32_t>("llama.context_length", 4, 64);
  w.AddScalar<float>("llama.rope.freq_base", 6, 10000.0f);
  w.AddScalar<float>("llama.attention.layer_norm_rms_epsilon", 6, 1e-5f);
  w.AddString("tokenizer.ggml.model", "gpt2");
  w.AddString("tokenizer.ggml.pre", "smollm");
  w.AddStringArray("tokenizer.ggml.tokens", tokens);
  w.AddArray<int32_t>("tokenizer.ggml.token_type", 5, types);
  w.AddStringArray("tokenizer.ggml.merges", {"t h", "i n"});
  uint64_t state = 0x5eed;
  auto f32 = [&](uint64_t n) {
    std::string out(n * 4, '\0');
    for (uint64_t i = 0; i < n; ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      const float x = static_cast<float>((state >> 40) % 2001) / 1000.0f - 1.0f;
      std::memcpy(&out[i * 4], &x, 4);
    }
    return out;
  };
  // Raw bytes for quantized types: scales must be finite fp16 (0x2c00 =
  // 1/16), the rest any bits.
  auto quant = [&](uint64_t blocks, size_t block_bytes, int scales) {
    std::string out =
        f32((blocks * block_bytes + 3) / 4).substr(0, blocks * block_bytes);
    for (uint64_t b = 0; b < blocks; ++b) {
      for (int s = 0; s < scales; ++s) {
        out[b * block_bytes + 2 * s] = 0x00;
        out[b * block_bytes + 2 * s + 1] = 0x2c;
      }
    }
    return out;
  };
  constexpr uint64_t kEmbd = 32, kKv = 16, kFf = 32;
  w.AddTensor("token_embd.weight", {kEmbd, 256}, kF32, f32(kEmbd * 256));
  w.AddTensor("output_norm.weight", {kEmbd}, kF32, f32(kEmbd));
  w.AddTensor("blk.0.attn_norm.weight", {kEmbd}, kF32, f32(kEmbd));
  w.AddTensor("blk.0.attn_q.weight", {kEmbd, kEmbd}, kQ8_0,
              quant(kEmbd * kEmbd / 32, 34, 1));
  w.AddTensor("blk.0.attn_k.weight", {kEmbd, kKv}, kQ4_0,
              quant(kEmbd * kKv / 32, 18, 1));
  w.AddTensor("blk.0.attn_v.weight", {kEmbd, kKv}, kQ4_1,
              quant(kEmbd * kKv / 32, 20, 2));
  std::string f16(kEmbd * kEmbd * 2, '\0');
  for (size_t i = 0; i < f16.size(); i += 2) f16[i + 1] = 0x2c;
  w.AddTensor("blk.0.attn_output.weight", {kEmbd, kEmbd}, kF16, f16);
  w.AddTensor("blk.0.ffn_norm.weight", {kEmbd}, kF32, f32(kEmbd));
  w.AddTensor("blk.0.ffn_gate.weight", {kEmbd, kFf}, kF32, f32(kEmbd * kFf));
  w.AddTensor("blk.0.ffn_up.weight", {kEmbd, kFf}, kF32, f32(kEmbd * kFf));
  w.AddTensor("blk.0.ffn_down.weight", {kFf, kEmbd}, kF32, f32(kEmbd * kFf));
  return w.Build();
}

}  // namespace vqkv::fuzz

#endif  // VQKV_TESTS_FUZZ_FUZZ_COMMON_H_
