// Load test (issue 11): 64 concurrent clients against one real vqkv-server
// process (loopback, auth on) whose memory budget is several times smaller
// than the data they store. Two tenants:
//
// - alice, the victim (40 clients): serving-engine requests. Each request is
//   a popular document prefix (Zipf over kDocs documents) plus new turns of
//   a conversation; the client hashes its tokens into a block chain
//   (client/hash.h), looks up the longest cached prefix with a lease, fetches
//   that prefix and puts the blocks past it.
// - mallory, hostile (24 clients): floods puts to evict alice's blocks,
//   puts its own content under the hashes of alice's popular prefixes
//   (poisoning: the chain hashes do not depend on the tenant), probes the
//   hashes alice stored (Lookup with a lease, GetBlocks, Delete) and reads
//   Stats. Its quota (kHostileQuota) is what stops the flood.
//
// Every block's content is derived from (tenant, hash), so every block read
// back is checked bit-exact, and a read that returns the other tenant's
// content is told apart from any other corruption.
//
// Asserted: no RPC error and no per-block error except misses (NOT_FOUND)
// and mallory's quota refusals (RESOURCE_EXHAUSTED); every block read back
// is bit-exact and the reader's own; a block in a leased Lookup prefix is
// always fetched; no block alice stored is ever lost (mallory can push it
// out of memory, not out of the store); mallory never sees, leases or
// deletes alice's blocks and its Stats show nothing of alice's activity;
// each tenant's usage and get hits/misses in Stats are exactly its own; the
// server's peak RSS (VmHWM) stays within the bound of docs/RELIABILITY.md
// ("Load test"; not under a sanitizer). Latency percentiles and throughput are
// printed, not asserted. Bounded: a fixed number of requests per client, and a
// time cap after which clients stop starting new ones.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/hash.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/block.h"
#include "service/validate.h"
#include "storage/keys.h"
#include "tests/integration/server_process.h"
#include "tests/integration/test_blocks.h"
#include "tests/unit/storage/storage_test_util.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::testing {
namespace {

using storage::BlockHash;
using Clock = std::chrono::steady_clock;

// Blocks of 16 tokens x 2 layers x 4 KV heads x head_dim 32, fp16: 2 x 8 KiB
// of K and V plus the 64-byte header.
constexpr KvLayout kLayout{2, 4, 32};
constexpr int kBlockTokens = 16;

constexpr uint64_t kMemoryBytes = uint64_t{16} << 20;
constexpr uint64_t kHostileQuota = uint64_t{16} << 20;

constexpr int kVictimClients = 40;
constexpr int kHostileClients = 24;
constexpr int kVictimRequests = 100;  // per victim client
constexpr int kHostileRounds = 40;    // per hostile client
constexpr int kDocs = 48;             // popular prefixes
constexpr int kDocBlocks = 8;         // blocks per popular prefix
constexpr int kMaxTurns = 3;          // turns of one conversation
constexpr int kMaxNewBlocks = 5;      // new blocks per turn: 2..5
constexpr int kFloodBlocks = 16;      // blocks per hostile flood put
constexpr int kProbeBlocks = 32;      // hashes per hostile probe
constexpr uint32_t kLeaseMs = 5000;
constexpr auto kTimeCap = std::chrono::seconds(60);

constexpr char kVictim[] = "alice";
constexpr char kHostile[] = "mallory";
constexpr char kAdmin[] = "ops";
constexpr char kVictimToken[] = "alice-load-token-0123456789";
constexpr char kHostileToken[] = "mallory-load-token-9876543210";
constexpr char kAdminToken[] = "ops-load-token-5555555555";

enum Tenant { kAlice = 0, kMallory = 1 };

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t Seed(Tenant tenant, const BlockHash& h) {
  uint64_t s = tenant == kAlice ? 0xa11ce : 0x3a11039;
  for (int i = 0; i < 16; i += 8) {
    uint64_t w = 0;
    for (int j = 0; j < 8; ++j) w = (w << 8) | h.bytes[i + j];
    s = SplitMix(s ^ w);
  }
  return s;
}

// The block `tenant` stores under `h`: full, valid fp16 K/V whose values
// are a function of (tenant, h). One per thread (the codec is not shared).
class BlockMaker {
 public:
  BlockMaker()
      : k_(static_cast<size_t>(kBlockTokens) * kLayout.ElementsPerToken()),
        v_(k_.size()) {
    auto codec = Fp16Codec::Create(kLayout);
    EXPECT_TRUE(codec.ok()) << codec.status();
    codec_ = *std::move(codec);
  }

