// `vqkv generate`: greedy generation from a prompt on a real model, reusing
// the KV of the prompt's cached prefix through the client library
// (client/cache_client.h): look the prompt up, load the cached blocks into
// the model's KV cache, prefill only the rest, store the prompt's new full
// blocks, generate. The end-to-end check of the whole system on one model:
//
//   vqkv generate --model M --prompt-file F --max-new-tokens N
//       [--store DIR | --server HOST:PORT | --no-cache | --roundtrip]
//       [--codec fp16|vq|kivi2|kivi4] [--codebooks C] [--block-tokens 64]
//       [--salt S] [--json]
//
// --store DIR keeps blocks in a RocksDB directory in the process (two runs
// share it one after the other); --server talks to a running vqkv-server;
// --no-cache is the reference (no client at all); --roundtrip sends the
// prompt's full blocks through the codec in memory (encode, seal, verify,
// decode: what a later cache hit would load) without any store.
//
// The prefill runs in chunks of --block-tokens tokens at block-aligned
// positions, so a cache hit prefills the uncached suffix with exactly the
// sgemm shapes of a run without cache: with --codec fp16 a hit reproduces
// --no-cache bit for bit, and a vq hit reproduces --roundtrip.
#ifndef VQKV_TOOLS_GENERATE_COMMAND_H_
#define VQKV_TOOLS_GENERATE_COMMAND_H_

#include <functional>

#include "CLI/CLI.hpp"

namespace vqkv::tools {

// Adds the subcommand to `app`; the returned function runs it after parsing
// (returning -1 when the subcommand was not chosen).
std::function<int()> AddGenerateCommand(CLI::App* app);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_GENERATE_COMMAND_H_
