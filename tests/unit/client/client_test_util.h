// Shared pieces of the client tests: a small layout, KV that survives fp16
// exactly, a tiny fitted VQ codec, and backends that fail on command.
#ifndef VQKV_TESTS_UNIT_CLIENT_CLIENT_TEST_UTIL_H_
#define VQKV_TESTS_UNIT_CLIENT_CLIENT_TEST_UTIL_H_

#include <atomic>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "client/backend.h"
#include "client/cache_client.h"
#include "client/embedded_backend.h"
#include "client/kv_connector.h"
#include "gtest/gtest.h"
#include "kernels/codec_factory.h"
#include "kernels/rope.h"
#include "kernels/vq_codec.h"
#include "storage/tiered_store.h"

namespace vqkv::client::testing {

inline KvLayout SmallLayout() { return KvLayout{3, 2, 16}; }

// Values k/64 in [-4, 4): exact in fp16 and in bf16.
inline std::vector<float> ExactKv(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-256, 255);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(d(rng)) / 64.0f;
  return v;
}

inline std::vector<int32_t> Tokens(int n, int32_t start = 100) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = start + i;
  return t;
}

// What an engine computes for n tokens at positions 0 .. n - 1 under RoPE
// (base 10000, every dimension rotated), [layer][token][head][dim]: keys
// (ExactKv(seed), rotated) and values (ExactKv(seed + 1)).
struct RotatedKv {
  std::vector<float> k, v;
};
inline RotatedKv MakeRotatedKv(const KvLayout& l, int n, uint32_t seed) {
  RotatedKv kv{ExactKv(n * l.ElementsPerToken(), seed),
               ExactKv(n * l.ElementsPerToken(), seed + 1)};
  const Rope rope(l.head_dim, RopeSpec{10000.0, l.head_dim});
  rope.ApplyBlock(kv.k.data(), l.layers, n, l.kv_heads, 0);
  return kv;
}

