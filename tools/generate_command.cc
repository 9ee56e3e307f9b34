// `vqkv generate`: greedy generation from a prompt on a real model, reusing
// the KV of the prompt's cached prefix through the client library
// (client/cache_client.h): look the prompt up, load the cached blocks into
// the model's KV cache, prefill only the rest, store the prompt's new full
// blocks, generate. The end-to-end check of the whole system on one model:
//
//   vqkv generate --model M --prompt-file F --max-new-tokens N
//       [--store DIR | --server HOST:PORT[,...] [--replicas R] | --no-cache
//        | --roundtrip]
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

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "client/cache_client.h"
#include "client/client_factory.h"
#include "client/embedded_backend.h"
#include "tools/commands.h"
#include "tools/common.h"
#include "tools/generate.h"

namespace vqkv::tools {
namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt_file;
  std::string prompt;
  int64_t max_new_tokens = 32;
  std::string server;
  std::string store;
  bool no_cache = false;
  bool roundtrip = false;
  int64_t roundtrip_tokens = -1;
  std::string codec = "fp16";
  std::string codebooks;
  int key_sketch_bits = 0;        // vq: VqConfig::key_sketch_bits
  int key_sketch_from_layer = 0;  // vq: VqConfig::key_sketch_first_layer
  int block_tokens = 64;
  int sink_tokens = 4;
  int64_t prefill_chunk = 0;
  std::string salt;
  std::string model_id;
  std::string weight_revision;
  std::string auth_token;
  uint64_t max_message_bytes = uint64_t{64} << 20;
  int replicas = 2;
  bool ignore_eos = false;
  bool json = false;
};

absl::Status CheckArgs(const GenerateArgs& a) {
  const int modes = (a.server.empty() ? 0 : 1) + (a.store.empty() ? 0 : 1) +
                    (a.no_cache ? 1 : 0) + (a.roundtrip ? 1 : 0);
  if (modes != 1) {
    return absl::InvalidArgumentError(
        "choose exactly one of --store DIR, --server HOST:PORT, --no-cache "
        "and --roundtrip");
  }
  if (a.prompt_file.empty() == a.prompt.empty()) {
    return absl::InvalidArgumentError(
        "give the prompt with exactly one of --prompt-file FILE and --prompt "
        "TEXT");
  }
  if (a.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-new-tokens must be at least 1, not ", a.max_new_tokens));
  }
  if (a.block_tokens < 16 || a.block_tokens % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--block-tokens must be a positive multiple of 16, not ",
                     a.block_tokens));
  }
  if (a.sink_tokens < 0 || a.sink_tokens > a.block_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--sink-tokens must be in 0..--block-tokens, not ", a.sink_tokens));
  }
  if (a.prefill_chunk < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prefill-chunk must be >= 0, not ", a.prefill_chunk));
  }
  if (a.roundtrip_tokens >= 0 && !a.roundtrip) {
    return absl::InvalidArgumentError(
        "--roundtrip-tokens is only used with --roundtrip");
  }
  if (!a.codebooks.empty() && a.codec != "vq") {
    return absl::InvalidArgumentError(
        absl::StrCat("--codebooks is only used with --codec vq (the codec is ",
                     a.codec, ")"));
  }
  if (!a.store.empty() && std::filesystem::exists(a.store) &&
      !std::filesystem::is_directory(a.store)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--store ", a.store, " is not a directory"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<client::Backend>> MakeBackend(
    const GenerateArgs& a) {
  if (!a.server.empty()) {
    // One server, a list or dns:/// (client/client_factory.h).
    client::BackendConfig bc;
    bc.server = a.server;
    bc.auth_token = a.auth_token;
    bc.max_message_bytes = a.max_message_bytes;
    bc.replicas = a.replicas;
    return client::OpenBackend(bc);
  }
  storage::TieredStoreOptions so;
  so.data_dir = a.store;  // empty for --roundtrip: memory only
  absl::StatusOr<std::unique_ptr<client::EmbeddedBackend>> b =
      client::EmbeddedBackend::Open(std::move(so));
  if (!b.ok()) {
    return absl::Status(
        b.status().code(),
        absl::StrCat("--store ", a.store, ": ", b.status().message()));
  }
  return std::unique_ptr<client::Backend>(*std::move(b));
}

