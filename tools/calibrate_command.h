// `vqkv calibrate`: runs a GGUF model over text, collects its keys and
// values, fits a VQ codebook set layer by layer and writes it.
#ifndef VQKV_TOOLS_CALIBRATE_COMMAND_H_
#define VQKV_TOOLS_CALIBRATE_COMMAND_H_

#include <functional>

#include "CLI/CLI.hpp"

namespace vqkv::tools {

// Adds the subcommand to `app`; the returned function runs it after parsing
// and gives the exit code.
std::function<int()> AddCalibrateCommand(CLI::App* app);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_CALIBRATE_COMMAND_H_
