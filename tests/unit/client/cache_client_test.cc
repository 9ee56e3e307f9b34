// CacheClient over an in-process store: round trips, partial prefixes,
// isolation, verification, the circuit breaker and codebook exchange.
#include "client/cache_client.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "client/embedded_backend.h"
#include "gtest/gtest.h"
#include "kernels/block.h"
#include "kernels/rope.h"
#include "kernels/vq_codec.h"
#include "tests/testing/counting_batch_encoder.h"
#include "tests/unit/client/client_test_util.h"

namespace vqkv::client {
namespace {

using testing::ControlledBackend;
using testing::ExactKv;
using testing::Fp16;
using testing::MemoryStore;
using testing::Options;
using testing::SmallLayout;
using testing::Tokens;

class CacheClientTest : public ::testing::Test {
 protected:
  void SetUp() override { store_ = MemoryStore(); }

  std::unique_ptr<CacheClient> NewClient(
      CacheClientOptions options = Options(),
      std::shared_ptr<const Codec> codec = nullptr,
      std::string codebooks = "") {
    if (codec == nullptr) codec = Fp16(SmallLayout());
    auto c = CacheClient::Create(
        std::move(options), std::move(codec), std::move(codebooks),
        std::make_unique<EmbeddedBackend>(store_.get()));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // KV buffers for n tokens in the simple API's layout.
  static std::vector<float> Kv(int n, uint32_t seed) {
    return ExactKv(n * SmallLayout().ElementsPerToken(), seed);
  }

  std::unique_ptr<storage::TieredStore> store_;
};

TEST_F(CacheClientTest, StoreThenLoadIsExactWithFp16) {
  auto client = NewClient();
  const int n = 100;  // 3 full blocks of 32 and a partial one
  const std::vector<int32_t> tokens = Tokens(n);
  const std::vector<float> k = Kv(n, 1), v = Kv(n, 2);
  auto stored = client->Store(tokens, "", k.data(), v.data());
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->blocks, 3);
  EXPECT_EQ(stored->stored, 3);
  EXPECT_GT(stored->bytes_sent, 0);

  auto cached = client->Lookup(tokens, "");
  ASSERT_TRUE(cached.ok());
  EXPECT_EQ(*cached, 96);

  std::vector<float> k2(k.size(), -99.0f), v2(v.size(), -99.0f);
  auto loaded = client->Load(tokens, "", k2.data(), v2.data());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->tokens, 96);
  EXPECT_EQ(loaded->blocks, 3);
  const KvLayout l = SmallLayout();
  const int row = l.kv_heads * l.head_dim;
  for (int layer = 0; layer < l.layers; ++layer) {
    for (int t = 0; t < n; ++t) {
      for (int e = 0; e < row; ++e) {
        const size_t i = (static_cast<size_t>(layer) * n + t) * row + e;
        if (t < 96) {
          ASSERT_EQ(k2[i], k[i]) << "layer " << layer << " token " << t;
          ASSERT_EQ(v2[i], v[i]);
        } else {
          ASSERT_EQ(k2[i], -99.0f) << "the partial block must be untouched";
        }
      }
    }
  }
  // Storing again stores nothing new.
  auto again = client->Store(tokens, "", k.data(), v.data());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->stored, 0);
  EXPECT_EQ(again->already_present, 3);
}

TEST_F(CacheClientTest, PartialPrefixAndDivergence) {
  auto client = NewClient();
  const std::vector<int32_t> doc = Tokens(64);
  const std::vector<float> k = Kv(64, 3), v = Kv(64, 4);
  ASSERT_TRUE(client->Store(doc, "", k.data(), v.data()).ok());
  // The same 64 tokens then a different continuation: 2 blocks cached.
  std::vector<int32_t> longer = doc;
  for (int i = 0; i < 64; ++i) longer.push_back(5000 + i);
  EXPECT_EQ(*client->Lookup(longer, ""), 64);
  // A different token in block 1: only block 0 is shared.
  std::vector<int32_t> diverged = doc;
  diverged[40] = 7;
  EXPECT_EQ(*client->Lookup(diverged, ""), 32);
  // Fewer tokens than a block: nothing to look up.
  EXPECT_EQ(*client->Lookup(Tokens(31), ""), 0);
}