absl::StatusOr<std::unique_ptr<client::CacheClient>> MakeClient(
    const GenerateArgs& a, const std::string& model_path,
    const model::LlamaConfig& config, const ModelIdentity& identity) {
  absl::StatusOr<EvalCodec> codec =
      MakeEvalCodec(a.codec, a.codebooks, identity, 1, a.key_sketch_bits,
                    a.key_sketch_from_layer);
  if (!codec.ok()) return codec.status();
  std::string codebook_file;
  if (!codec->codebooks.empty()) {
    VQKV_ASSIGN_OR_RETURN(codebook_file, base::ReadFile(codec->codebooks));
  }
  absl::StatusOr<std::unique_ptr<client::Backend>> backend = MakeBackend(a);
  if (!backend.ok()) return backend.status();
  client::CacheClientOptions co;
  co.model_id = a.model_id.empty() ? config.name : a.model_id;
  if (co.model_id.empty()) co.model_id = "llama";
  co.weight_revision = a.weight_revision;
  if (co.weight_revision.empty()) {
    // The file's name and size: two runs on the same file agree, a
    // different quantization or fine-tune does not.
    std::error_code ec;
    const uintmax_t size = std::filesystem::file_size(model_path, ec);
    co.weight_revision =
        absl::StrCat(std::filesystem::path(model_path).filename().string(), ":",
                     ec ? 0 : size);
  }
  co.block_tokens = a.block_tokens;
  co.sink_tokens = a.sink_tokens;
  absl::StatusOr<std::unique_ptr<client::CacheClient>> c =
      client::CacheClient::Create(
          co, std::shared_ptr<const Codec>(std::move(codec->codec)),
          std::move(codebook_file), *std::move(backend));
  if (!c.ok()) {
    return absl::Status(c.status().code(),
                        absl::StrCat("cache client: ", c.status().message()));
  }
  return c;
}

std::string Mode(const GenerateArgs& a) {
  if (!a.server.empty()) return "server";
  if (!a.store.empty()) return "store";
  if (a.roundtrip) return "roundtrip";
  return "no-cache";
}

std::string Bytes(int64_t b) {
  if (b >= (int64_t{1} << 20)) {
    return absl::StrFormat("%.2f MiB", static_cast<double>(b) / (1 << 20));
  }
  if (b >= 1024) return absl::StrFormat("%.1f KiB", b / 1024.0);
  return absl::StrCat(b, " B");
}

int Run(const GenerateArgs& a) {
  if (absl::Status s = CheckArgs(a); !s.ok()) return Fail(s);
  std::string text = a.prompt;
  if (!a.prompt_file.empty()) {
    absl::StatusOr<std::string> t = ReadTextFile(a.prompt_file);
    if (!t.ok()) return Fail(t.status());
    text = *std::move(t);
  }
  absl::StatusOr<LoadedModel> m = LoadModel(a.model);
  if (!m.ok()) return Fail(m.status());
  // Plain text, no BOS: as `vqkv eval` and the passkey prompts.
  const std::vector<int32_t> prompt = m->tokenizer->Encode(text);
  if (prompt.empty()) {
    return Fail(absl::InvalidArgumentError("the prompt has no tokens"));
  }

  std::unique_ptr<client::CacheClient> client;
  GenerateOptions go;
  go.mode = ReuseMode::kNone;
  if (!a.no_cache) {
    absl::StatusOr<std::unique_ptr<client::CacheClient>> c =
        MakeClient(a, a.model, m->model->config(), m->identity);
    if (!c.ok()) return Fail(c.status());
    client = *std::move(c);
    go.mode = a.roundtrip ? ReuseMode::kRoundtrip : ReuseMode::kCache;
  }
  go.max_new_tokens = a.max_new_tokens;
  go.stop_token = a.ignore_eos ? -1 : m->tokenizer->eos_id();
  go.salt = a.salt;
  // Without a client the prefill grid is still the block size: the
  // reference run must prefill on the grid a cache hit uses.
  go.prefill_chunk = a.prefill_chunk > 0 ? a.prefill_chunk : a.block_tokens;
  go.roundtrip_tokens = a.roundtrip_tokens;
  absl::StatusOr<GenerateResult> r =
      Generate(*m->model, prompt, client.get(), go);
  if (!r.ok()) return Fail(r.status());
  std::string backend = client ? client->backend().Describe() : "none";
  if (client) client->Shutdown(absl::Seconds(10));
  // The text leaves out the stop token (its id stays in "tokens").
  absl::Span<const int32_t> shown(r->tokens);
  if (!shown.empty() && shown.back() == go.stop_token) shown.remove_suffix(1);
  const std::string out = m->tokenizer->Decode(shown);
  const double decode_tps =
      r->decode_seconds > 0 ? r->decode_tokens / r->decode_seconds : 0;
  const std::string mode = Mode(a);
  const std::string codec = a.no_cache ? "none" : a.codec;

  if (a.json) {
    absl::PrintF(
        "{\"mode\":%s,\"backend\":%s,\"codec\":%s,\"block_tokens\":%d,"
        "\"prompt_tokens\":%d,\"lookup_tokens\":%d,\"tokens_reused\":%d,"
        "\"prefill_tokens\":%d,\"blocks_loaded\":%d,\"bytes_received\":%d,"
        "\"fp16_bytes_received\":%d,\"blocks_stored\":%d,"
        "\"blocks_already_present\":%d,\"blocks_store_failed\":%d,"
        "\"bytes_sent\":%d,\"fp16_bytes_sent\":%d,\"lookup_s\":%.6f,"
        "\"load_s\":%.6f,\"prefill_s\":%.6f,\"ttft_s\":%.6f,"
        "\"store_s\":%.6f,\"decode_tokens\":%d,\"decode_s\":%.6f,"
        "\"decode_tokens_per_s\":%.3f,\"new_tokens\":%d,\"tokens\":[%s],"
        "\"text\":%s}\n",
        JsonString(mode), JsonString(backend), JsonString(codec),
        a.block_tokens, r->prompt_tokens, r->lookup_tokens, r->reused_tokens,
        r->prefill_tokens, r->blocks_loaded, r->bytes_received,
        r->fp16_bytes_received, r->blocks_stored, r->blocks_already_present,
        r->blocks_store_failed, r->bytes_sent, r->fp16_bytes_sent,
        r->lookup_seconds, r->load_seconds, r->prefill_seconds, r->ttft_seconds,
        r->store_seconds, r->decode_tokens, r->decode_seconds, decode_tps,
        static_cast<int64_t>(r->tokens.size()), absl::StrJoin(r->tokens, ","),
        JsonString(out));
    return 0;
  }
  absl::PrintF("%s\n", out);
  std::fflush(stdout);
  absl::FPrintF(
      stderr,
      "vqkv generate [%s, codec %s]: prompt %d tokens, reused %d (%d blocks, "
      "%s loaded = %s fp16), prefilled %d, stored %d blocks (%s sent = %s "
      "fp16, %d already cached), TTFT %.3f s, decode %d tokens at %.2f "
      "tokens/s\n",
      mode, codec, r->prompt_tokens, r->reused_tokens, r->blocks_loaded,
      Bytes(r->bytes_received), Bytes(r->fp16_bytes_received),
      r->prefill_tokens, r->blocks_stored, Bytes(r->bytes_sent),
      Bytes(r->fp16_bytes_sent), r->blocks_already_present, r->ttft_seconds,
      r->decode_tokens, decode_tps);
  return 0;
}

}  // namespace