  std::string Make(Tenant tenant, const BlockHash& h) {
    uint64_t x = Seed(tenant, h);
    for (size_t i = 0; i < k_.size(); ++i) {
      x = SplitMix(x);
      // Two values in [-4, 4) from one draw, 12 bits each.
      k_[i] = static_cast<float>(x & 0xfff) / 512.f - 4.f;
      v_[i] = static_cast<float>((x >> 12) & 0xfff) / 512.f - 4.f;
    }
    auto block = EncodeBlock(*codec_, k_.data(), v_.data(), kBlockTokens,
                             BlockOptions{});
    EXPECT_TRUE(block.ok()) << block.status();
    return block.ok() ? std::string(block->begin(), block->end()) : "";
  }

 private:
  std::unique_ptr<Fp16Codec> codec_;
  std::vector<float> k_, v_;
};

// One tenant's view of what came back for `h`: its own block, the other
// tenant's, or anything else.
enum class Verdict { kOwn, kOtherTenant, kCorrupt };
Verdict Check(BlockMaker* maker, Tenant reader, const BlockHash& h,
              const std::string& data) {
  if (data == maker->Make(reader, h)) return Verdict::kOwn;
  const Tenant other = reader == kAlice ? kMallory : kAlice;
  if (data == maker->Make(other, h)) return Verdict::kOtherTenant;
  return Verdict::kCorrupt;
}

// Operations timed, per tenant.
enum Op { kLookup, kGet, kPut, kDelete, kStats, kNumOps };
constexpr const char* kOpNames[kNumOps] = {"Lookup", "GetBlocks", "PutBlocks",
                                           "Delete", "Stats"};

// What one client saw. Merged after the run; every field is a count.
struct Tally {
  std::vector<double> micros[kNumOps];
  uint64_t requests = 0;
  uint64_t rpc_errors = 0;      // any non-OK call status not allowed below
  uint64_t block_errors = 0;    // per-block codes other than those allowed
  uint64_t quota_refusals = 0;  // RESOURCE_EXHAUSTED (mallory's puts only)
  uint64_t get_hits = 0;
  uint64_t get_misses = 0;
  uint64_t lookup_blocks = 0;
  uint64_t lookup_hits = 0;   // blocks in returned prefixes
  uint64_t lease_misses = 0;  // a leased prefix block that GetBlocks missed
  uint64_t lost = 0;          // a block alice was told was stored, gone
  uint64_t stored = 0;        // blocks put with code 0
  uint64_t duplicates = 0;    // blocks put with code 6
  uint64_t bytes_put = 0;
  uint64_t bytes_got = 0;
  uint64_t corrupt = 0;
  uint64_t cross_tenant = 0;  // reads, leases or deletes across tenants
  uint64_t stats_leaks = 0;   // Stats of mallory showing more than its own
  std::vector<std::string> messages;  // the first few errors, for the log

  void Error(uint64_t* counter, const std::string& what) {
    ++*counter;
    if (messages.size() < 5) messages.push_back(what);
  }
  void Merge(const Tally& o) {
    for (int i = 0; i < kNumOps; ++i) {
      micros[i].insert(micros[i].end(), o.micros[i].begin(), o.micros[i].end());
    }
    requests += o.requests;
    rpc_errors += o.rpc_errors;
    block_errors += o.block_errors;
    quota_refusals += o.quota_refusals;
    get_hits += o.get_hits;
    get_misses += o.get_misses;
    lookup_blocks += o.lookup_blocks;
    lookup_hits += o.lookup_hits;
    lease_misses += o.lease_misses;
    lost += o.lost;
    stored += o.stored;
    duplicates += o.duplicates;
    bytes_put += o.bytes_put;
    bytes_got += o.bytes_got;
    corrupt += o.corrupt;
    cross_tenant += o.cross_tenant;
    stats_leaks += o.stats_leaks;
    for (const std::string& m : o.messages) {
      if (messages.size() < 10) messages.push_back(m);
    }
  }
};

// The hashes alice was told are stored (code 0 or 6), shared with mallory,
// which knows them as an attacker who guessed or observed them would.
class AckedSet {
 public:
  void Add(const BlockHash& h, bool suffix) {
    absl::MutexLock l(&mu_);
    if (all_.insert(h).second && suffix) suffixes_.push_back(h);
  }
  // Up to n random suffix hashes (blocks of alice's conversations, which
  // mallory never puts itself).
  std::vector<BlockHash> SampleSuffixes(std::mt19937_64& rng, int n) {
    absl::MutexLock l(&mu_);
    std::vector<BlockHash> out;
    for (int i = 0; i < n && !suffixes_.empty(); ++i) {
      out.push_back(suffixes_[rng() % suffixes_.size()]);
    }
    return out;
  }
  std::vector<BlockHash> All() {
    absl::MutexLock l(&mu_);
    return std::vector<BlockHash>(all_.begin(), all_.end());
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_set<BlockHash> all_ ABSL_GUARDED_BY(mu_);
  std::vector<BlockHash> suffixes_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(30));
  ctx->AddMetadata("authorization", "Bearer " + token);
  return ctx;
}

// Each client its own connection (a local subchannel pool), as separate
// engine processes would have.
std::unique_ptr<v1::KVCache::Stub> ClientStub(const std::string& address) {
  grpc::ChannelArguments args = TestChannelArgs();
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return v1::KVCache::NewStub(grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), args));
}

