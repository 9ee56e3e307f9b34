// The `vqkv` subcommands. Each Add*Command adds its subcommand and options
// to `app` and returns the function that runs it after parsing: the exit
// code, or -1 when that subcommand was not the one chosen. Every failure
// prints one "vqkv: error: ..." line on stderr and gives 1.
//
//   calibrate  runs a GGUF model over text, collects its keys and values,
//              fits a VQ codebook set layer by layer and writes it with
//              the model's identity (eval and generate refuse codebooks
//              fitted for another model, docs/CODEBOOK_FORMAT.md).
//   eval       perplexity, top-1 agreement and KL of a compressed KV cache
//              against fp16 (default), needle retrieval (--task passkey),
//              and the KV memory account (--memory).
//   generate   greedy generation reusing the KV of the prompt's cached
//              prefix through the client library (tools/generate.h).
//   tokenize   the model's tokenizer over a text file: token count, a check
//              that decoding gives the text back, optionally the ids.
#ifndef VQKV_TOOLS_COMMANDS_H_
#define VQKV_TOOLS_COMMANDS_H_

#include <functional>

#include "CLI/CLI.hpp"

namespace vqkv::tools {

std::function<int()> AddCalibrateCommand(CLI::App* app);
std::function<int()> AddEvalCommand(CLI::App* app);
std::function<int()> AddGenerateCommand(CLI::App* app);
std::function<int()> AddTokenizeCommand(CLI::App* app);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_COMMANDS_H_
