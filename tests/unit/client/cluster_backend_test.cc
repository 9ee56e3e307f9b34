// ClusterBackend (client/cluster/cluster_backend.h) over in-process fake
// nodes: replication, acknowledgement, replica fallback, skipping and
// readmitting a failed node, previous owners after a membership change,
// deadlines with a hung node, codebooks and rendezvous entries, and a
// CacheClient on top.
#include "client/cluster/cluster_backend.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/cache_client.h"
#include "client/cluster/rendezvous.h"
#include "gtest/gtest.h"
#include "tests/unit/client/client_test_util.h"

namespace vqkv::client::cluster {
namespace {

using storage::BlockHash;

// One node: blocks, codebooks and rendezvous entries in maps; fails
// (UNAVAILABLE) or hangs (sleeps, ignoring the deadline) on command.
class FakeNode {
 public:
  std::atomic<bool> fail{false};
  std::atomic<int> hang_ms{0};
  std::atomic<int> lookups{0}, puts{0}, gets{0}, codebook_puts{0},
      health_checks{0};

  absl::Status Enter() {
    if (int ms = hang_ms.load(); ms > 0) absl::SleepFor(absl::Milliseconds(ms));
    if (fail) return absl::UnavailableError("injected: node down");
    return absl::OkStatus();
  }
  bool Has(const BlockHash& h) {
    absl::MutexLock l(&mu);
    return blocks.contains(h);
  }
  void Erase(const BlockHash& h) {
    absl::MutexLock l(&mu);
    blocks.erase(h);
  }
  size_t size() {
    absl::MutexLock l(&mu);
    return blocks.size();
  }
  bool HasCodebook(uint64_t h) {
    absl::MutexLock l(&mu);
    return codebooks.contains(h);
  }

