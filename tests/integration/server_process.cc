#include "tests/integration/server_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"

extern char** environ;

namespace vqkv::testing {
namespace {

// Parses the port at the end of "...<prefix>host:PORT..." in `line`.
int PortAfter(const std::string& line, const std::string& prefix) {
  const size_t at = line.find(prefix);
  if (at == std::string::npos) return 0;
  std::string rest = line.substr(at + prefix.size());
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) rest = rest.substr(0, slash);
  const size_t colon = rest.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(rest.substr(colon + 1), &port)) {
    return 0;
  }
  return port;
}

}  // namespace

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl =
      absl::StrCat(base != nullptr ? base : "/tmp", "/vqkv-it-XXXXXX");
  char* made = mkdtemp(tmpl.data());
  path_ = made != nullptr ? std::string(made) : std::string();
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

std::string TempDir::WriteFile(const std::string& name,
                               const std::string& content) const {
  const std::string p = path_ + "/" + name;
  std::ofstream(p, std::ios::binary) << content;
  return p;
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::vector<std::string>& args) {
  return StartOn("127.0.0.1:0", args);
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::StartOn(
    const std::string& listen, const std::vector<std::string>& args) {
  std::vector<std::string> argv_s = {VQKV_SERVER_PATH, "--listen", listen};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  posix_spawn_file_actions_addclose(&actions, fds[1]);
  std::unique_ptr<ServerProcess> p(new ServerProcess());
  const int rc =
      posix_spawn(&p->pid_, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    p->pid_ = -1;
    return absl::InternalError(absl::StrCat("posix_spawn failed: ", rc));
  }
  p->stdout_fd_ = fds[0];

  // Read stdout until the "listening on" line (bounded wait).
  std::string buffer;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd pfd{p->stdout_fd_, POLLIN, 0};
    const int ready = poll(&pfd, 1, 100);
    if (ready > 0) {
      char chunk[4096];
      const ssize_t n = read(p->stdout_fd_, chunk, sizeof(chunk));
      if (n <= 0) break;  // the server closed stdout: it exited
      buffer.append(chunk, static_cast<size_t>(n));
      size_t nl;
      while ((nl = buffer.find('\n')) != std::string::npos) {
        const std::string line = buffer.substr(0, nl);
        buffer.erase(0, nl + 1);
        if (int m = PortAfter(line, "metrics on http://"); m != 0) {
          p->metrics_port_ = m;
        }
        if (int port = PortAfter(line, "listening on "); port != 0) {
          p->port_ = port;
          return p;
        }
      }
    }
    if (!p->Running()) break;
  }
  // It closed stdout: give it a moment to exit, so the error has its code.
  for (int i = 0; i < 50 && p->Running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return absl::InternalError(
      absl::StrCat("vqkv-server did not report a listening port (exit code ",
                   p->exit_code_, ")"));
}

ServerProcess::~ServerProcess() {
  if (Running()) StopWith(SIGKILL);
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

bool ServerProcess::Running() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) {
    exit_code_ =
        WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  pid_ = -1;
  return false;
}

int ServerProcess::StopWith(int sig) {
  if (!Running()) return exit_code_;
  kill(pid_, sig);
  // Polled every 10 ms: a killed server is gone in a few (crash-cycle tests
  // stop one a hundred times).
  for (int i = 0; i < 6000; ++i) {
    if (!Running()) return exit_code_;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

grpc::ChannelArguments TestChannelArgs() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  return args;
}

std::shared_ptr<grpc::Channel> ServerProcess::Channel() const {
  return grpc::CreateCustomChannel(
      address(), grpc::InsecureChannelCredentials(), TestChannelArgs());
}

std::unique_ptr<v1::KVCache::Stub> ServerProcess::Stub() const {
  return v1::KVCache::NewStub(Channel());
}

HttpResult HttpGet(int port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  auto res = client.Get(path.c_str());
  if (!res) return {};
  return {res->status, res->body};
}

std::string CaptureStderr(const std::string& path,
                          const std::function<void()>& fn) {
  std::fflush(stderr);
  const int saved = dup(STDERR_FILENO);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  dup2(fd, STDERR_FILENO);
  close(fd);
  fn();
  std::fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace vqkv::testing
