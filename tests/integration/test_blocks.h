// Fixtures shared by the service integration tests: the fp16 namespace of a
// small layout, and random fp16 blocks that a server accepts into it.
#ifndef VQKV_TESTS_INTEGRATION_TEST_BLOCKS_H_
#define VQKV_TESTS_INTEGRATION_TEST_BLOCKS_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/block.h"
#include "vqkv/v1/kvcache.pb.h"

namespace vqkv::testing {

// An fp16 namespace (weight revision "r1") for `layout` and `block_tokens`.
inline v1::Namespace Fp16Namespace(const std::string& model,
                                   const KvLayout& layout, int block_tokens) {
  v1::Namespace ns;
  ns.set_model_id(model);
  ns.set_weight_revision("r1");
  ns.set_codec("fp16");
  ns.set_codec_id(static_cast<uint32_t>(CodecId::kFp16));
  ns.set_codebook_hash(0);
  ns.set_block_tokens(static_cast<uint32_t>(block_tokens));
  ns.set_layers(static_cast<uint32_t>(layout.layers));
  ns.set_kv_heads(static_cast<uint32_t>(layout.kv_heads));
  ns.set_head_dim(static_cast<uint32_t>(layout.head_dim));
  ns.set_dtype(v1::DTYPE_FLOAT16);
  return ns;
}

// A full fp16 block of normal random K/V whose content depends on `seed`.
inline std::string RandomFp16Block(const KvLayout& layout, int block_tokens,
                                   uint64_t seed) {
  auto codec = Fp16Codec::Create(layout);
  EXPECT_TRUE(codec.ok()) << codec.status();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  const size_t n =
      static_cast<size_t>(block_tokens) * layout.ElementsPerToken();
  std::vector<float> k(n), v(n);
  for (float& x : k) x = dist(rng);
  for (float& x : v) x = dist(rng);
  auto block =
      EncodeBlock(**codec, k.data(), v.data(), block_tokens, BlockOptions{});
  EXPECT_TRUE(block.ok()) << block.status();
  return std::string(block->begin(), block->end());
}

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_INTEGRATION_TEST_BLOCKS_H_