  absl::Mutex mu;
  absl::flat_hash_map<BlockHash, std::string> blocks ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<uint64_t, std::string> codebooks ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<std::string, std::string> rdv ABSL_GUARDED_BY(mu);
};

class FakeBackend : public Backend {
 public:
  explicit FakeBackend(std::shared_ptr<FakeNode> n) : n_(std::move(n)) {}
  absl::StatusOr<std::vector<bool>> Lookup(const storage::NamespaceSpec&,
                                           absl::Span<const BlockHash> hashes,
                                           uint32_t, absl::Time) override {
    ++n_->lookups;
    if (absl::Status s = n_->Enter(); !s.ok()) return s;
    std::vector<bool> out;
    for (const auto& h : hashes) out.push_back(n_->Has(h));
    return out;
  }
  absl::StatusOr<std::vector<absl::Status>> Put(
      const storage::NamespaceSpec&, absl::Span<const PutItem> blocks,
      absl::Time) override {
    ++n_->puts;
    if (absl::Status s = n_->Enter(); !s.ok()) return s;
    std::vector<absl::Status> out;
    absl::MutexLock l(&n_->mu);
    for (const PutItem& b : blocks) {
      const bool fresh = n_->blocks.emplace(b.hash, std::string(b.data)).second;
      out.push_back(fresh ? absl::OkStatus() : absl::AlreadyExistsError("x"));
    }
    return out;
  }
  absl::StatusOr<std::vector<GetItem>> Get(const storage::NamespaceSpec&,
                                           absl::Span<const BlockHash> hashes,
                                           absl::Time) override {
    ++n_->gets;
    if (absl::Status s = n_->Enter(); !s.ok()) return s;
    std::vector<GetItem> out;
    absl::MutexLock l(&n_->mu);
    for (const auto& h : hashes) {
      auto it = n_->blocks.find(h);
      if (it == n_->blocks.end()) {
        out.emplace_back(absl::NotFoundError("miss"));
      } else {
        out.emplace_back(it->second);
      }
    }
    return out;
  }
  absl::Status CheckHealth(absl::Time deadline) override {
    ++n_->health_checks;
    const absl::Status s = n_->Enter();
    // A hung node's check ends at its deadline, as a gRPC call's would.
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError("injected: health check hung");
    }
    return s;
  }
  absl::Status PutCodebook(uint64_t hash, absl::string_view data,
                           absl::Time) override {
    ++n_->codebook_puts;
    if (absl::Status s = n_->Enter(); !s.ok()) return s;
    absl::MutexLock l(&n_->mu);
    n_->codebooks[hash] = std::string(data);
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> GetCodebook(uint64_t hash, absl::Time) override {
    if (absl::Status s = n_->Enter(); !s.ok()) return s;
    absl::MutexLock l(&n_->mu);
    auto it = n_->codebooks.find(hash);
    if (it == n_->codebooks.end()) return absl::NotFoundError("no codebook");
    return it->second;
  }
  absl::Status PutRendezvous(absl::string_view key, absl::string_view value,
                             absl::Duration, absl::Time) override {
    if (absl::Status s = n_->Enter(); !s.ok()) return s;
    absl::MutexLock l(&n_->mu);
    n_->rdv[std::string(key)] = std::string(value);
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> GetRendezvous(absl::string_view key,
                                            absl::Time) override {
    if (absl::Status s = n_->Enter(); !s.ok()) return s;
    absl::MutexLock l(&n_->mu);
    auto it = n_->rdv.find(std::string(key));
    if (it == n_->rdv.end()) return absl::NotFoundError("no entry");
    return it->second;
  }
  std::string Describe() const override { return "fake"; }

 private:
  std::shared_ptr<FakeNode> n_;
};

// Fake nodes "n0:1" .. "n9:1", a settable clock and DNS answer.
struct Fixture {
  Fixture() {
    for (int i = 0; i < 10; ++i) {
      nodes->emplace(Endpoint(i), std::make_shared<FakeNode>());
    }
  }
  static std::string Endpoint(int i) { return absl::StrCat("n", i, ":1"); }
  FakeNode& node(const std::string& ep) { return *nodes->at(ep); }
  FakeNode& node(int i) { return node(Endpoint(i)); }

  ClusterBackendOptions Options(int replicas) {
    ClusterBackendOptions o;
    o.replicas = replicas;
    o.refresh_interval = absl::ZeroDuration();
    o.probe_tick = absl::ZeroDuration();  // tests call ProbeOpenNodes()
    o.circuit.failures_to_open = 1;
    o.circuit.probe_interval = absl::Seconds(1);
    o.circuit.max_probe_interval = absl::Seconds(4);
    auto n = nodes;
    o.node_factory =
        [n](const std::string& ep) -> absl::StatusOr<std::unique_ptr<Backend>> {
      return std::make_unique<FakeBackend>(n->at(ep));
    };
    auto offset = clock_offset;
    const absl::Time base = absl::Now();
    o.clock = [offset, base] {
      return base + absl::Nanoseconds(offset->load()) + (absl::Now() - base);
    };
    auto dns = dns_answer;
    o.resolver = [dns](const std::string&,
                       int) -> absl::StatusOr<std::vector<std::string>> {
      absl::MutexLock l(&dns->mu);
      return dns->endpoints;
    };
    return o;
  }
  void Advance(absl::Duration d) {
    *clock_offset += absl::ToInt64Nanoseconds(d);
  }
  void SetDns(std::vector<std::string> eps) {
    absl::MutexLock l(&dns_answer->mu);
    dns_answer->endpoints = std::move(eps);
  }
  std::unique_ptr<ClusterBackend> Open(const std::string& server, int r) {
    auto b = ClusterBackend::Create(server, Options(r));
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *std::move(b) : nullptr;
  }

  struct Dns {
    absl::Mutex mu;
    std::vector<std::string> endpoints ABSL_GUARDED_BY(mu);
  };
  std::shared_ptr<absl::flat_hash_map<std::string, std::shared_ptr<FakeNode>>>
      nodes = std::make_shared<
          absl::flat_hash_map<std::string, std::shared_ptr<FakeNode>>>();
  std::shared_ptr<std::atomic<int64_t>> clock_offset =
      std::make_shared<std::atomic<int64_t>>(0);
  std::shared_ptr<Dns> dns_answer = std::make_shared<Dns>();
};

// Built by initialization, not assignment: GCC 12 at -O3 (scripts/bench.sh
// builds Release) reports a false -Wrestrict on `model_id = "m"`.
storage::NamespaceSpec Ns() { return storage::NamespaceSpec{.model_id = "m"}; }

std::vector<BlockHash> Hashes(int n, uint64_t seed = 1) {
  std::vector<BlockHash> out;
  for (int i = 0; i < n; ++i) out.push_back(BlockHash::FromPair(seed, i));
  return out;
}

std::string Data(const BlockHash& h) {
  return absl::StrCat("block-", h.ToHex());
}

absl::Time Soon(absl::Duration d = absl::Seconds(5)) { return absl::Now() + d; }

void PutAll(ClusterBackend* b, const std::vector<BlockHash>& hashes) {
  std::vector<std::string> data;
  for (const auto& h : hashes) data.push_back(Data(h));
  std::vector<PutItem> items;
  for (size_t i = 0; i < hashes.size(); ++i) {
    items.push_back(PutItem{hashes[i], data[i], static_cast<uint32_t>(i)});
  }
  auto r = b->Put(Ns(), items, Soon());
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& s : *r) ASSERT_TRUE(s.ok() || absl::IsAlreadyExists(s)) << s;
}

// Number of blocks Get returns with the right bytes (a wrong byte fails).
int Found(ClusterBackend* b, const std::vector<BlockHash>& hashes,
          absl::Duration timeout = absl::Seconds(5)) {
  auto r = b->Get(Ns(), hashes, Soon(timeout));
  if (!r.ok()) return 0;
  int found = 0;
  for (size_t i = 0; i < hashes.size(); ++i) {
    if ((*r)[i].ok()) {
      EXPECT_EQ(*(*r)[i], Data(hashes[i]));
      ++found;
    }
  }
  return found;
}

TEST(ClusterBackendTest, WritesReachTheROwnersOnly) {
  Fixture f;
  auto b = f.Open("n0:1,n1:1,n2:1,n3:1", 2);
  const std::vector<BlockHash> hashes = Hashes(200);
  PutAll(b.get(), hashes);
  size_t copies = 0;
  for (const auto& h : hashes) {
    const std::vector<std::string> owners = b->OwnersOf(h);
    ASSERT_EQ(owners.size(), 2u);
    for (int i = 0; i < 4; ++i) {
      const bool owner = std::find(owners.begin(), owners.end(),
                                   Fixture::Endpoint(i)) != owners.end();
      EXPECT_EQ(f.node(i).Has(h), owner);
      copies += f.node(i).Has(h);
    }
  }
  EXPECT_EQ(copies, 2 * hashes.size());
  auto present = b->Lookup(Ns(), hashes, 0, Soon());
  ASSERT_TRUE(present.ok());
  EXPECT_EQ(std::count(present->begin(), present->end(), true), 200);
  EXPECT_EQ(Found(b.get(), hashes), 200);
  // One batched call per node, not one per block.
  for (int i = 0; i < 4; ++i) EXPECT_EQ(f.node(i).lookups, 1);

  auto one = f.Open("n0:1,n1:1,n2:1", 1);
  size_t before = 0, after = 0;
  for (int i = 0; i < 3; ++i) before += f.node(i).size();
  PutAll(one.get(), Hashes(50, 9));
  for (int i = 0; i < 3; ++i) after += f.node(i).size();
  EXPECT_EQ(after - before, 50u) << "R=1 stores each block once";
}

TEST(ClusterBackendTest, AcknowledgedWhenOneOwnerStored) {
  Fixture f;
  auto b = f.Open("n0:1,n1:1,n2:1", 2);
  f.node(0).fail = true;
  const std::vector<BlockHash> hashes = Hashes(100);
  PutAll(b.get(), hashes);  // every status OK or ALREADY_EXISTS
  const ClusterStats stats = b->Stats();
  EXPECT_GT(stats.replica_put_failures, 0);
  EXPECT_EQ(f.node(0).size(), 0u);
  f.node(0).fail = false;
  // All three down but one owner each: still acknowledged; all down: error.
  for (int i = 0; i < 3; ++i) f.node(i).fail = true;
  std::string d = "x";
  std::vector<PutItem> item = {PutItem{Hashes(1, 7)[0], d, 0}};
  auto r = b->Put(Ns(), item, Soon());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
}

TEST(ClusterBackendTest, ReadsFallBackToTheNextReplica) {
  Fixture f;
  auto b = f.Open("n0:1,n1:1,n2:1", 2);
  const std::vector<BlockHash> hashes = Hashes(100);
  PutAll(b.get(), hashes);
  // The primary owner lost every block (e.g. evicted): the second has it.
  for (const auto& h : hashes) f.node(b->OwnersOf(h)[0]).Erase(h);
  auto present = b->Lookup(Ns(), hashes, 0, Soon());
  ASSERT_TRUE(present.ok());
  EXPECT_EQ(std::count(present->begin(), present->end(), true), 100);
  EXPECT_EQ(Found(b.get(), hashes), 100);
  EXPECT_EQ(b->Stats().fallback_reads, 100);
  // A node down: its blocks come from the other owner.
  auto c = f.Open("n3:1,n4:1,n5:1", 2);
  PutAll(c.get(), hashes);
  f.node(3).fail = true;
  EXPECT_EQ(Found(c.get(), hashes), 100);
  // Both owners gone: a miss, not an error.
  for (const auto& h : hashes) {
    for (const std::string& o : c->OwnersOf(h)) f.node(o).Erase(h);
  }
  EXPECT_EQ(Found(c.get(), hashes), 0);
}

TEST(ClusterBackendTest, FailedNodeIsSkippedThenReadmittedAfterBackoff) {
  Fixture f;
  auto b = f.Open("n0:1,n1:1,n2:1", 2);
  const std::vector<BlockHash> hashes = Hashes(60);
  PutAll(b.get(), hashes);
  f.node(1).fail = true;
  EXPECT_EQ(Found(b.get(), hashes), 60);  // this call finds node 1 down
  const int calls = f.node(1).gets + f.node(1).lookups;
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Found(b.get(), hashes), 60);
    ASSERT_TRUE(b->Lookup(Ns(), hashes, 0, Soon()).ok());
  }
  EXPECT_EQ(f.node(1).gets + f.node(1).lookups, calls)
      << "an open circuit sends nothing";
  ClusterStats s = b->Stats();
  EXPECT_TRUE(s.nodes[1].circuit_open);
  EXPECT_GT(s.nodes[1].skipped, 0);
  EXPECT_NE(b->Describe().find("n1:1 open"), std::string::npos)
      << b->Describe();

