// `vqkv tokenize --model M --text F [--ids-out IDS]`: the model's tokenizer
// over a text file. Prints the byte and token counts and whether decoding
// the ids gives the text back byte for byte (exit 1 when it does not), and
// optionally writes the ids, one per line: the check to run before trusting
// the tokenizer on a new model or text.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace vqkv::tools {
namespace {

struct TokenizeArgs {
  std::string model;
  std::string text;
  std::string ids_out;
};

int Run(const TokenizeArgs& a) {
  absl::StatusOr<LoadedModel> lm = LoadModel(a.model);
  if (!lm.ok()) return Fail(lm.status());
  absl::StatusOr<std::string> text = base::ReadFile(a.text);
  if (!text.ok()) return Fail(text.status());
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = lm->tokenizer->Encode(*text);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  const bool identical = lm->tokenizer->Decode(ids) == *text;
  std::printf("%s: %zu bytes -> %zu tokens in %.2f s; decode: %s\n",
              a.text.c_str(), text->size(), ids.size(), seconds,
              identical ? "identical" : "DIFFERS from the text");
  if (!a.ids_out.empty()) {
    std::string lines = absl::StrJoin(ids, "\n");
    if (!ids.empty()) lines += "\n";
    if (absl::Status s = base::WriteFileAtomically(a.ids_out, lines); !s.ok()) {
      return Fail(s);
    }
  }
  if (!identical) {
    return Fail(absl::DataLossError(absl::StrCat(
        "decoding the tokens of ", a.text, " does not give the text back")));
  }
  return 0;
}

}  // namespace

std::function<int()> AddTokenizeCommand(CLI::App* app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app->add_subcommand(
      "tokenize", "Tokenize a text file and check that decoding gives it back");
  cmd->add_option("--model", args->model, "GGUF model file")->required();
  cmd->add_option("--text", args->text, "text file")->required();
  cmd->add_option("--ids-out", args->ids_out,
                  "write the token ids here, one per line");
  return [cmd, args]() { return cmd->parsed() ? Run(*args) : -1; };
}

}  // namespace vqkv::tools
