// KvConnector: the vLLM-style paged API on host memory, for NHD and HND
// page layouts and fp16 / bf16 / fp32 pages.
#include "client/kv_connector.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/synchronization/notification.h"
#include "client/embedded_backend.h"
#include "client/paged_kv.h"
#include "client/peer/peer_link.h"
#include "gtest/gtest.h"
#include "kernels/fp16.h"
#include "kernels/rope.h"
#include "kernels/vq_codec.h"
#include "tests/testing/counting_batch_encoder.h"
#include "tests/unit/client/client_test_util.h"
#include "tests/unit/client/fake_kv_device.h"

namespace vqkv::client {
namespace {

using testing::ExactKv;
using testing::MemoryStore;
using testing::Options;
using testing::SmallLayout;
using testing::Tokens;

constexpr int kPages = 32;
constexpr int kPageSize = 16;

// One engine's pages: per layer a K and a V byte buffer.
struct Pages {
  Pages(DType dtype, bool hnd) : dtype(dtype), hnd(hnd) {
    const KvLayout l = SmallLayout();
    const size_t bytes = static_cast<size_t>(kPages) * kPageSize * l.kv_heads *
                         l.head_dim * DTypeBytes(dtype);
    k.assign(l.layers, std::vector<uint8_t>(bytes, 0));
    v.assign(l.layers, std::vector<uint8_t>(bytes, 0));
  }
  PagedKvCaches Caches() {
    std::vector<void*> kp, vp;
    for (auto& x : k) kp.push_back(x.data());
    for (auto& x : v) vp.push_back(x.data());
    const KvLayout l = SmallLayout();
    return hnd ? PagedKvCaches::Hnd(kp, vp, kPages, kPageSize, l.kv_heads,
                                    l.head_dim, dtype)
               : PagedKvCaches::Nhd(kp, vp, kPages, kPageSize, l.kv_heads,
                                    l.head_dim, dtype);
  }
  DType dtype;
  bool hnd;
  std::vector<std::vector<uint8_t>> k, v;
};

// Writes float rows [token][head][dim] of every layer into a request's
// pages, through ScatterLayer (tested against a direct index below).
void Fill(const PagedKvCaches& c, const std::vector<int32_t>& ids, int n,
          const std::vector<float>& k, const std::vector<float>& v) {
  const KvLayout l = SmallLayout();
  const size_t per_layer = static_cast<size_t>(n) * l.kv_heads * l.head_dim;
  for (int layer = 0; layer < l.layers; ++layer) {
    ScatterLayer(c, layer, ids, 0, n, k.data() + layer * per_layer,
                 v.data() + layer * per_layer);
  }
}

std::vector<float> Read(const PagedKvCaches& c, const std::vector<int32_t>& ids,
                        int n, bool keys) {
  const KvLayout l = SmallLayout();
  const size_t per_layer = static_cast<size_t>(n) * l.kv_heads * l.head_dim;
  std::vector<float> k(per_layer * l.layers), v(k.size());
  for (int layer = 0; layer < l.layers; ++layer) {
    GatherLayer(c, layer, ids, 0, n, k.data() + layer * per_layer,
                v.data() + layer * per_layer);
  }
  return keys ? k : v;
}

std::vector<int32_t> ShuffledPages(uint32_t seed) {
  std::vector<int32_t> ids(kPages);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  return ids;
}

TEST(PagedKvTest, LayoutsAddressTheDocumentedElement) {
  const KvLayout l = SmallLayout();
  for (bool hnd : {false, true}) {
    Pages p(DType::kFloat32, hnd);
    PagedKvCaches c = p.Caches();
    ASSERT_TRUE(c.Validate(l).ok());
    // Token 19 lives in page ids[1] = 5, slot 3.
    const std::vector<int32_t> ids = {9, 5};
    std::vector<float> rows(2 * 20 * l.kv_heads * l.head_dim, 0.0f);
    std::vector<float> k1(20 * l.kv_heads * l.head_dim, 0.0f), v1 = k1;
    k1[(19 * l.kv_heads + 1) * l.head_dim + 7] = 42.0f;
    ScatterLayer(c, 0, ids, 0, 20, k1.data(), v1.data());
    const float* base = reinterpret_cast<const float*>(p.k[0].data());
    const size_t idx =
        hnd ? ((5 * l.kv_heads + 1) * kPageSize + 3) * l.head_dim + 7
            : ((5 * kPageSize + 3) * l.kv_heads + 1) * l.head_dim + 7;
    EXPECT_EQ(base[idx], 42.0f) << (hnd ? "HND" : "NHD");
  }
}

TEST(PagedKvTest, Conversions) {
  for (float f : {0.0f, 1.0f, -2.5f, 3.125f, 65536.0f, -0.0078125f}) {
    EXPECT_EQ(Bf16ToFloat(FloatToBf16(f)), f);
  }
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.00390625f)), 1.0f);  // ties to even
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf("")))));
}

TEST(PagedKvTest, ValidateRejectsBadCaches) {
  const KvLayout l = SmallLayout();
  Pages p(DType::kFloat16, false);
  PagedKvCaches c = p.Caches();
  c.layers.pop_back();
  EXPECT_EQ(c.Validate(l).code(), absl::StatusCode::kInvalidArgument);
  c = p.Caches();
  c.layers[1].values = nullptr;
  EXPECT_EQ(c.Validate(l).code(), absl::StatusCode::kInvalidArgument);
  c = p.Caches();
  c.layers[0].key_strides[2] = 1;  // heads overlap dims
  EXPECT_EQ(c.Validate(l).code(), absl::StatusCode::kInvalidArgument);
  c = p.Caches();
  c.head_dim = 32;
  EXPECT_EQ(c.Validate(l).code(), absl::StatusCode::kInvalidArgument);
}

// An fp16 client of SmallLayout over an in-process memory store.
struct EmbeddedClient {
  explicit EmbeddedClient(CacheClientOptions o = Options(32))
      : store(MemoryStore()) {
    auto c =
        CacheClient::Create(o, testing::Fp16(SmallLayout()), "",
                            std::make_unique<EmbeddedBackend>(store.get()));
    EXPECT_TRUE(c.ok()) << c.status();
    if (c.ok()) client = *std::move(c);
  }
  std::unique_ptr<storage::TieredStore> store;
  std::unique_ptr<CacheClient> client;
};

// "fp16_NHD" etc., for the names of parameterised tests.
std::string LayoutName(
    const ::testing::TestParamInfo<std::tuple<DType, bool>>& info) {
  const DType d = std::get<0>(info.param);
  return std::string(d == DType::kFloat16    ? "fp16"
                     : d == DType::kBfloat16 ? "bf16"
                                             : "fp32") +
         (std::get<1>(info.param) ? "_HND" : "_NHD");
}

class KvConnectorTest
    : public ::testing::TestWithParam<std::tuple<DType, bool>> {
 protected:
  void SetUp() override { ASSERT_NE(embedded_.client, nullptr); }
  EmbeddedClient embedded_;
  std::unique_ptr<CacheClient>& client_ = embedded_.client;
};

