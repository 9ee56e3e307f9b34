// `vqkv generate --server` against a real vqkv-server process: the first
// process registers the codebook set and stores a document's vq blocks over
// gRPC, a second process with another question loads them, and its greedy
// tokens are exactly those of the in-memory codec round trip
// (--roundtrip) over the same prefix. Skips when the model is absent.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/integration/server_process.h"

namespace vqkv::testing {
namespace {

namespace fs = std::filesystem;

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

double JsonNumber(const std::string& json, const std::string& key) {
  std::smatch m;
  const std::regex re("\"" + key + "\":(-?[0-9.eE+-]+)");
  if (!std::regex_search(json, m, re)) {
    ADD_FAILURE() << "no key " << key << " in " << json;
    return -1;
  }
  return std::stod(m[1].str());
}

std::string JsonTokens(const std::string& json) {
  std::smatch m;
  const std::regex re("\"tokens\":\\[([0-9,]*)\\]");
  if (!std::regex_search(json, m, re)) {
    ADD_FAILURE() << "no tokens in " << json;
    return "";
  }
  return m[1].str();
}

class GenerateServerTest : public ::testing::Test {
 protected:
  // Runs vqkv with `args`; returns stdout, failing the test on a bad exit.
  std::string Vqkv(const std::string& args) const {
    const std::string out = dir_.path() + "/stdout";
    const std::string err = dir_.path() + "/stderr";
    const std::string cmd =
        absl::StrCat("OPENBLAS_NUM_THREADS=1 '", VQKV_BINARY, "' ", args, " >'",
                     out, "' 2>'", err, "'");
    const int status = std::system(cmd.c_str());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << args << "\n"
                                                               << ReadAll(err);
    return ReadAll(out);
  }
  TempDir dir_;
};

TEST_F(GenerateServerTest, SecondProcessLoadsVqBlocksFromTheServer) {
  if (!fs::exists(VQKV_MODEL_PATH)) {
    GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  }
  const std::string book =
      ReadAll(absl::StrCat(VQKV_TEXT_DIR, "/frankenstein.txt"));
  const size_t at = book.find("Letter 1");
  if (at == std::string::npos) GTEST_SKIP() << "texts not found";
  const std::string doc = book.substr(at, 2600);
  const std::string q1 =
      dir_.WriteFile("q1.txt", doc + "\n\nQuestion: Who wrote this? Answer:");
  const std::string q2 = dir_.WriteFile(
      "q2.txt", doc + "\n\nQuestion: What is the date of the letter? Answer:");
  const std::string model = VQKV_MODEL_PATH;
  Vqkv(absl::StrCat("calibrate --model ", model, " --text ", VQKV_TEXT_DIR,
                    "/pride_and_prejudice.txt --out ", dir_.path(),
                    "/tiny.vqcb --key-stages 8 --key-bits 4 --value-stages 2 "
                    "--value-bits 4 --max-tokens 500 --ctx 256"));
  const std::string vq = absl::StrCat(" --codec vq --codebooks ", dir_.path(),
                                      "/tiny.vqcb --max-new-tokens 6 --json");

  auto server = ServerProcess::Start({"--data-dir", dir_.path() + "/data"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string at_server = " --server " + (*server)->address();
  const std::string first = Vqkv(absl::StrCat(
      "generate --model ", model, " --prompt-file ", q1, vq, at_server));
  EXPECT_EQ(JsonNumber(first, "tokens_reused"), 0);
  EXPECT_GT(JsonNumber(first, "blocks_stored"), 5);
  EXPECT_EQ(JsonNumber(first, "blocks_store_failed"), 0);

  const std::string second = Vqkv(absl::StrCat(
      "generate --model ", model, " --prompt-file ", q2, vq, at_server));
  const double reused = JsonNumber(second, "tokens_reused");
  EXPECT_GE(reused, 512);
  EXPECT_GT(JsonNumber(second, "bytes_received"), 0);
  EXPECT_LT(JsonNumber(second, "bytes_received"),
            0.1 * JsonNumber(second, "fp16_bytes_received"));

  const std::string ref = Vqkv(absl::StrCat(
      "generate --model ", model, " --prompt-file ", q2, vq,
      " --roundtrip --roundtrip-tokens ", static_cast<int>(reused)));
  EXPECT_EQ(JsonNumber(ref, "tokens_reused"), reused);
  EXPECT_EQ(JsonTokens(second), JsonTokens(ref))
      << "server: " << second << "\nround trip: " << ref;
  EXPECT_NE(JsonTokens(second), "");
}

}  // namespace
}  // namespace vqkv::testing