  EXPECT_EQ(f.node(1).health_checks, 0);
  EXPECT_EQ(b->ProbeOpenNodes(), 0);
  EXPECT_EQ(f.node(1).health_checks, 0) << "not before the backoff";

  // Still down at the first probe (1 s +- 20%): the probe is a health check,
  // which fails, so no request is risked on the node and the backoff doubles.
  // Calls never probe: only ProbeOpenNodes (the prober thread) does.
  f.Advance(absl::Milliseconds(1300));
  EXPECT_EQ(Found(b.get(), hashes), 60);
  EXPECT_EQ(f.node(1).health_checks, 0) << "a call does not probe";
  EXPECT_EQ(b->ProbeOpenNodes(), 0);
  EXPECT_EQ(f.node(1).health_checks, 1) << "one probe";
  EXPECT_EQ(b->ProbeOpenNodes(), 0);
  EXPECT_EQ(f.node(1).health_checks, 1) << "one probe per interval";
  EXPECT_EQ(f.node(1).gets + f.node(1).lookups, calls)
      << "a failed health check sends no request";
  // Back up; the next probe (2 s +- 20% later) readmits it.
  f.node(1).fail = false;
  f.Advance(absl::Milliseconds(1500));
  EXPECT_EQ(b->ProbeOpenNodes(), 0);
  EXPECT_EQ(f.node(1).health_checks, 1) << "backoff doubled";
  f.Advance(absl::Milliseconds(1100));
  EXPECT_EQ(b->ProbeOpenNodes(), 1);
  EXPECT_EQ(f.node(1).health_checks, 2) << "the second probe";
  EXPECT_EQ(Found(b.get(), hashes), 60);
  s = b->Stats();
  EXPECT_FALSE(s.nodes[1].circuit_open);
  EXPECT_EQ(s.nodes[1].health_checks, 2);
  const int after = f.node(1).gets;
  EXPECT_EQ(Found(b.get(), hashes), 60);
  EXPECT_GT(f.node(1).gets, after) << "readmitted";
  EXPECT_GT(s.nodes[1].requests, 0);
  EXPECT_GT(s.nodes[1].errors, 0);
  EXPECT_GT(s.nodes[0].latency_count, 0);
}

