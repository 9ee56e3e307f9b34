// A fixed pool of threads running queued closures. The KVCache handlers hand
// storage work to it so that gRPC's callback threads never block on disk I/O.
//
// Thread safety: Submit may be called from any thread, concurrently.
#ifndef VQKV_SERVICE_WORK_QUEUE_H_
#define VQKV_SERVICE_WORK_QUEUE_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace vqkv::service {

class WorkQueue {
 public:
  // Starts `threads` workers. `max_queued` bounds the closures waiting for a
  // worker that TrySubmit accepts (0: no bound). REQUIRES: threads >= 1.
  explicit WorkQueue(int threads, size_t max_queued = 0);
  // Runs every queued closure, then joins the workers.
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Queues `fn` to run on a worker, whatever the queue holds (for work of
  // calls already admitted). After Stop() began, runs it inline.
  void Submit(std::function<void()> fn);
  // Admission of new work: queues `fn` like Submit unless max_queued
  // closures are already waiting; then returns false and drops `fn`
  // without running it.
  bool TrySubmit(std::function<void()> fn);
  // Closures waiting for a worker now.
  size_t queued() const;
  size_t max_queued() const { return max_queued_; }
  // Drains the queue and joins the workers. Idempotent.
  void Stop();

 private:
  void Loop();
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !queue_.empty();
  }

  const size_t max_queued_;
  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_WORK_QUEUE_H_