// Engine 1 computes 80 tokens into shuffled pages and saves them layer by
// layer; engine 2 (other pages, another connector) looks them up and loads
// 64 of them (2 vqkv blocks of 32) into its own pages.
TEST_P(KvConnectorTest, SaveThenLoadIntoOtherPages) {
  const auto [dtype, hnd] = GetParam();
  const KvLayout l = SmallLayout();
  const int n = 80;
  const std::vector<int32_t> tokens = Tokens(n);
  const std::vector<float> k = ExactKv(n * l.ElementsPerToken(), 1);
  const std::vector<float> v = ExactKv(n * l.ElementsPerToken(), 2);

  Pages p1(dtype, hnd);
  KvConnector engine1(client_.get());
  ASSERT_TRUE(engine1.RegisterKvCaches(p1.Caches()).ok());
  const std::vector<int32_t> ids1 = ShuffledPages(1);
  Fill(p1.Caches(), ids1, n, k, v);
  SaveSpec save{"req-1", tokens, "", ids1, 0};
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine1.SaveLayer(layer, {save}).ok());
  }
  ASSERT_TRUE(engine1.WaitForSave().ok());
  ASSERT_TRUE(client_->WaitIdle(absl::Seconds(30)));
  FinishedRequests f = engine1.GetFinished();
  ASSERT_EQ(f.saved, std::vector<std::string>{"req-1"});

  auto cached = client_->Lookup(tokens, "");
  ASSERT_TRUE(cached.ok());
  ASSERT_EQ(*cached, 64);

  Pages p2(dtype, hnd);
  KvConnector engine2(client_.get());
  ASSERT_TRUE(engine2.RegisterKvCaches(p2.Caches()).ok());
  const std::vector<int32_t> ids2 = ShuffledPages(2);
  ASSERT_TRUE(
      engine2.StartLoad({LoadSpec{"req-2", tokens, "", ids2, 64}}).ok());
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine2.WaitForLayerLoad(layer).ok());
  }
  EXPECT_TRUE(engine2.TakeLoadErrorBlockIds().empty());
  EXPECT_EQ(engine2.GetFinished().loaded, std::vector<std::string>{"req-2"});
  const std::vector<float> got_k = Read(p2.Caches(), ids2, 64, true);
  const std::vector<float> got_v = Read(p2.Caches(), ids2, 64, false);
  const size_t per_layer_n = static_cast<size_t>(n) * l.kv_heads * l.head_dim;
  const size_t per_layer_64 = 64u * l.kv_heads * l.head_dim;
  for (int layer = 0; layer < l.layers; ++layer) {
    for (size_t i = 0; i < per_layer_64; ++i) {
      ASSERT_EQ(got_k[layer * per_layer_64 + i], k[layer * per_layer_n + i]);
      ASSERT_EQ(got_v[layer * per_layer_64 + i], v[layer * per_layer_n + i]);
    }
  }
  // Pages past the loaded tokens stay untouched (zero).
  const std::vector<int32_t> tail = {ids2[4]};
  std::vector<float> tk(kPageSize * l.kv_heads * l.head_dim), tv(tk.size());
  GatherLayer(p2.Caches(), 0, tail, 0, kPageSize, tk.data(), tv.data());
  EXPECT_TRUE(
      std::all_of(tk.begin(), tk.end(), [](float x) { return x == 0; }));
}

INSTANTIATE_TEST_SUITE_P(Layouts, KvConnectorTest,
                         ::testing::Combine(::testing::Values(DType::kFloat16,
                                                              DType::kBfloat16,
                                                              DType::kFloat32),
                                            ::testing::Bool()),
                         LayoutName);

TEST(KvConnectorErrorsTest, MissingBlockReportsPagesFromThereOn) {
  EmbeddedClient ec;
  ASSERT_NE(ec.client, nullptr);
  auto& client = ec.client;
  const KvLayout l = SmallLayout();
  const std::vector<int32_t> tokens = Tokens(96);
  const std::vector<float> k = ExactKv(96 * l.ElementsPerToken(), 3);
  ASSERT_TRUE(client->Store(tokens, "", k.data(), k.data()).ok());
  // Block 1 disappears between lookup and load.
  auto hashes = client->HashTokens(tokens, "");
  ASSERT_TRUE(hashes.ok());
  const auto ns = storage::ComputeNamespaceId("", client->namespace_spec());
  ASSERT_TRUE(ec.store->DeleteBlock("", {ns, (*hashes)[1]}).ok());

  Pages p(DType::kFloat16, false);
  KvConnector engine(client.get());
  ASSERT_TRUE(engine.RegisterKvCaches(p.Caches()).ok());
  const std::vector<int32_t> ids = {3, 4, 5, 6, 7, 8};
  ASSERT_TRUE(engine.StartLoad({LoadSpec{"r", tokens, "", ids, 96}}).ok());
  ASSERT_TRUE(engine.WaitForLayerLoad(l.layers - 1).ok());
  // Tokens 32..95 failed: pages 2..5 of the request.
  EXPECT_EQ(engine.TakeLoadErrorBlockIds(), (std::vector<int32_t>{5, 6, 7, 8}));
  EXPECT_EQ(engine.stats().loads_failed, 1);
  // Block 0 arrived.
  std::vector<float> got(32 * l.kv_heads * l.head_dim), gv(got.size());
  GatherLayer(p.Caches(), 0, ids, 0, 32, got.data(), gv.data());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], k[i]);
  // Page 5 (block 1) was not written.
  std::vector<float> p5(kPageSize * l.kv_heads * l.head_dim), p5v(p5.size());
  GatherLayer(p.Caches(), 0, std::vector<int32_t>{5}, 0, kPageSize, p5.data(),
              p5v.data());
  EXPECT_TRUE(
      std::all_of(p5.begin(), p5.end(), [](float x) { return x == 0; }));
}

// Layer-granular loads: WaitForLayerLoad(0) returns while the later layers
// are not decoded yet. The hook holds the load thread after layer 0 until
// the engine thread has come back from WaitForLayerLoad(0) (a loader that
// finished every layer first would keep it waiting until the timeout).
TEST(KvConnectorLayersTest, LayerZeroIsReadyBeforeTheLastLayerIsDecoded) {
  EmbeddedClient ec;
  ASSERT_NE(ec.client, nullptr);
  auto& client = ec.client;
  const KvLayout l = SmallLayout();
  ASSERT_GE(l.layers, 2);
  const int n = 64;
  const std::vector<int32_t> tokens = Tokens(n);
  const std::vector<float> k = ExactKv(n * l.ElementsPerToken(), 5);
  const std::vector<float> v = ExactKv(n * l.ElementsPerToken(), 6);
  ASSERT_TRUE(client->Store(tokens, "", k.data(), v.data()).ok());

  Pages p(DType::kFloat32, false);
  KvConnector engine(client.get());
  ASSERT_TRUE(engine.RegisterKvCaches(p.Caches()).ok());
  absl::Notification engine_has_layer_0;
  std::atomic<bool> held_until_engine_returned{false};
  std::vector<int> layers_seen;
  engine.SetLayerLoadedHookForTesting([&](int layer) {
    layers_seen.push_back(layer);
    if (layer == 0) {
      held_until_engine_returned =
          engine_has_layer_0.WaitForNotificationWithTimeout(absl::Seconds(20));
    }
  });
  const std::vector<int32_t> ids = ShuffledPages(3);
  ASSERT_TRUE(engine.StartLoad({LoadSpec{"r", tokens, "", ids, n}}).ok());
  ASSERT_TRUE(engine.WaitForLayerLoad(0).ok());
  const size_t per_layer = static_cast<size_t>(n) * l.kv_heads * l.head_dim;
  std::vector<float> gk(per_layer), gv(per_layer);
  // Layer 0 is in the pages; the last layer is not yet.
  GatherLayer(p.Caches(), 0, ids, 0, n, gk.data(), gv.data());
  for (size_t i = 0; i < per_layer; ++i) {
    ASSERT_EQ(gk[i], k[i]);
    ASSERT_EQ(gv[i], v[i]);
  }
  GatherLayer(p.Caches(), l.layers - 1, ids, 0, n, gk.data(), gv.data());
  EXPECT_TRUE(
      std::all_of(gk.begin(), gk.end(), [](float x) { return x == 0; }));
  engine_has_layer_0.Notify();
  for (int layer = 1; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine.WaitForLayerLoad(layer).ok());
  }
  EXPECT_TRUE(held_until_engine_returned);
  std::vector<int> want(l.layers);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(layers_seen, want);
  EXPECT_TRUE(engine.TakeLoadErrorBlockIds().empty());
  EXPECT_EQ(engine.GetFinished().loaded, std::vector<std::string>{"r"});
  // Every layer arrived.
  GatherLayer(p.Caches(), l.layers - 1, ids, 0, n, gk.data(), gv.data());
  for (size_t i = 0; i < per_layer; ++i) {
    ASSERT_EQ(gk[i], k[(l.layers - 1) * per_layer + i]);
    ASSERT_EQ(gv[i], v[(l.layers - 1) * per_layer + i]);
  }
}

