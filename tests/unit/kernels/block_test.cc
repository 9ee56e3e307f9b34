#include "kernels/block.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/fp16.h"
#include "tests/testing/raw_float_codec.h"

namespace vqkv {
namespace {

using ::vqkv::testing::RawFloatCodec;

struct Kv {
  std::vector<float> k, v;
};

Kv RandomKv(const KvLayout& layout, int64_t tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  Kv kv;
  kv.k.resize(tokens * layout.ElementsPerToken());
  kv.v.resize(kv.k.size());
  for (float& x : kv.k) x = dist(rng);
  for (float& x : kv.v) x = dist(rng);
  return kv;
}

const KvLayout kLayout{.layers = 3, .kv_heads = 2, .head_dim = 8};

TEST(BlockTest, RoundTripIsBitExactAndHeaderIsFilled) {
  RawFloatCodec codec(kLayout, 0x1234);
  Kv kv = RandomKv(kLayout, 5, 1);
  auto block = EncodeBlock(codec, kv.k.data(), kv.v.data(), 5, {});
  ASSERT_TRUE(block.ok()) << block.status();
  ASSERT_EQ(block->size(), 64 + codec.EncodedBytes(5));
  auto header = VerifyBlock(block->data(), block->size());
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->magic, kBlockMagic);
  EXPECT_EQ(header->tokens, 5u);
  EXPECT_EQ(header->fp16_tokens, 0u);
  EXPECT_EQ(header->layers, 3);
  EXPECT_EQ(header->kv_heads, 2);
  EXPECT_EQ(header->head_dim, 8);
  EXPECT_EQ(header->codebook_hash, 0x1234u);
  EXPECT_EQ(header->flags, 0u);
  // The magic spells "VQKB" in the first four bytes.
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(block->data()), 4),
            "VQKB");
  Kv out{std::vector<float>(kv.k.size()), std::vector<float>(kv.v.size())};
  ASSERT_TRUE(DecodeBlock(codec, block->data(), block->size(), 5, out.k.data(),
                          out.v.data())
                  .ok());
  EXPECT_EQ(out.k, kv.k);
  EXPECT_EQ(out.v, kv.v);
}

// A payload coded elsewhere, sealed, is the block EncodeBlock makes.
TEST(BlockTest, SealBlockOfAnEncodedPayloadIsEncodeBlock) {
  RawFloatCodec codec(kLayout, 0x77);
  Kv kv = RandomKv(kLayout, 6, 4);
  BlockOptions options;
  options.keys_post_rope = true;
  auto want = EncodeBlock(codec, kv.k.data(), kv.v.data(), 6, options);
  ASSERT_TRUE(want.ok()) << want.status();
  std::vector<uint8_t> payload(codec.EncodedBytes(6));
  ASSERT_TRUE(
      codec.Encode(kv.k.data(), kv.v.data(), 6, payload.data(), payload.size())
          .ok());
  auto got = SealBlock(codec, payload, 6, options);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, *want);
  EXPECT_EQ(
      SealBlock(codec, absl::MakeConstSpan(payload).subspan(1), 6, options)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  options.fp16_tokens = 2;
  EXPECT_EQ(SealBlock(codec, payload, 6, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BlockTest, Fp16SectionHoldsLeadingTokens) {
  RawFloatCodec codec(kLayout);
  const int64_t tokens = 7, sinks = 3;
  Kv kv = RandomKv(kLayout, tokens, 2);
  auto block = EncodeBlock(codec, kv.k.data(), kv.v.data(), tokens,
                           {.fp16_tokens = sinks, .keys_post_rope = true});
  ASSERT_TRUE(block.ok()) << block.status();
  auto header = VerifyBlock(block->data(), block->size());
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->flags, kBlockHasFp16Section | kBlockKeysPostRope);
  EXPECT_EQ(header->codes_bytes, codec.EncodedBytes(tokens - sinks));
  Kv out{std::vector<float>(kv.k.size()), std::vector<float>(kv.v.size())};
  ASSERT_TRUE(DecodeBlock(codec, block->data(), block->size(), tokens,
                          out.k.data(), out.v.data())
                  .ok());
  const int64_t row = kLayout.kv_heads * kLayout.head_dim;
  for (int l = 0; l < kLayout.layers; ++l) {
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t e = 0; e < row; ++e) {
        const int64_t i = (l * tokens + t) * row + e;
        if (t < sinks) {  // rounded through binary16
          EXPECT_EQ(out.k[i], HalfToFloatRef(FloatToHalfRef(kv.k[i])));
          EXPECT_EQ(out.v[i], HalfToFloatRef(FloatToHalfRef(kv.v[i])));
        } else {  // through the (lossless) codec
          EXPECT_EQ(out.k[i], kv.k[i]);
          EXPECT_EQ(out.v[i], kv.v[i]);
        }
      }
    }
  }
}

