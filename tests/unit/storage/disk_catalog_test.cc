#include "storage/disk_catalog.h"

#include <algorithm>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "storage/keys.h"
#include "tests/unit/storage/storage_test_util.h"

namespace vqkv::storage {
namespace {

using testing::Ns;

TEST(DiskCatalogTest, CodebookKeysAreBigEndianSoTheySortNumerically) {
  EXPECT_EQ(DiskCatalog::CodebookKey(0x0102030405060708),
            std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8));
  EXPECT_LT(DiskCatalog::CodebookKey(0xff), DiskCatalog::CodebookKey(0x100));
}

TEST(DiskCatalogTest, LoadsWhatItsKeysEncode) {
  DiskCatalog catalog;
  catalog.LoadCodebookKey(DiskCatalog::CodebookKey(0xabc));
  catalog.LoadCodebookKey("short");  // not a codebook key: ignored
  EXPECT_TRUE(catalog.HasCodebook(0xabc));
  EXPECT_EQ(catalog.CodebookHashes(), std::vector<uint64_t>({0xabc}));

  EXPECT_TRUE(catalog.LoadOwner(DiskCatalog::OwnerKey(Ns(1)), "alice"));
  // A block record ('b' + 32 bytes) is not an owner record.
  EXPECT_FALSE(catalog.LoadOwner(std::string(33, 'b'), "x"));
  const auto owners = catalog.Owners();
  ASSERT_EQ(owners.size(), 1u);
  EXPECT_EQ(owners.at(Ns(1)), "alice");
}

TEST(DiskCatalogTest, SetEraseAndClear) {
  DiskCatalog catalog;
  catalog.AddCodebook(7);
  catalog.SetOwner(Ns(1), "alice");
  catalog.SetOwner(Ns(2), "bob");
  catalog.EraseOwner(Ns(1));
  EXPECT_EQ(catalog.Owners().size(), 1u);
  EXPECT_EQ(catalog.Owners().at(Ns(2)), "bob");
  catalog.Clear();
  EXPECT_FALSE(catalog.HasCodebook(7));
  EXPECT_TRUE(catalog.Owners().empty());
}

}  // namespace
}  // namespace vqkv::storage
