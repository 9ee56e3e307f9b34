// vqkv-server: the vqkv KV-cache service. See docs/SERVICE.md.
//
// With no arguments: gRPC on 127.0.0.1:50051, RocksDB under ./vqkv-data, auth
// off (loudly logged). SIGTERM / SIGINT: stop accepting, drain in-flight
// calls, flush the store, exit 0.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/config.h"
#include "service/server.h"

namespace {

// One line on stderr with the settings that matter most to an operator.
// " tls=on (reload 60s)", " tls=mtls (reload 60s)" or "".
std::string TlsSummary(const vqkv::service::ServerConfig& config) {
  if (config.tls_cert.empty()) return "";
  return absl::StrCat(config.tls_client_ca.empty() ? " tls=on" : " tls=mtls",
                      " (reload ", config.tls_reload_seconds, "s)");
}

void PrintSettings(const vqkv::service::ServerConfig& config) {
  const vqkv::storage::TieredStoreOptions& store = config.store;
  std::fprintf(
      stderr,
      "vqkv-server: data_dir=%s memory_bytes=%llu disk_bytes=%llu%s "
      "durability=%s write_policy=%s max_message_bytes=%llu "
      "max_lease_ms=%lld%s\n",
      store.data_dir.c_str(),
      static_cast<unsigned long long>(store.memory_bytes),
      static_cast<unsigned long long>(store.disk_bytes),
      store.disk_bytes == 0 ? " (unlimited)" : "",
      std::string(vqkv::storage::DurabilityName(store.durability)).c_str(),
      std::string(vqkv::storage::WritePolicyName(store.write_policy)).c_str(),
      static_cast<unsigned long long>(config.service.max_message_bytes),
      static_cast<long long>(
          absl::ToInt64Milliseconds(config.service.max_lease)),
      TlsSummary(config).c_str());
}

// The write end of the self-pipe the shutdown signals are reported on.
int g_signal_pipe = -1;

// Async-signal-safe: runs on whichever thread the kernel picked.
void OnShutdownSignal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  (void)!write(g_signal_pipe, &b, 1);
  errno = saved;
}

}  // namespace

int main(int argc, char** argv) {
  bool exit_now = false;
  auto config = vqkv::service::ParseCommandLine(argc, argv, &exit_now);
  if (exit_now) return 0;
  if (!config.ok()) {
    std::fprintf(stderr, "vqkv-server: %s\n",
                 std::string(config.status().message()).c_str());
    return 2;
  }

  // Debian's Abseil is built without NDEBUG, which turns on the Mutex
  // deadlock detector (a lock-order graph update on every lock) in every
  // binary; it shows up in server profiles. Tests keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // SIGTERM / SIGINT run a handler that reports them on a pipe main waits
  // on. A handler, not a blocked mask and sigwait: threads that libraries
  // start before main (or that reset their mask) would otherwise take the
  // signal's default action and kill the process without its flush (seen
  // as a rare exit 130 in tests).
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) {
    std::perror("vqkv-server: pipe");
    return 1;
  }
  // Non-blocking: signals past the pipe's capacity are dropped, never wait.
  fcntl(pipe_fds[1], F_SETFL, O_NONBLOCK);
  g_signal_pipe = pipe_fds[1];
  struct sigaction sa = {};
  sa.sa_handler = OnShutdownSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server = vqkv::service::Server::Start(*config);
  if (!server.ok()) {
    std::fprintf(stderr, "vqkv-server: cannot start: %s\n",
                 server.status().ToString().c_str());
    return 1;
  }
  const std::string& listen = config->listen;
  const std::string host = listen.substr(0, listen.rfind(':'));
  PrintSettings(*config);
  if ((*server)->metrics_port() != 0) {
    const std::string& m = config->metrics_listen;
    std::printf("vqkv-server metrics on http://%s:%d/metrics\n",
                m.substr(0, m.rfind(':')).c_str(), (*server)->metrics_port());
  }
  std::printf("vqkv-server listening on %s:%d\n", host.c_str(),
              (*server)->port());
  std::fflush(stdout);

  // poll, then read: poll is never restarted after a handler (SA_RESTART
  // restarts read), and ThreadSanitizer runs a handler at once only in a
  // call it knows blocks, such as poll; a SIGTERM that arrived while main
  // sat in read() was never handled under scripts/tsan.sh.
  unsigned char sig = 0;
  pollfd wake = {.fd = pipe_fds[0], .events = POLLIN, .revents = 0};
  while (poll(&wake, 1, -1) != 1 || read(pipe_fds[0], &sig, 1) != 1) {
  }
  std::fprintf(stderr, "vqkv-server: %s: draining and flushing\n",
               strsignal(sig));
  // Further SIGTERM/SIGINT during the drain (an impatient supervisor, a
  // second Ctrl-C) only write to the pipe nobody reads any more, so the
  // drain and the flush always finish. SIGKILL still works.
  const absl::Status flushed =
      (*server)->Shutdown(absl::Seconds(config->shutdown_grace_seconds));
  server->reset();
  if (!flushed.ok()) {
    std::fprintf(stderr, "vqkv-server: flush failed: %s\n",
                 flushed.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "vqkv-server: stopped cleanly\n");
  return 0;
}
