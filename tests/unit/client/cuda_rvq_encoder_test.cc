// Encoding saves on a GPU (client/cuda/cuda_rvq_encoder.h, reached through
// CacheClientOptions::encode_cuda_device): blocks that decode as well as the
// CPU's (picks within bf16 rounding of the CPU's, mostly the same), from a
// VqCodec and through a whole client; clear refusals without a GPU.
// Built with CUDA only; the GPU cases skip with the reason where there is
// none (tests/gpu/run.sh runs them from tests/gpu/bundle.sh's bundle).
#include "client/cuda/cuda_rvq_encoder.h"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "client/client_factory.h"
#include "client/gpu_encoder.h"
#include "gtest/gtest.h"
#include "kernels/codec_factory.h"
#include "kernels/cuda/cuda_device.h"
#include "kernels/vq_codec.h"
#include "tests/testing/fitted_codebook_set.h"
#include "tests/testing/normal_floats.h"
#include "tests/unit/client/skip_without_gpu.h"

namespace vqkv::client {
namespace {

// head_dim 64 with the paper's key codebooks (K = 1024) over fewer stages,
// so the CPU reference stays quick; optionally split keys (two 32-dim
// groups: two tensor-core classes in one call) and per-head codebooks.
CodebookSet PaperLikeSet(KeySplit split, bool per_head) {
  CodebookConfig c;
  c.layout = KvLayout{2, 2, 64};
  c.key_split = split;
  c.key_group_stages =
      split == KeySplit::kNone ? std::vector<int>{8} : std::vector<int>{4, 4};
  c.key_bits = 10;
  c.value_stages = 4;
  c.value_bits = 9;
  c.per_head = per_head;
  absl::StatusOr<CodebookSet> set = testing::FitSyntheticCodebookSet(
      c, 2048,
      {[](int l, int s, int g) { return uint64_t(7 + 100 * l + 10 * s + g); },
       [](int l, int s) { return uint64_t(900 + 100 * l + 10 * s); }});
  EXPECT_TRUE(set.ok()) << set.status();
  return *std::move(set);
}

std::vector<uint8_t> Encode(const VqCodec& codec, const std::vector<float>& k,
                            const std::vector<float>& v, int64_t tokens) {
  std::vector<uint8_t> out(codec.EncodedBytes(tokens));
  const absl::Status s =
      codec.Encode(k.data(), v.data(), tokens, out.data(), out.size());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

// Mean squared error of what `payload` decodes to against k and v.
double DecodedError(const VqCodec& codec, const std::vector<uint8_t>& payload,
                    const std::vector<float>& k, const std::vector<float>& v,
                    int64_t tokens) {
  std::vector<float> dk(k.size()), dv(v.size());
  const absl::Status s = codec.Decode(payload.data(), payload.size(), tokens,
                                      dk.data(), dv.data());
  EXPECT_TRUE(s.ok()) << s;
  double e = 0;
  for (size_t i = 0; i < k.size(); ++i) {
    e += (dk[i] - k[i]) * (dk[i] - k[i]) + (dv[i] - v[i]) * (dv[i] - v[i]);
  }
  return e / (2.0 * k.size());
}

// Blocks as good as the CPU's: decoding error within 2% of theirs (a pick
// the bf16 products change is a near-equal codeword), and most bytes the
// same.
TEST(CudaRvqEncoderTest, BlocksDecodeAsWellAsTheCpus) {
  SKIP_WITHOUT_GPU();
  for (const KeySplit split : {KeySplit::kNone, KeySplit::kRopeAdjacentPairs}) {
    for (const bool per_head : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "split " << int(split) << " per_head " << per_head);
      const CodebookSet set = PaperLikeSet(split, per_head);
      absl::StatusOr<std::unique_ptr<VqCodec>> cpu =
          VqCodec::FromCodebookSet(set);
      absl::StatusOr<std::unique_ptr<VqCodec>> gpu =
          VqCodec::FromCodebookSet(set);
      ASSERT_TRUE(cpu.ok() && gpu.ok());
      ASSERT_TRUE(AttachCudaEncoder(0, gpu->get()).ok());
      ASSERT_TRUE((*gpu)->has_batch_encoder());
      const KvLayout& l = set.config().layout;
      for (const int64_t tokens : {int64_t{1}, int64_t{16}, int64_t{200}}) {
        const size_t n =
            size_t{1} * l.layers * tokens * l.kv_heads * l.head_dim;
        const std::vector<float> k =
            ::vqkv::testing::NormalFloats(n, 11 + tokens);
        const std::vector<float> v =
            ::vqkv::testing::NormalFloats(n, 13 + tokens);
        const std::vector<uint8_t> a = Encode(**cpu, k, v, tokens);
        const std::vector<uint8_t> b = Encode(**gpu, k, v, tokens);
        ASSERT_EQ(a.size(), b.size());
        size_t same = 0;
        for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
        const double cpu_error = DecodedError(**cpu, a, k, v, tokens);
        const double gpu_error = DecodedError(**gpu, b, k, v, tokens);
        std::printf(
            "  %lld tokens: %zu of %zu payload bytes as the CPU's, "
            "decoding error %.6g (CPU %.6g)\n",
            static_cast<long long>(tokens), same, a.size(), gpu_error,
            cpu_error);
        EXPECT_LE(gpu_error, cpu_error * 1.02) << tokens << " tokens";
        EXPECT_GE(same * 2, a.size()) << tokens << " tokens";
      }
    }
  }
}

// Blocks encoded from several threads at once (a client's save threads)
// are those each gets alone.
TEST(CudaRvqEncoderTest, ConcurrentEncodesFromSeveralThreads) {
  SKIP_WITHOUT_GPU();
  const CodebookSet set = PaperLikeSet(KeySplit::kNone, false);
  absl::StatusOr<std::unique_ptr<VqCodec>> gpu = VqCodec::FromCodebookSet(set);
  ASSERT_TRUE(gpu.ok());
  ASSERT_TRUE(AttachCudaEncoder(0, gpu->get()).ok());
  const KvLayout& l = set.config().layout;
  constexpr int kThreads = 4;
  constexpr int64_t kTokens = 64;
  const size_t n = size_t{1} * l.layers * kTokens * l.kv_heads * l.head_dim;
  std::vector<std::vector<float>> k, v;
  std::vector<std::vector<uint8_t>> alone, together(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    k.push_back(::vqkv::testing::NormalFloats(n, 100 + t));
    v.push_back(::vqkv::testing::NormalFloats(n, 200 + t));
    alone.push_back(Encode(**gpu, k[t], v[t], kTokens));
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < 3; ++r)
        together[t] = Encode(**gpu, k[t], v[t], kTokens);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(together[t], alone[t]);
}

// A client opened with encode_cuda_device stores every block, and what it
// loads back is as close to the KV as what a CPU client loads.
TEST(CudaRvqEncoderTest, ClientWithEncodeCudaDeviceStoresAndLoads) {
  SKIP_WITHOUT_GPU();
  const CodebookSet set = PaperLikeSet(KeySplit::kRopeAdjacentPairs, false);
  const std::string path = ::testing::TempDir() + "/cuda_rvq_encoder_test.vqcb";
  ASSERT_TRUE(set.Save(path).ok());
  const KvLayout& l = set.config().layout;
  constexpr int64_t kTokens = 96;
  std::vector<int32_t> tokens(kTokens);
  for (int64_t i = 0; i < kTokens; ++i) tokens[i] = static_cast<int32_t>(i * 7);
  const size_t n = size_t{1} * l.layers * kTokens * l.kv_heads * l.head_dim;
  const std::vector<float> k = ::vqkv::testing::NormalFloats(n, 21),
                           v = ::vqkv::testing::NormalFloats(n, 22);
  std::vector<std::vector<float>> loaded;
  for (const int device : {-1, 0}) {
    SCOPED_TRACE(::testing::Message() << "encode_cuda_device " << device);
    ClientConfig config;
    config.codec = "vq";
    config.codebook_path = path;
    config.layout = l;
    config.options.model_id = "cuda-rvq-encoder-test";
    config.options.block_tokens = 16;
    config.options.encode_cuda_device = device;
    absl::StatusOr<std::unique_ptr<CacheClient>> client =
        OpenCacheClient(std::move(config));
    ASSERT_TRUE(client.ok()) << client.status();
    absl::StatusOr<StoreResult> stored =
        (*client)->Store(tokens, "", k.data(), v.data());
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(stored->stored, kTokens / 16);
    std::vector<float> ko(n), vo(n);
    absl::StatusOr<LoadResult> got =
        (*client)->Load(tokens, "", ko.data(), vo.data());
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->tokens, kTokens);
    ko.insert(ko.end(), vo.begin(), vo.end());
    loaded.push_back(std::move(ko));
  }
  std::remove(path.c_str());
  ASSERT_EQ(loaded.size(), 2u);
  double error[2] = {0, 0};
  for (int c = 0; c < 2; ++c) {
    for (size_t i = 0; i < n; ++i) {
      error[c] += (loaded[c][i] - k[i]) * (loaded[c][i] - k[i]) +
                  (loaded[c][n + i] - v[i]) * (loaded[c][n + i] - v[i]);
    }
  }
  EXPECT_LE(error[1], error[0] * 1.02);
}

// Without a usable device the encoder is refused with the reason; -1 and
// codecs without a search attach nothing.
TEST(CudaRvqEncoderTest, RefusalsAndNoOps) {
  absl::StatusOr<std::unique_ptr<Codec>> fp16 =
      MakeCodec("fp16", KvLayout{2, 2, 64}, nullptr);
  ASSERT_TRUE(fp16.ok());
  EXPECT_TRUE(AttachCudaEncoder(0, fp16->get()).ok());
  absl::StatusOr<std::unique_ptr<VqCodec>> vq =
      VqCodec::FromCodebookSet(PaperLikeSet(KeySplit::kNone, false));
  ASSERT_TRUE(vq.ok());
  EXPECT_TRUE(AttachCudaEncoder(-1, vq->get()).ok());
  EXPECT_FALSE((*vq)->has_batch_encoder());
  std::string why_not;
  const int count = cuda::CudaDeviceCount(&why_not);
  const absl::Status s = AttachCudaEncoder(count, vq->get());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("encode_cuda_device"), std::string::npos) << s;
  EXPECT_FALSE((*vq)->has_batch_encoder());
  if (count == 0) {
    EXPECT_NE(s.message().find("no CUDA device"), std::string::npos) << s;
  }
}

}  // namespace
}  // namespace vqkv::client