// The prober thread readmits a node that recovered while no call was
// routed to it, and a black-holed node's health check never delays a call.
TEST(ClusterBackendTest, TheProberReadmitsAnIdleNodeOffTheRequestPath) {
  Fixture f;
  ClusterBackendOptions o = f.Options(2);
  o.probe_tick = absl::Milliseconds(5);
  o.health_check_timeout = absl::Milliseconds(200);
  auto made = ClusterBackend::Create("n0:1,n1:1,n2:1", o);
  ASSERT_TRUE(made.ok()) << made.status();
  ClusterBackend* b = made->get();
  const std::vector<BlockHash> hashes = Hashes(60);
  PutAll(b, hashes);
  f.node(1).hang_ms = 1000;  // black-holed: calls and health checks hang
  const absl::Time hang_start = absl::Now();
  ASSERT_TRUE(b->Lookup(Ns(), hashes, 0, Soon(absl::Milliseconds(300))).ok());
  ASSERT_TRUE(b->Stats().nodes[1].circuit_open);
  // Past the backoff the prober's health check hangs on the node; calls
  // meanwhile skip it without waiting.
  f.Advance(absl::Milliseconds(1300));
  const absl::Time probing_by = absl::Now() + absl::Seconds(10);
  while (f.node(1).health_checks == 0 && absl::Now() < probing_by) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_GT(f.node(1).health_checks, 0) << "the prober ran";
  const absl::Time start = absl::Now();
  EXPECT_EQ(Found(b, hashes, absl::Seconds(5)), 60);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500))
      << "a call waited for the hung node's health check (it hangs 1 s)";
  // The node recovers; no call goes to it, yet the prober readmits it.
  absl::SleepFor(hang_start + absl::Milliseconds(1100) - absl::Now());
  f.node(1).hang_ms = 0;
  const absl::Time readmit_by = absl::Now() + absl::Seconds(20);
  bool open = true;
  while (open && absl::Now() < readmit_by) {
    f.Advance(absl::Milliseconds(500));  // let the doubled backoffs pass
    absl::SleepFor(absl::Milliseconds(20));
    open = b->Stats().nodes[1].circuit_open;
  }
  EXPECT_FALSE(open) << b->Describe();
  EXPECT_NE(b->Describe().find("n1:1 ok"), std::string::npos) << b->Describe();
}

