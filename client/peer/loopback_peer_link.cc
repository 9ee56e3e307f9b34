// NewLoopbackPeerLinks: two queues under one mutex, one per direction.
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/peer/peer_link.h"

namespace vqkv::client {
namespace {

struct LoopbackShared {
  absl::Mutex mu;
  std::deque<std::string> queue[2] ABSL_GUARDED_BY(mu);
  uint64_t queued_bytes[2] ABSL_GUARDED_BY(mu) = {0, 0};
  bool closed ABSL_GUARDED_BY(mu) = false;
};

class LoopbackPeerLink : public KvPeerLink {
 public:
  LoopbackPeerLink(std::shared_ptr<LoopbackShared> shared, int side,
                   uint64_t max_message_bytes, uint64_t max_queued_bytes)
      : shared_(std::move(shared)),
        side_(side),
        max_message_bytes_(max_message_bytes),
        max_queued_bytes_(max_queued_bytes) {}
  ~LoopbackPeerLink() override { Close(); }

  uint64_t max_message_bytes() const override { return max_message_bytes_; }

  absl::Status Send(absl::string_view message) override {
    if (message.size() > max_message_bytes_) {
      return absl::InvalidArgumentError(
          absl::StrCat("a ", message.size(), "-byte message; this link carries",
                       " at most ", max_message_bytes_));
    }
    LoopbackShared& s = *shared_;
    const int to = 1 - side_;
    absl::MutexLock lock(&s.mu);
    auto room = [&]() ABSL_SHARED_LOCKS_REQUIRED(s.mu) {
      return s.closed || s.queued_bytes[to] == 0 ||
             s.queued_bytes[to] + message.size() <= max_queued_bytes_;
    };
    s.mu.Await(absl::Condition(&room));
    if (s.closed) return absl::CancelledError("peer link closed");
    s.queue[to].emplace_back(message);
    s.queued_bytes[to] += message.size();
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Receive(absl::Duration timeout) override {
    LoopbackShared& s = *shared_;
    absl::MutexLock lock(&s.mu);
    auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(s.mu) {
      return s.closed || !s.queue[side_].empty();
    };
    s.mu.AwaitWithTimeout(absl::Condition(&ready), timeout);
    if (!s.queue[side_].empty()) {
      std::string m = std::move(s.queue[side_].front());
      s.queue[side_].pop_front();
      s.queued_bytes[side_] -= m.size();
      return m;
    }
    if (s.closed) return absl::CancelledError("peer link closed");
    return absl::DeadlineExceededError("no peer message within the timeout");
  }

  void Close() override {
    absl::MutexLock lock(&shared_->mu);
    shared_->closed = true;
  }

 private:
  const std::shared_ptr<LoopbackShared> shared_;
  const int side_;
  const uint64_t max_message_bytes_;
  const uint64_t max_queued_bytes_;
};

}  // namespace

std::pair<std::unique_ptr<KvPeerLink>, std::unique_ptr<KvPeerLink>>
NewLoopbackPeerLinks(uint64_t max_message_bytes, uint64_t max_queued_bytes) {
  auto shared = std::make_shared<LoopbackShared>();
  return {std::make_unique<LoopbackPeerLink>(shared, 0, max_message_bytes,
                                             max_queued_bytes),
          std::make_unique<LoopbackPeerLink>(shared, 1, max_message_bytes,
                                             max_queued_bytes)};
}

}  // namespace vqkv::client