inline std::unique_ptr<storage::TieredStore> MemoryStore(
    uint64_t bytes = uint64_t{64} << 20) {
  storage::TieredStoreOptions o;
  o.memory_bytes = bytes;
  o.memory_shards = 1;
  auto s = storage::TieredStore::Open(std::move(o));
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

inline CacheClientOptions Options(int block_tokens = 32) {
  CacheClientOptions o;
  o.model_id = "test-model";
  o.block_tokens = block_tokens;
  return o;
}

inline std::shared_ptr<const Codec> Fp16(const KvLayout& layout) {
  auto c = MakeCodec("fp16", layout, nullptr);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::shared_ptr<const Codec>(*std::move(c));
}

// A small VQ codec fitted on random data, and its codebook file.
struct FittedVq {
  std::shared_ptr<const VqCodec> codec;
  std::string file;
};
// With pre-RoPE keys, `key_rope` (when given) is recorded in the set;
// `refine_layer` >= 0 gets a key refinement of 2 stages
// (VqCodec::FitKeyRefinement).
inline FittedVq FitVq(const KvLayout& layout, bool keys_post_rope = true,
                      uint64_t seed = 1,
                      std::optional<RopeSpec> key_rope = std::nullopt,
                      int refine_layer = -1) {
  VqConfig cfg;
  cfg.key_stages = 2;
  cfg.key_bits = 4;
  cfg.value_stages = 2;
  cfg.value_bits = 4;
  cfg.keys_post_rope = keys_post_rope;
  auto c = VqCodec::Create(layout, cfg);
  EXPECT_TRUE(c.ok()) << c.status();
  const int64_t tokens = 256;
  std::vector<float> k = ExactKv(tokens * layout.ElementsPerToken(), 7);
  std::vector<float> v = ExactKv(tokens * layout.ElementsPerToken(), 8);
  FitOptions fo;
  fo.seed = seed;
  EXPECT_TRUE((*c)->Fit(k.data(), v.data(), tokens, fo).ok());
  if (refine_layer >= 0) {
    const int64_t layer_floats = tokens * layout.kv_heads * layout.head_dim;
    EXPECT_TRUE((*c)->FitKeyRefinement(refine_layer,
                                       k.data() + refine_layer * layer_floats,
                                       tokens, 2, fo)
                    .ok());
  }
  if (key_rope) {
    CodebookSet set = (*c)->codebooks();
    EXPECT_TRUE(set.SetKeyRope(*key_rope).ok());
    c = VqCodec::FromCodebookSet(std::move(set));
    EXPECT_TRUE(c.ok()) << c.status();
  }
  auto file = (*c)->codebooks().Serialize();
  EXPECT_TRUE(file.ok());
  return {std::shared_ptr<const VqCodec>(*std::move(c)), *file};
}

// A client of `vq` (its codec and codebook file) over the in-process
// `store`; null, and a test failure, when it cannot be made.
inline std::unique_ptr<CacheClient> NewVqClient(
    const FittedVq& vq, storage::TieredStore* store,
    const CacheClientOptions& options) {
  auto c = CacheClient::Create(options, vq.codec, vq.file,
                               std::make_unique<EmbeddedBackend>(store));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// Options of a client whose engine caches keys in rotate-half order (a
// Hugging Face checkpoint in vLLM or SGLang), 32-token blocks.
inline CacheClientOptions HalfPairOptions() {
  CacheClientOptions o = Options(32);
  o.engine_key_pairs = RopePairs::kHalf;
  return o;
}

// The setup of the device-decode tests: a vq client with pre-RoPE
// codebooks (recording the model's RoPE), an engine in rotate-half order,
// `options` on top, over its own memory store, which holds `n` tokens of
// ExactKv KV (keys seed 3, values 4) stored through the simple API;
// `refine_layer` >= 0: the codebooks refine that layer's keys (FitVq).
struct StoredPreRopeChain {
  std::unique_ptr<storage::TieredStore> store;
  std::unique_ptr<CacheClient> client;
  std::vector<int32_t> tokens;
};
inline StoredPreRopeChain StorePreRopeChain(const KvLayout& l, int n,
                                            CacheClientOptions options,
                                            int refine_layer = -1) {
  const FittedVq vq =
      FitVq(l, false, 1, RopeSpec{10000.0, l.head_dim}, refine_layer);
  options.engine_key_pairs = RopePairs::kHalf;
  StoredPreRopeChain c;
  c.store = MemoryStore();
  c.client = NewVqClient(vq, c.store.get(), options);
  c.tokens = Tokens(n);
  if (c.client == nullptr) return c;
  const std::vector<float> k = ExactKv(n * l.ElementsPerToken(), 3);
  const std::vector<float> v = ExactKv(n * l.ElementsPerToken(), 4);
  EXPECT_TRUE(c.client->Store(c.tokens, "", k.data(), v.data()).ok());
  return c;
}

// The setup of the device-encode tests: two clients of one pre-RoPE vq
// codec (an engine in rotate-half order), each over a memory store of its
// own; `on_dev` encodes saves from CUDA pages on the device
// (encode_on_device), `on_host` does not. refine_layer >= 0: codebooks
// that refine that layer's keys.
struct DeviceAndHostEncoders {
  std::unique_ptr<storage::TieredStore> store_dev, store_host;
  std::unique_ptr<CacheClient> on_dev, on_host;
};
inline DeviceAndHostEncoders MakeDeviceAndHostEncoders(const KvLayout& l,
                                                       int refine_layer = -1) {
  const FittedVq vq =
      FitVq(l, false, 1, RopeSpec{10000.0, l.head_dim}, refine_layer);
  CacheClientOptions o = HalfPairOptions();
  DeviceAndHostEncoders e;
  e.store_dev = MemoryStore();
  e.store_host = MemoryStore();
  o.encode_on_device = DeviceUse::kOff;
  e.on_host = NewVqClient(vq, e.store_host.get(), o);
  o.encode_on_device = DeviceUse::kOn;
  e.on_dev = NewVqClient(vq, e.store_dev.get(), o);
  return e;
}

// Saves `saves` from every layer of `engine`'s pages, as a forward pass
// would, then WaitForSave: the first error of either.
inline absl::Status SaveEveryLayer(KvConnector* engine,
                                   const std::vector<SaveSpec>& saves,
                                   int layers) {
  for (int layer = 0; layer < layers; ++layer) {
    absl::Status s = engine->SaveLayer(layer, saves);
    if (!s.ok()) return s;
  }
  return engine->WaitForSave();
}

// `first` stores 128 tokens (4 blocks of 32) under salt "s"; a client that
// knows only the codebook hash, over `backend`, must find and decode them
// exactly as `first` does.
inline void ExpectSecondClientSharesBlocks(CacheClient* first,
                                           uint64_t codebook_hash,
                                           std::unique_ptr<Backend> backend) {
  const KvLayout l = SmallLayout();
  const std::vector<int32_t> t = Tokens(128);
  const std::vector<float> k = ExactKv(128 * l.ElementsPerToken(), 1);
  const std::vector<float> v = ExactKv(128 * l.ElementsPerToken(), 2);
  auto stored = first->Store(t, "s", k.data(), v.data());
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->stored, 4) << "blocks are stored only once the set is";
  auto second = CacheClient::CreateFromCodebookHash(Options(32), codebook_hash,
                                                    l, std::move(backend));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*(*second)->Lookup(t, "s"), 128);
  std::vector<float> k1(k.size()), v1(v.size()), k2(k.size()), v2(v.size());
  ASSERT_EQ(first->Load(t, "s", k1.data(), v1.data())->tokens, 128);
  ASSERT_EQ((*second)->Load(t, "s", k2.data(), v2.data())->tokens, 128);
  EXPECT_EQ(k1, k2);
  EXPECT_EQ(v1, v2);
  EXPECT_GT((*second)->stats().bytes_received, 0);
}