TEST(ClusterBackendTest, PreviousOwnersAreReadForAWindowAfterAChange) {
  Fixture f;
  f.SetDns({"n0:1", "n1:1", "n2:1"});
  auto b = f.Open("dns:///svc:1", 1);
  ASSERT_EQ(b->Stats().nodes.size(), 3u);
  const std::vector<BlockHash> hashes = Hashes(400);
  PutAll(b.get(), hashes);
  const uint64_t cb = 0x1234;
  ASSERT_TRUE(b->PutCodebook(cb, "codebook", Soon()).ok());

  f.SetDns({"n0:1", "n1:1", "n2:1", "n3:1"});
  ASSERT_EQ(*b->RefreshMembership(), true);
  EXPECT_EQ(*b->RefreshMembership(), false);
  int moved = 0;
  for (const auto& h : hashes) moved += b->OwnersOf(h)[0] == "n3:1";
  EXPECT_GT(moved, 40);
  EXPECT_LT(moved, 160);
  // Inside the window: every block is found, the moved ones on their
  // previous owner.
  auto present = b->Lookup(Ns(), hashes, 0, Soon());
  ASSERT_TRUE(present.ok());
  EXPECT_EQ(std::count(present->begin(), present->end(), true), 400);
  EXPECT_EQ(Found(b.get(), hashes), 400);
  EXPECT_EQ(b->Stats().previous_owner_reads, moved);
  EXPECT_EQ(b->Stats().membership_changes, 1);
  // Writes go to the new owner, which got the codebook first.
  PutAll(b.get(), hashes);
  EXPECT_EQ(f.node(3).size(), static_cast<size_t>(moved));
  EXPECT_TRUE(f.node(3).HasCodebook(cb));
  // After the window the old copies are not asked; the new node has them
  // (read repair copied them there too: let it finish before erasing).
  ASSERT_TRUE(b->WaitForRepairs(absl::Seconds(10)));
  for (const auto& h : hashes) f.node(3).Erase(h);
  f.Advance(absl::Minutes(5) + absl::Seconds(1));
  EXPECT_EQ(Found(b.get(), hashes), 400 - moved);
}

