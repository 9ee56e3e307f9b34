// kv_service_bench: put/get throughput and latency of vqkv-server over
// loopback, next to Redis (Debian redis-server, started here, same payloads
// through hiredis) in the same run: one block per request (PutBlocks/GetBlocks
// with one block vs SET/GET), and batches of --batch blocks per request
// (PutBlocks/GetBlocks vs MSET/MGET), since a serving engine fetches a cached
// prefix of many blocks at once. vqkv's gets are measured twice: unary
// GetBlocks calls ("get"), the same requests over one GetBlocksSession
// stream per client ("sget"), and through the client library's gRPC backend
// (client/grpc/grpc_backend.h), one shared by all client threads with its
// default connections, as an engine's CacheClient uses it ("lget").
//
// Payloads are sealed encoded blocks (kernels/block_format.h header + payload
// of the exact encoded size, random bytes) for 16- and 256-token blocks of
// SmolLM2-135M (30 layers, 3 KV heads, head_dim 64) and LLaMA3.1-8B (32, 8,
// 128), at the paper rate (2.75 bits/element) and as raw fp16 (16
// bits/element). "KV tok/s" is blocks/s x tokens per block: the effective KV
// bandwidth, which is where compression pays. "srv us" and "srv cs" are
// what each request cost the server process itself (CPU time and context
// switches over all its threads, read from /proc before and after a row),
// and "cli us" what it cost this process, the clients (CPU time): where the
// time goes when the clients and both servers share the cores.
//
// Usage: kv_service_bench [--seconds S] [--max-gib-per-run G] [--batch N]
//                         [--single-only] [--quick] [--clients 1,16]
//                         [--connections N] [--channel-arg KEY=INT]...
//                         [--no-sessions] [--library-connections N]
//                         [--server BIN [--server-arg=ARG]...]
// --server runs another binary in vqkv-server's place, e.g. the gRPC floor
// (bench/grpc_floor_server.cc); its rows are still labelled "vqkv".
// Progress goes to stderr, the table to stdout.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "bench/sealed_block.h"
#include "client/allocator_tuning.h"
#include "client/grpc/client_poller.h"
#include "client/grpc/grpc_backend.h"
#include "grpcpp/grpcpp.h"
#include "hiredis/hiredis.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

struct Model {
  const char* name;
  int layers, kv_heads, head_dim;
};
constexpr Model kModels[] = {{"SmolLM2-135M", 30, 3, 64},
                             {"LLaMA3.1-8B", 32, 8, 128}};

// A sealed block with a payload of `payload_bytes` random bytes.
std::string MakeBlock(const Model& m, int tokens, bool vq,
                      uint64_t payload_bytes, uint64_t seed) {
  return vqkv::bench::MakeSealedBlock(
      m.layers, m.kv_heads, m.head_dim, tokens,
      vq ? vqkv::CodecId::kVq : vqkv::CodecId::kFp16, payload_bytes, seed);
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

pid_t Spawn(std::vector<std::string> args, int stdout_fd) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (stdout_fd >= 0) {
    posix_spawn_file_actions_adddup2(&actions, stdout_fd, STDOUT_FILENO);
  }
  pid_t pid = -1;
  if (posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ) !=
      0) {
    pid = -1;
  }
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

// Starts vqkv-server with --listen 127.0.0.1:0 and reads its port.
// `extra_args` follow the bench's own flags.
pid_t StartVqkv(const std::string& server, const std::string& data_dir,
                const std::string& durability,
                const std::vector<std::string>& extra_args, int* port) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  std::vector<std::string> args = {
      server,   "--listen",       "127.0.0.1:0", "--data-dir",
      data_dir, "--memory-bytes", "6GiB",        "--max-message-bytes",
      "128MiB", "--durability",   durability};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  const pid_t pid = Spawn(std::move(args), fds[1]);
  close(fds[1]);
  std::string out;
  char c;
  while (read(fds[0], &c, 1) == 1) {
    if (c != '\n') {
      out += c;
      continue;
    }
    const size_t at = out.find("listening on ");
    if (at != std::string::npos) {
      *port = std::stoi(out.substr(out.rfind(':') + 1));
      break;
    }
    out.clear();
  }
  close(fds[0]);
  return pid;
}