std::function<int()> AddGenerateCommand(CLI::App* app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app->add_subcommand(
      "generate",
      "Greedy generation that reuses the KV of the prompt's cached prefix");
  cmd->add_option("--model", args->model, "GGUF model file")->required();
  cmd->add_option("--prompt-file", args->prompt_file, "the prompt, as text");
  cmd->add_option("--prompt", args->prompt, "the prompt (instead of a file)");
  cmd->add_option("--max-new-tokens", args->max_new_tokens,
                  "tokens to generate")
      ->capture_default_str();
  cmd->add_option("--store", args->store,
                  "cache blocks in this RocksDB directory (in process)");
  cmd->add_option("--server", args->server,
                  "a vqkv-server's host:port, or a cluster: "
                  "host:port,host:port,... or dns:///name:port");
  cmd->add_option("--replicas", args->replicas,
                  "cluster --server: servers that hold each block")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--auth-token", args->auth_token,
                  "bearer token for --server");
  cmd->add_option("--max-message-bytes", args->max_message_bytes,
                  "largest gRPC message to --server (codebook sets of any "
                  "size travel in chunks of a quarter of it)")
      ->capture_default_str();
  cmd->add_flag("--no-cache", args->no_cache,
                "run without a cache (the reference)");
  cmd->add_flag("--roundtrip", args->roundtrip,
                "send the prompt's full blocks through the codec in memory "
                "(what a cache hit would load), no store");
  cmd->add_option("--roundtrip-tokens", args->roundtrip_tokens,
                  "--roundtrip: only the first N tokens (rounded down to a "
                  "block)");
  cmd->add_option("--codec", args->codec, "fp16, vq, kivi2 or kivi4")
      ->capture_default_str();
  cmd->add_option("--codebooks", args->codebooks, "codebook file for vq");
  cmd->add_option("--key-sketch-bits", args->key_sketch_bits,
                  "vq: bits of the sign sketch of each key's residual (0 = "
                  "none; a multiple of 8; docs/CODEC.md)")
      ->capture_default_str();
  cmd->add_option("--key-sketch-from-layer", args->key_sketch_from_layer,
                  "vq: the sketch covers this layer and the later ones only")
      ->capture_default_str();
  cmd->add_option("--block-tokens", args->block_tokens,
                  "tokens per cached block (a multiple of 16)")
      ->capture_default_str();
  cmd->add_option("--sink-tokens", args->sink_tokens,
                  "leading tokens of the first block kept fp16")
      ->capture_default_str();
  cmd->add_option("--prefill-chunk", args->prefill_chunk,
                  "tokens per prefill chunk (0 = --block-tokens; only a "
                  "divisor of it keeps hits bit-identical to --no-cache)");
  cmd->add_option("--salt", args->salt, "cache salt (isolates users)");
  cmd->add_option("--model-id", args->model_id,
                  "model id of the cache namespace (default: the GGUF's "
                  "general.name)");
  cmd->add_option("--weight-revision", args->weight_revision,
                  "weight revision of the namespace (default: the model "
                  "file's name and size)");
  cmd->add_flag("--ignore-eos", args->ignore_eos,
                "do not stop at the end-of-sequence token");
  cmd->add_flag("--json", args->json,
                "print one JSON object on stdout (text, token ids, counters, "
                "timings) instead of the text and the summary line");
  return [cmd, args]() { return cmd->parsed() ? Run(*args) : -1; };
}

}  // namespace vqkv::tools