// A save's blocks reach the codec together: one batch encoder call (one GPU
// launch with encode_cuda_device) for the three blocks of a request.
TEST(KvConnectorBatchTest, ASaveEncodesItsBlocksInOneBatch) {
  const KvLayout l = SmallLayout();
  const testing::FittedVq vq = testing::FitVq(l);
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      VqCodec::FromCodebookSet(vq.codec->codebooks());
  ASSERT_TRUE(codec.ok());
  auto encoder = std::make_shared<::vqkv::testing::CountingBatchEncoder>();
  (*codec)->SetBatchEncoder(encoder);
  auto store = MemoryStore();
  auto c = CacheClient::Create(
      Options(32), std::shared_ptr<const Codec>(*std::move(codec)), vq.file,
      std::make_unique<EmbeddedBackend>(store.get()));
  ASSERT_TRUE(c.ok()) << c.status();
  std::unique_ptr<CacheClient> client = *std::move(c);
  const int n = 96;
  const std::vector<int32_t> tokens = Tokens(n);
  const std::vector<float> k = ExactKv(n * l.ElementsPerToken(), 9);
  const std::vector<float> v = ExactKv(n * l.ElementsPerToken(), 10);
  Pages pages(DType::kFloat32, false);
  KvConnector engine(client.get());
  ASSERT_TRUE(engine.RegisterKvCaches(pages.Caches()).ok());
  const std::vector<int32_t> ids = ShuffledPages(6);
  Fill(pages.Caches(), ids, n, k, v);
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(
        engine.SaveLayer(layer, {SaveSpec{"b", tokens, "", ids, 0}}).ok());
  }
  ASSERT_TRUE(engine.WaitForSave().ok());
  ASSERT_TRUE(client->WaitIdle(absl::Seconds(30)));
  EXPECT_EQ(*client->Lookup(tokens, ""), n);
  EXPECT_EQ(encoder->calls.load(), 1);
}

// With pre-RoPE codebooks the connector's saves (staged per layer) and its
// layer-by-layer loads place each block's keys at the block's positions:
// what engine 2's pages get is what the simple API loads
// (CacheClientTest.PreRopeCodebooksCodeKeysWithoutTheirPosition checks
// that against the codec block by block).
TEST(KvConnectorRopeTest, PreRopeCodebooksLoadAsTheSimpleApi) {
  const KvLayout l = SmallLayout();
  const testing::FittedVq vq =
      testing::FitVq(l, false, 1, RopeSpec{10000.0, l.head_dim});
  auto store = MemoryStore();
  auto c = CacheClient::Create(Options(32), vq.codec, vq.file,
                               std::make_unique<EmbeddedBackend>(store.get()));
  ASSERT_TRUE(c.ok()) << c.status();
  std::unique_ptr<CacheClient> client = *std::move(c);
  const int n = 96;
  const std::vector<int32_t> tokens = Tokens(n);
  const auto [k, v] = testing::MakeRotatedKv(l, n, 7);

  Pages p1(DType::kFloat32, false);
  KvConnector engine1(client.get());
  ASSERT_TRUE(engine1.RegisterKvCaches(p1.Caches()).ok());
  const std::vector<int32_t> ids1 = ShuffledPages(4);
  Fill(p1.Caches(), ids1, n, k, v);
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(
        engine1.SaveLayer(layer, {SaveSpec{"w", tokens, "", ids1, 0}}).ok());
  }
  ASSERT_TRUE(engine1.WaitForSave().ok());
  ASSERT_TRUE(client->WaitIdle(absl::Seconds(30)));
  ASSERT_EQ(*client->Lookup(tokens, ""), n);

  Pages p2(DType::kFloat32, true);
  KvConnector engine2(client.get());
  ASSERT_TRUE(engine2.RegisterKvCaches(p2.Caches()).ok());
  const std::vector<int32_t> ids2 = ShuffledPages(5);
  ASSERT_TRUE(engine2.StartLoad({LoadSpec{"r", tokens, "", ids2, n}}).ok());
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine2.WaitForLayerLoad(layer).ok());
  }
  EXPECT_TRUE(engine2.TakeLoadErrorBlockIds().empty());
  const std::vector<float> paged = Read(p2.Caches(), ids2, n, true);
  std::vector<float> simple(k.size()), simple_v(v.size());
  ASSERT_EQ(client->Load(tokens, "", simple.data(), simple_v.data())->tokens,
            n);
  EXPECT_EQ(paged, simple);
  EXPECT_EQ(Read(p2.Caches(), ids2, n, false), simple_v);
  // The sink tokens (exact, fp16, stored un-rotated) come back rotated to
  // the engine's keys.
  const size_t per_layer = static_cast<size_t>(n) * l.kv_heads * l.head_dim;
  const size_t sinks = 4u * l.kv_heads * l.head_dim;
  for (int layer = 0; layer < l.layers; ++layer) {
    for (size_t i = 0; i < sinks; ++i) {
      ASSERT_NEAR(paged[layer * per_layer + i], k[layer * per_layer + i], 4e-3);
    }
  }
}

TEST(KvConnectorErrorsTest, TinyStagingDropsSavesWithoutStalling) {
  CacheClientOptions o = Options(32);
  o.max_inflight_bytes = 1024;  // less than one block
  EmbeddedClient ec(o);
  ASSERT_NE(ec.client, nullptr);
  auto& client = ec.client;
  const KvLayout l = SmallLayout();
  Pages p(DType::kFloat16, false);
  KvConnector engine(client.get());
  ASSERT_TRUE(engine.RegisterKvCaches(p.Caches()).ok());
  SaveSpec save{"r", Tokens(64), "", {0, 1, 2, 3}, 0};
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine.SaveLayer(layer, {save}).ok());
  }
  ASSERT_TRUE(engine.WaitForSave().ok());
  ASSERT_TRUE(client->WaitIdle(absl::Seconds(30)));
  EXPECT_EQ(engine.stats().saves_dropped, 1);
  EXPECT_EQ(client->stats().saves_dropped, 1);
  EXPECT_EQ(client->stats().blocks_stored, 0);
  EXPECT_EQ(engine.GetFinished().saved, std::vector<std::string>{"r"});
  EXPECT_EQ(*client->Lookup(Tokens(64), ""), 0);
}

