// `vqkv generate` end to end on the real model, as child processes: two
// processes share a long document through a RocksDB store (--store), each
// with its own question. The second reuses the document's KV, and its
// greedy tokens are exactly those of a run without cache (fp16 blocks) or
// of the in-memory codec round trip (--roundtrip, vq blocks). Bad flags end
// in one clean error line. Skips what needs the model when it is absent.
#include <sys/wait.h>
#include <unistd.h>

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
#include "tests/unit/tools/cli_test_base.h"

namespace vqkv {
namespace {

namespace fs = std::filesystem;

using testing::CliResult;
using testing::ReadAll;
using testing::WriteAll;
using Result = CliResult;
using testing::JsonNumber;
using testing::JsonTokens;

class GenerateCliTest : public testing::CliTest {
 protected:
  static std::string Model() { return VQKV_MODEL_PATH; }

  // Writes two prompts that share about 1000 tokens of a book and differ in
  // the question after it; returns false when the text is missing.
  bool WritePrompts() const {
    const std::string book =
        ReadAll(absl::StrCat(VQKV_TEXT_DIR, "/frankenstein.txt"));
    const size_t at = book.find("Letter 1");
    if (book.empty() || at == std::string::npos) return false;
    const std::string doc = book.substr(at, 4300);
    WriteAll(Path("q1.txt"),
             doc + "\n\nQuestion: To whom are these letters written? Answer:");
    WriteAll(Path("q2.txt"),
             doc +
                 "\n\nQuestion: Where is the writer of the first letter, "
                 "and what does he hope to find? Answer:");
    return true;
  }

