// Runs the built `vqkv` binary as a child process: bad input must end in
// exactly one "vqkv: error: ..." line on stderr and a non-zero exit (never a
// crash); and, when the real model has been fetched, a tiny calibrate + eval
// round trip must print sane JSON.
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "kernels/codebook_set.h"
#include "kernels/vq_codec.h"
#include "tests/unit/model/gguf_writer.h"
#include "tests/unit/tools/cli_test_base.h"
#include "tools/key_gain_fit.h"

namespace vqkv {
namespace {

namespace fs = std::filesystem;
using model::testing::GgufWriter;

using testing::CliResult;
using testing::JsonNumber;
using testing::ReadAll;
using testing::WriteAll;
using Result = CliResult;

class VqkvCliTest : public testing::CliTest {
 protected:
  static std::string Text(const std::string& name) {
    return absl::StrCat(VQKV_TEXT_DIR, "/", name);
  }
};

// A GGUF with the llama hyperparameters of a tiny model and one tensor.
GgufWriter TinyLlamaHeader(const std::string& arch) {
  GgufWriter w;
  w.AddString("general.architecture", arch);
  w.AddScalar<uint32_t>(arch + ".block_count", 4, 1);
  w.AddScalar<uint32_t>(arch + ".embedding_length", 4, 8);
  w.AddScalar<uint32_t>(arch + ".feed_forward_length", 4, 8);
  w.AddScalar<uint32_t>(arch + ".attention.head_count", 4, 2);
  return w;
}

TEST_F(VqkvCliTest, MissingModel) {
  ExpectCleanError(Run("eval --model /nonexistent/m.gguf --text x --codec "
                       "fp16"),
                   "/nonexistent/m.gguf");
  ExpectCleanError(Run("calibrate --model /nonexistent/m.gguf --text x --out "
                       "/dev/null"),
                   "/nonexistent/m.gguf");
}

TEST_F(VqkvCliTest, CorruptModel) {
  std::mt19937 rng(7);
  std::string junk(4096, '\0');
  for (char& c : junk) c = static_cast<char>(rng());
  WriteAll(Path("junk.gguf"), junk);
  ExpectCleanError(
      Run("eval --model " + Path("junk.gguf") + " --text x --codec fp16"),
      "not a GGUF file");
  // A valid header that promises more than the file holds.
  std::string truncated = GgufWriter().Build();
  truncated.resize(16);
  truncated.replace(8, 8, std::string("\xff\xff\x00\x00\x00\x00\x00\x00", 8));
  WriteAll(Path("truncated.gguf"), truncated);
  Result r =
      Run("eval --model " + Path("truncated.gguf") + " --text x --codec fp16");
  ExpectCleanError(r, "truncated.gguf");
  WriteAll(Path("empty.gguf"), "");
  ExpectCleanError(
      Run("eval --model " + Path("empty.gguf") + " --text x --codec fp16"),
      "empty.gguf");
}

TEST_F(VqkvCliTest, UnsupportedArchitecture) {
  GgufWriter w = TinyLlamaHeader("gpt2");
  WriteAll(Path("gpt2.gguf"), w.Build());
  ExpectCleanError(
      Run("eval --model " + Path("gpt2.gguf") + " --text x --codec fp16"),
      "unsupported model architecture 'gpt2'");
}

TEST_F(VqkvCliTest, UnsupportedQuantType) {
  GgufWriter w = TinyLlamaHeader("llama");
  // ggml type 12 is Q4_K: the reader does not dequantize it.
  w.AddTensor("token_embd.weight", {8, 16}, 12, std::string(256, '\x11'));
  WriteAll(Path("q4k.gguf"), w.Build());
  ExpectCleanError(Run("calibrate --model " + Path("q4k.gguf") +
                       " --text x --out " + Path("c.vqcb")),
                   "unsupported ggml type 12");
}

TEST_F(VqkvCliTest, BadOptions) {
  ExpectCleanError(Run("eval --model m.gguf --bogus"), "bogus");
  ExpectCleanError(Run("calibrate --model m.gguf --out x"), "--text");
  ExpectCleanError(Run("calibrate --model m.gguf --text t --out x "
                       "--key-split diagonal"),
                   "--key-split");
  ExpectCleanError(Run("eval --model m.gguf --task ruler"), "mkniah");
  ExpectCleanError(Run("calibrate --model m.gguf --text t --out x --fit sgd"),
                   "--fit: unknown RVQ fit 'sgd'; expected kmeans or simvq");
  ExpectCleanError(Run("calibrate --model m.gguf --text t --out x --fit simvq "
                       "--simvq-iters -1"),
                   "--simvq-iters");
  ExpectCleanError(Run("calibrate --model m.gguf --text t"), "--out");
  ExpectCleanError(Run("calibrate --model m.gguf --text t --study-sizes 64"),
                   "--holdout");
}

// The calibration-size study: more calibration tokens lower the held-out
// error of a small codebook (16 codewords overfit 40 vectors, not 600);
// sizes must ascend and fit in the text.
TEST_F(VqkvCliTest, CalibrationSizeStudy) {
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  if (!fs::exists(Text("pride_and_prejudice.txt"))) {
    GTEST_SKIP() << "eval texts not found in " << VQKV_TEXT_DIR;
  }
  const std::string base =
      "calibrate --model " + std::string(VQKV_MODEL_PATH) + " --text " +
      Text("pride_and_prejudice.txt") + " --holdout " +
      Text("frankenstein.txt") +
      " --key-stages 4 --key-bits 4 --value-stages 2 --value-bits 4 --ctx 128"
      " --holdout-tokens 200 --study-layers 3,20 --keys post";
  // Post-RoPE keys: their 16-token fit overfits in both directions below
  // (with pre-RoPE keys its training error is not the lower one).
  Result r = Run(base + " --study-sizes 16,400 --study-all-points --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // One row per size with the default sample (48 points per centroid), and
  // a second, on every vector, where that sample is smaller than the data.
  const std::vector<std::string> rows =
      absl::StrSplit(absl::StripTrailingAsciiWhitespace(r.out), '\n');
  ASSERT_EQ(rows.size(), 3u) << r.out;
  const std::string& small = rows[0];
  const std::string& capped = rows[1];
  const std::string& large = rows[2];
  EXPECT_EQ(JsonNumber(small, "tokens"), 16);
  EXPECT_EQ(JsonNumber(small, "sample"), 48);  // 16 tokens x 3 kv heads
  EXPECT_NE(small.find("\"all_points\":false"), std::string::npos);
  EXPECT_EQ(JsonNumber(capped, "tokens"), 400);
  EXPECT_EQ(JsonNumber(capped, "sample"), 768);  // 48 x 16 codewords
  EXPECT_EQ(JsonNumber(large, "tokens"), 400);
  EXPECT_EQ(JsonNumber(large, "sample"), 1200);
  EXPECT_NE(large.find("\"all_points\":true"), std::string::npos);
  // Overfitting: the small fit is better on its own tokens, worse held out.
  EXPECT_LT(JsonNumber(small, "key_train"), JsonNumber(large, "key_train"));
  EXPECT_GT(JsonNumber(small, "key_holdout"), JsonNumber(large, "key_holdout"));
  EXPECT_GT(JsonNumber(small, "value_holdout"),
            JsonNumber(large, "value_holdout"));
  EXPECT_GT(JsonNumber(large, "key_holdout"), 0);
  // Each row names its fit, so scripts/fidelity.sh can set the two apart.
  EXPECT_NE(small.find("\"fit\":\"kmeans\""), std::string::npos) << small;
  Result simvq = Run(base + " --study-sizes 100 --fit simvq --json");
  ASSERT_EQ(simvq.exit_code, 0) << simvq.err;
  EXPECT_NE(simvq.out.find("\"fit\":\"simvq\""), std::string::npos)
      << simvq.out;

  Result table = Run(base + " --study-sizes 100");
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("K held-out"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("kmeans fit"), std::string::npos) << table.out;
  ExpectCleanError(Run(base + " --study-sizes 400,16"), "ascending");
  ExpectCleanError(Run(base + " --study-sizes 16 --study-layers 30"),
                   "outside the model's 0..29");
  ExpectCleanError(Run(base + " --study-sizes 100000000"),
                   "fewer than the 100000000 asked for");
}

TEST_F(VqkvCliTest, EmptyText) {
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  WriteAll(Path("empty.txt"), " \n\n ");
  ExpectCleanError(Run("eval --model " + std::string(VQKV_MODEL_PATH) +
                       " --text " + Path("empty.txt") + " --codec kivi2"),
                   "is empty");
  ExpectCleanError(
      Run("calibrate --model " + std::string(VQKV_MODEL_PATH) + " --text " +
          Path("empty.txt") + " --out " + Path("c.vqcb")),
      "is empty");
  ExpectCleanError(Run("eval --model " + std::string(VQKV_MODEL_PATH) +
                       " --text " + Path("missing.txt") + " --codec kivi2"),
                   "missing.txt");
}

TEST_F(VqkvCliTest, TokenizeCountsChecksAndWritesIds) {
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  const std::string text = "Hello, world. Caf\xc3\xa9 \xe2\x82\xac 42!\n";
  WriteAll(Path("t.txt"), text);
  const CliResult r =
      Run("tokenize --model " + std::string(VQKV_MODEL_PATH) + " --text " +
          Path("t.txt") + " --ids-out " + Path("ids.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(absl::StrCat(text.size(), " bytes -> ")),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("decode: identical"), std::string::npos) << r.out;
  // One id per line, as many as the summary says.
  const std::string ids = ReadAll(Path("ids.txt"));
  const int64_t lines = std::count(ids.begin(), ids.end(), '\n');
  EXPECT_GT(lines, 5);
  EXPECT_NE(r.out.find(absl::StrCat("-> ", lines, " tokens")),
            std::string::npos)
      << r.out;
  ExpectCleanError(Run("tokenize --model " + std::string(VQKV_MODEL_PATH) +
                       " --text " + Path("missing.txt")),
                   "missing.txt");
}

// A complete codebook set for another layout (2 layers x 1 head x 8).
std::string OtherModelCodebooks(const std::string& path) {
  const KvLayout layout{2, 1, 8};
  VqConfig c;
  c.key_stages = 1;
  c.key_bits = 2;
  c.value_stages = 1;
  c.value_bits = 2;
  auto codec = VqCodec::Create(layout, c);
  if (!codec.ok()) return codec.status().ToString();
  std::mt19937 rng(3);
  std::normal_distribution<float> n;
  std::vector<float> k(2 * 64 * 8), v(k.size());
  for (float& x : k) x = n(rng);
  for (float& x : v) x = n(rng);
  if (auto s = (*codec)->Fit(k.data(), v.data(), 64, {}); !s.ok()) {
    return s.ToString();
  }
  if (auto s = (*codec)->codebooks().Save(path); !s.ok()) return s.ToString();
  return "";
}

TEST_F(VqkvCliTest, CodebooksForAnotherModel) {
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  ASSERT_EQ(OtherModelCodebooks(Path("other.vqcb")), "");
  const std::string base = "eval --model " + std::string(VQKV_MODEL_PATH) +
                           " --text " + Text("frankenstein.txt") +
                           " --codec vq --codebooks ";
  ExpectCleanError(Run(base + Path("other.vqcb")), "made for another model");
  // A flipped byte: the content hash no longer matches.
  std::string bytes = ReadAll(Path("other.vqcb"));
  bytes[bytes.size() / 2] ^= 0x40;
  WriteAll(Path("flipped.vqcb"), bytes);
  ExpectCleanError(Run(base + Path("flipped.vqcb")), "flipped.vqcb");
  WriteAll(Path("garbage.vqcb"), "not a codebook file");
  ExpectCleanError(Run(base + Path("garbage.vqcb")), "garbage.vqcb");
  ExpectCleanError(Run(base + Path("absent.vqcb")), "absent.vqcb");
  ExpectCleanError(Run("eval --model " + std::string(VQKV_MODEL_PATH) +
                       " --text " + Text("frankenstein.txt") + " --codec vq"),
                   "--codebooks");
  ExpectCleanError(Run("eval --model " + std::string(VQKV_MODEL_PATH) +
                       " --text " + Text("frankenstein.txt") + " --codec zip"),
                   "--codec must be");
}

// A complete set in SmolLM2-135M's layout (30 x 3 x 64), recorded (when
// `fingerprint` is set) as fitted for another llama model of that shape.
std::string SameShapeCodebooks(const std::string& path,
                               std::optional<uint64_t> fingerprint) {
  const KvLayout layout{30, 3, 64};
  VqConfig c;
  c.key_stages = 1;
  c.key_bits = 1;
  c.value_stages = 1;
  c.value_bits = 1;
  auto codec = VqCodec::Create(layout, c);
  if (!codec.ok()) return codec.status().ToString();
  std::mt19937 rng(5);
  std::normal_distribution<float> n;
  std::vector<float> k(size_t{16} * layout.ElementsPerToken()), v(k.size());
  for (float& x : k) x = n(rng);
  for (float& x : v) x = n(rng);
  if (auto s = (*codec)->Fit(k.data(), v.data(), 16, {}); !s.ok()) {
    return s.ToString();
  }
  CodebookSet set = (*codec)->codebooks();
  if (fingerprint) {
    auto s = set.SetIdentity({"llama", layout, *fingerprint});
    if (!s.ok()) return s.ToString();
  }
  if (auto s = set.Save(path); !s.ok()) return s.ToString();
  return "";
}

TEST_F(VqkvCliTest, CodebooksFittedForAnotherModelOfTheSameShape) {
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  ASSERT_EQ(SameShapeCodebooks(Path("other.vqcb"), 0xdeadbeef), "");
  const std::string fitted_for =
      "codebooks " + Path("other.vqcb") +
      " were fitted for llama 30x3x64 model fingerprint 00000000deadbeef, "
      "keys post-RoPE; this model is llama 30x3x64 model fingerprint ";
  ExpectCleanError(Run("eval --model " + std::string(VQKV_MODEL_PATH) +
                       " --text " + Text("frankenstein.txt") +
                       " --codec vq --codebooks " + Path("other.vqcb")),
                   fitted_for);
  ExpectCleanError(Run("generate --model " + std::string(VQKV_MODEL_PATH) +
                       " --prompt hello --max-new-tokens 1 --roundtrip "
                       "--codec vq --codebooks " +
                       Path("other.vqcb")),
                   fitted_for);

  // The same codebooks with no recorded model (a version-1 file): the
  // layout fits, so they are used, with one warning.
  ASSERT_EQ(SameShapeCodebooks(Path("v1.vqcb"), std::nullopt), "");
  ASSERT_EQ(ReadAll(Path("v1.vqcb"))[4], 1);
  Result r = Run("generate --model " + std::string(VQKV_MODEL_PATH) +
                 " --prompt hello --max-new-tokens 1 --roundtrip --json "
                 "--codec vq --codebooks " +
                 Path("v1.vqcb"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines =
      absl::StrSplit(r.err, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 1u) << r.err;
  EXPECT_NE(lines[0].find("do not record the model they were fitted for"),
            std::string::npos)
      << lines[0];
}

TEST_F(VqkvCliTest, CalibrateThenEvalOnAnotherText) {
  if (!HaveModel()) GTEST_SKIP() << "model not fetched (scripts/get-model.sh)";
  if (!fs::exists(Text("pride_and_prejudice.txt"))) {
    GTEST_SKIP() << "eval texts not found in " << VQKV_TEXT_DIR;
  }
  // A tiny config: 4+4 key stages and 2 value stages of 16 codewords.
  const auto calibrate = [this](const std::string& out,
                                const std::string& more) {
    return Run("calibrate --model " + std::string(VQKV_MODEL_PATH) +
               " --text " + Text("pride_and_prejudice.txt") + " --out " +
               Path(out) + " --max-tokens 500 --ctx 256 " + more);
  };
  const std::string tiny =
      "--key-stages 8 --key-bits 4 --value-stages 2 --value-bits 4 ";
  Result cal = calibrate("tiny.vqcb", tiny + "--key-gain-tokens 300");
  ASSERT_EQ(cal.exit_code, 0) << cal.err;
  EXPECT_NE(cal.err.find("wrote"), std::string::npos) << cal.err;
  EXPECT_NE(cal.err.find("fitted for llama 30x3x64 model fingerprint "),
            std::string::npos)
      << cal.err;
  // Key gains on the second half of the layers, from the 300 tokens after
  // the fitted 500.
  EXPECT_NE(cal.err.find("key gains of layers 15-29 on 300 held-out tokens"),
            std::string::npos)
      << cal.err;
  // Pre-RoPE keys (the default) record the model's RoPE, for the client.
  EXPECT_NE(cal.err.find(", key RoPE theta "), std::string::npos) << cal.err;
  EXPECT_NE(cal.err.find(", 64 dims, adjacent pairs"), std::string::npos)
      << cal.err;
  ASSERT_TRUE(fs::exists(Path("tiny.vqcb")));
  // Calibrate records the model, the key RoPE, the gains and the key
  // refinement of the layer with the largest gain, 8 more stages (the key
  // stages): version 5.
  const std::string tiny_file = ReadAll(Path("tiny.vqcb"));
  ASSERT_EQ(tiny_file[4], 5);
  ASSERT_EQ(tiny_file[113], 1);  // has_key_gains
  ASSERT_EQ(tiny_file[116], 8);  // refinement stages
  ASSERT_EQ(tiny_file[120], 1);  // refined layers
  const std::regex refined_line(R"(key refinement of layer (\d+) )");
  std::smatch refined;
  ASSERT_TRUE(std::regex_search(cal.err, refined, refined_line)) << cal.err;
  EXPECT_GE(std::stoi(refined[1].str()), 15);
  EXPECT_NE(cal.err.find(":kr=8@" + refined[1].str()), std::string::npos)
      << cal.err;
  EXPECT_NE(cal.err.find("key gains of refined layer " + refined[1].str()),
            std::string::npos)
      << cal.err;
  // --refit-gains keeps the refinement and fits its layer's gains again.
  Result refit5 =
      calibrate("refit5.vqcb", "--refit-gains " + Path("tiny.vqcb") +
                                   " --key-gain-tokens 300");
  ASSERT_EQ(refit5.exit_code, 0) << refit5.err;
  EXPECT_EQ(ReadAll(Path("refit5.vqcb")), tiny_file);
  // --key-refine-layers 0: no refinement, version 4.
  Result unrefined = calibrate(
      "unrefined.vqcb", tiny + "--key-gain-tokens 300 --key-refine-layers 0");
  ASSERT_EQ(unrefined.exit_code, 0) << unrefined.err;
  EXPECT_EQ(unrefined.err.find("key refinement"), std::string::npos)
      << unrefined.err;
  ASSERT_EQ(ReadAll(Path("unrefined.vqcb"))[4], 4);
  // Without gains, version 4 still (the gains flag off), another hash, and
  // no refinement (the gains choose its layers).
  Result plain = calibrate("plain.vqcb", tiny + "--key-gain-tokens 0");
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(plain.err.find("key gains"), std::string::npos) << plain.err;
  EXPECT_NE(plain.err.find("no key refinement without a gain fit"),
            std::string::npos)
      << plain.err;
  ASSERT_EQ(ReadAll(Path("plain.vqcb"))[4], 4);
  ASSERT_EQ(ReadAll(Path("plain.vqcb"))[113], 0);
  // Post-RoPE keys record no RoPE: version 2 without gains (3 with).
  Result post =
      calibrate("post.vqcb", tiny + "--key-gain-tokens 0 --keys post");
  ASSERT_EQ(post.exit_code, 0) << post.err;
  EXPECT_EQ(post.err.find("key RoPE"), std::string::npos) << post.err;
  ASSERT_EQ(ReadAll(Path("post.vqcb"))[4], 2);
  // Gains for an existing set, its codebooks kept: same body before the
  // gains, gains from layer 20 only.
  Result refit = calibrate("refit.vqcb", "--refit-gains " + Path("plain.vqcb") +
                                             " --key-gain-tokens 300 "
                                             "--key-gain-from-layer 20");
  ASSERT_EQ(refit.exit_code, 0) << refit.err;
  EXPECT_NE(refit.err.find("key gains of layers 20-29 on 300 held-out"),
            std::string::npos)
      << refit.err;
  const std::string plain_file = ReadAll(Path("plain.vqcb"));
  const std::string refit_file = ReadAll(Path("refit.vqcb"));
  // The codebooks: the bytes after the 128-byte header up to plain.vqcb's
  // 8-byte trailer, where the gains begin.
  const auto codebooks = [&plain_file](const std::string& file) {
    return file.substr(128, plain_file.size() - 136);
  };
  ASSERT_EQ(refit_file[4], 4);
  ASSERT_EQ(refit_file[113], 1);
  // 30 layers x 3 heads x (gain + 64 centre floats) more.
  ASSERT_EQ(refit_file.size(), plain_file.size() + 30 * 3 * 65 * 4);
  EXPECT_EQ(codebooks(refit_file), codebooks(plain_file));
  // By default the strength follows the fitted gains (AutoKeyGainStrength,
  // between 1 and 2); spelling out the strength it chose writes the same
  // file, and another strength other gains on the same codebooks.
  const std::regex auto_line(
      R"(strength (\d\.\d{3}) \(auto: fitted mean (\d\.\d{4})\))");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(refit.err, m, auto_line)) << refit.err;
  const double chosen = std::stod(m[1].str());
  const double fitted_mean = std::stod(m[2].str());
  EXPECT_GE(chosen, 1.0);
  EXPECT_LE(chosen, 2.0);
  EXPECT_NEAR(chosen, tools::AutoKeyGainStrength(fitted_mean), 0.01);
  const std::string refit_flags = "--refit-gains " + Path("plain.vqcb") +
                                  " --key-gain-tokens 300 "
                                  "--key-gain-from-layer 20 ";
  if (chosen == 1.0 || chosen == 2.0) {
    Result same = calibrate("same.vqcb",
                            refit_flags + "--key-gain-strength " + m[1].str());
    ASSERT_EQ(same.exit_code, 0) << same.err;
    EXPECT_EQ(same.err.find("auto"), std::string::npos) << same.err;
    EXPECT_EQ(ReadAll(Path("same.vqcb")), refit_file);
  }
  const std::string other_strength = chosen > 1.5 ? "1" : "3";
  ASSERT_EQ(calibrate("s_other.vqcb",
                      refit_flags + "--key-gain-strength " + other_strength)
                .exit_code,
            0);
  const std::string s_file = ReadAll(Path("s_other.vqcb"));
  ASSERT_EQ(s_file.size(), refit_file.size());
  EXPECT_EQ(codebooks(s_file), codebooks(plain_file));
  EXPECT_NE(s_file, refit_file) << "another strength writes other gains";
  // Gains fitted on another text (--key-gain-text): its first 300 tokens,
  // the same codebooks, other gains.
  const std::string other_text = Text("tinyshakespeare.txt");
  Result other = calibrate(
      "gain_text.vqcb", "--refit-gains " + Path("plain.vqcb") +
                            " --key-gain-tokens 300 --key-gain-from-layer 20 "
                            "--key-gain-text " +
                            other_text);
  ASSERT_EQ(other.exit_code, 0) << other.err;
  EXPECT_NE(other.err.find("key gains of layers 20-29 on 300 held-out tokens "
                           "of " +
                           other_text),
            std::string::npos)
      << other.err;
  const std::string other_file = ReadAll(Path("gain_text.vqcb"));
  ASSERT_EQ(other_file.size(), refit_file.size());
  EXPECT_EQ(codebooks(other_file), codebooks(plain_file));
  EXPECT_NE(other_file.substr(plain_file.size() - 8),
            refit_file.substr(plain_file.size() - 8))
      << "gains fitted on another text are other gains";
  ExpectCleanError(
      calibrate("bad.vqcb", "--refit-gains " + Path("missing.vqcb")),
      "missing.vqcb");
  ExpectCleanError(calibrate("bad.vqcb", "--key-gain-tokens -1"),
                   "--key-gain-tokens must be >= 0");
  ExpectCleanError(calibrate("bad.vqcb", "--key-gain-text " +
                                             Text("pride_and_prejudice.txt")),
                   "is a calibration text");

  Result ev =
      Run("eval --model " + std::string(VQKV_MODEL_PATH) + " --text " +
          Text("frankenstein.txt") + " --codec vq " + "--codebooks " +
          Path("tiny.vqcb") + " --ctx 160 --window 64 --max-windows 1 --json");
  ASSERT_EQ(ev.exit_code, 0) << ev.err;
  const double ppl = JsonNumber(ev.out, "ppl");
  const double ppl16 = JsonNumber(ev.out, "ppl_fp16");
  const double top1 = JsonNumber(ev.out, "top1_agreement");
  EXPECT_GT(ppl, 1.0);
  EXPECT_GT(ppl16, 1.0);
  EXPECT_GE(top1, 0.0);
  EXPECT_LE(top1, 1.0);
  EXPECT_GE(JsonNumber(ev.out, "kl"), 0.0);
  // 8 x 4 bits / 64 keys (one layer of 30 with 8 x 4 more), 2 x 4 bits /
  // 64 values.
  EXPECT_NEAR(JsonNumber(ev.out, "bits_per_element"),
              0.5 * (0.5 + 0.5 / 30 + 0.125), 1e-6);
  EXPECT_GT(JsonNumber(ev.out, "compression_ratio"), 0.9);
  EXPECT_EQ(JsonNumber(ev.out, "tokens_scored"), 160 - (4 + 64 + 1));
  EXPECT_GT(JsonNumber(ev.out, "max_tokens_in_budget"),
            JsonNumber(ev.out, "fp16_max_tokens_in_budget"));
  EXPECT_NE(ev.out.find("\"codec\":\"vq\""), std::string::npos) << ev.out;

  // An ablation: only the keys of layers 0-9 read through the codec. The
  // reference is the same run's, and the tiny codebooks' error shrinks with
  // the coded share.
  Result part = Run("eval --model " + std::string(VQKV_MODEL_PATH) +
                    " --text " + Text("frankenstein.txt") +
                    " --codec vq --codebooks " + Path("tiny.vqcb") +
                    " --ctx 160 --window 64 --max-windows 1 --json "
                    "--coded keys --coded-layers 0-9");
  ASSERT_EQ(part.exit_code, 0) << part.err;
  EXPECT_NE(part.out.find("\"coded\":\"keys, layers 0-9\""), std::string::npos)
      << part.out;
  EXPECT_EQ(ev.out.find("\"coded\""), std::string::npos) << ev.out;
  EXPECT_EQ(JsonNumber(part.out, "ppl_fp16"), ppl16);
  EXPECT_LT(std::abs(JsonNumber(part.out, "ppl") - ppl16),
            std::abs(ppl - ppl16));
  ExpectCleanError(
      Run("eval --model " + std::string(VQKV_MODEL_PATH) + " --text " +
          Text("frankenstein.txt") + " --codec vq --codebooks " +
          Path("tiny.vqcb") + " --coded both"),
      "--coded must be all, keys or values");
  ExpectCleanError(
      Run("eval --model " + std::string(VQKV_MODEL_PATH) + " --text " +
          Text("frankenstein.txt") + " --codec vq --codebooks " +
          Path("tiny.vqcb") + " --coded-layers 9-3"),
      "--coded-layers must be B-E");

  // Passkey end to end, one short trial.
  Result pk =
      Run("eval --task passkey --model " + std::string(VQKV_MODEL_PATH) +
          " --codec vq --codebooks " + Path("tiny.vqcb") +
          " --lengths 160 --trials 1 --window 32 --json");
  ASSERT_EQ(pk.exit_code, 0) << pk.err;
  const double acc = JsonNumber(pk.out, "accuracy");
  EXPECT_GE(acc, 0.0);
  EXPECT_LE(acc, 1.0);
  EXPECT_NE(pk.out.find("\"codec\":\"fp16\""), std::string::npos) << pk.out;
  EXPECT_NE(pk.out.find("\"ci95\":["), std::string::npos) << pk.out;

  // The RULER-style tasks, one short trial each, with their intervals.
  // vartrack with only the values coded, which the JSON line says.
  for (const char* task : {"mkniah", "vartrack"}) {
    const bool values = std::string(task) == "vartrack";
    Result r =
        Run(absl::StrCat("eval --task ", task, " --model ", VQKV_MODEL_PATH,
                         " --codec vq ", "--codebooks ", Path("tiny.vqcb"),
                         " --lengths 200 --trials 1 --window 32 --json",
                         values ? " --coded values" : ""));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find(absl::StrCat("\"task\":\"", task, "\"")),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("\"ci95_coded\":["), std::string::npos) << r.out;
    EXPECT_EQ(JsonNumber(r.out, "trials"), 1);
    EXPECT_EQ(r.out.find("\"coded\":\"values\"") != std::string::npos, values)
        << r.out;
  }

  // The retrieval diagnostic, one short trial, with a key sketch on layers
  // 20..29: every layer's errors, the attention table and the six
  // ablations.
  Result dg =
      Run(absl::StrCat("eval --task diagnose --model ", VQKV_MODEL_PATH,
                       " --codec vq --codebooks ", Path("tiny.vqcb"),
                       " --key-sketch-bits 16 --key-sketch-from-layer "
                       "20 --lengths 200 --trials 1 --window 32 --json"));
  ASSERT_EQ(dg.exit_code, 0) << dg.err;
  EXPECT_NE(dg.out.find("\"task\":\"diagnose\""), std::string::npos);
  EXPECT_NE(dg.out.find(":ks=16@20:kr=8@" + refined[1].str() + "\""),
            std::string::npos)
      << dg.out;
  EXPECT_NE(dg.out.find("{\"layer\":29,\"k_digits\""), std::string::npos);
  EXPECT_NE(dg.out.find("{\"layer\":29,\"head\":8,"), std::string::npos);
  EXPECT_NE(dg.out.find("{\"what\":\"layers 20-29\""), std::string::npos);
  // 200 tokens: one row of the by-position table, with a nonzero key error.
  EXPECT_NE(dg.out.find("\"by_position\":[{\"from\":0,\"k\":"),
            std::string::npos);
  EXPECT_EQ(dg.out.find("\"by_position\":[{\"from\":0,\"k\":0.000000"),
            std::string::npos);
  EXPECT_EQ(dg.out.find("{\"from\":512,"), std::string::npos);
  EXPECT_EQ(JsonNumber(dg.out, "trials"), 1);
  ExpectCleanError(
      Run(absl::StrCat("eval --task diagnose --model ", VQKV_MODEL_PATH,
                       " --codec vq,kivi2 --codebooks ", Path("tiny.vqcb"))),
      "--task diagnose takes one compressed --codec");
  ExpectCleanError(Run(absl::StrCat("eval --task diagnose --model ",
                                    VQKV_MODEL_PATH, " --codec vq --codebooks ",
                                    Path("tiny.vqcb"), " --coded values")),
                   "--task diagnose runs its own ablations");

  // Two windows: the ppl line adds t intervals over windows.
  Result two =
      Run("eval --model " + std::string(VQKV_MODEL_PATH) + " --text " +
          Text("frankenstein.txt") + " --codec vq --codebooks " +
          Path("tiny.vqcb") + " --ctx 160 --window 64 --max-windows 2 --json");
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_EQ(JsonNumber(two.out, "windows"), 2);
  EXPECT_NE(two.out.find("\"ppl_change_pct_ci95\":["), std::string::npos)
      << two.out;
  EXPECT_NE(two.out.find("\"kl_ci95\":["), std::string::npos) << two.out;
  EXPECT_EQ(ev.out.find("ci95"), std::string::npos) << ev.out;  // 1 window
}

}  // namespace
}  // namespace vqkv
