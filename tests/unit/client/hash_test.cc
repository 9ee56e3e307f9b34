// The block hash chain: golden vectors (shared with the independent Python
// implementation, hash_reference.py), its chaining properties, and
// determinism across processes.
#include "client/hash.h"

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace vqkv::client {
namespace {

// hash_reference.py NAMESPACE.
storage::NamespaceSpec GoldenNamespace() {
  storage::NamespaceSpec ns;
  ns.model_id = "HuggingFaceTB/SmolLM2-135M";
  ns.weight_revision = "q4_1";
  ns.codec = "fp16";
  ns.codec_id = 1;
  ns.codebook_hash = 0;
  ns.block_tokens = 16;
  ns.layers = 30;
  ns.kv_heads = 3;
  ns.head_dim = 64;
  ns.dtype = storage::KvDtype::kFloat16;
  return ns;
}

std::vector<int32_t> Ramp(int n) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), 0);
  return t;
}

std::string Hex(const std::vector<BlockHash>& hashes) {
  std::vector<std::string> hex;
  for (const BlockHash& h : hashes) hex.push_back(h.ToHex());
  return absl::StrJoin(hex, ",");
}

std::map<std::string, std::string> ReadGolden() {
  std::ifstream in(VQKV_HASH_GOLDEN);
  std::map<std::string, std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    if (parts.size() == 2) out[parts[0]] = parts[1];
  }
  return out;
}

std::string HashHex(const std::vector<int32_t>& tokens, const char* salt) {
  absl::StatusOr<std::vector<BlockHash>> h =
      HashChain(tokens, salt, GoldenNamespace());
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? Hex(*h) : "";
}

TEST(HashTest, GoldenVectors) {
  const std::map<std::string, std::string> golden = ReadGolden();
  ASSERT_FALSE(golden.empty()) << "cannot read " << VQKV_HASH_GOLDEN;
  EXPECT_EQ(storage::ComputeNamespaceId("", GoldenNamespace()).ToHex(),
            golden.at("namespace_id"));
  EXPECT_EQ(HashHex(Ramp(48), ""), golden.at("ramp48"));
  EXPECT_EQ(HashHex(Ramp(48), "tenant-a"), golden.at("ramp48_salted"));
  EXPECT_EQ(HashHex(Ramp(40), ""), golden.at("ramp40_partial"));
  std::vector<int32_t> large;
  for (int i = 0; i < 8; ++i)
    large.insert(large.end(), {2147483647, 0, 49151, 1});
  EXPECT_EQ(HashHex(large, ""), golden.at("large_ids"));
}

TEST(HashTest, OnlyFullBlocksAndPrefixStable) {
  const auto ns = GoldenNamespace();
  auto h40 = HashChain(Ramp(40), "", ns);
  auto h48 = HashChain(Ramp(48), "", ns);
  auto h15 = HashChain(Ramp(15), "", ns);
  ASSERT_TRUE(h40.ok() && h48.ok() && h15.ok());
  EXPECT_EQ(h40->size(), 2u);
  EXPECT_EQ(h48->size(), 3u);
  EXPECT_TRUE(h15->empty());
  EXPECT_EQ((*h48)[0], (*h40)[0]);
  EXPECT_EQ((*h48)[1], (*h40)[1]);
}

TEST(HashTest, EveryInputChangesTheChain) {
  const auto ns = GoldenNamespace();
  const std::string base = HashHex(Ramp(32), "");
  // A changed token in block 0 changes every later hash (chaining).
  std::vector<int32_t> t = Ramp(32);
  t[3] = 1000;
  auto h = HashChain(t, "", ns);
  auto b = HashChain(Ramp(32), "", ns);
  ASSERT_TRUE(h.ok() && b.ok());
  EXPECT_NE((*h)[0], (*b)[0]);
  EXPECT_NE((*h)[1], (*b)[1]);
  // Salt, model, revision, codec, block size, layout and dtype all matter.
  EXPECT_NE(HashHex(Ramp(32), "x"), base);
  std::vector<storage::NamespaceSpec> variants(7, ns);
  variants[0].model_id = "other";
  variants[1].weight_revision = "q8_0";
  variants[2].codec = "kivi2";
  variants[3].codebook_hash = 1;
  variants[4].layers = 31;
  variants[5].dtype = storage::KvDtype::kBfloat16;
  variants[6].head_dim = 128;
  for (const auto& v : variants) {
    auto hv = HashChain(Ramp(32), "", v);
    ASSERT_TRUE(hv.ok());
    EXPECT_NE(Hex(*hv), base);
  }
}

TEST(HashTest, BadInput) {
  const auto ns = GoldenNamespace();
  std::vector<int32_t> t = Ramp(32);
  t[17] = -1;
  auto h = HashChain(t, "", ns);
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(h.status().message().find("token 17"), std::string::npos);
  EXPECT_EQ(HashChain(Ramp(32), 0, "", NamespaceId{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A child process (its own address space, ASLR and hash seeds) computes the
// same hashes.
TEST(HashTest, SameInTwoProcesses) {
  const std::string here = HashHex(Ramp(64), "s");
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    const std::string there = HashHex(Ramp(64), "s");
    ssize_t w = write(fds[1], there.data(), there.size());
    _exit(w == static_cast<ssize_t>(there.size()) ? 0 : 1);
  }
  close(fds[1]);
  std::string got;
  char buf[256];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) got.append(buf, n);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(got, here);
}

}  // namespace
}  // namespace vqkv::client