// Forwards to another backend unless told to fail (UNAVAILABLE), or to
// corrupt the blocks it returns; counts calls.
class ControlledBackend : public Backend {
 public:
  explicit ControlledBackend(Backend* inner) : inner_(inner) {}
  std::atomic<bool> fail{false};
  std::atomic<bool> corrupt{false};
  std::atomic<int> corrupt_index{-1};  // corrupt only this block when >= 0
  std::atomic<int> calls{0};

  absl::StatusOr<std::vector<bool>> Lookup(
      const storage::NamespaceSpec& ns,
      absl::Span<const storage::BlockHash> hashes, uint32_t lease_ms,
      absl::Time deadline) override {
    ++calls;
    if (fail) return absl::UnavailableError("injected");
    return inner_->Lookup(ns, hashes, lease_ms, deadline);
  }
  absl::StatusOr<std::vector<absl::Status>> Put(
      const storage::NamespaceSpec& ns, absl::Span<const PutItem> blocks,
      absl::Time deadline) override {
    ++calls;
    if (fail) return absl::UnavailableError("injected");
    return inner_->Put(ns, blocks, deadline);
  }
  absl::StatusOr<std::vector<GetItem>> Get(
      const storage::NamespaceSpec& ns,
      absl::Span<const storage::BlockHash> hashes,
      absl::Time deadline) override {
    ++calls;
    if (fail) return absl::UnavailableError("injected");
    auto r = inner_->Get(ns, hashes, deadline);
    if (r.ok() && corrupt) {
      for (size_t i = 0; i < r->size(); ++i) {
        GetItem& g = (*r)[i];
        if (corrupt_index >= 0 && static_cast<int>(i) != corrupt_index)
          continue;
        if (g.ok() && g->size() > 100) (*g)[100] ^= 0x5a;
      }
    }
    return r;
  }
  absl::Status PutCodebook(uint64_t hash, absl::string_view data,
                           absl::Time deadline) override {
    ++calls;
    if (fail) return absl::UnavailableError("injected");
    return inner_->PutCodebook(hash, data, deadline);
  }
  absl::StatusOr<std::string> GetCodebook(uint64_t hash,
                                          absl::Time deadline) override {
    ++calls;
    if (fail) return absl::UnavailableError("injected");
    return inner_->GetCodebook(hash, deadline);
  }
  absl::Status PutRendezvous(absl::string_view key, absl::string_view value,
                             absl::Duration ttl, absl::Time deadline) override {
    ++calls;
    if (fail) return absl::UnavailableError("injected");
    return inner_->PutRendezvous(key, value, ttl, deadline);
  }
  absl::StatusOr<std::string> GetRendezvous(absl::string_view key,
                                            absl::Time deadline) override {
    ++calls;
    if (fail) return absl::UnavailableError("injected");
    return inner_->GetRendezvous(key, deadline);
  }
  std::string Describe() const override { return "controlled"; }

 private:
  Backend* inner_;
};

}  // namespace vqkv::client::testing

#endif  // VQKV_TESTS_UNIT_CLIENT_CLIENT_TEST_UTIL_H_
