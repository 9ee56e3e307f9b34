// A fixed pool of threads running queued closures. The KVCache handlers hand
// storage work to it so that gRPC's callback threads never block on disk I/O.
//
// Thread safety: Submit may be called from any thread, concurrently.
#ifndef VQKV_SERVICE_WORK_QUEUE_H_
#define VQKV_SERVICE_WORK_QUEUE_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace vqkv::service {

class WorkQueue {
 public:
  // Starts `threads` workers. REQUIRES: threads >= 1.
  explicit WorkQueue(int threads);
  // Runs every queued closure, then joins the workers.
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Queues `fn` to run on a worker. After Stop() began, runs it inline.
  void Submit(std::function<void()> fn);
  // Drains the queue and joins the workers. Idempotent.
  void Stop();

 private:
  void Loop();
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !queue_.empty();
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_WORK_QUEUE_H_
