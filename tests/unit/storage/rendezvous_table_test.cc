// RendezvousTable: put/get, overwrite, expiry on a fake clock, tenant
// isolation, the entry bounds, argument checks, and concurrent use.
#include "storage/rendezvous_table.h"

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/storage/storage_test_util.h"

namespace vqkv::storage {
namespace {

using testing::FakeClock;

RendezvousTableOptions Options(FakeClock& clock, size_t max_entries = 65536,
                               size_t max_tenant_entries = 1024) {
  RendezvousTableOptions o;
  o.clock = clock.AsFunction();
  o.max_entries = max_entries;
  o.max_tenant_entries = max_tenant_entries;
  return o;
}

TEST(RendezvousTableTest, PutThenGetReturnsValueAndRemainingTtl) {
  FakeClock clock;
  RendezvousTable t(Options(clock));
  auto granted = t.Put("alice", "nccl/a", "id-bytes", absl::Seconds(30));
  ASSERT_TRUE(granted.ok()) << granted.status();
  EXPECT_EQ(*granted, absl::Seconds(30));
  clock.Advance(absl::Seconds(10));
  auto got = t.Get("alice", "nccl/a");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->value, "id-bytes");
  EXPECT_EQ(got->remaining_ttl, absl::Seconds(20));
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.TenantSize("alice"), 1u);
}

TEST(RendezvousTableTest, ValuesAreBinaryAndBitExact) {
  FakeClock clock;
  RendezvousTable t(Options(clock));
  std::string value(4096, '\0');
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>(i);
  const std::string key("k\0\xff", 3);
  ASSERT_TRUE(t.Put("", key, value, absl::Seconds(1)).ok());
  auto got = t.Get("", key);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->value, value);
  EXPECT_EQ(t.Get("", "k").status().code(), absl::StatusCode::kNotFound);
}

TEST(RendezvousTableTest, AbsentKeyIsNotFound) {
  FakeClock clock;
  RendezvousTable t(Options(clock));
  EXPECT_EQ(t.Get("alice", "never").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(RendezvousTableTest, OverwriteReplacesValueAndTtl) {
  FakeClock clock;
  RendezvousTable t(Options(clock));
  ASSERT_TRUE(t.Put("a", "k", "first", absl::Seconds(5)).ok());
  clock.Advance(absl::Seconds(4));
  ASSERT_TRUE(t.Put("a", "k", "second", absl::Seconds(60)).ok());
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.TenantSize("a"), 1u);
  clock.Advance(absl::Seconds(10));  // past the first TTL, inside the second
  auto got = t.Get("a", "k");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->value, "second");
  EXPECT_EQ(got->remaining_ttl, absl::Seconds(50));
  // A shorter TTL replaces a longer one too.
  ASSERT_TRUE(t.Put("a", "k", "third", absl::Seconds(1)).ok());
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(t.Get("a", "k").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.size(), 0u);
}

TEST(RendezvousTableTest, ExpiredEntriesAreAbsentAndDropped) {
  FakeClock clock;
  RendezvousTable t(Options(clock));
  ASSERT_TRUE(t.Put("a", "short", "v", absl::Milliseconds(100)).ok());
  ASSERT_TRUE(t.Put("a", "long", "v", absl::Seconds(100)).ok());
  clock.Advance(absl::Milliseconds(99));
  EXPECT_TRUE(t.Get("a", "short").ok());
  clock.Advance(absl::Milliseconds(1));  // exactly at expiry: gone
  EXPECT_EQ(t.Get("a", "short").status().code(), absl::StatusCode::kNotFound);
  // Dropped, not just hidden: the table and the tenant count shrank.
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.TenantSize("a"), 1u);
  EXPECT_TRUE(t.Get("a", "long").ok());
  clock.Advance(absl::Seconds(100));
  EXPECT_EQ(t.Get("a", "long").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.TenantSize("a"), 0u);
}

TEST(RendezvousTableTest, TtlIsCappedAtTheMaximum) {
  FakeClock clock;
  RendezvousTable t(Options(clock));
  auto granted = t.Put("a", "k", "v", absl::Hours(5));
  ASSERT_TRUE(granted.ok());
  EXPECT_EQ(*granted, kMaxRendezvousTtl);
  EXPECT_EQ(t.Get("a", "k")->remaining_ttl, absl::Minutes(10));
  clock.Advance(absl::Minutes(10));
  EXPECT_EQ(t.Get("a", "k").status().code(), absl::StatusCode::kNotFound);

  RendezvousTableOptions o = Options(clock);
  o.max_ttl = absl::Seconds(3);
  RendezvousTable capped(o);
  EXPECT_EQ(*capped.Put("a", "k", "v", absl::Seconds(60)), absl::Seconds(3));
  EXPECT_EQ(*capped.Put("a", "k", "v", absl::Seconds(2)), absl::Seconds(2));
}

