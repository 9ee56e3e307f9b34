// `vqkv eval`: perplexity, top-1 agreement and KL of a compressed KV cache
// against fp16 (default), needle retrieval (--task passkey), and the KV
// memory account (--memory).
#ifndef VQKV_TOOLS_EVAL_COMMAND_H_
#define VQKV_TOOLS_EVAL_COMMAND_H_

#include <functional>

#include "CLI/CLI.hpp"

namespace vqkv::tools {

// Adds the subcommand to `app`; the returned function runs it after parsing
// (returning -1 when the subcommand was not chosen).
std::function<int()> AddEvalCommand(CLI::App* app);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_EVAL_COMMAND_H_