// A node that was down while blocks were stored gets the copies it serves
// first (the blocks it is the primary owner of) back as they are read from
// the other owner (read repair, in the background); a read that finds the
// primary needs no repair; off, or over the queue's byte budget, nothing
// is written back and the drop is counted.
TEST(ClusterBackendTest, ReadRepairHealsAnOwnerThatMissedTheWrite) {
  Fixture f;
  auto b = f.Open("n0:1,n1:1,n2:1", 2);
  const std::vector<BlockHash> hashes = Hashes(120);
  f.node(0).fail = true;
  PutAll(b.get(), hashes);  // n0's blocks went to their other owner only
  f.node(0).fail = false;
  f.Advance(absl::Milliseconds(1300));
  ASSERT_EQ(b->ProbeOpenNodes(), 1);
  std::vector<BlockHash> on_n0;  // n0 first: reads ask it before the other
  for (const auto& h : hashes) {
    if (b->OwnersOf(h)[0] == "n0:1") on_n0.push_back(h);
  }
  ASSERT_GT(on_n0.size(), 20u);
  ASSERT_EQ(f.node(0).size(), 0u);

  EXPECT_EQ(Found(b.get(), hashes), 120);
  ASSERT_TRUE(b->WaitForRepairs(absl::Seconds(10)));
  EXPECT_EQ(f.node(0).size(), on_n0.size());
  for (const auto& h : on_n0) {
    absl::MutexLock l(&f.node(0).mu);
    auto it = f.node(0).blocks.find(h);
    ASSERT_NE(it, f.node(0).blocks.end());
    EXPECT_EQ(it->second, Data(h));
  }
  ClusterStats s = b->Stats();
  EXPECT_EQ(s.read_repairs, static_cast<int64_t>(on_n0.size()));
  EXPECT_EQ(s.read_repairs_dropped, 0);
  // The copies are where they belong now: nothing more to repair.
  EXPECT_EQ(Found(b.get(), hashes), 120);
  ASSERT_TRUE(b->WaitForRepairs(absl::Seconds(10)));
  EXPECT_EQ(b->Stats().read_repairs, static_cast<int64_t>(on_n0.size()));

  for (const bool off : {true, false}) {
    SCOPED_TRACE(off ? "read_repair off" : "budget of one byte");
    for (const auto& h : on_n0) f.node(0).Erase(h);
    ClusterBackendOptions o = f.Options(2);
    o.read_repair = !off;
    o.max_repair_bytes = off ? o.max_repair_bytes : 1;
    auto c = ClusterBackend::Create("n0:1,n1:1,n2:1", o);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(Found(c->get(), hashes), 120);
    ASSERT_TRUE((*c)->WaitForRepairs(absl::Seconds(10)));
    EXPECT_EQ(f.node(0).size(), 0u);
    EXPECT_EQ((*c)->Stats().read_repairs, 0);
    EXPECT_EQ((*c)->Stats().read_repairs_dropped,
              off ? 0 : static_cast<int64_t>(on_n0.size()));
  }
}