// A field of /proc/<pid>/status in kB ("VmRSS", "VmHWM"); -1 if absent.
int64_t ProcStatusKb(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) != 0) continue;
    int64_t kb = -1;
    std::string rest = line.substr(field.size() + 1);
    rest.erase(rest.find_last_not_of(" \tkB") + 1);
    rest.erase(0, rest.find_first_not_of(" \t"));
    return absl::SimpleAtoi(rest, &kb) ? kb : -1;
  }
  return -1;
}

struct Env {
  std::string address;
  v1::Namespace ns;
  storage::NamespaceSpec spec;
  std::vector<std::vector<int32_t>> doc_tokens;  // kDocs x kDocBlocks blocks
  std::vector<double> doc_cdf;                   // Zipf(1) over documents
  AckedSet acked;
  Clock::time_point deadline;
  std::atomic<bool> timed_out{false};

  bool Expired() {
    if (Clock::now() < deadline) return false;
    timed_out = true;
    return true;
  }
};

std::vector<BlockHash> Chain(const Env& env,
                             const std::vector<int32_t>& tokens) {
  auto hashes = client::HashChain(tokens, /*salt=*/"", env.spec);
  EXPECT_TRUE(hashes.ok()) << hashes.status();
  return hashes.ok() ? *std::move(hashes) : std::vector<BlockHash>{};
}

