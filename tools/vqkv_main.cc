// vqkv: the command line.
//
//   vqkv calibrate --model M.gguf --text F --out C.vqcb [codec options]
//   vqkv eval --model M.gguf --text F --codec fp16|vq|kivi2|kivi4 [--json]
//   vqkv eval --task passkey --model M.gguf --codec vq --codebooks C.vqcb
//   vqkv eval --memory --model M.gguf --codec vq --codebooks C.vqcb
//   vqkv generate --model M.gguf --prompt-file F --max-new-tokens N
//       --store DIR | --server HOST:PORT | --no-cache | --roundtrip
//   vqkv tokenize --model M.gguf --text F [--ids-out IDS]
//
// Every failure ends in one "vqkv: error: ..." line on stderr and exit 1.
#include <cblas.h>

#include <cstdio>
#include <functional>
#include <vector>

#include "CLI/CLI.hpp"
#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"vqkv: VQ KV-cache compression tools"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads,
                 "OpenBLAS threads (0 = OpenBLAS's default)");
  std::vector<std::function<int()>> commands = {
      vqkv::tools::AddCalibrateCommand(&app),
      vqkv::tools::AddEvalCommand(&app),
      vqkv::tools::AddGenerateCommand(&app),
      vqkv::tools::AddTokenizeCommand(&app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Help and version exit 0; usage errors print one line and exit 1.
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "vqkv: error: %s\n", e.what());
    return 1;
  }
  if (threads > 0) openblas_set_num_threads(threads);
  for (const auto& run : commands) {
    const int rc = run();
    if (rc >= 0) return rc;
  }
  return 1;
}