// The prober checks the nodes a call can reach: a node that left is
// checked while it is a previous owner, not after, and again once it is back.
TEST(ClusterBackendTest, TheProberSkipsNodesThatLeft) {
  Fixture f;
  f.SetDns({"n0:1", "n1:1", "n2:1"});
  auto b = f.Open("dns:///svc:1", 2);
  const std::vector<BlockHash> hashes = Hashes(60);
  PutAll(b.get(), hashes);
  f.node(1).fail = true;
  EXPECT_EQ(Found(b.get(), hashes), 60);
  ASSERT_TRUE(b->Stats().nodes[1].circuit_open);

  f.SetDns({"n0:1", "n2:1"});
  ASSERT_EQ(*b->RefreshMembership(), true);
  f.Advance(absl::Milliseconds(1300));
  EXPECT_EQ(b->ProbeOpenNodes(), 0);
  EXPECT_EQ(f.node(1).health_checks, 1) << "a previous owner is probed";

  f.Advance(absl::Minutes(5) + absl::Seconds(1));  // past window and backoff
  EXPECT_EQ(b->ProbeOpenNodes(), 0);
  EXPECT_EQ(f.node(1).health_checks, 1) << "a node that left is not probed";

  f.node(1).fail = false;
  f.SetDns({"n0:1", "n1:1", "n2:1"});
  ASSERT_EQ(*b->RefreshMembership(), true);
  EXPECT_EQ(b->ProbeOpenNodes(), 1) << "back in the membership: readmitted";
  EXPECT_EQ(f.node(1).health_checks, 2);
  EXPECT_EQ(Found(b.get(), hashes), 60);
}