template <typename Fn>
grpc::Status Timed(Tally* t, Op op, Fn fn) {
  const auto start = Clock::now();
  grpc::Status s = fn();
  t->micros[op].push_back(
      std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  return s;
}

// Lookup of `hashes` with a lease, as the holder of `token`; counts the
// blocks asked for and the prefix found. Nullopt on an RPC error (counted).
std::optional<v1::LookupResponse> LeasedLookup(
    v1::KVCache::Stub* stub, const Env& env, const std::string& token,
    const std::vector<BlockHash>& hashes, Tally* t) {
  v1::LookupRequest lookup;
  *lookup.mutable_namespace_() = env.ns;
  for (const BlockHash& h : hashes) lookup.add_hashes(h.ToString());
  lookup.set_lease_ms(kLeaseMs);
  v1::LookupResponse found;
  const grpc::Status s = Timed(t, kLookup, [&] {
    return stub->Lookup(Ctx(token).get(), lookup, &found);
  });
  if (!s.ok()) {
    t->Error(&t->rpc_errors, "Lookup: " + s.error_message());
    return std::nullopt;
  }
  t->lookup_blocks += hashes.size();
  t->lookup_hits += found.prefix_blocks();
  return found;
}

// GetBlocks of `hashes` as `reader`; checks every returned block. Returns
// the per-hash codes (or empty on an RPC error, counted).
std::vector<int> GetAndCheck(v1::KVCache::Stub* stub, const Env& env,
                             Tenant reader, const std::string& token,
                             const std::vector<BlockHash>& hashes,
                             BlockMaker* maker, Tally* t) {
  v1::GetBlocksRequest req;
  *req.mutable_namespace_() = env.ns;
  for (const BlockHash& h : hashes) req.add_hashes(h.ToString());
  v1::GetBlocksResponse resp;
  const grpc::Status s = Timed(
      t, kGet, [&] { return stub->GetBlocks(Ctx(token).get(), req, &resp); });
  if (!s.ok() || resp.blocks_size() != static_cast<int>(hashes.size())) {
    t->Error(&t->rpc_errors, absl::StrCat("GetBlocks: ", s.error_message(),
                                          " blocks=", resp.blocks_size()));
    return {};
  }
  std::vector<int> codes;
  for (const v1::BlockData& d : resp.blocks()) {
    codes.push_back(d.code());
    if (d.code() == 5) {
      ++t->get_misses;
      continue;
    }
    if (d.code() != 0) {
      t->Error(&t->block_errors, absl::StrCat("GetBlocks code ", d.code()));
      continue;
    }
    ++t->get_hits;
    t->bytes_got += d.data().size();
    switch (Check(maker, reader, hashes[d.index()], d.data())) {
      case Verdict::kOwn:
        break;
      case Verdict::kOtherTenant:
        t->Error(&t->cross_tenant, "GetBlocks returned the other tenant's");
        break;
      case Verdict::kCorrupt:
        t->Error(&t->corrupt, "GetBlocks returned a corrupt block");
        break;
    }
  }
  return codes;
}

// Puts `writer`'s blocks for hashes[first..) (chain positions from
// `first`). Returns the per-block codes (empty when the call failed).
std::vector<int> Put(v1::KVCache::Stub* stub, const Env& env, Tenant writer,
                     const std::string& token,
                     const std::vector<BlockHash>& hashes, size_t first,
                     BlockMaker* maker, Tally* t) {
  v1::PutBlocksRequest req;
  *req.mutable_namespace_() = env.ns;
  for (size_t i = first; i < hashes.size(); ++i) {
    v1::Block* b = req.add_blocks();
    b->set_hash(hashes[i].ToString());
    b->set_data(maker->Make(writer, hashes[i]));
    b->set_chain_position(static_cast<uint32_t>(i));
    t->bytes_put += b->data().size();
  }
  v1::PutBlocksResponse resp;
  const grpc::Status s = Timed(
      t, kPut, [&] { return stub->PutBlocks(Ctx(token).get(), req, &resp); });
  if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
      writer == kMallory) {
    t->quota_refusals += req.blocks_size();
    return {};
  }
  if (!s.ok() || resp.results_size() != req.blocks_size()) {
    t->Error(&t->rpc_errors, absl::StrCat("PutBlocks: ", s.error_message()));
    return {};
  }
  std::vector<int> codes;
  for (const v1::PutResult& r : resp.results()) {
    codes.push_back(r.code());
    if (r.code() == 0) {
      ++t->stored;
    } else if (r.code() == 6) {
      ++t->duplicates;
    } else if (r.code() == 8 && writer == kMallory) {
      ++t->quota_refusals;
    } else {
      t->Error(&t->block_errors,
               absl::StrCat("PutBlocks code ", r.code(), ": ", r.message()));
    }
  }
  return codes;
}

void VictimClient(Env* env, int id, Tally* t) {
  auto stub = ClientStub(env->address);
  BlockMaker maker;
  std::mt19937_64 rng(1000 + id);
  std::vector<int32_t> tokens;  // the conversation so far
  size_t known = 0;             // leading blocks of it this client put
  int turn = kMaxTurns;
  for (int r = 0; r < kVictimRequests && !env->Expired(); ++r) {
    ++t->requests;
    if (turn >= kMaxTurns || rng() % 3 == 0) {  // a new conversation
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      const int doc = static_cast<int>(
          std::lower_bound(env->doc_cdf.begin(), env->doc_cdf.end(), u) -
          env->doc_cdf.begin());
      tokens = env->doc_tokens[std::min(doc, kDocs - 1)];
      known = 0;
      turn = 0;
    }
    ++turn;
    const int new_blocks = 2 + static_cast<int>(rng() % (kMaxNewBlocks - 1));
    for (int i = 0; i < new_blocks * kBlockTokens; ++i) {
      tokens.push_back(static_cast<int32_t>(rng() % 32000));
    }
    const std::vector<BlockHash> hashes = Chain(*env, tokens);

    const std::optional<v1::LookupResponse> found =
        LeasedLookup(stub.get(), *env, kVictimToken, hashes, t);
    if (!found.has_value()) continue;
    const size_t prefix = found->prefix_blocks();
    // This client's own earlier turns were acknowledged: still there?
    if (prefix < known) {
      t->Error(&t->lost, absl::StrCat("prefix ", prefix, " < ", known));
    }
    if (prefix > 0) {
      const std::vector<int> codes = GetAndCheck(
          stub.get(), *env, kAlice, kVictimToken,
          std::vector<BlockHash>(hashes.begin(), hashes.begin() + prefix),
          &maker, t);
      for (int c : codes) {
        if (c == 5) t->Error(&t->lease_misses, "leased prefix block missed");
      }
    }
    const std::vector<int> codes =
        Put(stub.get(), *env, kAlice, kVictimToken, hashes, prefix, &maker, t);
    known = prefix;
    for (size_t i = 0; i < codes.size(); ++i) {
      if (codes[i] != 0 && codes[i] != 6) break;
      env->acked.Add(hashes[prefix + i], prefix + i >= kDocBlocks);
      if (known == prefix + i) ++known;
    }
  }
}

