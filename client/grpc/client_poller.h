// Which of gRPC's pollers a client process's calls run on.
//
// gRPC 1.51 (Debian 12's) reads sockets on the threads that wait for calls.
// Its default poller on Linux, epoll1, has one epoll set for the whole
// process: whichever waiting thread polls first reads every connection's
// data and then wakes the thread whose call it was, so with many client
// threads most of a small get's CPU goes to those wake-ups (a perf profile of
// 16 getting threads: 56% in the kernel's task switch and wake-up paths).
// The "poll" poller polls each waiting call's own completion queue and the
// connections its calls use, so a thread that waits on its own connection
// reads its own socket. Measured with kv_service_bench (16 threads, 63 KB
// single-block gets over sessions, a connection each, 2 cores): 1.5-1.8x
// the gets per second for half to two thirds of the client CPU per get
// (docs/SERVICE.md, "The client's poller and connections"). A server keeps
// epoll1: "poll" costs vqkv-server more CPU per call.
//
// gRPC picks its poller when it starts in a process, that is when the first
// channel, server or completion queue is made, and keeps it until the last
// one is gone. ScopedClientPoller makes a gRPC that starts during its scope
// start with "poll", unless the operator chose a poller (GRPC_POLL_STRATEGY
// is set: that wins) or gRPC is already running (its poller cannot change).
// It sets GRPC_POLL_STRATEGY for the scope only, so processes started after
// it do not inherit the choice.
//
// Thread safety: scopes in different threads take turns (a process-wide
// mutex); on one thread they may nest (an inner one sees the outer's
// variable and leaves it). Setting an environment variable is not safe against
// getenv or setenv running on another thread at that moment (POSIX), so make
// clients while the process starts up, as engines do.
#ifndef VQKV_CLIENT_GRPC_CLIENT_POLLER_H_
#define VQKV_CLIENT_GRPC_CLIENT_POLLER_H_

#include <string>

namespace vqkv::client {

class ScopedClientPoller {
 public:
  ScopedClientPoller();
  ~ScopedClientPoller();
  ScopedClientPoller(const ScopedClientPoller&) = delete;
  ScopedClientPoller& operator=(const ScopedClientPoller&) = delete;

  // What gRPC polls with in this scope, for logs and benchmark tables:
  // "poll", "<value> (GRPC_POLL_STRATEGY)", or "gRPC's (already running)".
  const std::string& poller() const { return poller_; }
  // True when this scope set GRPC_POLL_STRATEGY (and unsets it at the end).
  bool set_by_scope() const { return set_by_scope_; }

  // The environment variable gRPC reads.
  static constexpr const char* kEnvVar = "GRPC_POLL_STRATEGY";

 private:
  std::string poller_;
  bool set_by_scope_ = false;
};

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_GRPC_CLIENT_POLLER_H_