TEST(ClusterBackendTest, ReResolvesPeriodically) {
  Fixture f;
  f.SetDns({"n0:1", "n1:1"});
  ClusterBackendOptions o = f.Options(2);
  o.refresh_interval = absl::Milliseconds(20);
  auto b = ClusterBackend::Create("dns:///svc:1", o);
  ASSERT_TRUE(b.ok());
  f.SetDns({"n0:1", "n1:1", "n2:1"});
  for (int i = 0; i < 250 && (*b)->Stats().membership_changes == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ((*b)->Stats().membership_changes, 1);
  EXPECT_NE((*b)->Describe().find("n2:1"), std::string::npos);
}

TEST(ClusterBackendTest, AHungNodeCostsOneDeadline) {
  Fixture f;
  auto b = f.Open("n0:1,n1:1,n2:1", 2);
  const std::vector<BlockHash> hashes = Hashes(60);
  PutAll(b.get(), hashes);
  f.node(2).hang_ms = 1500;  // ignores the deadline
  const absl::Time hang_start = absl::Now();
  const absl::Duration deadline = absl::Milliseconds(300);
  absl::Time start = absl::Now();
  auto present = b->Lookup(Ns(), hashes, 0, Soon(deadline));
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  ASSERT_TRUE(present.ok());
  EXPECT_EQ(std::count(present->begin(), present->end(), true), 60)
      << "every block has an owner besides the hung node";
  // Its circuit is open now: the next calls skip it at once and find all.
  const int hung_calls = f.node(2).gets + f.node(2).puts;
  start = absl::Now();
  EXPECT_EQ(Found(b.get(), hashes, deadline), 60);
  std::string d = "x";
  std::vector<PutItem> item = {PutItem{Hashes(1, 5)[0], d, 0}};
  EXPECT_TRUE(b->Put(Ns(), item, Soon(deadline)).ok());
  EXPECT_EQ(f.node(2).gets + f.node(2).puts, hung_calls) << "skipped";
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_TRUE(b->Stats().nodes[2].circuit_open);
  f.node(2).hang_ms = 0;
  // Let the abandoned call finish, so no thread outlives the test.
  absl::SleepFor(hang_start + absl::Milliseconds(1700) - absl::Now());
}

TEST(ClusterBackendTest, CodebooksEverywhereRendezvousOnOwners) {
  Fixture f;
  auto b = f.Open("n0:1,n1:1,n2:1", 2);
  ASSERT_TRUE(b->PutCodebook(42, "cb", Soon()).ok());
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(f.node(i).HasCodebook(42));
  f.node(0).fail = true;
  f.node(1).fail = true;
  EXPECT_EQ(*b->GetCodebook(42, Soon()), "cb");
  EXPECT_EQ(b->GetCodebook(43, Soon()).status().code(),
            absl::StatusCode::kNotFound);
  f.node(0).fail = false;
  f.node(1).fail = false;

  // A fresh client (fresh circuits): the entry goes to the key's 2 owners,
  // and is read from the second when the first is down.
  auto c = f.Open("n0:1,n1:1,n2:1", 2);
  ASSERT_TRUE(c->PutRendezvous("nccl/x", "id", absl::Seconds(10), Soon()).ok());
  int holders = 0;
  for (int i = 0; i < 3; ++i) {
    absl::MutexLock l(&f.node(i).mu);
    holders += f.node(i).rdv.contains("nccl/x");
  }
  EXPECT_EQ(holders, 2);
  const RendezvousRing ring({"n0:1", "n1:1", "n2:1"});
  const std::string first = ring.nodes()[ring.Owners("nccl/x", 1)[0]];
  f.node(first).fail = true;  // the first owner is down
  EXPECT_EQ(*c->GetRendezvous("nccl/x", Soon()), "id");
  EXPECT_EQ(c->GetRendezvous("nccl/y", Soon()).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ClusterBackendTest, BadSettingsAreInvalidArgument) {
  Fixture f;
  EXPECT_EQ(ClusterBackend::Create("a:1,", f.Options(2)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ClusterBackend::Create("n0:1,n1:1", f.Options(0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // No node resolved yet: calls are UNAVAILABLE, not a crash.
  auto b = f.Open("dns:///svc:1", 2);
  auto r = b->Lookup(Ns(), Hashes(3), 0, Soon());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
}

TEST(ClusterBackendTest, CacheClientOverAClusterSurvivesANodeLoss) {
  Fixture f;
  const KvLayout l = testing::SmallLayout();
  auto c = CacheClient::Create(testing::Options(32), testing::Fp16(l), "",
                               f.Open("n0:1,n1:1,n2:1", 2));
  ASSERT_TRUE(c.ok()) << c.status();
  const std::vector<int32_t> t = testing::Tokens(320);
  const std::vector<float> k = testing::ExactKv(320 * l.ElementsPerToken(), 1);
  const std::vector<float> v = testing::ExactKv(320 * l.ElementsPerToken(), 2);
  ASSERT_EQ((*c)->Store(t, "", k.data(), v.data())->stored, 10);
  f.node(0).fail = true;
  EXPECT_EQ(*(*c)->Lookup(t, ""), 320);
  std::vector<float> k2(k.size()), v2(v.size());
  auto loaded = (*c)->Load(t, "", k2.data(), v2.data());
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->tokens, 320);
  EXPECT_EQ(k2, k);
  EXPECT_EQ(v2, v);
}

}  // namespace
}  // namespace vqkv::client::cluster