struct Result {
  double ops_per_s = 0, mb_per_s = 0, p50_ms = 0, p99_ms = 0;
  int64_t ops = 0;
  // The server process's own cost per request, all its threads: CPU time
  // and context switches (voluntary + involuntary) during the run.
  double server_cpu_us = 0, server_switches = 0;
  // This process's (the clients') CPU time per request.
  double client_cpu_us = 0;
};

// CPU time and context switches of a process so far, summed over its
// threads (/proc/<pid>/task/*/schedstat and status). Threads that exit
// during a run drop out of the sum; the servers' pools are long-lived.
struct ProcessCost {
  double cpu_s = 0;
  int64_t switches = 0;
};

ProcessCost ReadProcessCost(pid_t pid) {
  ProcessCost cost;
  std::error_code ec;
  const std::filesystem::path tasks = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& task : std::filesystem::directory_iterator(tasks, ec)) {
    std::ifstream sched(task.path() / "schedstat");
    uint64_t on_cpu_ns = 0;
    if (sched >> on_cpu_ns) cost.cpu_s += on_cpu_ns * 1e-9;
    std::ifstream status(task.path() / "status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.find("ctxt_switches:") != std::string::npos) {
        cost.switches += std::atoll(line.c_str() + line.find(':') + 1);
      }
    }
  }
  return cost;
}

// This process's CPU time so far, its exited threads (the clients of
// earlier rows) included, unlike a sum over /proc/self/task.
double OwnCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

// Runs `clients` threads calling op(thread, i) until `seconds` passed or
// `max_ops` operations were done in all. op returns false on failure.
// `server` is the pid of the server the ops call, whose cost is measured.
template <typename Op>
Result Run(pid_t server, int clients, double seconds, int64_t max_ops,
           size_t bytes, Op op) {
  const ProcessCost before = ReadProcessCost(server);
  const double client_before = OwnCpuSeconds();
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::vector<double>> lat(clients);
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(seconds);
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      while (Clock::now() < deadline) {
        const int64_t i = next.fetch_add(1);
        if (i >= max_ops) break;
        const auto t0 = Clock::now();
        if (!op(t, i)) {
          failed = true;
          break;
        }
        lat[t].push_back(
            std::chrono::duration<double, std::milli>(Clock::now() - t0)
                .count());
      }
    });
  }
  for (auto& th : threads) th.join();
  const double elapsed =
      std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  Result r;
  if (failed || all.empty()) return r;
  std::sort(all.begin(), all.end());
  r.ops = static_cast<int64_t>(all.size());
  r.ops_per_s = r.ops / elapsed;
  r.mb_per_s = r.ops_per_s * bytes / 1e6;
  r.p50_ms = all[all.size() / 2];
  r.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  const ProcessCost after = ReadProcessCost(server);
  r.server_cpu_us = 1e6 * (after.cpu_s - before.cpu_s) / r.ops;
  r.client_cpu_us = 1e6 * (OwnCpuSeconds() - client_before) / r.ops;
  r.server_switches =
      static_cast<double>(after.switches - before.switches) / r.ops;
  return r;
}

// Whether a vqkv call stored or found all `want` blocks; says why not on
// stderr (a failed row prints "(FAILED)" and nothing else).
bool Succeeded(const char* method, const grpc::Status& status, uint32_t got,
               int want) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s failed: %s: %s\n", method,
                 absl::StatusCodeToString(
                     static_cast<absl::StatusCode>(status.error_code()))
                     .c_str(),
                 status.error_message().c_str());
    return false;
  }
  if (got != static_cast<uint32_t>(want)) {
    std::fprintf(stderr, "%s: %u of %d blocks\n", method, got, want);
    return false;
  }
  return true;
}