// A verified block decodes a layer range at a time, fp16 sink section
// included, into exactly those layers of DecodeBlock's output.
TEST(BlockTest, VerifiedBlockDecodesLayerRanges) {
  RawFloatCodec codec(kLayout, 0x77);
  const int64_t tokens = 7;
  const int64_t per_layer = tokens * kLayout.kv_heads * kLayout.head_dim;
  for (int64_t sinks : {0, 3, 7}) {
    Kv kv = RandomKv(kLayout, tokens, 9);
    auto block = EncodeBlock(codec, kv.k.data(), kv.v.data(), tokens,
                             {.fp16_tokens = sinks});
    ASSERT_TRUE(block.ok()) << block.status();
    auto header = VerifyBlock(block->data(), block->size());
    ASSERT_TRUE(header.ok());
    Kv all{std::vector<float>(kv.k.size()), std::vector<float>(kv.v.size())};
    ASSERT_TRUE(DecodeBlock(codec, block->data(), block->size(), tokens,
                            all.k.data(), all.v.data())
                    .ok());
    for (int first = 0; first < kLayout.layers; ++first) {
      for (int num = 1; first + num <= kLayout.layers; ++num) {
        std::vector<float> k(per_layer * num), v(k.size());
        ASSERT_TRUE(DecodeVerifiedBlockLayers(codec, *header, block->data(),
                                              block->size(), tokens, first, num,
                                              k.data(), v.data())
                        .ok());
        EXPECT_EQ(k,
                  std::vector<float>(all.k.begin() + first * per_layer,
                                     all.k.begin() + (first + num) * per_layer))
            << sinks << " sinks, layers " << first << "+" << num;
        EXPECT_EQ(
            v, std::vector<float>(all.v.begin() + first * per_layer,
                                  all.v.begin() + (first + num) * per_layer));
      }
    }
    std::vector<float> k(per_layer), v(per_layer);
    EXPECT_EQ(
        DecodeVerifiedBlockLayers(codec, *header, block->data(), block->size(),
                                  tokens, 3, 1, k.data(), v.data())
            .code(),
        absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(DecodeVerifiedBlockLayers(codec, *header, block->data(),
                                        block->size() - 1, tokens, 0, 1,
                                        k.data(), v.data())
                  .code(),
              absl::StatusCode::kInvalidArgument);
    RawFloatCodec other(kLayout, 0x78);
    EXPECT_EQ(
        DecodeVerifiedBlockLayers(other, *header, block->data(), block->size(),
                                  tokens, 0, 1, k.data(), v.data())
            .code(),
        absl::StatusCode::kFailedPrecondition);
  }
}

TEST(BlockTest, AllTokensFp16) {
  RawFloatCodec codec(kLayout);
  Kv kv = RandomKv(kLayout, 2, 3);
  auto block =
      EncodeBlock(codec, kv.k.data(), kv.v.data(), 2, {.fp16_tokens = 2});
  ASSERT_TRUE(block.ok());
  Kv out{std::vector<float>(kv.k.size()), std::vector<float>(kv.v.size())};
  ASSERT_TRUE(DecodeBlock(codec, block->data(), block->size(), 2, out.k.data(),
                          out.v.data())
                  .ok());
  EXPECT_NEAR(out.k[5], kv.k[5], std::fabs(kv.k[5]) * 1e-3);
}

TEST(BlockTest, EveryFlippedByteIsDetected) {
  RawFloatCodec codec(kLayout, 99);
  Kv kv = RandomKv(kLayout, 2, 4);
  auto block =
      EncodeBlock(codec, kv.k.data(), kv.v.data(), 2, {.fp16_tokens = 1});
  ASSERT_TRUE(block.ok());
  for (size_t i = 0; i < block->size(); ++i) {
    std::vector<uint8_t> bad = *block;
    bad[i] ^= 0x10;
    auto h = VerifyBlock(bad.data(), bad.size());
    ASSERT_FALSE(h.ok()) << "flip at byte " << i << " went unnoticed";
    EXPECT_TRUE(h.status().code() == absl::StatusCode::kDataLoss ||
                h.status().code() == absl::StatusCode::kInvalidArgument)
        << h.status();
    if (i >= 64) {
      EXPECT_EQ(h.status().code(), absl::StatusCode::kDataLoss);
    }
  }
}

TEST(BlockTest, TruncatedAndExtendedBlocksAreDataLoss) {
  RawFloatCodec codec(kLayout);
  Kv kv = RandomKv(kLayout, 3, 5);
  auto block = EncodeBlock(codec, kv.k.data(), kv.v.data(), 3, {});
  ASSERT_TRUE(block.ok());
  for (size_t cut :
       {size_t{0}, size_t{10}, size_t{63}, size_t{64}, block->size() - 1}) {
    EXPECT_EQ(VerifyBlock(block->data(), cut).status().code(),
              absl::StatusCode::kDataLoss)
        << cut;
  }
  std::vector<uint8_t> longer = *block;
  longer.push_back(0);
  EXPECT_EQ(VerifyBlock(longer.data(), longer.size()).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(VerifyBlock(nullptr, 0).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(BlockTest, GarbageIsNotABlock) {
  std::vector<uint8_t> junk(200, 0x5A);
  auto h = VerifyBlock(junk.data(), junk.size());
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(h.status().message().find("not a vqkv block"), std::string::npos);
}

// 4 * 2^17 tokens * 32768^3 elements = 2^64 bytes of fp16 section: the
// size wraps to 0 in 64 bits. A header claiming it with an empty payload
// (and a correct checksum) must still be refused.
TEST(BlockTest, Fp16SectionSizeThatWrapsIsMalformed) {
  BlockHeader h{};
  h.magic = kBlockMagic;
  h.format_version = kBlockFormatVersion;
  h.header_bytes = sizeof(BlockHeader);
  h.codec_id = static_cast<uint32_t>(CodecId::kFp16);
  h.flags = kBlockHasFp16Section;
  h.tokens = h.fp16_tokens = 1u << 17;
  h.layers = h.kv_heads = h.head_dim = 32768;
  ASSERT_EQ(Fp16SectionBytes(h.fp16_tokens, h.layers, h.kv_heads, h.head_dim),
            0u);
  h.checksum = BlockChecksum(h, nullptr, 0);
  std::vector<uint8_t> block(sizeof(h));
  std::memcpy(block.data(), &h, sizeof(h));
  auto verified = VerifyBlock(block.data(), block.size());
  EXPECT_EQ(verified.status().code(), absl::StatusCode::kInvalidArgument)
      << verified.status();
}

TEST(BlockTest, WrongCodebookOrCodecIsFailedPrecondition) {
  RawFloatCodec maker(kLayout, 0xAAAA);
  Kv kv = RandomKv(kLayout, 2, 6);
  auto block = EncodeBlock(maker, kv.k.data(), kv.v.data(), 2, {});
  ASSERT_TRUE(block.ok());
  Kv out{std::vector<float>(kv.k.size()), std::vector<float>(kv.v.size())};
  RawFloatCodec other_books(kLayout, 0xBBBB);
  absl::Status s = DecodeBlock(other_books, block->data(), block->size(), 2,
                               out.k.data(), out.v.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("codebook"), std::string::npos) << s;
  RawFloatCodec other_codec(kLayout, 0xAAAA, CodecId::kKivi);
  EXPECT_EQ(DecodeBlock(other_codec, block->data(), block->size(), 2,
                        out.k.data(), out.v.data())
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(BlockTest, WrongLayoutOrTokenCountIsInvalidArgument) {
  RawFloatCodec maker(kLayout);
  Kv kv = RandomKv(kLayout, 2, 7);
  auto block = EncodeBlock(maker, kv.k.data(), kv.v.data(), 2, {});
  ASSERT_TRUE(block.ok());
  std::vector<float> k(1000), v(1000);
  RawFloatCodec other({.layers = 3, .kv_heads = 2, .head_dim = 4});
  EXPECT_EQ(
      DecodeBlock(other, block->data(), block->size(), 2, k.data(), v.data())
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      DecodeBlock(maker, block->data(), block->size(), 3, k.data(), v.data())
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(BlockTest, BadEncodeArguments) {
  RawFloatCodec codec(kLayout);
  Kv kv = RandomKv(kLayout, 2, 8);
  EXPECT_EQ(EncodeBlock(codec, kv.k.data(), kv.v.data(), 0, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeBlock(codec, kv.k.data(), kv.v.data(), 2, {.fp16_tokens = 3})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  RawFloatCodec bad_layout({.layers = 0, .kv_heads = 2, .head_dim = 8});
  EXPECT_EQ(
      EncodeBlock(bad_layout, kv.k.data(), kv.v.data(), 2, {}).status().code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vqkv