void HostileClient(Env* env, int id, Tally* t) {
  auto stub = ClientStub(env->address);
  BlockMaker maker;
  std::mt19937_64 rng(2000 + id);
  uint64_t next_junk = 0;
  for (int r = 0; r < kHostileRounds && !env->Expired(); ++r) {
    ++t->requests;
    const int choice = static_cast<int>(rng() % 10);
    if (choice < 5) {
      // Flood: fresh blocks, claiming the head of a chain (position 0) so
      // that memory would rather evict others' tails.
      std::vector<BlockHash> junk;
      for (int i = 0; i < kFloodBlocks; ++i) {
        junk.push_back(BlockHash::FromPair(0xbad000 + id, next_junk++));
      }
      Put(stub.get(), *env, kMallory, kHostileToken, junk, 0, &maker, t);
    } else if (choice == 5) {
      // Poison: mallory's content under the chain of a popular prefix
      // (only this client's share of the documents, so no two hostile
      // clients race on one hash and every stored block is counted once).
      const int doc =
          id +
          kHostileClients * static_cast<int>(rng() % (kDocs / kHostileClients));
      Put(stub.get(), *env, kMallory, kHostileToken,
          Chain(*env, env->doc_tokens[doc]), 0, &maker, t);
    } else if (choice < 8) {
      // Probe alice's conversation blocks: Lookup (with a lease) must find
      // none, GetBlocks must return none. Then a popular prefix: only
      // mallory's own poison may come back.
      const std::vector<BlockHash> probe =
          env->acked.SampleSuffixes(rng, kProbeBlocks);
      if (!probe.empty()) {
        const std::optional<v1::LookupResponse> found =
            LeasedLookup(stub.get(), *env, kHostileToken, probe, t);
        if (found.has_value()) {
          for (bool p : found->present()) {
            if (p) t->Error(&t->cross_tenant, "Lookup saw alice's block");
          }
        }
        for (int c : GetAndCheck(stub.get(), *env, kMallory, kHostileToken,
                                 probe, &maker, t)) {
          if (c == 0) t->Error(&t->cross_tenant, "got alice's block");
        }
      }
      GetAndCheck(stub.get(), *env, kMallory, kHostileToken,
                  Chain(*env, env->doc_tokens[rng() % kDocs]), &maker, t);
    } else if (choice == 8) {
      const std::vector<BlockHash> probe =
          env->acked.SampleSuffixes(rng, kProbeBlocks);
      if (probe.empty()) continue;
      v1::DeleteRequest del;
      *del.mutable_namespace_() = env->ns;
      for (const BlockHash& h : probe) del.add_hashes(h.ToString());
      v1::DeleteResponse resp;
      const grpc::Status s = Timed(t, kDelete, [&] {
        return stub->Delete(Ctx(kHostileToken).get(), del, &resp);
      });
      if (!s.ok()) {
        t->Error(&t->rpc_errors, "Delete: " + s.error_message());
      } else if (resp.deleted() != 0) {
        t->Error(&t->cross_tenant, "deleted alice's blocks");
      }
    } else {
      v1::StatsResponse st;
      const grpc::Status s = Timed(t, kStats, [&] {
        return stub->Stats(Ctx(kHostileToken).get(), v1::StatsRequest(), &st);
      });
      if (!s.ok()) {
        t->Error(&t->rpc_errors, "Stats: " + s.error_message());
        continue;
      }
      bool leak = st.tenant() != kHostile ||
                  st.tenant_bytes() > kHostileQuota || !st.last_fault().empty();
      for (const v1::TierStats& tier : st.tiers()) {
        leak |=
            tier.blocks() != 0 || tier.bytes() != 0 || tier.evictions() != 0;
      }
      if (leak) t->Error(&t->stats_leaks, st.ShortDebugString());
    }
  }
}

struct Percentiles {
  double p50 = 0, p99 = 0;
};
Percentiles Of(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
  };
  return {at(0.50), at(0.99)};
}