TEST(KvConnectorErrorsTest, MisuseIsReported) {
  EmbeddedClient ec;
  ASSERT_NE(ec.client, nullptr);
  KvConnector engine(ec.client.get());
  EXPECT_EQ(engine.StartLoad({}).code(), absl::StatusCode::kFailedPrecondition);
  Pages p(DType::kFloat16, false);
  PagedKvCaches dev = p.Caches();
  dev.device = Device::kCuda;
  // Host arrays called device pages: refused without CUDA (kUnimplemented),
  // without a GPU, and on a GPU because they are not device memory
  // (kFailedPrecondition).
  const absl::Status dev_status = engine.RegisterKvCaches(dev);
  EXPECT_TRUE(dev_status.code() == absl::StatusCode::kUnimplemented ||
              dev_status.code() == absl::StatusCode::kFailedPrecondition)
      << dev_status;
  ASSERT_TRUE(engine.RegisterKvCaches(p.Caches()).ok());
  EXPECT_EQ(engine.SaveLayer(1, {}).code(),
            absl::StatusCode::kFailedPrecondition);
  // 64 tokens need 4 pages of 16; 2 given.
  EXPECT_EQ(
      engine.StartLoad({LoadSpec{"r", Tokens(64), "", {0, 1}, 64}}).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine.StartLoad({LoadSpec{"r", Tokens(64), "", {0, 1, 2, 99}, 64}})
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine.StartLoad({LoadSpec{"r", Tokens(64), "", {0, 1, 2, 3}, 40}})
                .code(),
            absl::StatusCode::kInvalidArgument);
  // Saving stops half way: WaitForSave reports it and drops the save.
  SaveSpec save{"s", Tokens(64), "", {0, 1, 2, 3}, 0};
  ASSERT_TRUE(engine.SaveLayer(0, {save}).ok());
  EXPECT_EQ(engine.WaitForSave().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(engine.SaveLayer(0, {save}).ok());  // a new pass starts clean
}

}  // namespace
}  // namespace vqkv::client

namespace vqkv::client {
namespace {

// Saves still queued when the engine shuts down are dropped, and the
// connector can go away at once (no save refers to it afterwards).
TEST(KvConnectorErrorsTest, ShutdownWithQueuedSaves) {
  EmbeddedClient ec;
  ASSERT_NE(ec.client, nullptr);
  auto& client = ec.client;
  const KvLayout l = SmallLayout();
  Pages p(DType::kFloat16, false);
  {
    KvConnector engine(client.get());
    ASSERT_TRUE(engine.RegisterKvCaches(p.Caches()).ok());
    for (int r = 0; r < 8; ++r) {
      SaveSpec save{
          "r" + std::to_string(r), Tokens(64, 1000 * r), "", {0, 1, 2, 3}, 0};
      for (int layer = 0; layer < l.layers; ++layer) {
        ASSERT_TRUE(engine.SaveLayer(layer, {save}).ok());
      }
      ASSERT_TRUE(engine.WaitForSave().ok());
    }
    client->Shutdown(absl::ZeroDuration());  // drops what is queued
    engine.Shutdown(absl::ZeroDuration());
  }
  // Everything is accounted for: stored, or dropped and counted.
  const CacheClientStats s = client->stats();
  EXPECT_EQ(s.blocks_stored / 2 + s.saves_dropped, 8);
}

}  // namespace
}  // namespace vqkv::client

