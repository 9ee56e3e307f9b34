// service/work_queue.h: submitted work runs on the workers, all of them at
// once; Stop (and the destructor) drain what is queued and join; work
// submitted after Stop runs inline. Submit never blocks or refuses;
// TrySubmit (admission of new calls) refuses past max_queued.
#include "service/work_queue.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace vqkv::service {
namespace {

TEST(WorkQueueTest, SubmittedWorkRunsOnAWorker) {
  WorkQueue queue(2);
  absl::Notification done;
  std::thread::id ran_on;
  queue.Submit([&] {
    ran_on = std::this_thread::get_id();
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_NE(ran_on, std::this_thread::get_id());
}

TEST(WorkQueueTest, EveryWorkerRunsConcurrently) {
  // Four closures that each wait for all four to have started: they can only
  // finish if four workers run them at the same time.
  constexpr int kThreads = 4;
  WorkQueue queue(kThreads);
  absl::Mutex mu;
  int started = 0;
  std::atomic<int> finished{0};
  for (int i = 0; i < kThreads; ++i) {
    queue.Submit([&] {
      absl::MutexLock lock(&mu);
      ++started;
      auto all_started = +[](int* n) { return *n == kThreads; };
      if (mu.AwaitWithTimeout(absl::Condition(all_started, &started),
                              absl::Seconds(30))) {
        finished.fetch_add(1);
      }
    });
  }
  queue.Stop();
  EXPECT_EQ(finished.load(), kThreads);
}

TEST(WorkQueueTest, StopRunsEverythingQueuedThenJoins) {
  WorkQueue queue(1);
  absl::Notification release;
  std::atomic<int> ran{0};
  // The one worker is held while more work queues up behind it.
  queue.Submit([&] {
    release.WaitForNotification();
    ran.fetch_add(1);
  });
  for (int i = 0; i < 100; ++i) queue.Submit([&] { ran.fetch_add(1); });
  std::thread stopper([&] { queue.Stop(); });
  release.Notify();
  stopper.join();
  EXPECT_EQ(ran.load(), 101);
  queue.Stop();  // idempotent
  EXPECT_EQ(ran.load(), 101);
}

TEST(WorkQueueTest, WorkSubmittedAfterStopRunsInline) {
  WorkQueue queue(2);
  queue.Stop();
  std::thread::id ran_on;
  queue.Submit([&] { ran_on = std::this_thread::get_id(); });
  EXPECT_EQ(ran_on, std::this_thread::get_id());  // ran before Submit returned
}

TEST(WorkQueueTest, DestructorDrainsTheQueue) {
  std::atomic<int> ran{0};
  {
    WorkQueue queue(1);
    for (int i = 0; i < 50; ++i) queue.Submit([&] { ran.fetch_add(1); });
  }
  EXPECT_EQ(ran.load(), 50);
}

TEST(WorkQueueTest, SubmitNeverBlocksWhileWorkersAreBusy) {
  // No bound: with the only worker held, Submit still returns at once for
  // many closures, and all of them run once the worker is free.
  WorkQueue queue(1);
  absl::Notification release;
  std::atomic<int> ran{0};
  queue.Submit([&] { release.WaitForNotification(); });
  for (int i = 0; i < 10000; ++i) queue.Submit([&] { ran.fetch_add(1); });
  EXPECT_EQ(ran.load(), 0);  // all still queued behind the held worker
  release.Notify();
  queue.Stop();
  EXPECT_EQ(ran.load(), 10000);
}

TEST(WorkQueueTest, TrySubmitRefusesPastTheBound) {
  // One worker held, a bound of 3: three closures wait, the fourth is
  // refused (and never runs); Submit (admitted calls) still queues.
  WorkQueue queue(1, /*max_queued=*/3);
  absl::Notification started, release;
  std::atomic<int> ran{0};
  ASSERT_TRUE(queue.TrySubmit([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();  // the worker holds it: the queue is empty
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(queue.TrySubmit([&] { ran.fetch_add(1); }));
  }
  EXPECT_EQ(queue.queued(), 3u);
  EXPECT_FALSE(queue.TrySubmit([&] { ran.fetch_add(100); }));
  queue.Submit([&] { ran.fetch_add(1); });
  EXPECT_EQ(queue.queued(), 4u);
  release.Notify();
  queue.Stop();
  EXPECT_EQ(ran.load(), 4);
  // Room again once the queue drained (after Stop, work runs inline).
  EXPECT_TRUE(queue.TrySubmit([&] { ran.fetch_add(1); }));
  EXPECT_EQ(ran.load(), 5);
}

}  // namespace
}  // namespace vqkv::service
