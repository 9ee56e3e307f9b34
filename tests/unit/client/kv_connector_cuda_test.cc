// The connector's CUDA path on a real GPU (client/cuda/cuda_kv_device.h):
// pages in device memory, saved and loaded through KvConnector, must end up
// byte for byte what the host path gives. Built with CUDA only; skips with
// the reason where there is no GPU (the CUDA-only check, tests/gpu/run.sh,
// cannot build it: it needs the client's Abseil and gRPC).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "client/embedded_backend.h"
#include "client/kv_connector.h"
#include "client/paged_kv.h"
#include "client/peer/peer_link.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_device.h"
#include "kernels/rope.h"
#include "tests/unit/client/client_test_util.h"
#include "tests/unit/client/skip_without_gpu.h"

namespace vqkv::client {
namespace {

using testing::ExactKv;
using testing::MemoryStore;
using testing::Options;
using testing::SmallLayout;
using testing::Tokens;

constexpr int kPages = 16;
constexpr int kPageSize = 16;

// NHD fp16 pages of every layer, in host or device memory.
struct Pages {
  explicit Pages(bool on_device) : on_device(on_device) {
    const KvLayout l = SmallLayout();
    bytes = size_t{kPages} * kPageSize * l.kv_heads * l.head_dim * 2;
    for (int i = 0; i < 2 * l.layers; ++i) {
      void* p = nullptr;
      if (on_device) {
        EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess);
        EXPECT_EQ(cudaMemset(p, 0, bytes), cudaSuccess);
      } else {
        p = calloc(bytes, 1);
      }
      (i % 2 == 0 ? k : v).push_back(p);
    }
  }
  ~Pages() {
    for (auto* list : {&k, &v}) {
      for (void* p : *list) on_device ? (void)cudaFree(p) : free(p);
    }
  }
  PagedKvCaches Caches() const {
    const KvLayout l = SmallLayout();
    PagedKvCaches c = PagedKvCaches::Nhd(k, v, kPages, kPageSize, l.kv_heads,
                                         l.head_dim, DType::kFloat16);
    if (on_device) c.device = Device::kCuda;
    return c;
  }
  // Layer `layer`'s keys (or values) as bytes on the host.
  std::vector<uint8_t> Bytes(int layer, bool keys) const {
    std::vector<uint8_t> out(bytes);
    const void* src = (keys ? k : v)[layer];
    if (on_device) {
      EXPECT_EQ(cudaMemcpy(out.data(), src, bytes, cudaMemcpyDeviceToHost),
                cudaSuccess);
    } else {
      std::memcpy(out.data(), src, bytes);
    }
    return out;
  }
  bool on_device;
  size_t bytes;
  std::vector<void*> k, v;
};

// Writes `kv` ([layer][token][head][dim], keys and values alike) for tokens
// [0, n) into host pages at `ids`, and copies them to the device pages.
void FillBoth(Pages* host, Pages* dev, const std::vector<int32_t>& ids, int n,
              const std::vector<float>& kv) {
  const KvLayout l = SmallLayout();
  const size_t per_layer = static_cast<size_t>(n) * l.kv_heads * l.head_dim;
  for (int layer = 0; layer < l.layers; ++layer) {
    ScatterLayer(host->Caches(), layer, ids, 0, n,
                 kv.data() + layer * per_layer, kv.data() + layer * per_layer);
    ASSERT_EQ(cudaMemcpy(dev->k[layer], host->k[layer], host->bytes,
                         cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dev->v[layer], host->v[layer], host->bytes,
                         cudaMemcpyHostToDevice),
              cudaSuccess);
  }
}

// An fp16 client of SmallLayout over `store`; null (and a failure) if it
// cannot be made.
std::unique_ptr<CacheClient> NewClient(storage::TieredStore* store) {
  auto c = CacheClient::Create(Options(32), testing::Fp16(SmallLayout()), "",
                               std::make_unique<EmbeddedBackend>(store));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

TEST(KvConnectorCudaTest, DevicePagesSaveAndLoadAsHostPagesDo) {
  SKIP_WITHOUT_GPU();
  auto store = MemoryStore();
  std::unique_ptr<CacheClient> client = NewClient(store.get());
  ASSERT_NE(client, nullptr);
  const KvLayout l = SmallLayout();
  const int n = 64;
  const std::vector<int32_t> tokens = Tokens(n);
  const std::vector<float> kv = ExactKv(n * l.ElementsPerToken(), 9);
  std::vector<int32_t> ids(kPages);
  std::iota(ids.rbegin(), ids.rend(), 0);  // pages in reverse order

  // Engine 1 computes into device pages (uploaded from host pages) and saves.
  Pages host1(false), dev1(true);
  ASSERT_NO_FATAL_FAILURE(FillBoth(&host1, &dev1, ids, n, kv));
  KvConnector engine1(client.get());
  ASSERT_TRUE(engine1.RegisterKvCaches(dev1.Caches()).ok());
  SaveSpec save{"s", tokens, "", ids, 0};
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(engine1.SaveLayer(layer, {save}).ok());
  }
  ASSERT_TRUE(engine1.WaitForSave().ok());
  ASSERT_TRUE(client->WaitIdle(absl::Seconds(30)));
  ASSERT_EQ(engine1.stats().saves_dropped, 0);

  // Engine 2 loads into device pages; engine 3 into host pages.
  Pages dev2(true), host3(false);
  KvConnector engine2(client.get()), engine3(client.get());
  ASSERT_TRUE(engine2.RegisterKvCaches(dev2.Caches()).ok());
  ASSERT_TRUE(engine3.RegisterKvCaches(host3.Caches()).ok());
  for (KvConnector* e : {&engine2, &engine3}) {
    ASSERT_TRUE(e->StartLoad({LoadSpec{"r", tokens, "", ids, n}}).ok());
    for (int layer = 0; layer < l.layers; ++layer) {
      ASSERT_TRUE(e->WaitForLayerLoad(layer).ok());
    }
    EXPECT_TRUE(e->TakeLoadErrorBlockIds().empty());
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (int layer = 0; layer < l.layers; ++layer) {
    EXPECT_EQ(dev2.Bytes(layer, true), host3.Bytes(layer, true));
    EXPECT_EQ(dev2.Bytes(layer, false), host3.Bytes(layer, false));
    EXPECT_EQ(host3.Bytes(layer, true), host1.Bytes(layer, true));
  }
}

// The body of LoadsDecodeOnTheGpuAsOnTheHost for codebooks that refine
// `refine_layer`'s keys (-1: none).
void ExpectGpuLoadMatchesHost(int refine_layer) {
  const KvLayout l = SmallLayout();
  const int n = 96;
  CacheClientOptions o = Options(32);
  o.decode_on_device = DeviceUse::kOn;
  testing::StoredPreRopeChain chain =
      testing::StorePreRopeChain(l, n, o, refine_layer);
  ASSERT_NE(chain.client, nullptr);
  CacheClient* client = chain.client.get();
  const std::vector<int32_t>& tokens = chain.tokens;
  std::vector<int32_t> ids(kPages);
  std::iota(ids.rbegin(), ids.rend(), 0);

  Pages dev(true), host(false);
  KvConnector on_gpu(client), on_host(client);
  ASSERT_TRUE(on_gpu.RegisterKvCaches(dev.Caches()).ok());
  ASSERT_TRUE(on_host.RegisterKvCaches(host.Caches()).ok());
  for (KvConnector* e : {&on_gpu, &on_host}) {
    ASSERT_TRUE(e->StartLoad({LoadSpec{"r", tokens, "", ids, n}}).ok());
    for (int layer = 0; layer < l.layers; ++layer) {
      ASSERT_TRUE(e->WaitForLayerLoad(layer).ok());
    }
    EXPECT_TRUE(e->TakeLoadErrorBlockIds().empty());
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(on_gpu.stats().blocks_decoded_on_device, n / 32 - 1);
  const size_t per_layer = size_t{n} * l.kv_heads * l.head_dim;
  for (int layer = 0; layer < l.layers; ++layer) {
    for (bool keys : {true, false}) {
      Pages got(false), want(false);
      const std::vector<uint8_t> gb = dev.Bytes(layer, keys);
      const std::vector<uint8_t> wb = host.Bytes(layer, keys);
      std::vector<float> gf(per_layer), wf(per_layer), unused(per_layer);
      std::memcpy((keys ? got.k : got.v)[layer], gb.data(), gb.size());
      std::memcpy((keys ? want.k : want.v)[layer], wb.data(), wb.size());
      GatherLayer(got.Caches(), layer, ids, 0, n,
                  keys ? gf.data() : unused.data(),
                  keys ? unused.data() : gf.data());
      GatherLayer(want.Caches(), layer, ids, 0, n,
                  keys ? wf.data() : unused.data(),
                  keys ? unused.data() : wf.data());
      for (size_t i = 0; i < per_layer; ++i) {
        ASSERT_LE(std::fabs(gf[i] - wf[i]), (1e-3f + std::fabs(wf[i])) / 1024)
            << "layer " << layer << (keys ? " key " : " value ") << i;
      }
    }
  }
}

// decode_on_device on the GPU (kernels/cuda/paged_decode.cuh): a vq client
// with pre-RoPE codebooks and an engine in rotate-half order loads into
// device pages; they must hold what the host path loads into host pages
// within one fp16 unit in the last place (the device computes each RoPE
// angle directly, the host by recurrence), and every block but the
// chain's first (its exact sink tokens) must have decoded on the GPU.
// Also with codebooks that refine a layer's keys (decode_on_device kOn:
// kAuto leaves them on the host until this has passed on a GPU).
TEST(KvConnectorCudaTest, LoadsDecodeOnTheGpuAsOnTheHost) {
  SKIP_WITHOUT_GPU();
  for (int refine_layer : {-1, 1}) {
    SCOPED_TRACE(refine_layer < 0 ? "codebooks without a key refinement"
                                  : "key refinement of layer 1");
    ExpectGpuLoadMatchesHost(refine_layer);
  }
}

// encode_on_device on the GPU (kernels/cuda/paged_encode.cuh and the
// tensor cores): a save from device pages stores blocks that reconstruct
// the KV within 2% of the error of the blocks a host-page save stores (the
// tensor cores pick within their bf16 bound of the CPU's codeword, so the
// bytes may differ), and every block but the chain's first was encoded on
// the GPU. Also with codebooks that refine a layer's keys (encode_on_device
// kOn: kAuto leaves them on the host until this has passed on a GPU).
void ExpectGpuSaveMatchesHost(int refine_layer) {
  const KvLayout l = SmallLayout();
  testing::DeviceAndHostEncoders clients =
      testing::MakeDeviceAndHostEncoders(l, refine_layer);
  ASSERT_TRUE(clients.on_dev != nullptr && clients.on_host != nullptr);
  CacheClient* on_dev = clients.on_dev.get();
  CacheClient* on_host = clients.on_host.get();
  const int n = 96;
  const std::vector<int32_t> tokens = Tokens(n);
  const std::vector<float> kv = ExactKv(n * l.ElementsPerToken(), 11);
  std::vector<int32_t> ids(kPages);
  std::iota(ids.rbegin(), ids.rend(), 0);
  const size_t per_layer = size_t{n} * l.kv_heads * l.head_dim;

  Pages host(false), dev(true);
  ASSERT_NO_FATAL_FAILURE(FillBoth(&host, &dev, ids, n, kv));
  KvConnector on_gpu(on_dev), on_cpu(on_host);
  ASSERT_TRUE(on_gpu.RegisterKvCaches(dev.Caches()).ok());
  ASSERT_TRUE(on_cpu.RegisterKvCaches(host.Caches()).ok());
  const SaveSpec save{"s", tokens, "", ids, 0};
  for (int layer = 0; layer < l.layers; ++layer) {
    ASSERT_TRUE(on_gpu.SaveLayer(layer, {save}).ok());
    ASSERT_TRUE(on_cpu.SaveLayer(layer, {save}).ok());
  }
  ASSERT_TRUE(on_gpu.WaitForSave().ok());
  ASSERT_TRUE(on_cpu.WaitForSave().ok());
  ASSERT_TRUE(on_dev->WaitIdle(absl::Seconds(30)));
  ASSERT_TRUE(on_host->WaitIdle(absl::Seconds(30)));
  EXPECT_EQ(on_gpu.stats().blocks_encoded_on_device, n / 32 - 1);
  ASSERT_EQ(*on_dev->Lookup(tokens, ""), n);

  // The pages' KV as fp16 rounded it, and both stores' reconstructions.
  std::vector<float> want_k(per_layer * l.layers), want_v(want_k.size());
  for (int layer = 0; layer < l.layers; ++layer) {
    GatherLayer(host.Caches(), layer, ids, 0, n,
                want_k.data() + layer * per_layer,
                want_v.data() + layer * per_layer);
  }
  double err[2] = {0, 0};
  CacheClient* both[2] = {on_dev, on_host};
  for (int c = 0; c < 2; ++c) {
    std::vector<float> k(want_k.size()), v(want_v.size());
    auto loaded = both[c]->Load(tokens, "", k.data(), v.data());
    ASSERT_TRUE(loaded.ok());
    ASSERT_EQ(loaded->tokens, n);
    for (size_t i = 0; i < k.size(); ++i) {
      err[c] += (k[i] - want_k[i]) * (k[i] - want_k[i]) +
                (v[i] - want_v[i]) * (v[i] - want_v[i]);
    }
  }
  EXPECT_LE(err[0], 1.02 * err[1] + 1e-9)
      << "GPU-encoded blocks reconstruct worse than CPU-encoded ones";
}

TEST(KvConnectorCudaTest, SavesEncodeOnTheGpuAsWellAsOnTheHost) {
  SKIP_WITHOUT_GPU();
  for (int refine_layer : {-1, 1}) {
    SCOPED_TRACE(refine_layer < 0 ? "codebooks without a key refinement"
                                  : "key refinement of layer 1");
    ExpectGpuSaveMatchesHost(refine_layer);
  }
}

// Disaggregated serving on one GPU: a prefill engine whose saves encode on
// the GPU from its pages sends each layer's slices as soon as the GPU has
// encoded it (client/peer/); a decode engine with an empty cache loads the
// handoff into its own device pages (decoding on the GPU), and gets what a
// third engine loading the prefill's cache gets, byte for byte.
TEST(KvConnectorCudaTest, HandsOffLayerByLayerBetweenTwoEngines) {
  SKIP_WITHOUT_GPU();
  const KvLayout l = SmallLayout();
  testing::DeviceAndHostEncoders clients =
      testing::MakeDeviceAndHostEncoders(l);
  ASSERT_TRUE(clients.on_dev != nullptr && clients.on_host != nullptr);
  CacheClient* prefill_client = clients.on_dev.get();
  CacheClient* decode_client = clients.on_host.get();  // an empty cache
  const int n = 96;
  const std::vector<int32_t> tokens = Tokens(n);
  const std::vector<float> kv = ExactKv(n * l.ElementsPerToken(), 13);
  std::vector<int32_t> ids(kPages);
  std::iota(ids.rbegin(), ids.rend(), 0);

  Pages host(false), pages(true);
  ASSERT_NO_FATAL_FAILURE(FillBoth(&host, &pages, ids, n, kv));
  auto [to_decode, from_prefill] = NewLoopbackPeerLinks();
  KvConnector prefill(prefill_client);
  ASSERT_TRUE(prefill.RegisterKvCaches(pages.Caches()).ok());
  ASSERT_TRUE(prefill.device_paths().encode_on_device);
  ASSERT_TRUE(prefill.AttachPeer(std::move(to_decode)).ok());
  SaveSpec save{"r", tokens, "", ids, 0};
  save.send_to_peer = true;
  ASSERT_TRUE(testing::SaveEveryLayer(&prefill, {save}, l.layers).ok());
  ASSERT_TRUE(prefill_client->WaitIdle(absl::Seconds(30)));

  Pages want(true), got(true);
  KvConnector reference(prefill_client), decode(decode_client);
  ASSERT_TRUE(reference.RegisterKvCaches(want.Caches()).ok());
  ASSERT_TRUE(decode.RegisterKvCaches(got.Caches()).ok());
  PeerOptions po;
  po.wait = absl::Seconds(20);
  ASSERT_TRUE(decode.AttachPeer(std::move(from_prefill), po).ok());
  LoadSpec load{"r", tokens, "", ids, n};
  ASSERT_TRUE(reference.StartLoad({load}).ok());
  ASSERT_TRUE(reference.WaitForLayerLoad(l.layers - 1).ok());
  load.from_peer = true;
  ASSERT_TRUE(decode.StartLoad({load}).ok());
  ASSERT_TRUE(decode.WaitForLayerLoad(l.layers - 1).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(reference.TakeLoadErrorBlockIds().empty());
  EXPECT_TRUE(decode.TakeLoadErrorBlockIds().empty());
  prefill.Shutdown(absl::Seconds(5));
  EXPECT_EQ(prefill.stats().peer_layers_sent, l.layers);
  EXPECT_EQ(decode.stats().peer_blocks_loaded, n / 32);
  EXPECT_EQ(*decode_client->Lookup(tokens, ""), 0);
  for (int layer = 0; layer < l.layers; ++layer) {
    for (bool keys : {true, false}) {
      EXPECT_TRUE(got.Bytes(layer, keys) == want.Bytes(layer, keys))
          << "layer " << layer << (keys ? " keys" : " values");
    }
  }
}

TEST(KvConnectorCudaTest, HostMemoryIsNotDevicePages) {
  SKIP_WITHOUT_GPU();
  auto store = MemoryStore();
  std::unique_ptr<CacheClient> client = NewClient(store.get());
  ASSERT_NE(client, nullptr);
  Pages host(false);
  PagedKvCaches caches = host.Caches();
  caches.device = Device::kCuda;
  KvConnector engine(client.get());
  const absl::Status s = engine.RegisterKvCaches(caches);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("not memory of CUDA device"), std::string::npos)
      << s;
}

}  // namespace
}  // namespace vqkv::client
