// `vqkv generate --server` against a real vqkv-server process: the first
// process registers the codebook set and stores a document's vq blocks over
// gRPC, a second process with another question loads them, and its greedy
// tokens are exactly those of the in-memory codec round trip
// (--roundtrip) over the same prefix. Skips when the model is absent.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/server_process.h"
#include "tests/unit/tools/cli_test_base.h"

namespace vqkv::testing {
namespace {

class GenerateServerTest : public CliTest {
 protected:
  // Runs vqkv with `args`; returns stdout, failing the test on a bad exit.
  std::string Vqkv(const std::string& args) const {
    const CliResult r = Run(args);
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.err;
    return r.out;
  }
};

TEST_F(GenerateServerTest, SecondProcessLoadsVqBlocksFromTheServer) {
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  const std::string book =
      ReadAll(absl::StrCat(VQKV_TEXT_DIR, "/frankenstein.txt"));
  const size_t at = book.find("Letter 1");
  if (at == std::string::npos) GTEST_SKIP() << "texts not found";
  const std::string doc = book.substr(at, 2600);
  const std::string q1 = Path("q1.txt"), q2 = Path("q2.txt");
  WriteAll(q1, doc + "\n\nQuestion: Who wrote this? Answer:");
  WriteAll(q2, doc + "\n\nQuestion: What is the date of the letter? Answer:");
  const std::string model = VQKV_MODEL_PATH;
  Vqkv(absl::StrCat("calibrate --model ", model, " --text ", VQKV_TEXT_DIR,
                    "/pride_and_prejudice.txt --out ", dir_.string(),
                    "/tiny.vqcb --key-stages 8 --key-bits 4 --value-stages 2 "
                    "--value-bits 4 --max-tokens 500 --ctx 256 "
                    "--key-gain-tokens 300"));
  const std::string vq = absl::StrCat(" --codec vq --codebooks ", dir_.string(),
                                      "/tiny.vqcb --max-new-tokens 6 --json");

  auto server = ServerProcess::Start({"--data-dir", dir_.string() + "/data"});
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
  EXPECT_FALSE(JsonTokens(second).empty());
}

}  // namespace
}  // namespace vqkv::testing
