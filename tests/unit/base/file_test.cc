#include "base/file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"

namespace vqkv::base {
namespace {

class FileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vqkv_file_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string dir_;
};

TEST_F(FileTest, WriteThenReadBinary) {
  const std::string path = dir_ + "/f";
  std::string bytes(200000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i);
  ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
  auto read = ReadFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, bytes);
  EXPECT_NE(access((path + ".tmp").c_str(), F_OK), 0) << "temp file left";
  // Overwrite with something shorter: no old tail survives.
  ASSERT_TRUE(WriteFileAtomically(path, "x").ok());
  EXPECT_EQ(*ReadFile(path), "x");
}

TEST_F(FileTest, EmptyFile) {
  const std::string path = dir_ + "/empty";
  ASSERT_TRUE(WriteFileAtomically(path, "").ok());
  auto read = ReadFile(path);
  ASSERT_TRUE(read.ok());
  EXPECT_TRUE(read->empty());
}

TEST_F(FileTest, MissingFileIsNotFoundWithPath) {
  auto read = ReadFile(dir_ + "/nope");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(read.status().message().find(dir_ + "/nope"), std::string::npos);
}

TEST_F(FileTest, DirectoryIsAnErrorNotEmptyBytes) {
  auto read = ReadFile(dir_);
  EXPECT_FALSE(read.ok());
  EXPECT_NE(read.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(FileTest, PemFileIsReadOrNamedInTheError) {
  const std::string pem = dir_ + "/ca.pem";
  const std::string text =
      "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  ASSERT_TRUE(WriteFileAtomically(pem, text).ok());
  absl::StatusOr<std::string> got = ReadPemFile(pem, "CA file");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, text);

  const std::string der = dir_ + "/ca.der";
  ASSERT_TRUE(WriteFileAtomically(der, std::string("\x30\x82\x01", 3)).ok());
  got = ReadPemFile(der, "CA file");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(got.status().message().find("TLS CA file '" + der + "' is not PEM"),
            std::string::npos)
      << got.status();

  got = ReadPemFile(dir_ + "/missing.pem", "client key");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find("TLS client key: cannot read"),
            std::string::npos)
      << got.status();
}

TEST_F(FileTest, WriteIntoMissingDirectoryFails) {
  const absl::Status s = WriteFileAtomically(dir_ + "/no/such/f", "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("cannot write"), std::string::npos);
}

}  // namespace
}  // namespace vqkv::base