TEST(RendezvousTableTest, TenantsAreIsolated) {
  FakeClock clock;
  RendezvousTable t(Options(clock));
  ASSERT_TRUE(t.Put("alice", "k", "alice's", absl::Seconds(10)).ok());
  // Bob sees nothing, exactly as for a key never put.
  EXPECT_EQ(t.Get("bob", "k").status(), t.Get("bob", "never").status());
  EXPECT_EQ(t.Get("bob", "k").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.Get("", "k").status().code(), absl::StatusCode::kNotFound);
  // Bob's put of the same key is his own entry and leaves Alice's alone.
  ASSERT_TRUE(t.Put("bob", "k", "bob's", absl::Seconds(10)).ok());
  EXPECT_EQ(t.Get("alice", "k")->value, "alice's");
  EXPECT_EQ(t.Get("bob", "k")->value, "bob's");
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(t.TenantSize("alice"), 1u);
  EXPECT_EQ(t.TenantSize("bob"), 1u);
}

TEST(RendezvousTableTest, PerTenantBound) {
  FakeClock clock;
  RendezvousTable t(Options(clock, /*max_entries=*/100,
                            /*max_tenant_entries=*/3));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(t.Put("a", absl::StrCat("k", i), "v", absl::Seconds(10)).ok());
  }
  const absl::Status full = t.Put("a", "k3", "v", absl::Seconds(10)).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_NE(full.message().find("maximum of 3"), absl::string_view::npos)
      << full;
  // Overwriting a held key is fine, and other tenants are unaffected.
  EXPECT_TRUE(t.Put("a", "k1", "new", absl::Seconds(10)).ok());
  EXPECT_TRUE(t.Put("b", "k3", "v", absl::Seconds(10)).ok());
  EXPECT_EQ(t.TenantSize("a"), 3u);
  // Once entries expire they make room again.
  clock.Advance(absl::Seconds(10));
  EXPECT_TRUE(t.Put("a", "k3", "v", absl::Seconds(10)).ok());
  EXPECT_EQ(t.TenantSize("a"), 1u);
}

TEST(RendezvousTableTest, TotalBound) {
  FakeClock clock;
  RendezvousTable t(Options(clock, /*max_entries=*/4,
                            /*max_tenant_entries=*/3));
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(
        t.Put(absl::StrCat("tenant", i), "k", "v", absl::Seconds(i + 1)).ok());
  }
  EXPECT_EQ(t.Put("tenant9", "k", "v", absl::Seconds(10)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(t.size(), 4u);
  EXPECT_EQ(t.TenantSize("tenant9"), 0u);
  // The entry of tenant0 expires after 1 s: room for one more.
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(t.Put("tenant9", "k", "v", absl::Seconds(10)).ok());
  EXPECT_EQ(t.Put("tenant8", "k", "v", absl::Seconds(10)).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(RendezvousTableTest, BadArgumentsNameTheField) {
  FakeClock clock;
  RendezvousTable t(Options(clock));
  struct Case {
    std::string key, value;
    absl::Duration ttl;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"", "v", absl::Seconds(1), "key must be 1..256 bytes, got 0"},
      {std::string(257, 'k'), "v", absl::Seconds(1),
       "key must be 1..256 bytes, got 257"},
      {"k", "", absl::Seconds(1), "value must be 1..4096 bytes, got 0"},
      {"k", std::string(4097, 'v'), absl::Seconds(1),
       "value must be 1..4096 bytes, got 4097"},
      {"k", "v", absl::ZeroDuration(), "ttl_ms must be at least 1, got 0"},
      {"k", "v", absl::Microseconds(999), "ttl_ms must be at least 1"},
      {"k", "v", -absl::Seconds(1), "ttl_ms must be at least 1"},
  };
  for (const Case& c : cases) {
    const absl::Status s = t.Put("a", c.key, c.value, c.ttl).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_NE(s.message().find(c.message), absl::string_view::npos)
        << s << " vs " << c.message;
  }
  EXPECT_EQ(t.size(), 0u);
  // The limits themselves are accepted.
  EXPECT_TRUE(t.Put("a", std::string(256, 'k'), std::string(4096, 'v'),
                    absl::Milliseconds(1))
                  .ok());
  EXPECT_EQ(t.Get("a", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Get("a", std::string(257, 'k')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RendezvousTableTest, ConcurrentPutsAndGets) {
  RendezvousTable t;  // the real clock
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&t, w] {
      const std::string tenant = absl::StrCat("t", w % 2);
      for (int i = 0; i < 2000; ++i) {
        const std::string key = absl::StrCat("k", w, "-", i % 50);
        const std::string value = absl::StrCat(w, ":", i);
        ASSERT_TRUE(t.Put(tenant, key, value, absl::Seconds(60)).ok());
        auto got = t.Get(tenant, key);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(got->value, value);  // only this thread writes this key
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(t.size(), 200u);
  EXPECT_EQ(t.TenantSize("t0"), 100u);
  EXPECT_EQ(t.TenantSize("t1"), 100u);
}

}  // namespace
}  // namespace vqkv::storage
