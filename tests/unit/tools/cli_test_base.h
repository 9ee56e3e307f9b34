// Running the built `vqkv` binary as a child process in tests: a per-test
// temporary directory, Run(args) capturing exit code, stdout and stderr,
// and the CLI's failure contract (ExpectCleanError). Needs VQKV_BINARY and
// VQKV_MODEL_PATH defined by the test target.
#ifndef VQKV_TESTS_UNIT_TOOLS_CLI_TEST_BASE_H_
#define VQKV_TESTS_UNIT_TOOLS_CLI_TEST_BASE_H_

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

namespace vqkv::testing {

struct CliResult {
  int exit_code = -1;
  bool signaled = false;
  std::string out;
  std::string err;
};

inline std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

// The number after "key": in a --json line; a test failure when absent.
inline double JsonNumber(const std::string& json, const std::string& key) {
  std::smatch m;
  const std::regex re("\"" + key + "\":(-?[0-9.eE+-]+)");
  if (!std::regex_search(json, m, re)) {
    ADD_FAILURE() << "no key " << key << " in " << json;
    return -1;
  }
  return std::stod(m[1].str());
}

// The "tokens":[...] array of a --json line; a test failure when absent.
inline std::vector<int> JsonTokens(const std::string& json) {
  std::smatch m;
  const std::regex re("\"tokens\":\\[([0-9,]*)\\]");
  if (!std::regex_search(json, m, re)) {
    ADD_FAILURE() << "no tokens in " << json;
    return {};
  }
  std::vector<int> out;
  for (absl::string_view t :
       absl::StrSplit(m[1].str(), ',', absl::SkipEmpty())) {
    out.push_back(std::stoi(std::string(t)));
  }
  return out;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat(
               "vqkv_cli_", getpid(), "_",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ / name; }

  // Runs vqkv with `args` (already shell-quoted where needed). One BLAS
  // thread: ctest runs tests in parallel, and runs compared bit for bit
  // must use the same sgemm partitioning.
  CliResult Run(const std::string& args) const {
    const std::string out = Path("stdout"), err = Path("stderr");
    const std::string cmd =
        absl::StrCat("OPENBLAS_NUM_THREADS=1 '", VQKV_BINARY, "' ", args, " >'",
                     out, "' 2>'", err, "'");
    const int status = std::system(cmd.c_str());
    CliResult r;
    if (WIFEXITED(status)) {
      r.exit_code = WEXITSTATUS(status);
      // The shell reports a child killed by a signal as 128 + signal.
      r.signaled = r.exit_code > 128;
    } else {
      r.signaled = true;
    }
    r.out = ReadAll(out);
    r.err = ReadAll(err);
    return r;
  }

  // The failure contract: non-zero exit, no crash, one error line that
  // contains `needle`.
  static void ExpectCleanError(const CliResult& r, const std::string& needle) {
    EXPECT_FALSE(r.signaled) << r.err;
    EXPECT_NE(r.exit_code, 0);
    std::vector<std::string> lines =
        absl::StrSplit(r.err, '\n', absl::SkipEmpty());
    ASSERT_EQ(lines.size(), 1u) << r.err;
    EXPECT_EQ(lines[0].rfind("vqkv: error: ", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find(needle), std::string::npos)
        << "expected '" << needle << "' in: " << lines[0];
  }

  static bool HaveModel() { return std::filesystem::exists(VQKV_MODEL_PATH); }

  std::filesystem::path dir_;
};

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_UNIT_TOOLS_CLI_TEST_BASE_H_
