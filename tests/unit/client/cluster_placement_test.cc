// Rendezvous placement (client/cluster/rendezvous.h) and membership parsing
// and re-resolution (client/cluster/membership.h). Prints the measured
// balance and moved fractions that docs/CLIENT.md quotes.
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "client/cluster/membership.h"
#include "client/cluster/rendezvous.h"
#include "gtest/gtest.h"
#include "storage/keys.h"

namespace vqkv::client::cluster {
namespace {

std::vector<std::string> Nodes(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i)
    out.push_back(absl::StrCat("10.0.0.", i + 1, ":50051"));
  return out;
}

std::vector<storage::BlockHash> RandomHashes(int n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<storage::BlockHash> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i)
    out.push_back(storage::BlockHash::FromPair(rng(), rng()));
  return out;
}

// The owners as names, for comparing rings built from different lists.
std::vector<std::string> OwnerNames(const RendezvousRing& ring,
                                    absl::string_view key, int r) {
  std::vector<std::string> out;
  for (int i : ring.Owners(key, r)) out.push_back(ring.nodes()[i]);
  return out;
}

TEST(RendezvousTest, WeightIsTheDocumentedFunction) {
  // Golden values from Python's xxhash (docs/CLIENT.md "Clusters"):
  // xxh3_64(b"10.0.0.1:50051", seed=0x766B7176) and
  // xxh3_64(pack("<Q", node_id) + bytes(range(16)), seed=0x766B7176).
  const uint64_t id = RendezvousNodeId("10.0.0.1:50051");
  EXPECT_EQ(id, 0x9facaa2df691e220u);
  std::string key(16, '\0');
  for (int i = 0; i < 16; ++i) key[i] = static_cast<char>(i);
  EXPECT_EQ(RendezvousWeight(id, key), 0xb5090aa770257ad9u);
  EXPECT_EQ(RendezvousWeight(id, "nccl/chan"), 0xaa6379ab5b215060u);
  // A key longer than the stack buffer takes the same definition.
  const std::string long_key(300, 'x');
  EXPECT_NE(RendezvousWeight(id, long_key), RendezvousWeight(id, "x"));
}

TEST(RendezvousTest, OwnersDoNotDependOnListOrderOrDuplicates) {
  std::vector<std::string> nodes = Nodes(7);
  const RendezvousRing a(nodes);
  std::mt19937 rng(3);
  std::shuffle(nodes.begin(), nodes.end(), rng);
  nodes.push_back(nodes.front());  // a duplicate
  const RendezvousRing b(nodes);
  EXPECT_EQ(b.size(), 7u);
  for (const auto& h : RandomHashes(2000, 1)) {
    ASSERT_EQ(OwnerNames(a, h.view(), 2), OwnerNames(b, h.view(), 2));
    ASSERT_EQ(OwnerNames(a, h.view(), 0), OwnerNames(b, h.view(), 0));
  }
}

TEST(RendezvousTest, OwnersAreDistinctAndCapped) {
  const RendezvousRing ring(Nodes(3));
  for (const auto& h : RandomHashes(1000, 2)) {
    for (int r = 1; r <= 5; ++r) {
      std::vector<int> o = ring.Owners(h.view(), r);
      ASSERT_EQ(o.size(), static_cast<size_t>(std::min(r, 3)));
      ASSERT_EQ(absl::flat_hash_set<int>(o.begin(), o.end()).size(), o.size());
      // A prefix of the full order.
      std::vector<int> all = ring.Owners(h.view(), 0);
      ASSERT_TRUE(std::equal(o.begin(), o.end(), all.begin()));
    }
  }
  EXPECT_TRUE(RendezvousRing({}).Owners("k", 2).empty());
}

TEST(RendezvousTest, LoadIsBalanced) {
  const std::vector<storage::BlockHash> hashes = RandomHashes(100000, 4);
  for (int r : {1, 2}) {
    double worst = 0;
    for (int n = 3; n <= 16; ++n) {
      const RendezvousRing ring(Nodes(n));
      std::vector<int64_t> load(n, 0);
      for (const auto& h : hashes) {
        for (int o : ring.Owners(h.view(), r)) ++load[o];
      }
      const double mean = static_cast<double>(hashes.size()) * r / n;
      const double max_over_mean =
          static_cast<double>(*std::max_element(load.begin(), load.end())) /
          mean;
      worst = std::max(worst, max_over_mean);
      EXPECT_LT(max_over_mean, 1.1) << "n=" << n << " R=" << r;
      std::printf("balance R=%d nodes=%2d max/mean=%.4f\n", r, n,
                  max_over_mean);
    }
    std::printf("balance R=%d worst max/mean over 3..16 nodes: %.4f\n", r,
                worst);
  }
}