namespace vqkv::client {
namespace {

// Disaggregated serving over an in-process link: a prefill engine saves
// with send_to_peer, a decode engine whose own cache is empty loads with
// from_peer, and gets exactly the prefill's KV. A handoff that starts past
// block 0 (skip_tokens) is completed from the decode side's cache; one
// whose hashes are not the load's tokens' (another salt) or that never
// comes is not used: those pages fail, and the engine recomputes them.
TEST(KvConnectorPeerTest, DecodeEngineLoadsThePrefillEnginesHandoff) {
  const KvLayout l = SmallLayout();
  const int n = 96;  // 3 vqkv blocks of 32
  const std::vector<int32_t> tokens = Tokens(n);
  const std::vector<float> k = ExactKv(n * l.ElementsPerToken(), 11);
  const std::vector<float> v = ExactKv(n * l.ElementsPerToken(), 12);
  EmbeddedClient prefill_client, decode_client;
  ASSERT_NE(prefill_client.client, nullptr);
  ASSERT_NE(decode_client.client, nullptr);
  auto [to_decode, from_prefill] = NewLoopbackPeerLinks();
  Pages pp(DType::kFloat16, false), dp(DType::kFloat16, true);
  KvConnector prefill(prefill_client.client.get());
  KvConnector decode(decode_client.client.get());
  ASSERT_TRUE(prefill.RegisterKvCaches(pp.Caches()).ok());
  ASSERT_TRUE(decode.RegisterKvCaches(dp.Caches()).ok());
  PeerOptions po;
  po.wait = absl::Seconds(2);
  ASSERT_TRUE(prefill.AttachPeer(std::move(to_decode), po).ok());
  ASSERT_TRUE(decode.AttachPeer(std::move(from_prefill), po).ok());
  EXPECT_EQ(decode.AttachPeer(NewLoopbackPeerLinks().first).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(decode.AttachPeer(nullptr).code(),
            absl::StatusCode::kInvalidArgument);

  // The prefill engine computes and saves two requests: r1 whole, r2 past
  // its first block (as if that block had been loaded from the cache).
  const std::vector<int32_t> ids = ShuffledPages(3);
  Fill(pp.Caches(), ids, n, k, v);
  SaveSpec r1{"r1", tokens, "", ids, 0};
  r1.send_to_peer = true;
  SaveSpec r2{"r2", tokens, "", ids, 32};
  r2.send_to_peer = true;
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(prefill.SaveLayer(layer, {r1, r2}).ok());
  }
  ASSERT_TRUE(prefill.WaitForSave().ok());
  ASSERT_TRUE(prefill_client.client->WaitIdle(absl::Seconds(30)));
  // The decode side's cache has none of it.
  EXPECT_EQ(*decode_client.client->Lookup(tokens, ""), 0);

  auto expect_pages = [&](const std::vector<int32_t>& at) {
    const std::vector<float> got_k = Read(dp.Caches(), at, n, true);
    const std::vector<float> got_v = Read(dp.Caches(), at, n, false);
    ASSERT_EQ(got_k, k);
    ASSERT_EQ(got_v, v);
  };
  auto load = [&](LoadSpec spec) {
    spec.from_peer = true;
    EXPECT_TRUE(decode.StartLoad({spec}).ok());
    for (int layer = 0; layer < l.layers; ++layer) {
      EXPECT_TRUE(decode.WaitForLayerLoad(layer).ok());
    }
    return decode.TakeLoadErrorBlockIds();
  };
  const std::vector<int32_t> ids1 = ShuffledPages(4);
  EXPECT_TRUE(load({"r1", tokens, "", ids1, n}).empty());
  expect_pages(ids1);
  EXPECT_EQ(decode.stats().peer_blocks_loaded, 3);

  // r2's first block comes from the decode side's cache.
  std::vector<float> k0, v0;
  const size_t per_layer = static_cast<size_t>(n) * l.kv_heads * l.head_dim;
  const size_t block = 32u * l.kv_heads * l.head_dim;
  for (int layer = 0; layer < l.layers; ++layer) {
    k0.insert(k0.end(), k.begin() + layer * per_layer,
              k.begin() + layer * per_layer + block);
    v0.insert(v0.end(), v.begin() + layer * per_layer,
              v.begin() + layer * per_layer + block);
  }
  const std::vector<int32_t> first_block(tokens.begin(), tokens.begin() + 32);
  ASSERT_TRUE(
      decode_client.client->Store(first_block, "", k0.data(), v0.data()).ok());
  const std::vector<int32_t> ids2 = ShuffledPages(5);
  EXPECT_TRUE(load({"r2", tokens, "", ids2, n}).empty());
  expect_pages(ids2);
  EXPECT_EQ(decode.stats().peer_blocks_loaded, 3 + 2);
  EXPECT_EQ(decode.stats().peer_handoffs_missed, 0);

  // A handoff under another salt is not this load's: its blocks are not
  // used, and the decode cache has only block 0 of the other salt's chain
  // (none of this one's).
  SaveSpec r3{"r3", tokens, "", ids, 0};
  r3.send_to_peer = true;
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(prefill.SaveLayer(layer, {r3}).ok());
  }
  ASSERT_TRUE(prefill.WaitForSave().ok());
  ASSERT_TRUE(prefill_client.client->WaitIdle(absl::Seconds(30)));
  const std::vector<int32_t> ids3 = ShuffledPages(6);
  EXPECT_EQ(load({"r3", tokens, "salted", ids3, n}).size(), 6u)
      << "every page of the load fails";
  // No handoff at all: the load waits PeerOptions::wait, then fails.
  EXPECT_EQ(load({"r4", tokens, "salted", ids3, n}).size(), 6u);
  EXPECT_EQ(decode.stats().peer_handoffs_missed, 2);
  EXPECT_EQ(decode.stats().peer_blocks_loaded, 3 + 2);
  EXPECT_EQ(decode.stats().peer_messages_rejected, 0);
  prefill.Shutdown(absl::Seconds(5));  // sends what is queued, then stops
  EXPECT_EQ(prefill.stats().peer_blocks_sent, 3 + 2 + 3);
  EXPECT_EQ(prefill.stats().peer_sends_failed, 0);
}

// Registers `pages` as device pages through a FakeKvDevice; *device is the
// fake, owned by the connector.
absl::Status RegisterOnFakeDevice(KvConnector* engine, Pages* pages,
                                  testing::FakeKvDevice** device) {
  engine->SetKvDeviceFactoryForTesting(
      [device](
          const PagedKvCaches& c) -> absl::StatusOr<std::unique_ptr<KvDevice>> {
        auto d = std::make_unique<testing::FakeKvDevice>(c);
        *device = d.get();
        return d;
      });
  PagedKvCaches caches = pages->Caches();
  caches.device = Device::kCuda;
  return engine->RegisterKvCaches(caches);
}

// With saves encoded on the device from the pages (encode_on_device), each
// layer's slices go to the peer as soon as that layer is encoded (the fake
// device encodes 2 ms late, so a send before the encode is done would
// carry stale bytes), and the final message carries the blocks' headers
// (the first block, with its exact sink tokens, whole). The decode engine,
// over an empty cache of its own, seals the blocks from them and loads
// exactly what the prefill engine's cache holds. With codebooks that refine
// a layer's keys, that layer's slices carry its refinement codes too.
void ExpectLayerByLayerHandoff(int refine_layer) {
  const KvLayout l = SmallLayout();
  testing::DeviceAndHostEncoders clients =
      testing::MakeDeviceAndHostEncoders(l, refine_layer);
  ASSERT_TRUE(clients.on_dev != nullptr && clients.on_host != nullptr);
  CacheClient* prefill_client = clients.on_dev.get();
  CacheClient* decode_client = clients.on_host.get();
  const int n = 96;
  const std::vector<int32_t> tokens = Tokens(n);
  const auto [k, v] = testing::MakeRotatedKv(l, n, 15);
  const std::vector<int32_t> ids = ShuffledPages(8);
  auto [to_decode, from_prefill] = NewLoopbackPeerLinks();

  Pages pages(DType::kFloat16, false);
  KvConnector prefill(prefill_client);
  testing::FakeKvDevice* dev = nullptr;
  ASSERT_TRUE(RegisterOnFakeDevice(&prefill, &pages, &dev).ok());
  ASSERT_TRUE(prefill.device_paths().encode_on_device);
  Fill(pages.Caches(), ids, n, k, v);
  ASSERT_TRUE(prefill.AttachPeer(std::move(to_decode)).ok());
  SaveSpec save{"r", tokens, "", ids, 0};
  save.send_to_peer = true;
  ASSERT_TRUE(testing::SaveEveryLayer(&prefill, {save}, l.layers).ok());
  ASSERT_TRUE(prefill_client->WaitIdle(absl::Seconds(30)));
  EXPECT_EQ(prefill.stats().blocks_encoded_on_device, 2);

  // What the prefill engine's own cache holds, loaded into host pages.
  const std::vector<int32_t> at = ShuffledPages(9);
  Pages want(DType::kFloat16, false);
  KvConnector reference(prefill_client);
  ASSERT_TRUE(reference.RegisterKvCaches(want.Caches()).ok());
  ASSERT_TRUE(reference.StartLoad({LoadSpec{"w", tokens, "", at, n}}).ok());
  ASSERT_TRUE(reference.WaitForLayerLoad(l.layers - 1).ok());
  ASSERT_TRUE(reference.TakeLoadErrorBlockIds().empty());

  Pages got(DType::kFloat16, false);
  KvConnector decode(decode_client);
  ASSERT_TRUE(decode.RegisterKvCaches(got.Caches()).ok());
  PeerOptions po;
  po.wait = absl::Seconds(10);
  ASSERT_TRUE(decode.AttachPeer(std::move(from_prefill), po).ok());
  LoadSpec load{"r", tokens, "", at, n};
  load.from_peer = true;
  ASSERT_TRUE(decode.StartLoad({load}).ok());
  ASSERT_TRUE(decode.WaitForLayerLoad(l.layers - 1).ok());
  EXPECT_TRUE(decode.TakeLoadErrorBlockIds().empty());
  prefill.Shutdown(absl::Seconds(5));
  EXPECT_EQ(prefill.stats().peer_layers_sent, l.layers);
  EXPECT_EQ(prefill.stats().peer_blocks_sent, 3);
  EXPECT_EQ(decode.stats().peer_blocks_loaded, 3);
  EXPECT_EQ(*decode_client->Lookup(tokens, ""), 0) << "nothing came from it";
  EXPECT_TRUE(got.k == want.k);
  EXPECT_TRUE(got.v == want.v);
}

TEST(KvConnectorPeerTest, DeviceEncodedSavesSendEachLayerAsItIsEncoded) {
  for (int refine_layer : {-1, 1}) {
    SCOPED_TRACE(refine_layer < 0 ? "codebooks without a key refinement"
                                  : "key refinement of layer 1");
    ExpectLayerByLayerHandoff(refine_layer);
  }
}

class KvConnectorDeviceTest
    : public ::testing::TestWithParam<std::tuple<DType, bool>> {};

// The device path against the host path: engine 1 saves from device pages
// and reuses them as soon as its compute stream may; engine 2 loads into
// device pages and reads each layer as soon as its compute stream may; the
// pages must be byte for byte what a host-page engine loads. The fake device
// runs each copy 2 ms late, so a missing stream wait shows as stale pages.
TEST_P(KvConnectorDeviceTest, DevicePagesSaveAndLoadAsHostPagesDo) {
  const auto [dtype, hnd] = GetParam();
  EmbeddedClient ec;
  ASSERT_NE(ec.client, nullptr);
  const KvLayout l = SmallLayout();
  const int n = 80;
  const std::vector<int32_t> tokens = Tokens(n);
  const std::vector<float> k = ExactKv(n * l.ElementsPerToken(), 5);
  const std::vector<float> v = ExactKv(n * l.ElementsPerToken(), 6);

  Pages p1(dtype, hnd);
  KvConnector engine1(ec.client.get());
  testing::FakeKvDevice* dev1 = nullptr;
  ASSERT_TRUE(RegisterOnFakeDevice(&engine1, &p1, &dev1).ok());
  const std::vector<int32_t> ids1 = ShuffledPages(3);
  Fill(p1.Caches(), ids1, n, k, v);
  SaveSpec save{"save", tokens, "", ids1, 0};
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine1.SaveLayer(layer, {save}).ok());
  }
  ASSERT_TRUE(engine1.WaitForSave().ok());
  // The engine's next kernels overwrite the pages once the stream allows.
  dev1->SyncCompute();
  for (auto& layer : p1.k) std::fill(layer.begin(), layer.end(), 0xab);
  for (auto& layer : p1.v) std::fill(layer.begin(), layer.end(), 0xab);
  ASSERT_TRUE(ec.client->WaitIdle(absl::Seconds(30)));
  EXPECT_EQ(engine1.GetFinished().saved, std::vector<std::string>{"save"});
  EXPECT_EQ(dev1->bad_rows(), 0);
  EXPECT_GE(dev1->order_after_compute(), 1);
  auto cached = ec.client->Lookup(tokens, "");
  ASSERT_TRUE(cached.ok());
  ASSERT_EQ(*cached, 64);

  // Reference: a host-page engine loads the 64 cached tokens.
  const std::vector<int32_t> ids2 = ShuffledPages(4);
  Pages host(dtype, hnd);
  KvConnector engine3(ec.client.get());
  ASSERT_TRUE(engine3.RegisterKvCaches(host.Caches()).ok());
  ASSERT_TRUE(engine3.StartLoad({LoadSpec{"r", tokens, "", ids2, 64}}).ok());
  ASSERT_TRUE(engine3.WaitForLayerLoad(l.layers - 1).ok());
  ASSERT_TRUE(engine3.TakeLoadErrorBlockIds().empty());
  // And it holds what engine 1 computed.
  const std::vector<float> ref_k = Read(host.Caches(), ids2, 64, true);
  const size_t per_layer_n = static_cast<size_t>(n) * l.kv_heads * l.head_dim;
  const size_t per_layer_64 = 64u * l.kv_heads * l.head_dim;
  for (int layer = 0; layer < l.layers; ++layer) {
    for (size_t i = 0; i < per_layer_64; ++i) {
      ASSERT_EQ(ref_k[layer * per_layer_64 + i], k[layer * per_layer_n + i]);
    }
  }

  Pages p2(dtype, hnd);
  KvConnector engine2(ec.client.get());
  testing::FakeKvDevice* dev2 = nullptr;
  ASSERT_TRUE(RegisterOnFakeDevice(&engine2, &p2, &dev2).ok());
  ASSERT_TRUE(engine2.StartLoad({LoadSpec{"r", tokens, "", ids2, 64}}).ok());
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine2.WaitForLayerLoad(layer).ok());
    dev2->SyncCompute();  // the layer's attention runs now
    EXPECT_EQ(p2.k[layer], host.k[layer]) << "keys of layer " << layer;
    EXPECT_EQ(p2.v[layer], host.v[layer]) << "values of layer " << layer;
  }
  EXPECT_TRUE(engine2.TakeLoadErrorBlockIds().empty());
  EXPECT_EQ(engine2.GetFinished().loaded, std::vector<std::string>{"r"});
  EXPECT_EQ(dev2->bad_rows(), 0);
  EXPECT_GE(dev2->order_after_compute(), 1);
}