// The client library's form of a bench namespace.
vqkv::storage::NamespaceSpec SpecOf(const vqkv::v1::Namespace& ns) {
  vqkv::storage::NamespaceSpec spec;
  spec.model_id = ns.model_id();
  spec.codec = ns.codec();
  spec.codec_id = ns.codec_id();
  spec.block_tokens = ns.block_tokens();
  spec.layers = ns.layers();
  spec.kv_heads = ns.kv_heads();
  spec.head_dim = ns.head_dim();
  spec.dtype = static_cast<vqkv::storage::KvDtype>(ns.dtype());
  return spec;
}

// One client's GetBlocksSession for a row.
struct Session {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<vqkv::v1::GetBlocksRequest,
                                           vqkv::v1::GetBlocksResponse>>
      stream;
  bool finished = false;  // Finish was called (the session failed)
};

std::string Key(int64_t i) {
  char buf[16];
  std::memset(buf, 0, sizeof(buf));
  std::memcpy(buf, &i, sizeof(i));
  buf[15] = 0x5a;
  return std::string(buf, 16);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vqkv-server vs Redis: put/get throughput over loopback"};
  double seconds = 1.0;
  double max_gib = 1.0;
  bool quick = false;
  bool single_only = false;
  int batch_blocks = 16;
  std::string server = VQKV_SERVER_PATH;
  std::string durability = "async";
  app.add_option("--durability", durability,
                 "vqkv-server durability: async (memory tier, spill) or sync "
                 "(every put fsync'd to RocksDB before the reply)")
      ->check(CLI::IsMember({"async", "sync"}));
  app.add_option("--server", server,
                 "vqkv-server binary (default: the one built with the bench)");
  std::vector<std::string> server_args;
  app.add_option("--server-arg", server_args,
                 "one more argument for the server (repeatable), e.g. "
                 "--server build/bench/grpc_floor_server "
                 "--server-arg=--threading=cq");
  std::vector<std::string> channel_args;
  app.add_option("--channel-arg", channel_args,
                 "one more integer gRPC channel argument for the bench's "
                 "clients, KEY=VALUE (repeatable), e.g. "
                 "--channel-arg=grpc.enable_retries=0");
  bool gets_over_sessions = true;
  app.add_flag("!--no-sessions", gets_over_sessions,
               "leave out the sget and lget rows (gets over sessions: one "
               "GetBlocksSession per client, and the client library's), e.g. "
               "for a --server without sessions such as "
               "bench/grpc_floor_server");
  int library_connections = vqkv::client::GrpcBackendOptions{}.connections;
  app.add_option("--library-connections", library_connections,
                 "connections of the client library's backend for the lget "
                 "rows (default: the library's default)")
      ->check(CLI::Range(1, vqkv::client::GrpcBackendOptions::kMaxConnections));
  bool tune_allocator = false;
  app.add_flag("--tune-allocator", tune_allocator,
               "tune this process's malloc first, as "
               "vqkv::client::TuneAllocatorForLargeMessages() does (the "
               "clients of both servers; docs/CLIENT.md, Allocator)");
  app.add_option("--seconds", seconds, "time per measurement (default 1.0)");
  app.add_option("--batch", batch_blocks,
                 "blocks per request in the batched rows (default 16)")
      ->check(CLI::Range(2, 1024));
  app.add_flag("--single-only", single_only,
               "only one block per request (skip the batched rows)");
  app.add_option("--max-gib-per-run", max_gib,
                 "cap on bytes put per measurement (default 1 GiB)");
  app.add_flag("--quick", quick, "SmolLM2 16-token blocks only");
  int connections = 0;
  app.add_option("--connections", connections,
                 "gRPC connections the client threads share, thread t on "
                 "connection t mod N (default: one per thread, as Redis's "
                 "clients have; an engine's CacheClient shares one)")
      ->check(CLI::Range(1, 256));
  std::vector<int> client_counts = {1, 16};
  app.add_option("--clients", client_counts,
                 "client thread counts: one row per count (default 1,16)")
      ->delimiter(',')
      ->check(CLI::Range(1, 256));
  CLI11_PARSE(app, argc, argv);
  std::vector<std::pair<std::string, int>> int_channel_args;
  for (const std::string& kv : channel_args) {
    const size_t eq = kv.find('=');
    int value = 0;
    if (eq == std::string::npos || eq == 0 ||
        !absl::SimpleAtoi(kv.substr(eq + 1), &value)) {
      std::fprintf(stderr,
                   "kv_service_bench: --channel-arg wants KEY=INTEGER, got "
                   "'%s'\n",
                   kv.c_str());
      return 2;
    }
    int_channel_args.emplace_back(kv.substr(0, eq), value);
  }
  if (tune_allocator) {
    const absl::Status tuned = vqkv::client::TuneAllocatorForLargeMessages();
    if (!tuned.ok()) {
      std::fprintf(stderr, "kv_service_bench: %s\n",
                   std::string(tuned.message()).c_str());
      return 1;
    }
  }
  signal(SIGPIPE, SIG_IGN);

  char tmpl[] = "/tmp/vqkv-bench-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  int vport = 0;
  const pid_t vpid =
      StartVqkv(server, dir + "/data", durability, server_args, &vport);
  const int rport = FreePort();
  const int devnull = open("/dev/null", O_WRONLY);
  const pid_t rpid =
      Spawn({"redis-server", "--port", std::to_string(rport), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--io-threads", "1"},
            devnull);
  if (vpid <= 0 || vport == 0 || rpid <= 0) {
    std::fprintf(stderr, "cannot start vqkv-server or redis-server\n");
    // Whichever did start must not outlive the benchmark.
    for (const pid_t pid : {vpid, rpid}) {
      if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, nullptr, 0);
      }
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    return 1;
  }
  // Wait for Redis to answer PING (bounded).
  for (int i = 0; i < 100; ++i) {
    redisContext* c = redisConnect("127.0.0.1", rport);
    if (c != nullptr && c->err == 0) {
      auto* r = static_cast<redisReply*>(redisCommand(c, "PING"));
      const bool ok = r != nullptr;
      if (r) freeReplyObject(r);
      redisFree(c);
      if (ok) break;
    } else if (c != nullptr) {
      redisFree(c);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  const int max_clients =
      *std::max_element(client_counts.begin(), client_counts.end());
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<vqkv::v1::KVCache::Stub>> stubs;
  std::vector<redisContext*> redis;
  const int channel_count =
      connections > 0 ? std::min(connections, max_clients) : max_clients;
  // The client library's choice of gRPC poller, made the same way.
  std::string client_poller;
  {
    vqkv::client::ScopedClientPoller poller;
    client_poller = poller.poller();
    for (int t = 0; t < channel_count; ++t) {
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(256 << 20);
      args.SetMaxSendMessageSize(256 << 20);
      args.SetInt("vqkv.bench.client", t);  // one connection per channel
      for (const auto& [key, value] : int_channel_args) args.SetInt(key, value);
      channels.push_back(
          grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(vport),
                                    grpc::InsecureChannelCredentials(), args));
    }
  }
  for (int t = 0; t < max_clients; ++t) {
    stubs.push_back(vqkv::v1::KVCache::NewStub(channels[t % channel_count]));
    redis.push_back(redisConnect("127.0.0.1", rport));
  }
  std::unique_ptr<vqkv::client::Backend> library;
  if (gets_over_sessions) {
    // Cannot fail: the options are valid (--library-connections is checked).
    library = *vqkv::client::NewGrpcBackend(
        {.target = "127.0.0.1:" + std::to_string(vport),
         .max_message_bytes = uint64_t{128} << 20,
         .connections = library_connections});
  }
  // Every client connects before the first row, so no row pays for (or
  // fails on) a handshake; the calls also wait for a ready channel (below),
  // so a connection lost mid-row is remade within the call's deadline
  // instead of failing the row.
  for (size_t t = 0; t < channels.size(); ++t) {
    if (!channels[t]->WaitForConnected(std::chrono::system_clock::now() +
                                       std::chrono::seconds(30))) {
      std::fprintf(stderr,
                   "kv_service_bench: client %zu cannot connect to the "
                   "server at 127.0.0.1:%d within 30 s\n",
                   t, vport);
      for (auto* c : redis) redisFree(c);
      for (const pid_t pid : {vpid, rpid}) {
        kill(pid, SIGTERM);
        waitpid(pid, nullptr, 0);
      }
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
      return 1;
    }
  }

  std::printf(
      "vqkv-server (127.0.0.1:%d, %s) vs redis-server "
      "(127.0.0.1:%d, no persistence), %.1f s per row, %u hardware threads\n"
      "batch 1: one block per request (vqkv PutBlocks/GetBlocks with one "
      "block, redis SET/GET)\n"
      "batch %d: %d blocks per request (vqkv PutBlocks/GetBlocks, redis "
      "MSET/MGET), fewer when %d blocks would pass 64 MiB\n"
      "blocks/s and MB/s count blocks; p50/p99 are per request; srv us and "
      "srv cs are the server process's CPU microseconds and context "
      "switches per request (all its threads, from /proc); cli us is this "
      "process's (the clients'), whose malloc is %s; vqkv's clients use "
      "%d gRPC connection(s) polled by gRPC's %s poller (lget: the client "
      "library's backend, %d connections), Redis's one connection each\n\n",
      vport,
      durability == "sync" ? "sync: write-through, fsync per request"
                           : "async: memory tier, spill to RocksDB",
      rport, seconds, std::thread::hardware_concurrency(), batch_blocks,
      batch_blocks, batch_blocks,
      tune_allocator ? "tuned (--tune-allocator)" : "glibc's default",
      channel_count, client_poller.c_str(), library_connections);
  std::printf(
      "%-13s %-6s %4s %10s %5s %-6s %-4s %3s %9s %9s %8s %8s %11s %8s %7s "
      "%8s\n",
      "model", "format", "tok", "bytes", "batch", "server", "op", "cli",
      "blocks/s", "MB/s", "p50 ms", "p99 ms", "KV tok/s", "srv us", "srv cs",
      "cli us");

  auto prepare = [](grpc::ClientContext* ctx) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(60));
    ctx->set_wait_for_ready(true);
  };
  int ns_counter = 0;
  int row_set = 0;
  for (const Model& m : kModels) {
    for (int tokens : {16, 256}) {
      if (quick && (tokens != 16 || &m != &kModels[0])) continue;
      for (bool vq : {true, false}) {
        const double elements =
            2.0 * tokens * m.layers * m.kv_heads * m.head_dim;  // K and V
        const uint64_t payload =
            static_cast<uint64_t>(vq ? elements * 2.75 / 8 : elements * 2);
        // A few distinct payloads, cycled (content does not matter to
        // either server; sizes do).
        std::vector<std::string> blocks;
        for (int i = 0; i < 4; ++i) {
          blocks.push_back(MakeBlock(m, tokens, vq, payload, 17 + i));
        }
        const size_t bytes = blocks[0].size();
        // Requests stay under 64 MiB (the message limit is 128 MiB).
        const int big_batch = static_cast<int>(std::clamp<uint64_t>(
            (uint64_t{64} << 20) / bytes, 1, batch_blocks));
        std::vector<int> batches = {1};
        if (big_batch > 1 && !single_only) batches.push_back(big_batch);
        for (int batch : batches) {
          for (int clients : client_counts) {
            std::fprintf(stderr,
                         "[%d] %s %s %d tokens, %d block(s)/request, %d "
                         "client(s)\n",
                         ++row_set, m.name, vq ? "2.75b" : "fp16", tokens,
                         batch, clients);
            vqkv::v1::Namespace ns;
            ns.set_model_id(std::string(m.name) + "/" +
                            std::to_string(ns_counter++));
            ns.set_codec(vq ? "vq-bench" : "fp16");
            ns.set_codec_id(static_cast<uint32_t>(vq ? vqkv::CodecId::kVq
                                                     : vqkv::CodecId::kFp16));
            ns.set_block_tokens(tokens);
            ns.set_layers(m.layers);
            ns.set_kv_heads(m.kv_heads);
            ns.set_head_dim(m.head_dim);
            ns.set_dtype(vqkv::v1::DTYPE_BFLOAT16);
            const int64_t max_requests = std::max<int64_t>(
                16, static_cast<int64_t>(max_gib * (1ull << 30) /
                                         (static_cast<double>(bytes) * batch)));
            auto print = [&](const char* server, const char* op,
                             const Result& r) {
              std::printf(
                  "%-13s %-6s %4d %10zu %5d %-6s %-4s %3d %9.0f %9.1f %8.3f "
                  "%8.3f %11.0f %8.1f %7.2f %8.1f%s\n",
                  m.name, vq ? "2.75b" : "fp16", tokens, bytes, batch, server,
                  op, clients, r.ops_per_s * batch, r.mb_per_s * batch,
                  r.p50_ms, r.p99_ms, r.ops_per_s * batch * tokens,
                  r.server_cpu_us, r.server_switches, r.client_cpu_us,
                  r.ops == 0 ? "  (FAILED)" : "");
              std::fflush(stdout);
            };
            // Request i covers keys [i*batch, (i+1)*batch).
            Result r = Run(vpid, clients, seconds, max_requests, bytes,
                           [&](int t, int64_t i) {
                             vqkv::v1::PutBlocksRequest req;
                             *req.mutable_namespace_() = ns;
                             for (int b = 0; b < batch; ++b) {
                               const int64_t k = i * batch + b;
                               auto* blk = req.add_blocks();
                               blk->set_hash(Key(k));
                               blk->set_data(blocks[k % blocks.size()]);
                             }
                             vqkv::v1::PutBlocksResponse resp;
                             grpc::ClientContext ctx;
                             prepare(&ctx);
                             const grpc::Status status =
                                 stubs[t]->PutBlocks(&ctx, req, &resp);
                             return Succeeded("PutBlocks", status,
                                              resp.stored(), batch);
                           });
            const int64_t vq_put = std::max<int64_t>(r.ops, 1);
            print("vqkv", "put", r);
            r = Run(
                vpid, clients, seconds, 1 << 30, bytes, [&](int t, int64_t i) {
                  vqkv::v1::GetBlocksRequest req;
                  *req.mutable_namespace_() = ns;
                  for (int b = 0; b < batch; ++b) {
                    req.add_hashes(Key((i % vq_put) * batch + b));
                  }
                  vqkv::v1::GetBlocksResponse resp;
                  grpc::ClientContext ctx;
                  prepare(&ctx);
                  const grpc::Status status =
                      stubs[t]->GetBlocks(&ctx, req, &resp);
                  return Succeeded("GetBlocks", status, resp.found(), batch);
                });
            print("vqkv", "get", r);
            // The same gets over one GetBlocksSession per client: a request
            // and its answer per round trip, no new call each time (what
            // client/grpc's backend does for gets).
            if (gets_over_sessions) {
              std::vector<Session> sessions(clients);
              r = Run(vpid, clients, seconds, 1 << 30, bytes,
                      [&](int t, int64_t i) {
                        Session& session = sessions[t];
                        if (!session.stream) {
                          prepare(&session.ctx);
                          session.stream =
                              stubs[t]->GetBlocksSession(&session.ctx);
                        }
                        vqkv::v1::GetBlocksRequest req;
                        *req.mutable_namespace_() = ns;
                        for (int b = 0; b < batch; ++b) {
                          req.add_hashes(Key((i % vq_put) * batch + b));
                        }
                        vqkv::v1::GetBlocksResponse resp;
                        if (!session.stream->Write(req) ||
                            !session.stream->Read(&resp)) {
                          session.finished = true;
                          return Succeeded("GetBlocksSession",
                                           session.stream->Finish(), 0, batch);
                        }
                        return Succeeded("GetBlocksSession", grpc::Status::OK,
                                         resp.found(), batch);
                      });
              for (Session& session : sessions) {
                if (!session.stream || session.finished) continue;
                session.stream->WritesDone();
                (void)session.stream->Finish();
              }
              print("vqkv", "sget", r);
            }
            // The same gets through the client library's gRPC backend, one
            // shared by every client thread, as an engine's CacheClient
            // shares it: sessions from its pool over its connections.
            if (library != nullptr) {
              const vqkv::storage::NamespaceSpec spec = SpecOf(ns);
              r = Run(vpid, clients, seconds, 1 << 30, bytes,
                      [&](int, int64_t i) {
                        std::vector<vqkv::storage::BlockHash> hashes;
                        for (int b = 0; b < batch; ++b) {
                          hashes.push_back(*vqkv::storage::BlockHash::FromBytes(
                              Key((i % vq_put) * batch + b)));
                        }
                        auto got = library->Get(
                            spec, hashes, absl::Now() + absl::Seconds(60));
                        if (!got.ok()) {
                          std::fprintf(stderr, "Backend::Get failed: %s\n",
                                       got.status().ToString().c_str());
                          return false;
                        }
                        uint32_t found = 0;
                        for (const auto& item : *got) found += item.ok();
                        return Succeeded("Backend::Get", grpc::Status::OK,
                                         found, batch);
                      });
              print("vqkv", "lget", r);
            }
            // Redis, same payloads, key = namespace-ish prefix + hash.
            const std::string prefix = ns.model_id() + ":";
            r = Run(rpid, clients, seconds, max_requests, bytes,
                    [&](int t, int64_t i) {
                      std::vector<std::string> keys;
                      std::vector<const char*> argv = {"MSET"};
                      std::vector<size_t> lens = {4};
                      keys.reserve(batch);
                      for (int b = 0; b < batch; ++b) {
                        const int64_t k = i * batch + b;
                        keys.push_back(prefix + Key(k));
                        const std::string& v = blocks[k % blocks.size()];
                        argv.push_back(keys.back().data());
                        lens.push_back(keys.back().size());
                        argv.push_back(v.data());
                        lens.push_back(v.size());
                      }
                      auto* rep = static_cast<redisReply*>(redisCommandArgv(
                          redis[t], static_cast<int>(argv.size()), argv.data(),
                          lens.data()));
                      const bool ok =
                          rep != nullptr && rep->type == REDIS_REPLY_STATUS;
                      if (rep) freeReplyObject(rep);
                      return ok;
                    });
            const int64_t redis_put = std::max<int64_t>(r.ops, 1);
            print("redis", "put", r);
            r = Run(
                rpid, clients, seconds, 1 << 30, bytes, [&](int t, int64_t i) {
                  std::vector<std::string> keys;
                  std::vector<const char*> argv = {"MGET"};
                  std::vector<size_t> lens = {4};
                  keys.reserve(batch);
                  for (int b = 0; b < batch; ++b) {
                    keys.push_back(prefix + Key((i % redis_put) * batch + b));
                    argv.push_back(keys.back().data());
                    lens.push_back(keys.back().size());
                  }
                  auto* rep = static_cast<redisReply*>(
                      redisCommandArgv(redis[t], static_cast<int>(argv.size()),
                                       argv.data(), lens.data()));
                  bool ok = rep != nullptr && rep->type == REDIS_REPLY_ARRAY &&
                            rep->elements == static_cast<size_t>(batch);
                  for (size_t e = 0; ok && e < rep->elements; ++e) {
                    ok = rep->element[e]->type == REDIS_REPLY_STRING &&
                         static_cast<size_t>(rep->element[e]->len) == bytes;
                  }
                  if (rep) freeReplyObject(rep);
                  return ok;
                });
            print("redis", "get", r);
            // Free memory before the next row.
            {
              vqkv::v1::DeleteRequest del;
              *del.mutable_namespace_() = ns;
              del.set_whole_namespace(true);
              vqkv::v1::DeleteResponse resp;
              grpc::ClientContext ctx;
              prepare(&ctx);
              (void)stubs[0]->Delete(&ctx, del, &resp);
              auto* rep =
                  static_cast<redisReply*>(redisCommand(redis[0], "FLUSHALL"));
              if (rep) freeReplyObject(rep);
            }
          }
        }
      }
    }
  }
  for (auto* c : redis) redisFree(c);
  stubs.clear();
  channels.clear();
  kill(vpid, SIGTERM);
  kill(rpid, SIGTERM);
  waitpid(vpid, nullptr, 0);
  waitpid(rpid, nullptr, 0);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