TEST(RendezvousTest, AddingANodeMovesAboutRInNPlusOne) {
  const std::vector<storage::BlockHash> hashes = RandomHashes(100000, 5);
  for (int r : {1, 2}) {
    for (int n = 3; n <= 15; n += 3) {
      const RendezvousRing before(Nodes(n));
      const RendezvousRing after(Nodes(n + 1));
      const std::string added = Nodes(n + 1).back();
      int64_t moved = 0;
      for (const auto& h : hashes) {
        std::vector<std::string> a = OwnerNames(before, h.view(), r);
        std::vector<std::string> b = OwnerNames(after, h.view(), r);
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        if (a == b) continue;
        ++moved;
        // Only the new node gains blocks; exactly one old owner lost it.
        ASSERT_TRUE(std::find(b.begin(), b.end(), added) != b.end());
      }
      const double fraction = static_cast<double>(moved) / hashes.size();
      const double expected = static_cast<double>(r) / (n + 1);
      std::printf("moved R=%d nodes %2d->%2d: %.4f (R/(N+1) = %.4f)\n", r, n,
                  n + 1, fraction, expected);
      EXPECT_GT(fraction, expected * 0.9) << "R=" << r << " n=" << n;
      EXPECT_LT(fraction, expected * 1.1) << "R=" << r << " n=" << n;
    }
  }
}

TEST(MembershipTest, ParsesListsAndDnsNames) {
  auto list = ParseMembership(" b:2, a:1 ,a:1,[::1]:7");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->endpoints,
            (std::vector<std::string>{"[::1]:7", "a:1", "b:2"}));
  EXPECT_TRUE(list->dns_host.empty());

  auto dns = ParseMembership("dns:///vqkv.cache.svc:50051");
  ASSERT_TRUE(dns.ok()) << dns.status();
  EXPECT_EQ(dns->dns_host, "vqkv.cache.svc");
  EXPECT_EQ(dns->dns_port, 50051);
  EXPECT_TRUE(dns->endpoints.empty());

  EXPECT_TRUE(IsClusterSpec("a:1,b:2"));
  EXPECT_TRUE(IsClusterSpec("dns:///a:1"));
  EXPECT_FALSE(IsClusterSpec("127.0.0.1:50051"));
  EXPECT_FALSE(IsClusterSpec("embedded:/tmp/x"));
}

TEST(MembershipTest, BadInputIsInvalidArgumentNamingThePart) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "empty"},
      {"   ", "empty"},
      {"a", "\"a\" is not host:port"},
      {"a:1,,b:2", "empty entry"},
      {":50051", "is not host:port"},
      {"a:", "port \"\" is not 1..65535"},
      {"a:0", "port \"0\""},
      {"a:70000", "port \"70000\""},
      {"a:1,b:x", "port \"x\""},
      {"[::1:5", "both brackets"},
      {"dns:///a:1,b:2", "one name:port"},
      {"dns:///nohost", "is not host:port"},
  };
  for (const auto& [in, want] : cases) {
    auto s = ParseMembership(in);
    ASSERT_FALSE(s.ok()) << in;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << in;
    EXPECT_NE(s.status().message().find(want), std::string::npos)
        << in << " -> " << s.status().message();
  }
}

TEST(MembershipTest, ReResolvesWithAnInjectedResolver) {
  std::vector<std::string> answer = {"10.0.0.2:9", "10.0.0.1:9"};
  absl::Status fail;
  int calls = 0;
  Resolver resolver =
      [&](const std::string& host,
          int port) -> absl::StatusOr<std::vector<std::string>> {
    ++calls;
    EXPECT_EQ(host, "svc");
    EXPECT_EQ(port, 9);
    if (!fail.ok()) return fail;
    return answer;
  };
  Membership m(*ParseMembership("dns:///svc:9"), resolver);
  EXPECT_TRUE(m.is_dns());
  EXPECT_TRUE(m.Current().empty());
  EXPECT_EQ(*m.Refresh(), true);
  EXPECT_EQ(m.Current(),
            (std::vector<std::string>{"10.0.0.1:9", "10.0.0.2:9"}));
  const uint64_t v = m.version();
  EXPECT_EQ(*m.Refresh(), false) << "same set: no change";
  EXPECT_EQ(m.version(), v);
  answer.push_back("10.0.0.3:9");
  EXPECT_EQ(*m.Refresh(), true);
  EXPECT_EQ(m.Current().size(), 3u);
  EXPECT_EQ(m.version(), v + 1);
  // A failed or empty resolution keeps the last good set.
  fail = absl::UnavailableError("resolving svc: no such host");
  EXPECT_EQ(m.Refresh().status().code(), absl::StatusCode::kUnavailable);
  fail = absl::OkStatus();
  answer.clear();
  EXPECT_EQ(m.Refresh().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(m.Current().size(), 3u);
  EXPECT_EQ(calls, 5);
  EXPECT_EQ(m.Describe(), "dns:///svc:9");

  Membership fixed(*ParseMembership("b:1,a:1"), resolver);
  EXPECT_EQ(fixed.Current(), (std::vector<std::string>{"a:1", "b:1"}));
  EXPECT_EQ(*fixed.Refresh(), false);
  EXPECT_EQ(calls, 5) << "a static list is never resolved";
}

TEST(MembershipTest, SystemResolverResolvesLocalhost) {
  auto got = SystemResolver()("localhost", 50051);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_FALSE(got->empty());
  for (const std::string& ep : *got) {
    EXPECT_TRUE(ep == "127.0.0.1:50051" || ep == "[::1]:50051") << ep;
  }
}

}  // namespace
}  // namespace vqkv::client::cluster