  // `generate` with --json on prompt `q`; fails the test on a bad exit.
  std::string Generate(const std::string& q, const std::string& flags) const {
    const Result r =
        Run(absl::StrCat("generate --model ", Model(), " --prompt-file ",
                         Path(q), " --max-new-tokens 8 --json ", flags));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    return r.out;
  }
};

TEST_F(GenerateCliTest, BadFlags) {
  const std::string base =
      "generate --model /nonexistent/m.gguf --prompt hello ";
  ExpectCleanError(Run(base), "--no-cache");
  ExpectCleanError(Run(base + "--no-cache --roundtrip"), "exactly one of");
  ExpectCleanError(Run(base + "--store " + Path("s") + " --server h:1"),
                   "exactly one of");
  ExpectCleanError(Run("generate --model m.gguf --no-cache"), "--prompt-file");
  ExpectCleanError(Run("generate --model m.gguf --no-cache --prompt a "
                       "--prompt-file b"),
                   "--prompt-file");
  ExpectCleanError(Run(base + "--no-cache --max-new-tokens 0"),
                   "--max-new-tokens");
  ExpectCleanError(Run(base + "--no-cache --block-tokens 20"),
                   "--block-tokens");
  ExpectCleanError(Run(base + "--no-cache --sink-tokens 65"), "--sink-tokens");
  ExpectCleanError(Run(base + "--no-cache --roundtrip-tokens 64"),
                   "--roundtrip-tokens");
  ExpectCleanError(Run(base + "--no-cache --codebooks x.vqcb"),
                   "--codebooks is only used with --codec vq");
  WriteAll(Path("file"), "x");
  ExpectCleanError(Run(base + "--store " + Path("file")), "not a directory");
  ExpectCleanError(Run(base + "--no-cache"), "/nonexistent/m.gguf");
  ExpectCleanError(Run("generate --model m.gguf --no-cache --prompt-file " +
                       Path("missing.txt")),
                   "missing.txt");
  ExpectCleanError(Run("generate --model m.gguf --no-cache --bogus"), "bogus");
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  const std::string real = "generate --model " + Model() + " --prompt hello ";
  ExpectCleanError(Run(real + "--roundtrip --codec zip"), "--codec must be");
  ExpectCleanError(Run(real + "--roundtrip --codec vq"), "--codebooks");
  ExpectCleanError(
      Run(real + "--roundtrip --codec vq --codebooks " + Path("absent.vqcb")),
      "absent.vqcb");
}

// The cache never stops a request: an unreachable server is a miss, the
// saves are dropped, and the tokens are those of a run without cache.
TEST_F(GenerateCliTest, UnreachableServerIsAMiss) {
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  WriteAll(Path("p.txt"),
           "The capital of France is Paris. The capital of Italy is Rome. "
           "The capital of Spain is Madrid. The capital of Germany is "
           "Berlin. The capital of Portugal is Lisbon. The capital of "
           "Austria is");
  // Port 1 on loopback: nothing listens there.
  // 16-token blocks: the prompt has full blocks to store.
  const std::string got =
      Generate("p.txt", "--server 127.0.0.1:1 --block-tokens 16");
  const std::string ref = Generate("p.txt", "--no-cache --block-tokens 16");
  EXPECT_EQ(JsonNumber(got, "tokens_reused"), 0);
  EXPECT_EQ(JsonNumber(got, "blocks_stored"), 0);
  EXPECT_GT(JsonNumber(got, "blocks_store_failed"), 0);
  EXPECT_EQ(JsonTokens(got), JsonTokens(ref));
  EXPECT_FALSE(JsonTokens(ref).empty());
}

TEST_F(GenerateCliTest, SecondProcessReusesTheDocumentFp16) {
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  if (!WritePrompts()) GTEST_SKIP() << "texts not found in " VQKV_TEXT_DIR;
  const std::string store = "--codec fp16 --store " + Path("store");
  const std::string first = Generate("q1.txt", store);
  EXPECT_EQ(JsonNumber(first, "tokens_reused"), 0);
  const double prompt1 = JsonNumber(first, "prompt_tokens");
  EXPECT_GT(prompt1, 1000);
  EXPECT_EQ(JsonNumber(first, "blocks_stored"), static_cast<int>(prompt1) / 64);

  const std::string second = Generate("q2.txt", store);
  const double reused = JsonNumber(second, "tokens_reused");
  EXPECT_GE(reused, 900);  // the document, whole blocks of it
  EXPECT_EQ(static_cast<int>(reused) % 64, 0);
  EXPECT_EQ(JsonNumber(second, "blocks_loaded"), reused / 64);
  EXPECT_EQ(JsonNumber(second, "prefill_tokens"),
            JsonNumber(second, "prompt_tokens") - reused);
  // fp16 blocks: about their fp16 size on the wire (plus headers).
  EXPECT_GE(JsonNumber(second, "bytes_received"),
            JsonNumber(second, "fp16_bytes_received"));
  EXPECT_LT(JsonNumber(second, "bytes_received"),
            1.01 * JsonNumber(second, "fp16_bytes_received"));

  const std::string ref = Generate("q2.txt", "--no-cache");
  EXPECT_EQ(JsonNumber(ref, "tokens_reused"), 0);
  EXPECT_EQ(JsonTokens(second), JsonTokens(ref))
      << "cached: " << second << "\nno cache: " << ref;
  EXPECT_FALSE(JsonTokens(second).empty());

  // A different salt shares nothing.
  const std::string salted = Generate("q2.txt", store + " --salt alice");
  EXPECT_EQ(JsonNumber(salted, "tokens_reused"), 0);
  EXPECT_EQ(JsonTokens(salted), JsonTokens(ref));
}

TEST_F(GenerateCliTest, SecondProcessReusesTheDocumentVq) {
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  if (!WritePrompts()) GTEST_SKIP() << "texts not found in " VQKV_TEXT_DIR;
  // A tiny codebook set (as vqkv_cli_test): 4+4 key stages and 2 value
  // stages of 16 codewords, post-RoPE keys.
  const Result cal =
      Run(absl::StrCat("calibrate --model ", Model(), " --text ", VQKV_TEXT_DIR,
                       "/pride_and_prejudice.txt --out ", Path("tiny.vqcb"),
                       " --key-stages 8 --key-bits 4 --value-stages 2 "
                       "--value-bits 4 --max-tokens 500 --ctx 256 "
                       "--key-gain-tokens 300"));
  ASSERT_EQ(cal.exit_code, 0) << cal.err;
  const std::string vq = "--codec vq --codebooks " + Path("tiny.vqcb");
  const std::string store = vq + " --store " + Path("store");
  Generate("q1.txt", store);
  const std::string second = Generate("q2.txt", store);
  const double reused = JsonNumber(second, "tokens_reused");
  EXPECT_GE(reused, 900);
  // 0.625 bits per element instead of 16 (the sink tokens stay fp16).
  EXPECT_LT(JsonNumber(second, "bytes_received"),
            0.1 * JsonNumber(second, "fp16_bytes_received"));

  const std::string ref =
      Generate("q2.txt", absl::StrCat(vq, " --roundtrip --roundtrip-tokens ",
                                      static_cast<int>(reused)));
  EXPECT_EQ(JsonNumber(ref, "tokens_reused"), reused);
  EXPECT_EQ(JsonTokens(second), JsonTokens(ref))
      << "loaded: " << second << "\nround trip: " << ref;
  EXPECT_FALSE(JsonTokens(second).empty());
}

}  // namespace
}  // namespace vqkv