v1::StatsResponse StatsOf(v1::KVCache::Stub* stub, const std::string& token) {
  v1::StatsResponse st;
  const grpc::Status s = stub->Stats(Ctx(token).get(), v1::StatsRequest(), &st);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return st;
}

TEST(LoadTest, SixtyFourClientsTwoTenantsSmallMemoryBudget) {
  TempDir dir;
  const std::string tokens =
      dir.WriteFile("tokens", absl::StrCat(kVictimToken, " ", kVictim, "\n",
                                           kHostileToken, " ", kHostile, "\n",
                                           kAdminToken, " ", kAdmin, "\n"));
  const std::string config = dir.WriteFile(
      "config.yaml", absl::StrCat("tenants:\n  quotas:\n    ", kHostile, ": ",
                                  kHostileQuota, "\n"));
  auto server = ServerProcess::Start(
      {"--data-dir", dir.path() + "/data", "--memory-bytes",
       absl::StrCat(kMemoryBytes), "--tokens-file", tokens, "--config", config,
       "--admin-tenant", kAdmin});
  ASSERT_TRUE(server.ok()) << server.status();
  const pid_t pid = (*server)->pid();
  const int64_t idle_kb = ProcStatusKb(pid, "VmRSS");
  ASSERT_GT(idle_kb, 0);

  Env env;
  env.address = (*server)->address();
  env.ns = Fp16Namespace("load-model", kLayout, kBlockTokens);
  env.spec = service::ToNamespaceSpec(env.ns);
  for (int d = 0; d < kDocs; ++d) {
    std::vector<int32_t> doc(kDocBlocks * kBlockTokens);
    for (size_t i = 0; i < doc.size(); ++i) {
      doc[i] = static_cast<int32_t>(SplitMix(d * 1000003 + i) % 32000);
    }
    env.doc_tokens.push_back(std::move(doc));
  }
  double sum = 0;
  for (int d = 0; d < kDocs; ++d) sum += 1.0 / (d + 1);
  double acc = 0;
  for (int d = 0; d < kDocs; ++d) {
    acc += 1.0 / (d + 1) / sum;
    env.doc_cdf.push_back(acc);
  }

  // Peak RSS as sampled while the clients run (VmHWM is checked as well).
  std::atomic<bool> done{false};
  std::atomic<int64_t> sampled_peak_kb{idle_kb};
  std::thread sampler([&] {
    while (!done) {
      const int64_t kb = ProcStatusKb(pid, "VmRSS");
      if (kb > sampled_peak_kb) sampled_peak_kb = kb;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });

  const auto start = Clock::now();
  env.deadline = start + kTimeCap;
  std::vector<Tally> tallies(kVictimClients + kHostileClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kVictimClients; ++i) {
    clients.emplace_back(VictimClient, &env, i, &tallies[i]);
  }
  for (int i = 0; i < kHostileClients; ++i) {
    clients.emplace_back(HostileClient, &env, i, &tallies[kVictimClients + i]);
  }
  for (std::thread& c : clients) c.join();
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count();

  Tally victim, hostile;
  for (int i = 0; i < kVictimClients; ++i) victim.Merge(tallies[i]);
  for (int i = 0; i < kHostileClients; ++i) {
    hostile.Merge(tallies[kVictimClients + i]);
  }

  // After the run: every block alice was told is stored is still there,
  // bit-exact; so is every block mallory stored.
  auto stub = ClientStub(env.address);
  BlockMaker maker;
  Tally final_check;
  const std::vector<BlockHash> acked = env.acked.All();
  constexpr size_t kBatch = 128;
  for (size_t i = 0; i < acked.size(); i += kBatch) {
    const std::vector<BlockHash> batch(
        acked.begin() + i, acked.begin() + std::min(acked.size(), i + kBatch));
    for (int c : GetAndCheck(stub.get(), env, kAlice, kVictimToken, batch,
                             &maker, &final_check)) {
      if (c != 0) final_check.Error(&final_check.lost, "alice's block lost");
    }
  }
  const uint64_t alice_final_hits = final_check.get_hits;
  const v1::StatsResponse admin = StatsOf(stub.get(), kAdminToken);
  const v1::StatsResponse alice = StatsOf(stub.get(), kVictimToken);
  const v1::StatsResponse mallory = StatsOf(stub.get(), kHostileToken);
  done = true;
  sampler.join();
  const int64_t hwm_kb = ProcStatusKb(pid, "VmHWM");
  const int64_t rss_kb = ProcStatusKb(pid, "VmRSS");

  // --- Report (printed, not asserted) -----------------------------------
  const uint64_t block_bytes = maker.Make(kAlice, BlockHash()).size();
  std::printf(
      "load: %d clients (%d alice, %d mallory), %.1f s%s, block %llu B, "
      "memory budget %llu MiB, mallory quota %llu MiB\n",
      kVictimClients + kHostileClients, kVictimClients, kHostileClients,
      seconds, env.timed_out ? " (time cap reached)" : "",
      static_cast<unsigned long long>(block_bytes),
      static_cast<unsigned long long>(kMemoryBytes >> 20),
      static_cast<unsigned long long>(kHostileQuota >> 20));
  uint64_t ops = 0;
  for (const auto& [name, t] :
       {std::pair<const char*, Tally*>{kVictim, &victim},
        std::pair<const char*, Tally*>{kHostile, &hostile}}) {
    std::printf("  %-8s requests %llu\n", name,
                static_cast<unsigned long long>(t->requests));
    for (int op = 0; op < kNumOps; ++op) {
      if (t->micros[op].empty()) continue;
      ops += t->micros[op].size();
      const Percentiles p = Of(t->micros[op]);
      std::printf("  %-8s %-9s %6zu calls  p50 %8.2f ms  p99 %8.2f ms\n", name,
                  kOpNames[op], t->micros[op].size(), p.p50 / 1000,
                  p.p99 / 1000);
    }
    std::printf(
        "  %-8s blocks: stored %llu, duplicate %llu, quota-refused %llu, "
        "got %llu, missed %llu, lookup hit %llu of %llu\n",
        name, static_cast<unsigned long long>(t->stored),
        static_cast<unsigned long long>(t->duplicates),
        static_cast<unsigned long long>(t->quota_refusals),
        static_cast<unsigned long long>(t->get_hits),
        static_cast<unsigned long long>(t->get_misses),
        static_cast<unsigned long long>(t->lookup_hits),
        static_cast<unsigned long long>(t->lookup_blocks));
  }
  const double mib_moved =
      static_cast<double>(victim.bytes_put + victim.bytes_got +
                          hostile.bytes_put + hostile.bytes_got) /
      (1 << 20);
  std::printf("  throughput: %.0f calls/s, %.1f MiB/s of blocks put + got\n",
              ops / seconds, mib_moved / seconds);
  const uint64_t stored_bytes = (acked.size() + hostile.stored) * block_bytes;
  std::printf(
      "  data held at the end: %.1f MiB (alice %zu blocks, mallory %llu), "
      "%.1fx the memory budget; memory tier %llu blocks, %llu evictions; "
      "disk %llu blocks\n",
      static_cast<double>(stored_bytes) / (1 << 20), acked.size(),
      static_cast<unsigned long long>(hostile.stored),
      static_cast<double>(stored_bytes) / kMemoryBytes,
      admin.tiers_size() > 0
          ? static_cast<unsigned long long>(admin.tiers(0).blocks())
          : 0ULL,
      admin.tiers_size() > 0
          ? static_cast<unsigned long long>(admin.tiers(0).evictions())
          : 0ULL,
      admin.tiers_size() > 1
          ? static_cast<unsigned long long>(admin.tiers(1).blocks())
          : 0ULL);

  // The stated bound (docs/RELIABILITY.md, "Whole server" and "Load test"):
  // idle + memory_bytes + memory_bytes / 4 of disk index + 32 MiB of
  // memtables + 4 column families x 8 MiB of RocksDB block cache + gRPC
  // buffers: each client has one call in flight with one large message (a
  // put's request or a get's response, at most `largest_message`), held at
  // most twice (wire bytes and the parsed or built message).
  const uint64_t largest_message =
      std::max({kDocBlocks + kMaxTurns * kMaxNewBlocks, kFloodBlocks,
                kProbeBlocks}) *
      (block_bytes + 64);
  const uint64_t grpc_bytes =
      uint64_t{kVictimClients + kHostileClients} * 2 * largest_message;
  const uint64_t bound_kb =
      static_cast<uint64_t>(idle_kb) +
      (kMemoryBytes + kMemoryBytes / 4 + (uint64_t{32} << 20) +
       (uint64_t{32} << 20) + grpc_bytes) /
          1024;
  std::printf(
      "  server RSS: idle %lld kB, peak sampled %lld kB, VmHWM %lld kB, "
      "VmRSS at end %lld kB; bound %llu kB (idle + %llu MiB)\n",
      static_cast<long long>(idle_kb),
      static_cast<long long>(sampled_peak_kb.load()),
      static_cast<long long>(hwm_kb), static_cast<long long>(rss_kb),
      static_cast<unsigned long long>(bound_kb),
      static_cast<unsigned long long>((bound_kb - idle_kb) / 1024));
  std::printf(
      "  errors %llu, corrupt %llu, cross-tenant %llu, lease misses %llu, "
      "lost %llu, Stats leaks %llu\n",
      static_cast<unsigned long long>(
          victim.rpc_errors + victim.block_errors + hostile.rpc_errors +
          hostile.block_errors + final_check.rpc_errors +
          final_check.block_errors),
      static_cast<unsigned long long>(victim.corrupt + hostile.corrupt +
                                      final_check.corrupt),
      static_cast<unsigned long long>(victim.cross_tenant +
                                      hostile.cross_tenant +
                                      final_check.cross_tenant),
      static_cast<unsigned long long>(victim.lease_misses),
      static_cast<unsigned long long>(victim.lost + final_check.lost),
      static_cast<unsigned long long>(hostile.stats_leaks));
  for (Tally* t : {&victim, &hostile, &final_check}) {
    for (const std::string& m : t->messages) std::printf("  ! %s\n", m.c_str());
  }
  std::fflush(stdout);

  // --- Assertions --------------------------------------------------------
  // The load was what it claims: every victim client ran, the data held is
  // several times the memory budget and memory evicted.
  EXPECT_GT(victim.requests, uint64_t{kVictimClients});
  EXPECT_GT(stored_bytes, 3 * kMemoryBytes);
  ASSERT_EQ(admin.tiers_size(), 2);
  EXPECT_GT(admin.tiers(0).evictions(), 0u);
  // Within the disk's byte and record budgets: nothing was dropped from
  // disk, which is why nothing of alice's may be lost.
  EXPECT_EQ(admin.tiers(1).evictions(), 0u);
  EXPECT_LE(admin.tiers(0).bytes(), kMemoryBytes);
  // mallory's flood met its quota; alice never met one.
  EXPECT_GT(hostile.quota_refusals, 0u);
  EXPECT_EQ(victim.quota_refusals, 0u);

  for (Tally* t : {&victim, &hostile, &final_check}) {
    EXPECT_EQ(t->rpc_errors, 0u);
    EXPECT_EQ(t->block_errors, 0u);
    EXPECT_EQ(t->corrupt, 0u);
    EXPECT_EQ(t->cross_tenant, 0u);
    EXPECT_EQ(t->lost, 0u);
  }
  EXPECT_EQ(victim.lease_misses, 0u);
  EXPECT_EQ(hostile.stats_leaks, 0u);
  EXPECT_EQ(alice_final_hits, acked.size());

  // Stats: each tenant's usage is exactly the blocks it holds, its get
  // hits and misses exactly its own; mallory sees no tier usage.
  EXPECT_EQ(alice.tenant_bytes(), acked.size() * block_bytes);
  EXPECT_EQ(mallory.tenant_bytes(), hostile.stored * block_bytes);
  EXPECT_LE(mallory.tenant_bytes(), kHostileQuota);
  EXPECT_EQ(alice.block_hits(), victim.get_hits + final_check.get_hits);
  EXPECT_EQ(alice.block_misses(), victim.get_misses + final_check.get_misses);
  EXPECT_EQ(mallory.block_hits(), hostile.get_hits);
  EXPECT_EQ(mallory.block_misses(), hostile.get_misses);
  for (const v1::TierStats& tier : mallory.tiers()) {
    EXPECT_EQ(tier.blocks(), 0u) << tier.name();
    EXPECT_EQ(tier.bytes(), 0u) << tier.name();
  }

  // Memory: within the stated bound, which is less than the data held (so
  // the server cannot have kept it all resident). Not under a sanitizer,
  // whose shadow memory and quarantine the bound does not cover.
  if (storage::testing::kHeapMeasurable) {
    EXPECT_GT(stored_bytes / 1024, bound_kb - static_cast<uint64_t>(idle_kb));
    EXPECT_LE(static_cast<uint64_t>(hwm_kb), bound_kb);
    EXPECT_LE(static_cast<uint64_t>(sampled_peak_kb.load()), bound_kb);
  }

  EXPECT_EQ((*server)->StopWith(SIGTERM), 0);
}

}  // namespace
}  // namespace vqkv::testing
