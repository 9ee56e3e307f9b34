// client_bench: what the KV cache buys a serving engine, on SmolLM2-135M on
// the CPU. For shared prefixes of --lengths tokens followed by a --suffix
// token question, time to first token (TTFT) when the prefix is recomputed
// vs loaded from the cache through the client library (client/cache_client.h)
// — from an in-process store (EmbeddedBackend over a memory-only
// TieredStore) and, with --server, from a running vqkv-server over gRPC —
// for the fp16 codec (the raw path) and vq (with --codebooks). Also the
// client's encode+put and get+decode throughput, the connector path's load
// (KvConnector into paged host caches: time until layer 0 is in the pages
// vs until every layer is), and block sizes (--block-sizes) at one prefix
// length, to justify the default.
//
// Method (also printed above each table):
// - recompute: the whole prompt prefilled from an empty cache (one run).
// - hit: Lookup + Load (get, verify, decode) + ExactKvCache::AppendTokens +
//   prefill of the suffix + first-token logits: tools/generate.h, the code
//   of `vqkv generate`; median of --repeats runs.
// - encode+put: CacheClient::Store of the prefix's blocks (hash, presence
//   check, encode, seal, put), one run; get+decode: CacheClient::Load of the
//   prefix (presence with lease, get, verify, decode into float buffers),
//   median of --repeats. MB/s counts fp16-equivalent K+V bytes (MiB).
// Each run uses a fresh salt, so nothing is served from an earlier run.
//
// Usage: client_bench [--model M] [--text T] [--lengths 512,2048,8192]
//          [--codebooks C.vqcb[,D.vqcb]] [--server HOST:PORT[,...]]
//          [--replicas 2]
//          [--block-sizes 16,64,256]
//          [--block-length 2048 (0: no block rows)] [--suffix 64]
//          [--repeats 3] [--threads N]
// Progress goes to stderr, the tables to stdout.
#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/file.h"
#include "client/allocator_tuning.h"
#include "client/cache_client.h"
#include "client/client_factory.h"
#include "client/embedded_backend.h"
#include "client/kv_connector.h"
#include "client/paged_kv.h"
#include "tools/common.h"
#include "tools/generate.h"

namespace {

using Clock = std::chrono::steady_clock;
using vqkv::tools::GenerateOptions;
using vqkv::tools::GenerateResult;
using vqkv::tools::ReuseMode;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2]
                      : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

struct Flags {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string text = "../shared/data/text/frankenstein.txt";
  std::vector<int64_t> lengths = {512, 2048, 8192};
  std::vector<std::string> codebooks;
  std::string server;
  int replicas = 2;
  std::vector<int> block_sizes = {16, 64, 256};
  int64_t block_length = 2048;
  int64_t suffix = 64;
  int64_t prefill_chunk = 512;
  int repeats = 3;
  int threads = 0;
  bool tune_allocator = false;
};

struct CodecSpec {
  std::string name;
  std::shared_ptr<const vqkv::Codec> codec;
  std::string file;  // codebook file bytes, empty without one
};

// One measured configuration: a codec and a path at one prefix length and
// block size.
struct Row {
  int64_t length = 0;
  int block = 0;
  std::string codec;
  std::string path;  // recompute | embedded | server
  double ttft = 0;
  int64_t reused = 0;
  bool same_first_token = true;
  int64_t blocks = 0;
  int64_t bytes = 0;  // encoded bytes of the prefix's blocks
  int64_t fp16_bytes = 0;
  double store_seconds = 0;
  double load_seconds = 0;
  // KvConnector (the vLLM worker path): StartLoad to layer 0 in the pages,
  // and to every layer (medians).
  double conn_layer0_seconds = 0;
  double conn_all_seconds = 0;
  std::string note;
};