INSTANTIATE_TEST_SUITE_P(Layouts, KvConnectorDeviceTest,
                         ::testing::Combine(::testing::Values(DType::kFloat16,
                                                              DType::kBfloat16,
                                                              DType::kFloat32),
                                            ::testing::Bool()),
                         LayoutName);

// decode_on_device: a load's blocks go to the device as codes and are
// decoded there (the fake runs the CUDA kernel's host reference), except a
// chain's first block, whose exact sink tokens the host decodes. The pages
// must hold what a host-page engine loads: values bit for bit, keys
// (rotated back from pre-RoPE codebooks, in the engine's rotate-half
// order) within one unit of the dtype's last place, since the device
// computes each angle directly where the host uses a recurrence.
class KvConnectorDeviceDecodeTest
    : public ::testing::TestWithParam<std::tuple<DType, bool>> {};

// Loads a stored 96-token chain into host pages and, on the fake device,
// into device pages, and compares them layer by layer; `refine_layer` >= 0:
// codebooks that refine that layer's keys.
void ExpectDeviceDecodeMatchesHost(DType dtype, bool hnd, int refine_layer) {
  const KvLayout l = SmallLayout();
  const int n = 96;
  CacheClientOptions o = Options(32);
  o.decode_on_device = DeviceUse::kOn;
  testing::StoredPreRopeChain chain =
      testing::StorePreRopeChain(l, n, o, refine_layer);
  ASSERT_NE(chain.client, nullptr);
  ASSERT_EQ(chain.client->codec().PayloadFlags() != 0, refine_layer >= 0);
  CacheClient* client = chain.client.get();
  const std::vector<int32_t>& tokens = chain.tokens;

  const std::vector<int32_t> ids = ShuffledPages(6);
  Pages host(dtype, hnd);
  KvConnector reference(client);
  ASSERT_TRUE(reference.RegisterKvCaches(host.Caches()).ok());
  ASSERT_TRUE(reference.StartLoad({LoadSpec{"h", tokens, "", ids, n}}).ok());
  ASSERT_TRUE(reference.WaitForLayerLoad(l.layers - 1).ok());
  ASSERT_TRUE(reference.TakeLoadErrorBlockIds().empty());
  EXPECT_EQ(reference.stats().blocks_decoded_on_device, 0);

  Pages pages(dtype, hnd);
  KvConnector engine(client);
  testing::FakeKvDevice* dev = nullptr;
  ASSERT_TRUE(RegisterOnFakeDevice(&engine, &pages, &dev).ok());
  ASSERT_TRUE(engine.StartLoad({LoadSpec{"d", tokens, "", ids, n}}).ok());
  const float ulp = dtype == DType::kFloat32   ? 1e-5f
                    : dtype == DType::kFloat16 ? 1.0f / 1024
                                               : 1.0f / 128;
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine.WaitForLayerLoad(layer).ok());
    dev->SyncCompute();  // the layer's attention runs now
    EXPECT_EQ(pages.v[layer], host.v[layer]) << "values of layer " << layer;
    std::vector<float> got(n * l.kv_heads * l.head_dim), want(got.size()),
        unused(got.size());
    GatherLayer(pages.Caches(), layer, ids, 0, n, got.data(), unused.data());
    GatherLayer(host.Caches(), layer, ids, 0, n, want.data(), unused.data());
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], ulp * (1e-3f + std::fabs(want[i])))
          << "layer " << layer << " key element " << i;
    }
  }
  EXPECT_TRUE(engine.TakeLoadErrorBlockIds().empty());
  EXPECT_EQ(engine.GetFinished().loaded, std::vector<std::string>{"d"});
  // Blocks 1 and 2 on the device, for every layer; block 0 on the host.
  EXPECT_EQ(dev->coded_scatters(), 2 * l.layers);
  EXPECT_EQ(engine.stats().blocks_decoded_on_device, 2);
  EXPECT_EQ(dev->bad_rows(), 0);

  // A device that refuses the layer's decode fails the whole load.
  Pages again(dtype, hnd);
  KvConnector engine2(client);
  testing::FakeKvDevice* dev2 = nullptr;
  ASSERT_TRUE(RegisterOnFakeDevice(&engine2, &again, &dev2).ok());
  dev2->FailScatterOfLayer(1);
  ASSERT_TRUE(engine2.StartLoad({LoadSpec{"f", tokens, "", ids, n}}).ok());
  ASSERT_TRUE(engine2.WaitForLayerLoad(l.layers - 1).ok());
  EXPECT_EQ(engine2.TakeLoadErrorBlockIds(),
            std::vector<int32_t>(ids.begin(), ids.begin() + n / kPageSize));
  EXPECT_EQ(engine2.stats().blocks_decoded_on_device, 0);
}