TEST_F(CacheClientTest, SaltAndModelIsolation) {
  auto client = NewClient();
  const std::vector<int32_t> t = Tokens(64);
  const std::vector<float> k = Kv(64, 5), v = Kv(64, 6);
  ASSERT_TRUE(client->Store(t, "alice", k.data(), v.data()).ok());
  EXPECT_EQ(*client->Lookup(t, "alice"), 64);
  EXPECT_EQ(*client->Lookup(t, "bob"), 0);
  EXPECT_EQ(*client->Lookup(t, ""), 0);
  CacheClientOptions other = Options();
  other.model_id = "another-model";
  auto client2 = NewClient(other);
  EXPECT_EQ(*client2->Lookup(t, "alice"), 0);
  // Another block size is another namespace too.
  auto client3 = NewClient(Options(16));
  EXPECT_EQ(*client3->Lookup(t, "alice"), 0);
}

TEST_F(CacheClientTest, ConfigurationFaultsAreErrors) {
  auto bad = [&](CacheClientOptions o) {
    return CacheClient::Create(std::move(o), Fp16(SmallLayout()), "",
                               std::make_unique<EmbeddedBackend>(store_.get()))
        .status()
        .code();
  };
  CacheClientOptions o = Options();
  o.block_tokens = 17;
  EXPECT_EQ(bad(o), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.model_id = "";
  EXPECT_EQ(bad(o), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.sink_tokens = 33;
  EXPECT_EQ(bad(o), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.engine_key_pairs = static_cast<RopePairs>(2);
  EXPECT_EQ(bad(o), absl::StatusCode::kInvalidArgument);

  auto client = NewClient();
  std::vector<int32_t> t = Tokens(64);
  t[5] = -3;
  EXPECT_EQ(client->Lookup(t, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> k = Kv(64, 1);
  EXPECT_EQ(client->Store(t, "", k.data(), k.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Store(Tokens(64), "", nullptr, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CacheClientTest, CorruptBlockNeverReachesTheBuffers) {
  storage::TieredStore* store = store_.get();
  EmbeddedBackend inner(store);
  auto controlled = std::make_unique<ControlledBackend>(&inner);
  ControlledBackend* ctl = controlled.get();
  auto c = CacheClient::Create(Options(), Fp16(SmallLayout()), "",
                               std::move(controlled));
  ASSERT_TRUE(c.ok());
  auto& client = *c;
  const std::vector<int32_t> t = Tokens(64);
  const std::vector<float> k = Kv(64, 9), v = Kv(64, 10);
  ASSERT_TRUE(client->Store(t, "", k.data(), v.data()).ok());
  ctl->corrupt = true;
  std::vector<float> k2(k.size(), 1.5f), v2(v.size(), 1.5f);
  auto loaded = client->Load(t, "", k2.data(), v2.data());
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->tokens, 0);
  EXPECT_TRUE(
      std::all_of(k2.begin(), k2.end(), [](float x) { return x == 1.5f; }));
  EXPECT_TRUE(
      std::all_of(v2.begin(), v2.end(), [](float x) { return x == 1.5f; }));
  EXPECT_EQ(client->stats().blocks_load_failed, 2);
}

// Blocks decode in parallel, but delivery stops at the first bad one: the
// blocks before it are written, nothing after it is.
TEST_F(CacheClientTest, ParallelDecodeStopsAtTheFirstBadBlock) {
  EmbeddedBackend inner(store_.get());
  auto controlled = std::make_unique<ControlledBackend>(&inner);
  ControlledBackend* ctl = controlled.get();
  CacheClientOptions o = Options();
  o.decode_threads = 4;
  auto c =
      CacheClient::Create(o, Fp16(SmallLayout()), "", std::move(controlled));
  ASSERT_TRUE(c.ok());
  auto& client = *c;
  const int n = 7 * 32;
  const std::vector<int32_t> t = Tokens(n);
  const std::vector<float> k = Kv(n, 41), v = Kv(n, 42);
  ASSERT_EQ(client->Store(t, "", k.data(), v.data())->stored, 7);
  ctl->corrupt = true;
  ctl->corrupt_index = 5;
  std::vector<float> k2(k.size(), 2.5f), v2(v.size(), 2.5f);
  auto loaded = client->Load(t, "", k2.data(), v2.data());
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->tokens, 5 * 32);
  const KvLayout l = SmallLayout();
  const int row = l.kv_heads * l.head_dim;
  for (int layer = 0; layer < l.layers; ++layer) {
    for (int tok = 0; tok < n; ++tok) {
      const size_t i = (static_cast<size_t>(layer) * n + tok) * row;
      if (tok < 160) {
        ASSERT_EQ(k2[i], k[i]);
        ASSERT_EQ(v2[i + row - 1], v[i + row - 1]);
      } else {
        ASSERT_EQ(k2[i], 2.5f) << "token " << tok << " was written";
        ASSERT_EQ(v2[i], 2.5f);
      }
    }
  }
  EXPECT_EQ(client->stats().blocks_loaded, 5);
  EXPECT_EQ(client->stats().blocks_load_failed, 2);
}

TEST_F(CacheClientTest, CircuitOpensThenRecoversAfterAProbe) {
  EmbeddedBackend inner(store_.get());
  auto controlled = std::make_unique<ControlledBackend>(&inner);
  ControlledBackend* ctl = controlled.get();
  absl::Time now = absl::FromUnixSeconds(1000);
  CacheClientOptions o = Options();
  o.circuit.failures_to_open = 3;
  o.circuit.probe_interval = absl::Seconds(1);
  o.circuit.clock = [&now] { return now; };
  auto c =
      CacheClient::Create(o, Fp16(SmallLayout()), "", std::move(controlled));
  ASSERT_TRUE(c.ok());
  auto& client = *c;
  const std::vector<int32_t> t = Tokens(64);
  const std::vector<float> k = Kv(64, 11), v = Kv(64, 12);
  ASSERT_TRUE(client->Store(t, "", k.data(), v.data()).ok());

  ctl->fail = true;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(*client->Lookup(t, ""), 0);
  EXPECT_TRUE(client->stats().circuit_open);
  const int calls = ctl->calls;
  // Open: misses at once, without calling the backend.
  for (int i = 0; i < 10; ++i) EXPECT_EQ(*client->Lookup(t, ""), 0);
  EXPECT_EQ(ctl->calls, calls);
  std::vector<float> k2(k.size());
  EXPECT_EQ(client->Load(t, "", k2.data(), k2.data())->tokens, 0);
  EXPECT_EQ(ctl->calls, calls);

  // The backend is back; after the probe interval one call closes it.
  ctl->fail = false;
  EXPECT_EQ(*client->Lookup(t, ""), 0);  // still before the probe time
  now += absl::Seconds(1);
  EXPECT_EQ(*client->Lookup(t, ""), 64);
  EXPECT_FALSE(client->stats().circuit_open);
  EXPECT_GE(client->stats().lookup_errors, 13);
}

TEST_F(CacheClientTest, UnreachableServerIsAMissNotAnError) {
  EmbeddedBackend inner(store_.get());
  auto controlled = std::make_unique<ControlledBackend>(&inner);
  controlled->fail = true;
  auto c = CacheClient::Create(Options(), Fp16(SmallLayout()), "",
                               std::move(controlled));
  ASSERT_TRUE(c.ok());
  const std::vector<int32_t> t = Tokens(64);
  const std::vector<float> k = Kv(64, 1);
  auto s = (*c)->Store(t, "", k.data(), k.data());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->stored, 0);
  EXPECT_EQ(s->failed, 2);
  EXPECT_EQ(*(*c)->Lookup(t, ""), 0);
}

// The scheduler's lookup leases the prefix; saves of other requests that
// fill the cache before the load do not evict it. Without the lease they do.
TEST_F(CacheClientTest, LeaseKeepsLookedUpBlocksThroughEvictionPressure) {
  const int64_t block_bytes = 64 + 4 * 32 * SmallLayout().ElementsPerToken();
  for (bool lease : {true, false}) {
    store_ = MemoryStore(static_cast<uint64_t>(6 * block_bytes));
    auto client = NewClient();
    const std::vector<int32_t> doc = Tokens(64);
    const std::vector<float> k = Kv(64, 31);
    ASSERT_EQ(client->Store(doc, "", k.data(), k.data())->stored, 2);
    ASSERT_EQ(*client->Lookup(doc, "", lease), 64);
    // Other requests' blocks, three times the memory budget.
    for (int r = 0; r < 9; ++r) {
      const std::vector<int32_t> other = Tokens(64, 10000 + 100 * r);
      client->Store(other, "", k.data(), k.data()).IgnoreError();
    }
    std::vector<float> out(k.size());
    auto loaded = client->Load(doc, "", out.data(), out.data());
    ASSERT_TRUE(loaded.ok());
    if (lease) {
      EXPECT_EQ(loaded->tokens, 64) << "leased blocks were evicted";
      EXPECT_EQ(out, k);
    } else {
      EXPECT_EQ(loaded->tokens, 0) << "the control should lose its blocks";
    }
  }
}

TEST_F(CacheClientTest, LookupAsyncAnswers) {
  auto client = NewClient();
  const std::vector<int32_t> t = Tokens(64);
  const std::vector<float> k = Kv(64, 1);
  ASSERT_TRUE(client->Store(t, "", k.data(), k.data()).ok());
  absl::Notification done;
  int64_t got = -1;
  client->LookupAsync(t, "", [&](absl::StatusOr<int64_t> r) {
    got = r.ok() ? *r : -2;
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(got, 64);
}

TEST_F(CacheClientTest, VqBlocksRoundTripAndASecondClientFetchesCodebooks) {
  const testing::FittedVq vq = testing::FitVq(SmallLayout());
  auto first = NewClient(Options(), vq.codec, vq.file);
  ASSERT_NE(first, nullptr);
  const std::vector<int32_t> t = Tokens(64);
  const std::vector<float> k = Kv(64, 21), v = Kv(64, 22);
  auto stored = first->Store(t, "", k.data(), v.data());
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->stored, 2);
  // Stored blocks are much smaller than fp16 (4+4 bits x 2 stages... of 16
  // dims), with the sink section in block 0.
  EXPECT_LT(stored->bytes_sent, 64 * SmallLayout().ElementsPerToken() * 2);

  std::vector<float> k1(k.size()), v1(v.size());
  ASSERT_EQ(first->Load(t, "", k1.data(), v1.data())->tokens, 64);

  // A second client knows only the hash: it fetches and verifies the set.
  auto second = CacheClient::CreateFromCodebookHash(
      Options(), vq.codec->codebook_hash(), SmallLayout(),
      std::make_unique<EmbeddedBackend>(store_.get()));
  ASSERT_TRUE(second.ok()) << second.status();
  std::vector<float> k2(k.size()), v2(v.size());
  auto loaded = (*second)->Load(t, "", k2.data(), v2.data());
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->tokens, 64);
  EXPECT_EQ(k1, k2);
  EXPECT_EQ(v1, v2);
  // The sink tokens of block 0 are exact; coded tokens are approximations.
  const int row = SmallLayout().kv_heads * SmallLayout().head_dim;
  for (int e = 0; e < 4 * row; ++e) EXPECT_EQ(k1[e], k[e]);
  EXPECT_NE(std::vector<float>(k1.begin() + 4 * row, k1.begin() + 32 * row),
            std::vector<float>(k.begin() + 4 * row, k.begin() + 32 * row));
}

// Store hands all its missing blocks to the codec at once: one batch
// encoder call (one GPU launch with encode_cuda_device), the same blocks.
TEST_F(CacheClientTest, StoreEncodesItsBlocksInOneBatch) {
  const testing::FittedVq vq = testing::FitVq(SmallLayout());
  absl::StatusOr<std::unique_ptr<VqCodec>> batched =
      VqCodec::FromCodebookSet(vq.codec->codebooks());
  ASSERT_TRUE(batched.ok());
  auto encoder = std::make_shared<::vqkv::testing::CountingBatchEncoder>();
  (*batched)->SetBatchEncoder(encoder);
  auto client = NewClient(
      Options(), std::shared_ptr<const Codec>(*std::move(batched)), vq.file);
  ASSERT_NE(client, nullptr);
  const std::vector<int32_t> t = Tokens(96);
  const std::vector<float> k = Kv(96, 31), v = Kv(96, 32);
  auto stored = client->Store(t, "", k.data(), v.data());
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->stored, 3);
  EXPECT_EQ(encoder->calls.load(), 1);
  std::vector<float> kb(k.size()), vb(v.size());
  ASSERT_EQ(client->Load(t, "", kb.data(), vb.data())->tokens, 96);

  // A CPU client of another store: the same blocks decode the same.
  client.reset();  // before the store it reads goes
  store_ = MemoryStore();
  auto cpu = NewClient(Options(), vq.codec, vq.file);
  ASSERT_NE(cpu, nullptr);
  ASSERT_TRUE(cpu->Store(t, "", k.data(), v.data()).ok());
  std::vector<float> kc(k.size()), vc(v.size());
  ASSERT_EQ(cpu->Load(t, "", kc.data(), vc.data())->tokens, 96);
  EXPECT_EQ(kb, kc);
  EXPECT_EQ(vb, vc);
}

// A codebook set with a key refinement (codebook format 5) travels whole:
// the namespace names it, its blocks carry the flag and the extra codes, and
// they load with the refined layer's keys closer to the stored ones.
TEST_F(CacheClientTest, KeyRefinementIsStoredAndLoaded) {
  const KvLayout l = SmallLayout();
  const testing::FittedVq vq = testing::FitVq(l);
  auto refined = VqCodec::FromCodebookSet(vq.codec->codebooks());
  ASSERT_TRUE(refined.ok()) << refined.status();
  const int64_t fit_tokens = 256;
  const std::vector<float> fit_keys =
      testing::ExactKv(fit_tokens * l.ElementsPerToken(), 7);
  ASSERT_TRUE((*refined)
                  ->FitKeyRefinement(
                      1, fit_keys.data() + fit_tokens * l.kv_heads * l.head_dim,
                      fit_tokens, 2, {})
                  .ok());
  const std::string refined_file = *(*refined)->codebooks().Serialize();
  const testing::FittedVq rvq{
      std::shared_ptr<const VqCodec>(*std::move(refined)), refined_file};
  auto plain = NewClient(Options(), vq.codec, vq.file);
  auto client = NewClient(Options(), rvq.codec, rvq.file);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(absl::EndsWith(client->namespace_spec().codec, ":kr=2@1"))
      << client->namespace_spec().codec;
  const std::vector<int32_t> t = Tokens(64);
  const std::vector<float> k = Kv(64, 31), v = Kv(64, 32);
  ASSERT_TRUE(plain->Store(t, "", k.data(), v.data()).ok());
  EXPECT_EQ(*client->Lookup(t, ""), 0);  // another codebook set
  auto stored = client->Store(t, "", k.data(), v.data());
  ASSERT_TRUE(stored.ok()) << stored.status();
  std::vector<float> k1(k.size()), v1(v.size()), k2(k.size()), v2(v.size());
  ASSERT_EQ(plain->Load(t, "", k1.data(), v1.data())->tokens, 64);
  ASSERT_EQ(client->Load(t, "", k2.data(), v2.data())->tokens, 64);
  EXPECT_EQ(v1, v2);
  const size_t per_layer = 64 * l.kv_heads * l.head_dim;
  double before = 0, after = 0;
  for (size_t i = 0; i < k.size(); ++i) {
    if (i / per_layer != 1) {
      ASSERT_EQ(k1[i], k2[i]) << i;  // only layer 1 is refined
      continue;
    }
    before += (k1[i] - k[i]) * (k1[i] - k[i]);
    after += (k2[i] - k[i]) * (k2[i] - k[i]);
  }
  EXPECT_LT(after, before);
}

// The key sketch is an encoding setting in the codec descriptor: a client
// with it reads and writes its own blocks, never those of a client without.
TEST_F(CacheClientTest, KeySketchClientsHaveTheirOwnNamespace) {
  const testing::FittedVq vq = testing::FitVq(SmallLayout());
  auto plain = NewClient(Options(), vq.codec, vq.file);
  ASSERT_NE(plain, nullptr);
  const std::vector<int32_t> t = Tokens(64);
  const std::vector<float> k = Kv(64, 31), v = Kv(64, 32);
  ASSERT_TRUE(plain->Store(t, "", k.data(), v.data()).ok());

  auto sketched = CacheClient::CreateFromCodebookHash(
      Options(), vq.codec->codebook_hash(), SmallLayout(),
      std::make_unique<EmbeddedBackend>(store_.get()), /*key_sketch_bits=*/16);
  ASSERT_TRUE(sketched.ok()) << sketched.status();
  EXPECT_TRUE(absl::EndsWith((*sketched)->namespace_spec().codec, ":ks=16"))
      << (*sketched)->namespace_spec().codec;
  EXPECT_EQ(*(*sketched)->Lookup(t, ""), 0);
  ASSERT_TRUE((*sketched)->Store(t, "", k.data(), v.data()).ok());
  std::vector<float> k1(k.size()), v1(v.size()), k2(k.size()), v2(v.size());
  ASSERT_EQ(plain->Load(t, "", k1.data(), v1.data())->tokens, 64);
  ASSERT_EQ((*sketched)->Load(t, "", k2.data(), v2.data())->tokens, 64);
  EXPECT_EQ(v1, v2);  // values are coded alike
  EXPECT_NE(k1, k2);  // keys carry the sketch's correction

  // The sketch on layers 2.. only: a namespace of its own again; layers 0-1
  // load as without a sketch, layer 2 as with it everywhere.
  auto later = CacheClient::CreateFromCodebookHash(
      Options(), vq.codec->codebook_hash(), SmallLayout(),
      std::make_unique<EmbeddedBackend>(store_.get()), /*key_sketch_bits=*/16,
      /*key_sketch_first_layer=*/2);
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_TRUE(absl::EndsWith((*later)->namespace_spec().codec, ":ks=16@2"))
      << (*later)->namespace_spec().codec;
  EXPECT_EQ(*(*later)->Lookup(t, ""), 0);
  ASSERT_TRUE((*later)->Store(t, "", k.data(), v.data()).ok());
  std::vector<float> k3(k.size()), v3(v.size());
  ASSERT_EQ((*later)->Load(t, "", k3.data(), v3.data())->tokens, 64);
  const size_t two_layers = k.size() / 3 * 2;
  EXPECT_TRUE(std::equal(k3.begin(), k3.begin() + two_layers, k1.begin()));
  EXPECT_TRUE(
      std::equal(k3.begin() + two_layers, k3.end(), k2.begin() + two_layers));
  EXPECT_EQ(v3, v1);

  auto bad = CacheClient::CreateFromCodebookHash(
      Options(), vq.codec->codebook_hash(), SmallLayout(),
      std::make_unique<EmbeddedBackend>(store_.get()), /*key_sketch_bits=*/12);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  auto past_the_end = CacheClient::CreateFromCodebookHash(
      Options(), vq.codec->codebook_hash(), SmallLayout(),
      std::make_unique<EmbeddedBackend>(store_.get()), /*key_sketch_bits=*/16,
      /*key_sketch_first_layer=*/3);
  EXPECT_EQ(past_the_end.status().code(), absl::StatusCode::kInvalidArgument);
}

// Codebooks of pre-RoPE keys that record the model's RoPE: the client takes
// the post-RoPE keys engines cache, un-rotates each by its position
// (block n holds positions n * block_tokens ..), codes it, and rotates the
// decoded key back. Exactly that, block by block, is what Load returns.
TEST_F(CacheClientTest, PreRopeCodebooksCodeKeysWithoutTheirPosition) {
  const KvLayout l = SmallLayout();
  const RopeSpec spec{10000.0, l.head_dim, RopePairs::kAdjacent};
  const Rope rope(l.head_dim, spec);
  const testing::FittedVq vq = testing::FitVq(l, false, 1, spec);
  auto client = NewClient(Options(), vq.codec, vq.file);
  ASSERT_NE(client, nullptr);
  constexpr int kTokens = 96, kB = 32;
  const int64_t row = int64_t{l.kv_heads} * l.head_dim;
  // Pre-RoPE keys like the calibration keys; the engine holds them rotated
  // by position ([layer][token][head][dim]).
  const std::vector<float> pre_keys = Kv(kTokens, 41);
  std::vector<float> k = pre_keys;
  rope.ApplyBlock(k.data(), l.layers, kTokens, l.kv_heads, 0);
  const std::vector<float> v = Kv(kTokens, 42);
  const std::vector<int32_t> t = Tokens(kTokens);
  auto stored = client->Store(t, "", k.data(), v.data());
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->stored, 3);
  std::vector<float> got_k(k.size()), got_v(v.size());
  ASSERT_EQ(client->Load(t, "", got_k.data(), got_v.data())->tokens, kTokens);

  double err_loaded = 0, err_direct = 0;
  for (int b = 0; b < kTokens / kB; ++b) {
    // The block's keys and values, [layer][kB][head][dim].
    std::vector<float> bk(static_cast<size_t>(l.layers * kB * row)), bv(bk);
    std::vector<float> pre(bk.size());
    for (int layer = 0; layer < l.layers; ++layer) {
      const size_t from = static_cast<size_t>((layer * kTokens + b * kB) * row);
      const size_t to = static_cast<size_t>(layer * kB * row);
      std::copy_n(k.begin() + from, kB * row, bk.begin() + to);
      std::copy_n(v.begin() + from, kB * row, bv.begin() + to);
      std::copy_n(pre_keys.begin() + from, kB * row, pre.begin() + to);
    }
    std::vector<float> unrotated = bk;
    rope.InvertBlock(unrotated.data(), l.layers, kB, l.kv_heads, b * kB);
    BlockOptions bo;
    bo.fp16_tokens = b == 0 ? Options().sink_tokens : 0;
    auto block = EncodeBlock(*vq.codec, unrotated.data(), bv.data(), kB, bo);
    ASSERT_TRUE(block.ok()) << block.status();
    BlockHeader header;
    std::memcpy(&header, block->data(), sizeof(header));
    EXPECT_EQ(header.flags & kBlockKeysPostRope, 0u);
    std::vector<float> dk(bk.size()), dv(bv.size());
    ASSERT_TRUE(DecodeBlock(*vq.codec, block->data(), block->size(), kB,
                            dk.data(), dv.data())
                    .ok());
    // The same error as coding the pre-RoPE keys themselves: rotation
    // keeps lengths.
    for (size_t i = 0; i < dk.size(); ++i) {
      err_direct += (dk[i] - pre[i]) * (dk[i] - pre[i]);
    }
    rope.ApplyBlock(dk.data(), l.layers, kB, l.kv_heads, b * kB);
    for (int layer = 0; layer < l.layers; ++layer) {
      for (int64_t i = 0; i < kB * row; ++i) {
        const size_t at =
            static_cast<size_t>((layer * kTokens + b * kB) * row + i);
        const size_t in = static_cast<size_t>(layer * kB * row + i);
        ASSERT_EQ(got_k[at], dk[in]) << "block " << b << " layer " << layer;
        ASSERT_EQ(got_v[at], dv[in]);
        err_loaded += (got_k[at] - k[at]) * (got_k[at] - k[at]);
      }
    }
  }
  EXPECT_GT(err_direct, 0);
  EXPECT_NEAR(err_loaded, err_direct, 1e-3 * err_direct);

  // The blocks say they hold pre-RoPE keys; a post-RoPE client refuses one.
  auto hashes = client->HashTokens(t, "");
  ASSERT_TRUE(hashes.ok());
  std::vector<GetItem> items = client->GetBlocks(*hashes);
  ASSERT_TRUE(items[1].ok());
  // VerifyAndDecode places block 1 as Load did.
  std::vector<float> k1(static_cast<size_t>(l.layers * kB * row)), v1(k1);
  ASSERT_TRUE(client->VerifyAndDecode(*items[1], 1, k1.data(), v1.data()).ok());
  for (int layer = 0; layer < l.layers; ++layer) {
    EXPECT_TRUE(std::equal(k1.begin() + layer * kB * row,
                           k1.begin() + (layer + 1) * kB * row,
                           got_k.begin() + (layer * kTokens + kB) * row));
  }
  auto post = NewClient(Options(), Fp16(l), "");
  ASSERT_NE(post, nullptr);
  const absl::Status refused =
      post->VerifyAndDecode(*items[1], 1, k1.data(), v1.data());
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("pre-RoPE"), std::string::npos) << refused;
}

// An engine that caches keys in rotate-half order (Hugging Face
// checkpoints) shares blocks with one in adjacent order (GGUF): its client
// moves the pairs into the blocks' order and back, so either engine loads
// the other's blocks as it would its own, with pre-RoPE codebooks and with
// the fp16 codec.
TEST_F(CacheClientTest, HalfPairEnginesShareBlocksWithAdjacentOnes) {
  const KvLayout l = SmallLayout();
  const RopeSpec spec{10000.0, l.head_dim, RopePairs::kAdjacent};
  const Rope rope(l.head_dim, spec);
  const testing::FittedVq vq = testing::FitVq(l, false, 1, spec);
  constexpr int kTokens = 64;
  const int64_t vectors = int64_t{l.layers} * kTokens * l.kv_heads;
  std::vector<float> adjacent_k = Kv(kTokens, 51);
  rope.ApplyBlock(adjacent_k.data(), l.layers, kTokens, l.kv_heads, 0);
  std::vector<float> half_k = adjacent_k;
  ReorderRopePairs(half_k.data(), vectors, l.head_dim, l.head_dim,
                   RopePairs::kAdjacent, RopePairs::kHalf);
  ASSERT_NE(half_k, adjacent_k);
  const std::vector<float> v = Kv(kTokens, 52);
  const std::vector<int32_t> t = Tokens(kTokens);
  CacheClientOptions half_options = Options();
  half_options.engine_key_pairs = RopePairs::kHalf;

  for (const bool use_vq : {true, false}) {
    SCOPED_TRACE(use_vq ? "vq, pre-RoPE codebooks" : "fp16");
    std::shared_ptr<const Codec> codec = use_vq ? vq.codec : Fp16(l);
    const std::string file = use_vq ? vq.file : "";
    auto adjacent = NewClient(Options(), codec, file);
    auto half = NewClient(half_options, codec, file);
    ASSERT_NE(adjacent, nullptr);
    ASSERT_NE(half, nullptr);
    EXPECT_EQ(half->namespace_spec(), adjacent->namespace_spec());

    // What the adjacent engine gets back from its own blocks.
    ASSERT_TRUE(adjacent->Store(t, "a", adjacent_k.data(), v.data()).ok());
    std::vector<float> own_k(adjacent_k.size()), own_v(v.size());
    ASSERT_EQ(adjacent->Load(t, "a", own_k.data(), own_v.data())->tokens,
              kTokens);
    // The half engine loads them in its own order.
    std::vector<float> got_k(adjacent_k.size()), got_v(v.size());
    ASSERT_EQ(half->Load(t, "a", got_k.data(), got_v.data())->tokens, kTokens);
    ReorderRopePairs(got_k.data(), vectors, l.head_dim, l.head_dim,
                     RopePairs::kHalf, RopePairs::kAdjacent);
    EXPECT_EQ(got_k, own_k);
    EXPECT_EQ(got_v, own_v);
    // And blocks the half engine stores are the adjacent engine's blocks.
    ASSERT_TRUE(half->Store(t, "h", half_k.data(), v.data()).ok());
    ASSERT_EQ(adjacent->Load(t, "h", got_k.data(), got_v.data())->tokens,
              kTokens);
    EXPECT_EQ(got_k, own_k);
    EXPECT_EQ(got_v, own_v);
  }
}

TEST_F(CacheClientTest, CodebookFetchErrors) {
  auto missing = CacheClient::CreateFromCodebookHash(
      Options(), 0x1234, SmallLayout(),
      std::make_unique<EmbeddedBackend>(store_.get()));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);

  // Pre-RoPE codebooks that do not record the model's RoPE are refused:
  // engines cache post-RoPE keys, and the client could not un-rotate them.
  const testing::FittedVq pre = testing::FitVq(SmallLayout(), false);
  auto c = CacheClient::Create(Options(), pre.codec, pre.file,
                               std::make_unique<EmbeddedBackend>(store_.get()));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(c.status().message().find("--refit-gains"), std::string::npos)
      << c.status();
  // A codebook file that is not the codec's.
  const testing::FittedVq a = testing::FitVq(SmallLayout(), true, 1);
  const testing::FittedVq b = testing::FitVq(SmallLayout(), true, 2);
  ASSERT_NE(a.codec->codebook_hash(), b.codec->codebook_hash());
  c = CacheClient::Create(Options(), a.codec, b.file,
                          std::make_unique<EmbeddedBackend>(store_.get()));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  // A set made for another layout.
  auto other = CacheClient::CreateFromCodebookHash(
      Options(),
      [&] {
        auto x = NewClient(Options(), a.codec, a.file);  // registers a
        return a.codec->codebook_hash();
      }(),
      KvLayout{4, 2, 16}, std::make_unique<EmbeddedBackend>(store_.get()));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vqkv::client
