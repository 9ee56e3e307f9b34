// Test harness: runs the real vqkv-server binary as a child process on a free
// loopback port, and talks to it with the generated C++ stub.
//
// Thread safety: one ServerProcess per test thread.
#ifndef VQKV_TESTS_INTEGRATION_SERVER_PROCESS_H_
#define VQKV_TESTS_INTEGRATION_SERVER_PROCESS_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on
// destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // Writes `content` to path()/name and returns the full path.
  std::string WriteFile(const std::string& name,
                        const std::string& content) const;

 private:
  std::string path_;
};

class ServerProcess {
 public:
  // Starts vqkv-server (VQKV_SERVER_PATH) with `--listen 127.0.0.1:0` and
  // `args`, and waits (up to 30 s) for its "listening on" line to learn the
  // port. Errors: kInternal when it exits or never prints the line.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::vector<std::string>& args);
  // The same on a given address, e.g. "127.0.0.1:<port>" to restart a
  // server where its clients expect it.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> StartOn(
      const std::string& listen, const std::vector<std::string>& args);
  // Kills the server (SIGKILL) if it still runs.
  ~ServerProcess();

  int port() const { return port_; }
  // The metrics port when --metrics-listen was given, else 0.
  int metrics_port() const { return metrics_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }

  // Sends `sig` and waits (up to 60 s) for the process to exit. Returns the
  // exit code (128 + signal when killed by a signal), or -1 on timeout.
  int StopWith(int sig);
  // Whether the process is still running (reaps it when it exited).
  bool Running();

  // An insecure channel to the server; max message sizes 256 MiB.
  std::shared_ptr<grpc::Channel> Channel() const;
  std::unique_ptr<v1::KVCache::Stub> Stub() const;

 private:
  ServerProcess() = default;

  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  int exit_code_ = -1;
};

// Channel arguments used by every test client (256 MiB message limits).
grpc::ChannelArguments TestChannelArgs();

// GET http://127.0.0.1:port/path; returns status code and body.
struct HttpResult {
  int status = 0;
  std::string body;
};
HttpResult HttpGet(int port, const std::string& path);

// Runs `fn` with this process's stderr redirected to the file `path`, and
// returns what was written there (e.g. an in-process server's log lines).
// Not thread-safe: stderr is process-wide.
std::string CaptureStderr(const std::string& path,
                          const std::function<void()>& fn);

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_INTEGRATION_SERVER_PROCESS_H_