TEST_P(KvConnectorDeviceDecodeTest, DecodesOnTheDeviceAsTheHostDoes) {
  const auto [dtype, hnd] = GetParam();
  ExpectDeviceDecodeMatchesHost(dtype, hnd, -1);
}

// A key refinement (here of the middle layer) decodes on the device too,
// when asked for (kOn): the refined layer's slice of the refinement section
// goes with its codes. Under kAuto both device paths leave a refined set on
// the host until they have run on a GPU, and say so.
TEST_P(KvConnectorDeviceDecodeTest, DecodesAKeyRefinementOnTheDevice) {
  const auto [dtype, hnd] = GetParam();
  ExpectDeviceDecodeMatchesHost(dtype, hnd, 1);

  const KvLayout l = SmallLayout();
  testing::StoredPreRopeChain chain =
      testing::StorePreRopeChain(l, 32, Options(32), 1);
  ASSERT_NE(chain.client, nullptr);
  Pages pages(dtype, hnd);
  KvConnector engine(chain.client.get());
  testing::FakeKvDevice* dev = nullptr;
  ASSERT_TRUE(RegisterOnFakeDevice(&engine, &pages, &dev).ok());
  const DevicePaths paths = engine.device_paths();
  EXPECT_FALSE(paths.decode_on_device);
  EXPECT_NE(paths.decode_on_host_because.find("kOn"), std::string::npos)
      << paths.decode_on_host_because;
  EXPECT_FALSE(paths.encode_on_device);
  EXPECT_NE(paths.encode_on_host_because.find("encode_on_device = kOn"),
            std::string::npos)
      << paths.encode_on_host_because;
}

INSTANTIATE_TEST_SUITE_P(Layouts, KvConnectorDeviceDecodeTest,
                         ::testing::Combine(::testing::Values(DType::kFloat16,
                                                              DType::kBfloat16,
                                                              DType::kFloat32),
                                            ::testing::Bool()),
                         LayoutName);

// encode_on_device: a save's blocks are encoded by the device straight
// from the pages (the fake runs the device encode's host reference), except
// a chain's first block (its exact sink tokens), which the host encodes.
// The stored blocks must be the ones a host-page engine stores for the same
// KV (pre-RoPE codebooks, a rotate-half engine), byte for byte; the pages
// are overwritten as soon as the compute stream may, so an encode that
// read them late would store other codes.
class KvConnectorDeviceEncodeTest
    : public ::testing::TestWithParam<std::tuple<DType, bool>> {};

// The body of EncodesOnTheDeviceAsTheHostDoes for codebooks that refine
// `refine_layer`'s keys (-1: none).
void ExpectDeviceEncodeMatchesHost(DType dtype, bool hnd, int refine_layer) {
  const KvLayout l = SmallLayout();
  testing::DeviceAndHostEncoders clients =
      testing::MakeDeviceAndHostEncoders(l, refine_layer);
  ASSERT_TRUE(clients.on_dev != nullptr && clients.on_host != nullptr);
  CacheClient* on_dev = clients.on_dev.get();
  CacheClient* on_host = clients.on_host.get();
  const int n = 96;
  const std::vector<int32_t> tokens = Tokens(n);
  const auto [k, v] = testing::MakeRotatedKv(l, n, 5);
  const std::vector<int32_t> ids = ShuffledPages(7);

  Pages host(dtype, hnd);
  KvConnector host_engine(on_host);
  ASSERT_TRUE(host_engine.RegisterKvCaches(host.Caches()).ok());
  Fill(host.Caches(), ids, n, k, v);
  Pages pages(dtype, hnd);
  KvConnector engine(on_dev);
  testing::FakeKvDevice* dev = nullptr;
  ASSERT_TRUE(RegisterOnFakeDevice(&engine, &pages, &dev).ok());
  Fill(pages.Caches(), ids, n, k, v);
  const SaveSpec save{"s", tokens, "", ids, 0};
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(host_engine.SaveLayer(layer, {save}).ok());
    ASSERT_TRUE(engine.SaveLayer(layer, {save}).ok());
  }
  ASSERT_TRUE(host_engine.WaitForSave().ok());
  ASSERT_TRUE(engine.WaitForSave().ok());
  dev->SyncCompute();
  for (auto& layer : pages.k) std::fill(layer.begin(), layer.end(), 0xab);
  for (auto& layer : pages.v) std::fill(layer.begin(), layer.end(), 0xab);
  ASSERT_TRUE(on_host->WaitIdle(absl::Seconds(30)));
  ASSERT_TRUE(on_dev->WaitIdle(absl::Seconds(30)));
  EXPECT_EQ(engine.GetFinished().saved, std::vector<std::string>{"s"});
  EXPECT_EQ(dev->encoded_blocks(), 2 * l.layers);
  EXPECT_EQ(engine.stats().blocks_encoded_on_device, 2);
  EXPECT_EQ(dev->bad_rows(), 0);

  auto hashes = on_dev->HashTokens(tokens, "");
  ASSERT_TRUE(hashes.ok());
  const std::vector<GetItem> got = on_dev->GetBlocks(*hashes);
  const std::vector<GetItem> want = on_host->GetBlocks(*hashes);
  ASSERT_EQ(got.size(), 3u);
  for (size_t b = 0; b < got.size(); ++b) {
    ASSERT_TRUE(got[b].ok() && want[b].ok()) << "block " << b;
    EXPECT_TRUE(*got[b] == *want[b]) << "block " << b << " differs";
  }

  // A refused encode drops the pass's saves, counted (blocks 1 and 2 of
  // another chain: no host block, so the encode meets the refusal).
  dev->FailNextGather();
  const SaveSpec other{"t", Tokens(n, 99), "", ids, 32};
  EXPECT_EQ(engine.SaveLayer(0, {other}).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(engine.stats().saves_dropped, 1);
  EXPECT_EQ(engine.GetFinished().saved, std::vector<std::string>{"t"});
  EXPECT_TRUE(engine.WaitForSave().ok());
}

TEST_P(KvConnectorDeviceEncodeTest, EncodesOnTheDeviceAsTheHostDoes) {
  const auto [dtype, hnd] = GetParam();
  ExpectDeviceEncodeMatchesHost(dtype, hnd, -1);
}

// A key refinement (of the middle layer) is coded on the device too, when
// asked for (kOn): what the layer's key codes leave, coded by its
// refinement and packed into the refinement section, byte for byte the
// host's.
TEST_P(KvConnectorDeviceEncodeTest, EncodesAKeyRefinementOnTheDevice) {
  const auto [dtype, hnd] = GetParam();
  ExpectDeviceEncodeMatchesHost(dtype, hnd, 1);
}

INSTANTIATE_TEST_SUITE_P(Layouts, KvConnectorDeviceEncodeTest,
                         ::testing::Combine(::testing::Values(DType::kFloat16,
                                                              DType::kBfloat16,
                                                              DType::kFloat32),
                                            ::testing::Bool()),
                         LayoutName);