// The connector path of a hit: StartLoad of the prefix into fp16 NHD host
// pages of 16 tokens (vLLM's default block), then WaitForLayerLoad for each
// layer in turn, as an engine's forward pass would. Fills the conn_* fields
// of `row` with the medians of `repeats` loads.
absl::Status MeasureConnector(vqkv::client::CacheClient& c,
                              absl::Span<const int32_t> prefix,
                              const std::string& salt, int repeats, Row* row) {
  namespace vc = vqkv::client;
  const vqkv::KvLayout& l = c.layout();
  constexpr int64_t kPage = 16;
  const int64_t n =
      static_cast<int64_t>(prefix.size()) / c.block_tokens() * c.block_tokens();
  if (n == 0) return absl::OkStatus();
  const int64_t pages = n / kPage;
  const size_t bytes =
      static_cast<size_t>(pages * kPage * l.kv_heads * l.head_dim * 2);  // fp16
  std::vector<std::vector<uint8_t>> kp(l.layers, std::vector<uint8_t>(bytes));
  std::vector<std::vector<uint8_t>> vp(l.layers, std::vector<uint8_t>(bytes));
  std::vector<void*> kptr, vptr;
  for (int i = 0; i < l.layers; ++i) {
    kptr.push_back(kp[i].data());
    vptr.push_back(vp[i].data());
  }
  vc::KvConnector conn(&c);
  if (absl::Status s = conn.RegisterKvCaches(
          vc::PagedKvCaches::Nhd(kptr, vptr, pages, kPage, l.kv_heads,
                                 l.head_dim, vc::DType::kFloat16));
      !s.ok()) {
    return s;
  }
  std::vector<int32_t> ids(pages);
  for (int64_t i = 0; i < pages; ++i) ids[i] = static_cast<int32_t>(i);
  const std::vector<int32_t> tokens(prefix.begin(), prefix.end());
  std::vector<double> first, all;
  for (int i = 0; i < repeats; ++i) {
    const Clock::time_point t0 = Clock::now();
    if (absl::Status s = conn.StartLoad(
            {vc::LoadSpec{absl::StrCat("r", i), tokens, salt, ids, n}});
        !s.ok()) {
      return s;
    }
    for (int layer = 0; layer < l.layers; ++layer) {
      if (absl::Status s = conn.WaitForLayerLoad(layer); !s.ok()) return s;
      if (layer == 0) first.push_back(Since(t0));
    }
    all.push_back(Since(t0));
    if (!conn.TakeLoadErrorBlockIds().empty() && row->note.empty()) {
      row->note = "connector load failed part way";
    }
  }
  conn.Shutdown(absl::Seconds(10));
  row->conn_layer0_seconds = Median(first);
  row->conn_all_seconds = Median(all);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<vqkv::client::CacheClient>> MakeClient(
    const Flags& f, const std::string& model_name, const CodecSpec& codec,
    const std::string& path, int block) {
  std::unique_ptr<vqkv::client::Backend> backend;
  if (path == "server") {
    // One server, a list or dns:/// (client/client_factory.h). The 135 MiB
    // paper-rate codebook set of SmolLM2-135M travels in chunks
    // (PutCodebookStream); the default message limit is enough.
    vqkv::client::BackendConfig bc;
    bc.server = f.server;
    bc.replicas = f.replicas;
    absl::StatusOr<std::unique_ptr<vqkv::client::Backend>> b =
        vqkv::client::OpenBackend(bc);
    if (!b.ok()) return b.status();
    backend = *std::move(b);
  } else {
    vqkv::storage::TieredStoreOptions so;  // memory only
    so.memory_bytes = uint64_t{4} << 30;
    absl::StatusOr<std::unique_ptr<vqkv::client::EmbeddedBackend>> b =
        vqkv::client::EmbeddedBackend::Open(std::move(so));
    if (!b.ok()) return b.status();
    backend = *std::move(b);
  }
  vqkv::client::CacheClientOptions co;
  co.model_id = model_name;
  co.weight_revision = "client_bench";
  co.block_tokens = block;
  // A hit of 8192 tokens over a loaded machine: generous deadlines, so a
  // slow answer is measured rather than turned into a miss.
  co.lookup_timeout = absl::Seconds(30);
  co.io_timeout = absl::Seconds(300);
  return vqkv::client::CacheClient::Create(co, codec.codec, codec.file,
                                           std::move(backend));
}

// Stores `kv` of prompt[0, length) through a fresh client, then measures
// Load and hits. `ref_first` is the recompute run's first token.
absl::StatusOr<Row> Measure(const Flags& f, const vqkv::model::LlamaModel& m,
                            const std::string& model_name,
                            const CodecSpec& codec, const std::string& path,
                            int block, const std::vector<int32_t>& prompt,
                            int64_t length, const std::vector<float>& k,
                            const std::vector<float>& v, int32_t ref_first,
                            const std::string& salt) {
  Row row;
  row.length = length;
  row.block = block;
  row.codec = codec.name;
  row.path = path;
  absl::StatusOr<std::unique_ptr<vqkv::client::CacheClient>> client =
      MakeClient(f, model_name, codec, path, block);
  if (!client.ok()) return client.status();
  vqkv::client::CacheClient& c = **client;
  const absl::Span<const int32_t> prefix(prompt.data(),
                                         static_cast<size_t>(length));
  const Clock::time_point t0 = Clock::now();
  absl::StatusOr<vqkv::client::StoreResult> put =
      c.Store(prefix, salt, k.data(), v.data());
  if (!put.ok()) return put.status();
  row.store_seconds = Since(t0);
  row.blocks = put->blocks;
  row.bytes = put->bytes_sent;
  row.fp16_bytes = vqkv::tools::Fp16KvBytes(c.layout(), put->stored * block);
  if (put->stored != put->blocks) {
    row.note = absl::StrFormat("only %d of %d blocks stored", put->stored,
                               put->blocks);
  }
  std::vector<float> lk(k.size()), lv(v.size());
  std::vector<double> loads, ttfts;
  for (int i = 0; i < f.repeats; ++i) {
    const Clock::time_point t1 = Clock::now();
    absl::StatusOr<vqkv::client::LoadResult> got =
        c.Load(prefix, salt, lk.data(), lv.data());
    if (!got.ok()) return got.status();
    loads.push_back(Since(t1));
    if (got->tokens != length && row.note.empty()) {
      row.note = absl::StrFormat("loaded %d of %d tokens", got->tokens, length);
    }
  }
  row.load_seconds = Median(loads);
  if (absl::Status s = MeasureConnector(c, prefix, salt, f.repeats, &row);
      !s.ok()) {
    return s;
  }
  for (int i = 0; i < f.repeats; ++i) {
    GenerateOptions go;
    go.mode = ReuseMode::kCache;
    go.max_new_tokens = 1;
    go.salt = salt;
    go.store = false;
    go.prefill_chunk = f.prefill_chunk;
    absl::StatusOr<GenerateResult> r = vqkv::tools::Generate(m, prompt, &c, go);
    if (!r.ok()) return r.status();
    ttfts.push_back(r->ttft_seconds);
    row.reused = r->reused_tokens;
    row.same_first_token = r->tokens[0] == ref_first;
  }
  row.ttft = Median(ttfts);
  c.Shutdown(absl::Seconds(10));
  return row;
}

std::string Mib(int64_t bytes) {
  return absl::StrFormat("%.2f", static_cast<double>(bytes) / (1 << 20));
}

double MibPerSecond(int64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / (1 << 20) / seconds : 0;
}

int Run(const Flags& f) {
  if (f.threads > 0) openblas_set_num_threads(f.threads);
  absl::StatusOr<vqkv::tools::LoadedModel> lm = vqkv::tools::LoadModel(f.model);
  if (!lm.ok()) return vqkv::tools::Fail(lm.status());
  const vqkv::model::LlamaModel& m = *lm->model;
  const vqkv::KvLayout layout = m.config().kv_layout();
  const std::string model_name = m.config().name;

  std::vector<CodecSpec> codecs;
  std::vector<std::string> notes;
  if (f.codebooks.empty()) {
    notes.push_back("vq rows skipped: no --codebooks given");
  }
  // fp16, then vq once per codebook file; with several files each vq row
  // names its key position (pre-RoPE codebooks add the client's rotations).
  std::vector<std::pair<std::string, std::string>> codec_rows = {{"fp16", ""}};
  for (const std::string& cb : f.codebooks) codec_rows.push_back({"vq", cb});
  for (const auto& [name, codebooks] : codec_rows) {
    absl::StatusOr<vqkv::tools::EvalCodec> c =
        vqkv::tools::MakeEvalCodec(name, codebooks, lm->identity, 1);
    if (!c.ok()) return vqkv::tools::Fail(c.status());
    CodecSpec spec;
    spec.name = name;
    if (name == "vq" && f.codebooks.size() > 1) {
      spec.name = c->keys_pre_rope ? "vq-pre" : "vq-post";
    }
    spec.codec = std::shared_ptr<const vqkv::Codec>(std::move(c->codec));
    if (!c->codebooks.empty()) {
      absl::StatusOr<std::string> file = vqkv::base::ReadFile(c->codebooks);
      if (!file.ok()) return vqkv::tools::Fail(file.status());
      spec.file = *std::move(file);
    }
    codecs.push_back(std::move(spec));
  }
  std::vector<std::string> paths = {"embedded"};
  if (!f.server.empty()) {
    paths.push_back("server");
  } else {
    notes.push_back("server rows skipped: no --server given");
  }

  std::vector<int64_t> lengths = f.lengths;
  const bool block_rows = !f.block_sizes.empty() && f.block_length > 0;
  if (block_rows && std::find(lengths.begin(), lengths.end(), f.block_length) ==
                        lengths.end()) {
    lengths.push_back(f.block_length);
  }
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  absl::StatusOr<std::vector<int32_t>> text = vqkv::tools::TokenizeFiles(
      *lm->tokenizer, {f.text}, longest + 2 * f.suffix + 1000);
  if (!text.ok()) return vqkv::tools::Fail(text.status());
  // The question: tokens from further into the text than any prefix.
  const std::vector<int32_t> question(
      text->begin() + longest + 1000,
      text->begin() + longest + 1000 + f.suffix);
  const std::string salt = absl::StrCat("client_bench:", getpid(), ":",
                                        absl::ToUnixNanos(absl::Now()));

  std::vector<Row> rows, block_table;
  for (const int64_t length : lengths) {
    const bool main_length = std::find(f.lengths.begin(), f.lengths.end(),
                                       length) != f.lengths.end();
    std::vector<int32_t> prompt(text->begin(), text->begin() + length);
    prompt.insert(prompt.end(), question.begin(), question.end());
    std::fprintf(stderr,
                 "client_bench: prefix %ld: recompute of %zu tokens...\n",
                 static_cast<long>(length), prompt.size());
    GenerateOptions go;
    go.mode = ReuseMode::kNone;
    go.max_new_tokens = 1;
    go.prefill_chunk = f.prefill_chunk;
    go.keep_cache = true;
    absl::StatusOr<GenerateResult> re =
        vqkv::tools::Generate(m, prompt, nullptr, go);
    if (!re.ok()) return vqkv::tools::Fail(re.status());
    std::fprintf(stderr, "client_bench: prefix %ld: recompute TTFT %.2f s\n",
                 static_cast<long>(length), re->ttft_seconds);
    const int64_t row_floats = int64_t{layout.kv_heads} * layout.head_dim;
    std::vector<float> k(
        static_cast<size_t>(layout.layers * length * row_floats));
    std::vector<float> v(k.size());
    absl::Status s = re->cache->ReadTokens(0, length, k.data(), v.data());
    if (!s.ok()) return vqkv::tools::Fail(s);
    re->cache.reset();
    Row rec;
    rec.length = length;
    rec.codec = "-";
    rec.path = "recompute";
    rec.ttft = re->ttft_seconds;
    rec.fp16_bytes = vqkv::tools::Fp16KvBytes(layout, length);
    if (main_length) rows.push_back(rec);
    auto measure = [&](const CodecSpec& codec, const std::string& path,
                       int block,
                       const std::string& table) -> absl::StatusOr<Row> {
      std::fprintf(stderr, "client_bench: prefix %ld: %s %s block %d...\n",
                   static_cast<long>(length), codec.name.c_str(), path.c_str(),
                   block);
      absl::StatusOr<Row> r =
          Measure(f, m, model_name, codec, path, block, prompt, length, k, v,
                  re->tokens[0],
                  // A salt per measurement: the server keeps what earlier
                  // rows stored, which must not count as already present.
                  absl::StrCat(salt, ":", length, ":", codec.name, ":", path,
                               ":", block, ":", table));
      if (r.ok()) {
        std::fprintf(stderr,
                     "client_bench:   TTFT %.3f s, store %.2f s, load %.3f s\n",
                     r->ttft, r->store_seconds, r->load_seconds);
      }
      return r;
    };
    if (main_length) {
      for (const CodecSpec& codec : codecs) {
        for (const std::string& path : paths) {
          absl::StatusOr<Row> r = measure(codec, path, 64, "main");
          if (!r.ok()) return vqkv::tools::Fail(r.status());
          rows.push_back(*r);
        }
      }
    }
    if (block_rows && length == f.block_length) {
      for (const int block : f.block_sizes) {
        for (const CodecSpec& codec : codecs) {
          for (const std::string& path : paths) {
            absl::StatusOr<Row> r = measure(codec, path, block, "blocks");
            if (!r.ok()) return vqkv::tools::Fail(r.status());
            block_table.push_back(*r);
          }
        }
      }
    }
  }

  // --- Tables ---------------------------------------------------------
  std::printf(
      "client_bench: %s (%d layers x %d kv heads x %d), suffix %ld tokens, "
      "prefill chunk %ld, OpenBLAS threads %d, median of %d hit runs, "
      "allocator %s\n",
      model_name.c_str(), layout.layers, layout.kv_heads, layout.head_dim,
      static_cast<long>(f.suffix), static_cast<long>(f.prefill_chunk),
      openblas_get_num_threads(), f.repeats,
      f.tune_allocator ? "tuned" : "default");
  for (const std::string& n : notes) std::printf("note: %s\n", n.c_str());
  std::printf(
      "\nTime to first token, block 64. recompute = prefill of prefix + "
      "suffix from an empty cache (1 run); hit = lookup + load (get, verify, "
      "decode) + AppendTokens + prefill of the suffix + logits. embedded = "
      "memory-only store in process; server = vqkv-server over gRPC. "
      "'same 1st' = the hit's first token equals recompute's.\n");
  std::printf("%8s %-7s %-10s %9s %8s %8s %11s %11s %8s  %s\n", "prefix",
              "codec", "path", "TTFT s", "speedup", "reused", "loaded MiB",
              "fp16 MiB", "same 1st", "note");
  std::map<int64_t, double> recompute;
  for (const Row& r : rows) {
    if (r.path == "recompute") recompute[r.length] = r.ttft;
  }
  for (const Row& r : rows) {
    const bool rec = r.path == "recompute";
    std::printf(
        "%8ld %-7s %-10s %9.3f %7.1fx %8ld %11s %11s %8s  %s\n",
        static_cast<long>(r.length), r.codec.c_str(), r.path.c_str(), r.ttft,
        recompute[r.length] / r.ttft, static_cast<long>(rec ? 0 : r.reused),
        rec ? "-" : Mib(r.bytes).c_str(), Mib(r.fp16_bytes).c_str(),
        rec ? "-" : (r.same_first_token ? "yes" : "no"), r.note.c_str());
  }

  std::printf(
      "\nClient throughput, block 64. encode+put = CacheClient::Store of the "
      "prefix (hash, presence, encode, seal, put; 1 run); get+decode = "
      "CacheClient::Load (presence + lease, get, verify, decode; median). "
      "MiB/s of fp16-equivalent K+V; fp16 is the raw path.\n");
  std::printf("%8s %-7s %-9s %6s %10s %8s %11s %9s %11s %9s\n", "prefix",
              "codec", "path", "blocks", "B/block", "ratio", "put MiB/s",
              "put blk/s", "get MiB/s", "get blk/s");
  for (const Row& r : rows) {
    if (r.path == "recompute") continue;
    std::printf("%8ld %-7s %-9s %6ld %10ld %7.1fx %11.1f %9.1f %11.1f %9.1f\n",
                static_cast<long>(r.length), r.codec.c_str(), r.path.c_str(),
                static_cast<long>(r.blocks),
                static_cast<long>(r.blocks ? r.bytes / r.blocks : 0),
                r.bytes ? static_cast<double>(r.fp16_bytes) / r.bytes : 0,
                MibPerSecond(r.fp16_bytes, r.store_seconds),
                r.store_seconds > 0 ? r.blocks / r.store_seconds : 0,
                MibPerSecond(r.fp16_bytes, r.load_seconds),
                r.load_seconds > 0 ? r.blocks / r.load_seconds : 0);
  }

  std::printf(
      "\nConnector load, block 64: KvConnector::StartLoad of the prefix into "
      "fp16 NHD host pages of 16 tokens, then WaitForLayerLoad for each layer "
      "in turn (an engine's forward pass); median. layer 0 = until the first "
      "layer's attention may run; all = until the last layer is in the "
      "pages (what every layer waited for before loads were layer by "
      "layer).\n");
  std::printf("%8s %-7s %-9s %6s %11s %9s %8s\n", "prefix", "codec", "path",
              "blocks", "layer 0 s", "all s", "all/l0");
  for (const Row& r : rows) {
    if (r.path == "recompute") continue;
    std::printf(
        "%8ld %-7s %-9s %6ld %11.4f %9.4f %7.1fx\n",
        static_cast<long>(r.length), r.codec.c_str(), r.path.c_str(),
        static_cast<long>(r.blocks), r.conn_layer0_seconds, r.conn_all_seconds,
        r.conn_layer0_seconds > 0 ? r.conn_all_seconds / r.conn_layer0_seconds
                                  : 0.0);
  }

  if (!block_table.empty()) {
    std::printf(
        "\nBlock size, prefix %ld: hit TTFT (median), encoded bytes, Store "
        "(encode+put) and Load (get+decode) times. A prefix shared up to a "
        "random point loses on average (block-1)/2 tokens to rounding down "
        "to a block: 7.5 at 16, 31.5 at 64, 127.5 at 256.\n",
        static_cast<long>(f.block_length));
    std::printf("%6s %-7s %-9s %9s %8s %6s %10s %11s %9s %9s  %s\n", "block",
                "codec", "path", "TTFT s", "speedup", "blocks", "B/block",
                "loaded MiB", "store s", "load s", "note");
    for (const Row& r : block_table) {
      std::printf(
          "%6d %-7s %-9s %9.3f %7.1fx %6ld %10ld %11s %9.3f %9.3f  %s\n",
          r.block, r.codec.c_str(), r.path.c_str(), r.ttft,
          recompute.count(r.length) ? recompute[r.length] / r.ttft : 0.0,
          static_cast<long>(r.blocks),
          static_cast<long>(r.blocks ? r.bytes / r.blocks : 0),
          Mib(r.bytes).c_str(), r.store_seconds, r.load_seconds,
          r.note.c_str());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"client_bench: TTFT with and without the KV cache client"};
  Flags f;
  app.add_option("--model", f.model, "GGUF model")->capture_default_str();
  app.add_option("--text", f.text, "text the prompts are cut from")
      ->capture_default_str();
  app.add_option("--lengths", f.lengths, "shared prefix lengths (tokens)")
      ->delimiter(',');
  app.add_option("--codebooks", f.codebooks,
                 "vq codebook file; repeat (or comma-separate) for rows of "
                 "each (vq-pre, vq-post); without it no vq rows")
      ->delimiter(',');
  app.add_option("--server", f.server,
                 "a running vqkv-server (host:port), or a cluster "
                 "(host:port,host:port,... or dns:///name:port), for the "
                 "server rows");
  app.add_option("--replicas", f.replicas,
                 "cluster --server: servers that hold each block")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--block-sizes", f.block_sizes,
                 "block sizes compared at --block-length (empty: none)")
      ->delimiter(',');
  app.add_option("--block-length", f.block_length,
                 "prefix length of the block-size comparison (0: none)")
      ->capture_default_str();
  app.add_option("--suffix", f.suffix, "question tokens after the prefix")
      ->capture_default_str();
  app.add_option("--prefill-chunk", f.prefill_chunk, "tokens per prefill chunk")
      ->capture_default_str();
  app.add_option("--repeats", f.repeats, "hit and load runs (median)")
      ->capture_default_str();
  app.add_option("--threads", f.threads, "OpenBLAS threads (0 = default)");
  app.add_flag("--tune-allocator", f.tune_allocator,
               "vqkv::client::TuneAllocatorForLargeMessages() first "
               "(docs/CLIENT.md, Allocator)");
  CLI11_PARSE(app, argc, argv);
  if (f.tune_allocator) {
    const absl::Status tuned = vqkv::client::TuneAllocatorForLargeMessages();
    if (!tuned.ok()) {
      std::fprintf(stderr, "client_bench: %s\n",
                   std::string(tuned.message()).c_str());
      return 1;
    }
  }
  if (f.lengths.empty() || f.suffix < 1 || f.repeats < 1 ||
      f.prefill_chunk < 1) {
    std::fprintf(stderr,
                 "client_bench: --lengths must be non-empty; --suffix, "
                 "--repeats and --prefill-chunk at least 1\n");
    return 1;
  }
  for (const int64_t l : f.lengths) {
    if (l < 64 || l % 64 != 0) {
      std::fprintf(stderr,
                   "client_bench: prefix lengths must be multiples of 64 "
                   "(whole blocks), not %ld\n",
                   static_cast<long>(l));
      return 1;
    }
  }
  for (const int b : f.block_sizes) {
    if (f.block_length == 0) break;  // no block-size rows
    if (b < 16 || b % 16 != 0 || f.block_length % b != 0) {
      std::fprintf(stderr,
                   "client_bench: block sizes must be multiples of 16 that "
                   "divide --block-length %ld, not %d\n",
                   static_cast<long>(f.block_length), b);
      return 1;
    }
  }
  return Run(f);
}
