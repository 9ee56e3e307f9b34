#include "storage/namespace_ledger.h"

#include "gtest/gtest.h"
#include "storage/keys.h"
#include "tests/unit/storage/storage_test_util.h"

namespace vqkv::storage {
namespace {

using testing::Ns;

constexpr char kAlice[] = "alice";
constexpr char kBob[] = "bob";

TEST(NamespaceLedgerTest, FirstClaimOwnsTheNamespace) {
  NamespaceLedger ledger(0, {});
  EXPECT_FALSE(ledger.OwnedBy(kAlice, Ns(1)));
  EXPECT_EQ(ledger.Info(Ns(1)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(*ledger.Claim(kAlice, Ns(1)));   // newly claimed
  EXPECT_FALSE(*ledger.Claim(kAlice, Ns(1)));  // already alice's
  EXPECT_EQ(ledger.Claim(kBob, Ns(1)).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(ledger.OwnedBy(kAlice, Ns(1)));
  EXPECT_FALSE(ledger.OwnedBy(kBob, Ns(1)));
  EXPECT_EQ(ledger.Info(Ns(1))->tenant, kAlice);
  EXPECT_EQ(ledger.namespaces(), 1u);
}

TEST(NamespaceLedgerTest, ChargeAndUnchargeCountPerNamespaceAndTenant) {
  NamespaceLedger ledger(0, {});
  ASSERT_TRUE(ledger.Claim(kAlice, Ns(1)).ok());
  ASSERT_TRUE(ledger.Claim(kAlice, Ns(2)).ok());
  ASSERT_TRUE(ledger.Charge(kAlice, Ns(1), 100).ok());
  ASSERT_TRUE(ledger.Charge(kAlice, Ns(1), 50).ok());
  ASSERT_TRUE(ledger.Charge(kAlice, Ns(2), 7).ok());
  EXPECT_EQ(ledger.Usage(kAlice), 157u);
  EXPECT_EQ(ledger.Usage(kBob), 0u);
  EXPECT_EQ(ledger.Info(Ns(1))->bytes, 150u);
  EXPECT_EQ(ledger.Info(Ns(1))->blocks, 2u);
  ledger.Uncharge(Ns(1), 50);
  ledger.Uncharge(Ns(9), 50);  // unknown: no-op
  EXPECT_EQ(ledger.Usage(kAlice), 107u);
  EXPECT_EQ(ledger.Info(Ns(1))->blocks, 1u);

  std::optional<NamespaceInfo> removed = ledger.Remove(Ns(1));
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->bytes, 100u);
  EXPECT_EQ(ledger.Usage(kAlice), 7u);
  EXPECT_FALSE(ledger.Remove(Ns(1)).has_value());
  // Free again: bob may claim it now.
  EXPECT_TRUE(*ledger.Claim(kBob, Ns(1)));
}

TEST(NamespaceLedgerTest, QuotaIsSetDefaultOrConfigured) {
  NamespaceLedger ledger(/*default_quota=*/1000, {{kAlice, 100}});
  EXPECT_EQ(ledger.Quota(kAlice), 100u);
  EXPECT_EQ(ledger.Quota(kBob), 1000u);
  ledger.SetQuota(kBob, 10);
  EXPECT_EQ(ledger.Quota(kBob), 10u);
  ledger.SetQuota(kAlice, 0);  // unlimited
  EXPECT_EQ(ledger.Quota(kAlice), 0u);
}

TEST(NamespaceLedgerTest, ChargeOverTheQuotaIsRefusedAndCountsNothing) {
  NamespaceLedger ledger(0, {{kAlice, 100}});
  ASSERT_TRUE(ledger.Claim(kAlice, Ns(1)).ok());
  ASSERT_TRUE(ledger.Charge(kAlice, Ns(1), 60).ok());
  EXPECT_EQ(ledger.Charge(kAlice, Ns(1), 41).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ledger.Usage(kAlice), 60u);
  EXPECT_EQ(ledger.Info(Ns(1))->blocks, 1u);
  EXPECT_TRUE(ledger.Charge(kAlice, Ns(1), 40).ok());  // exactly the quota
  ledger.SetQuota(kAlice, 0);
  EXPECT_TRUE(ledger.Charge(kAlice, Ns(1), 1000).ok());
}

TEST(NamespaceLedgerTest, LoadKeepsUnownedDiskBlocksForTheFirstClaimer) {
  NamespaceLedger ledger(0, {});
  absl::flat_hash_map<NamespaceId, NamespaceInfo> on_disk;
  on_disk[Ns(1)] = NamespaceInfo{kAlice, 30, 3, /*has_owner=*/true};
  on_disk[Ns(2)] = NamespaceInfo{"", 20, 2, /*has_owner=*/false};
  ledger.Load(on_disk);
  EXPECT_TRUE(ledger.OwnedBy(kAlice, Ns(1)));
  EXPECT_EQ(ledger.Usage(kAlice), 30u);
  // Blocks without an owner record: invisible and counted for nobody...
  EXPECT_EQ(ledger.Info(Ns(2)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ledger.namespaces(), 1u);
  EXPECT_EQ(ledger.Usage(""), 0u);
  // ... until a put claims the namespace: then they are the claimer's.
  EXPECT_TRUE(*ledger.Claim(kBob, Ns(2)));
  EXPECT_EQ(ledger.Usage(kBob), 20u);
  EXPECT_EQ(ledger.Info(Ns(2))->blocks, 2u);
}

// Issue 11 item 3: Admit claims only what the quota admits, and bounds the
// namespaces a tenant owns, reclaiming its empty ones at the bound.
TEST(NamespaceLedgerTest, AdmitChecksTheQuotaBeforeClaiming) {
  NamespaceLedger ledger(/*default_quota=*/100, {},
                         /*max_namespaces_per_tenant=*/2);
  absl::StatusOr<NamespaceLedger::Admission> a =
      ledger.Admit(kAlice, Ns(1), 60, /*count_block=*/true);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->claimed);
  EXPECT_EQ(ledger.Admit(kAlice, Ns(2), 60, true).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(ledger.OwnedBy(kAlice, Ns(2)));
  EXPECT_EQ(ledger.namespaces(kAlice), 1u);
  EXPECT_EQ(ledger.Admit(kBob, Ns(1), 1, true).status().code(),
            absl::StatusCode::kPermissionDenied);
  // A duplicate (nothing counted) stays OK even at the quota.
  ledger.SetQuota(kAlice, 10);
  EXPECT_TRUE(ledger.Admit(kAlice, Ns(1), 0, /*count_block=*/false).ok());
}

TEST(NamespaceLedgerTest, AdmitReclaimsEmptyNamespacesAtTheBound) {
  NamespaceLedger ledger(0, {}, /*max_namespaces_per_tenant=*/2);
  ASSERT_TRUE(ledger.Admit(kAlice, Ns(1), 10, true).ok());
  ASSERT_TRUE(ledger.Admit(kAlice, Ns(2), 10, true).ok());
  ASSERT_TRUE(ledger.Admit(kBob, Ns(9), 10, true).ok());  // Bob's own bound
  EXPECT_EQ(ledger.Admit(kAlice, Ns(3), 10, true).status().code(),
            absl::StatusCode::kResourceExhausted);
  ledger.Uncharge(Ns(1), 10);  // Ns(1) is empty now
  absl::StatusOr<NamespaceLedger::Admission> a =
      ledger.Admit(kAlice, Ns(3), 10, true);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->reclaimed.size(), 1u);
  EXPECT_EQ(a->reclaimed[0], Ns(1));
  EXPECT_FALSE(ledger.OwnedBy(kAlice, Ns(1)));
  EXPECT_EQ(ledger.namespaces(kAlice), 2u);
  EXPECT_EQ(ledger.Usage(kAlice), 20u);
}

}  // namespace
}  // namespace vqkv::storage