// decode_on_device is refused, naming the option, when the codec cannot
// decode on a device (fp16 blocks) or the device cannot take the codebooks.
TEST(KvConnectorDeviceDecodeErrorsTest, RefusalsNameTheOption) {
  CacheClientOptions o = Options(32);
  o.decode_on_device = DeviceUse::kOn;
  EmbeddedClient fp16(o);
  ASSERT_NE(fp16.client, nullptr);
  Pages p(DType::kFloat16, false);
  KvConnector engine(fp16.client.get());
  testing::FakeKvDevice* dev = nullptr;
  const absl::Status s = RegisterOnFakeDevice(&engine, &p, &dev);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_NE(s.message().find("decode_on_device"), std::string::npos) << s;

  const testing::FittedVq vq = testing::FitVq(SmallLayout());
  auto store = MemoryStore();
  auto c = CacheClient::Create(o, vq.codec, vq.file,
                               std::make_unique<EmbeddedBackend>(store.get()));
  ASSERT_TRUE(c.ok()) << c.status();
  KvConnector engine2(c->get());
  engine2.SetKvDeviceFactoryForTesting(
      [](const PagedKvCaches& caches)
          -> absl::StatusOr<std::unique_ptr<KvDevice>> {
        auto d = std::make_unique<testing::FakeKvDevice>(caches);
        d->RefuseCodebooks();
        return d;
      });
  PagedKvCaches caches = p.Caches();
  caches.device = Device::kCuda;
  const absl::Status r = engine2.RegisterKvCaches(caches);
  EXPECT_EQ(r.code(), absl::StatusCode::kResourceExhausted) << r;
  EXPECT_NE(r.message().find("decode_on_device"), std::string::npos) << r;
}

// Under the default, DeviceUse::kAuto, loads decode and saves encode on the
// device wherever the codec and the device allow it, and registration
// never fails for them: fp16 blocks and a device without room for the
// codebooks leave both paths on the host, with the reason in
// device_paths(). Host pages never use the device.
TEST(KvConnectorDeviceAutoTest, AutoTakesTheDeviceWhereItCanAndSaysWhyNot) {
  const CacheClientOptions o = Options(32);
  ASSERT_EQ(o.decode_on_device, DeviceUse::kAuto);
  ASSERT_EQ(o.encode_on_device, DeviceUse::kAuto);
  EmbeddedClient fp16(o);
  ASSERT_NE(fp16.client, nullptr);
  Pages p(DType::kFloat16, false);
  {
    KvConnector engine(fp16.client.get());
    EXPECT_FALSE(engine.device_paths().decode_on_device) << "unregistered";
    testing::FakeKvDevice* dev = nullptr;
    ASSERT_TRUE(RegisterOnFakeDevice(&engine, &p, &dev).ok());
    const DevicePaths paths = engine.device_paths();
    EXPECT_FALSE(paths.decode_on_device);
    EXPECT_FALSE(paths.encode_on_device);
    EXPECT_NE(paths.decode_on_host_because.find("vq"), std::string::npos)
        << paths.decode_on_host_because;
    EXPECT_EQ(paths.encode_on_host_because, paths.decode_on_host_because);
  }

  const testing::FittedVq vq = testing::FitVq(SmallLayout());
  auto store = MemoryStore();
  auto c = CacheClient::Create(o, vq.codec, vq.file,
                               std::make_unique<EmbeddedBackend>(store.get()));
  ASSERT_TRUE(c.ok()) << c.status();
  {
    KvConnector engine(c->get());
    testing::FakeKvDevice* dev = nullptr;
    ASSERT_TRUE(RegisterOnFakeDevice(&engine, &p, &dev).ok());
    const DevicePaths paths = engine.device_paths();
    EXPECT_TRUE(paths.decode_on_device);
    EXPECT_TRUE(paths.encode_on_device);
    EXPECT_EQ(paths.decode_on_host_because, "");
    EXPECT_EQ(paths.encode_on_host_because, "");
  }
  {
    KvConnector engine(c->get());
    engine.SetKvDeviceFactoryForTesting(
        [](const PagedKvCaches& caches)
            -> absl::StatusOr<std::unique_ptr<KvDevice>> {
          auto d = std::make_unique<testing::FakeKvDevice>(caches);
          d->RefuseCodebooks();
          return d;
        });
    PagedKvCaches caches = p.Caches();
    caches.device = Device::kCuda;
    ASSERT_TRUE(engine.RegisterKvCaches(caches).ok());
    const DevicePaths paths = engine.device_paths();
    EXPECT_FALSE(paths.decode_on_device);
    EXPECT_FALSE(paths.encode_on_device);
    EXPECT_NE(paths.decode_on_host_because.find("no memory to decode"),
              std::string::npos)
        << paths.decode_on_host_because;
    EXPECT_NE(paths.encode_on_host_because.find("no memory to encode"),
              std::string::npos)
        << paths.encode_on_host_because;
  }
  {
    KvConnector engine(c->get());
    ASSERT_TRUE(engine.RegisterKvCaches(p.Caches()).ok());
    const DevicePaths paths = engine.device_paths();
    EXPECT_FALSE(paths.decode_on_device);
    EXPECT_FALSE(paths.encode_on_device);
  }
}

// A device that fails: a refused copy into the pages fails every block of
// the load (the pages may hold part of it); a refused copy out of them
// drops the pass's saves, counted, and the next pass works.
TEST(KvConnectorDeviceTest, DeviceFailuresFailTheLoadAndDropTheSave) {
  EmbeddedClient ec;
  ASSERT_NE(ec.client, nullptr);
  const KvLayout l = SmallLayout();
  const std::vector<int32_t> tokens = Tokens(64);
  const std::vector<float> k = ExactKv(64 * l.ElementsPerToken(), 7);
  ASSERT_TRUE(ec.client->Store(tokens, "", k.data(), k.data()).ok());

  Pages p(DType::kFloat16, false);
  KvConnector engine(ec.client.get());
  testing::FakeKvDevice* dev = nullptr;
  ASSERT_TRUE(RegisterOnFakeDevice(&engine, &p, &dev).ok());
  dev->FailScatterOfLayer(1);
  const std::vector<int32_t> ids = {4, 5, 6, 7};
  ASSERT_TRUE(engine.StartLoad({LoadSpec{"r", tokens, "", ids, 64}}).ok());
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine.WaitForLayerLoad(layer).ok());
  }
  EXPECT_EQ(engine.TakeLoadErrorBlockIds(), ids);
  EXPECT_EQ(engine.stats().loads_failed, 1);
  dev->FailScatterOfLayer(-1);

  dev->FailNextGather();
  SaveSpec save{"s", Tokens(64, 99), "", {0, 1, 2, 3}, 0};
  EXPECT_EQ(engine.SaveLayer(0, {save}).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(engine.stats().saves_dropped, 1);
  EXPECT_EQ(engine.GetFinished().saved, std::vector<std::string>{"s"});
  EXPECT_TRUE(engine.WaitForSave().ok());
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine.SaveLayer(layer, {save}).ok());
  }
  ASSERT_TRUE(engine.WaitForSave().ok());
  ASSERT_TRUE(ec.client->WaitIdle(absl::Seconds(30)));
  EXPECT_EQ(engine.GetFinished().saved, std::vector<std::string>{"s"});
  EXPECT_EQ(engine.stats().saves_dropped, 1);
  EXPECT_EQ(dev->bad_rows(), 0);
}

}  // namespace
}  // namespace vqkv::client
