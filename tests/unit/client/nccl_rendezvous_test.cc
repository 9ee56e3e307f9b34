// Rendezvous through the embedded backend (its own RendezvousTable), and the
// NCCL id exchange on top of it: publish after a delay while another thread
// awaits, timeouts, retried and fatal poll errors, argument checks.
#include "client/nccl/nccl_rendezvous.h"

#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/embedded_backend.h"
#include "gtest/gtest.h"
#include "tests/unit/client/client_test_util.h"

namespace vqkv::client {
namespace {

NcclUniqueIdBytes TestId(uint8_t seed) {
  NcclUniqueIdBytes id;
  for (size_t i = 0; i < id.size(); ++i) {
    id[i] = static_cast<uint8_t>(seed + 31 * i);
  }
  return id;
}

// Fast polling for tests.
NcclAwaitOptions FastPoll() {
  NcclAwaitOptions o;
  o.initial_poll = absl::Milliseconds(1);
  o.max_poll = absl::Milliseconds(20);
  return o;
}

class NcclRendezvousTest : public ::testing::Test {
 protected:
  std::unique_ptr<storage::TieredStore> store_ = testing::MemoryStore();
  EmbeddedBackend backend_{store_.get()};
};

TEST_F(NcclRendezvousTest, EmbeddedBackendPutGetOverwrite) {
  const absl::Time deadline = absl::Now() + absl::Seconds(1);
  EXPECT_EQ(backend_.GetRendezvous("k", deadline).status().code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(
      backend_.PutRendezvous("k", "one", absl::Seconds(10), deadline).ok());
  EXPECT_EQ(*backend_.GetRendezvous("k", deadline), "one");
  ASSERT_TRUE(
      backend_.PutRendezvous("k", "two", absl::Seconds(10), deadline).ok());
  EXPECT_EQ(*backend_.GetRendezvous("k", deadline), "two");
  // Expiry, with the real clock.
  ASSERT_TRUE(
      backend_.PutRendezvous("brief", "v", absl::Milliseconds(30), deadline)
          .ok());
  absl::SleepFor(absl::Milliseconds(60));
  EXPECT_EQ(backend_.GetRendezvous("brief", deadline).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(NcclRendezvousTest, EmbeddedBackendRejectsBadArguments) {
  const absl::Time deadline = absl::Now() + absl::Seconds(1);
  const absl::Status no_key =
      backend_.PutRendezvous("", "v", absl::Seconds(1), deadline);
  EXPECT_EQ(no_key.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_key.message().find("key"), absl::string_view::npos) << no_key;
  EXPECT_EQ(backend_
                .PutRendezvous("k", std::string(4097, 'v'), absl::Seconds(1),
                               deadline)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      backend_.PutRendezvous("k", "v", absl::ZeroDuration(), deadline).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      backend_.GetRendezvous(std::string(257, 'k'), deadline).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(NcclRendezvousTest, EntriesArePerBackendObject) {
  // Two embedded backends over the same store keep separate tables.
  EmbeddedBackend other(store_.get());
  const absl::Time deadline = absl::Now() + absl::Seconds(1);
  ASSERT_TRUE(
      backend_.PutRendezvous("k", "v", absl::Seconds(10), deadline).ok());
  EXPECT_EQ(other.GetRendezvous("k", deadline).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(NcclRendezvousTest, AwaitSeesAnIdPublishedLater) {
  const NcclUniqueIdBytes id = TestId(7);
  absl::Notification awaiting;
  std::thread publisher([&] {
    awaiting.WaitForNotification();
    absl::SleepFor(absl::Milliseconds(150));
    EXPECT_TRUE(
        PublishNcclId(&backend_, "prefill0->decode0", id, absl::Seconds(30))
            .ok());
  });
  const absl::Time start = absl::Now();
  awaiting.Notify();
  absl::StatusOr<NcclUniqueIdBytes> got = AwaitNcclId(
      &backend_, "prefill0->decode0", absl::Seconds(10), FastPoll());
  const absl::Duration waited = absl::Now() - start;
  publisher.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, id);
  EXPECT_GE(waited, absl::Milliseconds(140));
  EXPECT_LT(waited, absl::Seconds(5));
  // The key is the documented one, and other channels are not affected.
  EXPECT_EQ(NcclRendezvousKey("c"), "nccl/c");
  auto raw = backend_.GetRendezvous("nccl/prefill0->decode0",
                                    absl::Now() + absl::Seconds(1));
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(*raw, std::string(id.begin(), id.end()));
  EXPECT_EQ(AwaitNcclId(&backend_, "other", absl::Milliseconds(30), FastPoll())
                .status()
                .code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(NcclRendezvousTest, AwaitTimesOut) {
  const absl::Time start = absl::Now();
  absl::StatusOr<NcclUniqueIdBytes> got =
      AwaitNcclId(&backend_, "nobody", absl::Milliseconds(200), FastPoll());
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded)
      << got.status();
  EXPECT_NE(got.status().message().find("nobody"), absl::string_view::npos);
  EXPECT_GE(waited, absl::Milliseconds(195));
  EXPECT_LT(waited, absl::Seconds(2));
}

TEST_F(NcclRendezvousTest, AnExpiredIdIsNotReturned) {
  ASSERT_TRUE(
      PublishNcclId(&backend_, "c", TestId(1), absl::Milliseconds(20)).ok());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(AwaitNcclId(&backend_, "c", absl::Milliseconds(50), FastPoll())
                .status()
                .code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(NcclRendezvousTest, UnavailableCacheIsRetriedUntilItAnswers) {
  testing::ControlledBackend flaky(&backend_);
  flaky.fail = true;
  ASSERT_TRUE(PublishNcclId(&backend_, "c", TestId(3), absl::Seconds(30)).ok());
  std::thread heal([&] {
    absl::SleepFor(absl::Milliseconds(100));
    flaky.fail = false;
  });
  absl::StatusOr<NcclUniqueIdBytes> got =
      AwaitNcclId(&flaky, "c", absl::Seconds(10), FastPoll());
  heal.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, TestId(3));
  EXPECT_GT(flaky.calls.load(), 1);

  // Still failing at the timeout: DEADLINE_EXCEEDED naming the last error.
  flaky.fail = true;
  absl::Status s =
      AwaitNcclId(&flaky, "c", absl::Milliseconds(50), FastPoll()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("injected"), absl::string_view::npos) << s;
  // And a publish through it fails with the backend's error.
  EXPECT_EQ(PublishNcclId(&flaky, "c", TestId(3), absl::Seconds(1)).code(),
            absl::StatusCode::kUnavailable);
}

// A backend whose rendezvous calls fail with a fixed code.
class FailingRendezvous : public testing::ControlledBackend {
 public:
  FailingRendezvous(Backend* inner, absl::StatusCode code)
      : ControlledBackend(inner), code_(code) {}
  absl::StatusOr<std::string> GetRendezvous(absl::string_view,
                                            absl::Time) override {
    ++calls;
    return absl::Status(code_, "refused");
  }

 private:
  absl::StatusCode code_;
};

TEST_F(NcclRendezvousTest, FatalPollErrorsReturnAtOnce) {
  for (absl::StatusCode code :
       {absl::StatusCode::kUnauthenticated, absl::StatusCode::kPermissionDenied,
        absl::StatusCode::kUnimplemented}) {
    FailingRendezvous b(&backend_, code);
    const absl::Time start = absl::Now();
    absl::Status s = AwaitNcclId(&b, "c", absl::Seconds(10)).status();
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_EQ(b.calls.load(), 1);
    EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  }
}

TEST_F(NcclRendezvousTest, WrongSizedValueIsDataLoss) {
  ASSERT_TRUE(backend_
                  .PutRendezvous("nccl/c", "short", absl::Seconds(10),
                                 absl::Now() + absl::Seconds(1))
                  .ok());
  absl::Status s = AwaitNcclId(&backend_, "c", absl::Seconds(1)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

TEST_F(NcclRendezvousTest, BadArguments) {
  const NcclUniqueIdBytes id = TestId(1);
  EXPECT_EQ(PublishNcclId(nullptr, "c", id, absl::Seconds(1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PublishNcclId(&backend_, "", id, absl::Seconds(1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      PublishNcclId(&backend_, std::string(252, 'c'), id, absl::Seconds(1))
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      PublishNcclId(&backend_, std::string(251, 'c'), id, absl::Seconds(1))
          .ok());
  const uint8_t short_id[127] = {};
  EXPECT_EQ(PublishNcclId(&backend_, "c", short_id, absl::Seconds(1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PublishNcclId(&backend_, "c", id, absl::ZeroDuration()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AwaitNcclId(nullptr, "c", absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AwaitNcclId(&backend_, "", absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vqkv::client
