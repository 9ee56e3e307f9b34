// A circuit breaker for calls to one backend: after `failures_to_open`
// consecutive failures the circuit opens and Allow() answers false at once,
// so a dead or black-holed cache costs nothing per request. Every
// `probe_interval` one call is let through (half-open); its success closes
// the circuit, its failure reopens it with the interval doubled, up to
// `max_probe_interval`. With `jitter` > 0 each wait is scaled by a random
// factor in [1 - jitter, 1 + jitter], so many clients of one node that
// failed together do not probe it in lockstep.
//
// Thread safety: all methods may be called concurrently.
#ifndef VQKV_CLIENT_CIRCUIT_BREAKER_H_
#define VQKV_CLIENT_CIRCUIT_BREAKER_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <random>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace vqkv::client {

struct CircuitBreakerOptions {
  int failures_to_open = 3;
  absl::Duration probe_interval = absl::Seconds(1);
  absl::Duration max_probe_interval = absl::Seconds(30);
  // 0..1: random spread of each probe wait (0: exact intervals).
  double jitter = 0;
  // Test seam: the time source (default absl::Now).
  std::function<absl::Time()> clock;
};

class CircuitBreaker {
 public:
  explicit CircuitBreaker(CircuitBreakerOptions options)
      : options_(std::move(options)), interval_(options_.probe_interval) {}

  // Whether a call may go out now. While open, true at most once per probe
  // interval (that call is the probe).
  bool Allow() {
    absl::MutexLock lock(&mu_);
    if (!open_) return true;
    const absl::Time now = Now();
    if (now < next_probe_) return false;
    next_probe_ = now + interval_;  // one probe per interval
    return true;
  }

  // The outcome of an allowed call. Only failures that say the backend is
  // unhealthy should be reported as failures (unreachable, deadline).
  void Record(bool success) {
    absl::MutexLock lock(&mu_);
    if (success) {
      consecutive_failures_ = 0;
      open_ = false;
      interval_ = options_.probe_interval;
      return;
    }
    ++consecutive_failures_;
    ++total_failures_;
    if (open_) {
      interval_ = std::min(interval_ * 2, options_.max_probe_interval);
      next_probe_ = Now() + Jittered(interval_);
    } else if (consecutive_failures_ >= options_.failures_to_open) {
      open_ = true;
      ++times_opened_;
      next_probe_ = Now() + Jittered(interval_);
    }
  }

  bool open() const {
    absl::MutexLock lock(&mu_);
    return open_;
  }
  int64_t times_opened() const {
    absl::MutexLock lock(&mu_);
    return times_opened_;
  }

 private:
  absl::Duration Jittered(absl::Duration d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (options_.jitter <= 0) return d;
    std::uniform_real_distribution<double> u(-options_.jitter, options_.jitter);
    return d * (1.0 + u(rng_));
  }
  absl::Time Now() const {
    return options_.clock ? options_.clock() : absl::Now();
  }

  const CircuitBreakerOptions options_;
  mutable absl::Mutex mu_;
  bool open_ ABSL_GUARDED_BY(mu_) = false;
  int consecutive_failures_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t total_failures_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t times_opened_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration interval_ ABSL_GUARDED_BY(mu_);
  absl::Time next_probe_ ABSL_GUARDED_BY(mu_);
  std::minstd_rand rng_ ABSL_GUARDED_BY(mu_){std::random_device{}()};
};

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_CIRCUIT_BREAKER_H_
