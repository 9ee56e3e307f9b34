#include "model/fingerprint.h"

#include <cstring>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "tests/unit/model/gguf_writer.h"

// Header-only: the expected value is computed independently of the library.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace vqkv::model {
namespace {

using testing::GgufWriter;

constexpr uint32_t kU32 = 4, kF32Type = 6;
constexpr uint32_t kGgmlF32 = 0, kGgmlF16 = 1;

std::string Floats(std::initializer_list<float> v) {
  std::string out;
  for (float f : v) GgufWriter::Put<float>(&out, f);
  return out;
}

// A small llama-like file; the knobs are what the tests vary.
struct Knobs {
  std::string name = "tiny";
  uint32_t layers = 1;
  float rope_base = 10000.0f;
  std::string k_data = Floats({1, 2});
  std::string other_data = Floats({3, 4});
  uint32_t k_type = kGgmlF32;
  std::string vocab_token = "a";
};

std::unique_ptr<GgufFile> Make(const Knobs& k) {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddString("general.name", k.name);
  w.AddScalar<uint32_t>("llama.block_count", kU32, k.layers);
  w.AddScalar<float>("llama.rope.freq_base", kF32Type, k.rope_base);
  w.AddStringArray("tokenizer.ggml.tokens", {k.vocab_token, "b"});
  w.AddTensor("blk.0.attn_k.weight", {k.k_type == kGgmlF32 ? 2u : 4u}, k.k_type,
              k.k_data);
  w.AddTensor("token_embd.weight", {2}, kGgmlF32, k.other_data);
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(w.Build());
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? *std::move(f) : nullptr;
}

uint64_t Fingerprint(const Knobs& k) {
  std::unique_ptr<GgufFile> f = Make(k);
  absl::StatusOr<uint64_t> fp = ModelFingerprint(*f);
  EXPECT_TRUE(fp.ok()) << fp.status();
  return fp.ok() ? *fp : 0;
}

// The byte string of docs/CODEBOOK_FORMAT.md, written out for Make({}).
TEST(FingerprintTest, MatchesTheSpecifiedByteString) {
  std::string s;
  GgufWriter::PutString(&s, "vqkv-model-fingerprint-1");
  GgufWriter::PutString(&s, "llama");
  GgufWriter::PutString(&s, "llama.block_count");  // keys in byte order
  GgufWriter::Put<uint32_t>(&s, kU32);
  GgufWriter::Put<uint32_t>(&s, 1);
  GgufWriter::PutString(&s, "llama.rope.freq_base");
  GgufWriter::Put<uint32_t>(&s, kF32Type);
  GgufWriter::Put<float>(&s, 10000.0f);
  GgufWriter::Put<uint64_t>(&s, 2);  // tensors, in file order
  GgufWriter::PutString(&s, "blk.0.attn_k.weight");
  GgufWriter::Put<uint32_t>(&s, 1);
  GgufWriter::Put<uint64_t>(&s, 2);
  GgufWriter::Put<uint32_t>(&s, kGgmlF32);
  GgufWriter::PutString(&s, "token_embd.weight");
  GgufWriter::Put<uint32_t>(&s, 1);
  GgufWriter::Put<uint64_t>(&s, 2);
  GgufWriter::Put<uint32_t>(&s, kGgmlF32);
  GgufWriter::PutString(&s, "blk.0.attn_k.weight");  // K/V weight bytes
  GgufWriter::PutString(&s, Floats({1, 2}));
  EXPECT_EQ(Fingerprint({}), XXH3_64bits(s.data(), s.size()));
}

TEST(FingerprintTest, WhatCountsAndWhatDoesNot) {
  const uint64_t base = Fingerprint({});
  EXPECT_EQ(Fingerprint({}), base);
  Knobs k;
  k.name = "renamed";
  EXPECT_EQ(Fingerprint(k), base) << "general.* is not the model";
  k = {};
  k.vocab_token = "z";
  EXPECT_EQ(Fingerprint(k), base) << "tokenizer data does not shape K/V";
  k = {};
  k.other_data = Floats({5, 6});
  EXPECT_EQ(Fingerprint(k), base) << "only layer 0's K/V weights are read";
  k = {};
  k.layers = 2;
  EXPECT_NE(Fingerprint(k), base);
  k = {};
  k.rope_base = 500000.0f;
  EXPECT_NE(Fingerprint(k), base);
  k = {};
  k.k_data = Floats({1, 2.5f});
  EXPECT_NE(Fingerprint(k), base) << "a fine-tune of the same shape";
  k = {};
  k.k_type = kGgmlF16;  // 4 halves in the same 8 bytes
  EXPECT_NE(Fingerprint(k), base) << "another quantization";
}

TEST(FingerprintTest, IdentifyModel) {
  std::unique_ptr<GgufFile> f = Make({});
  absl::StatusOr<ModelIdentity> id = IdentifyModel(*f, KvLayout{1, 1, 2});
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->architecture, "llama");
  EXPECT_EQ(id->layout, (KvLayout{1, 1, 2}));
  EXPECT_EQ(id->fingerprint, Fingerprint({}));
  EXPECT_EQ(IdentifyModel(*f, KvLayout{0, 1, 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FingerprintTest, NeedsAnArchitecture) {
  GgufWriter w;
  w.AddScalar<uint32_t>("llama.block_count", kU32, 1);
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(w.Build());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(ModelFingerprint(**f).status().code(),
            absl::StatusCode::kInvalidArgument);
  GgufWriter v;
  v.AddScalar<uint32_t>("general.architecture", kU32, 1);
  f = GgufFile::FromBytes(v.Build());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(ModelFingerprint(**f).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FingerprintTest, RealModel) {
  if (!std::filesystem::exists(VQKV_MODEL_PATH)) {
    GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  }
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(VQKV_MODEL_PATH);
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<ModelIdentity> id = IdentifyModel(**f, KvLayout{30, 3, 64});
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->architecture, "llama");
  absl::StatusOr<uint64_t> again = ModelFingerprint(**f);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, id->fingerprint);
}

}  // namespace
}  // namespace vqkv::model
