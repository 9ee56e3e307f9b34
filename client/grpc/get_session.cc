#include "client/grpc/get_session.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace vqkv::client {
namespace {

// Completion-queue tags: only the count of completions matters.
void* const kTag = reinterpret_cast<void*>(1);

// How long a healthy session waits, when it closes, for the server to
// confirm; past it the call is cancelled (the server treats both alike).
constexpr absl::Duration kCloseWait = absl::Milliseconds(250);

}  // namespace

GetSession::GetSession(v1::KVCache::Stub* stub,
                       absl::FunctionRef<void(grpc::ClientContext*)> prepare) {
  prepare(&ctx_);
  stream_ = stub->PrepareAsyncGetBlocksSession(&ctx_, &cq_);
  stream_->StartCall(kTag);
  ++pending_;
}

GetSession::~GetSession() {
  if (started_ && !broken_ && !finished_) {
    stream_->WritesDone(kTag);
    stream_->Finish(&final_status_, kTag);
    pending_ += 2;
    finished_ = true;
    bool timed_out = false;
    (void)Await(pending_, absl::Now() + kCloseWait, &timed_out);
  }
  if (pending_ > 0 || !finished_) ctx_.TryCancel();
  if (!finished_) {
    stream_->Finish(&final_status_, kTag);
    ++pending_;
  }
  // Cancelled operations complete at once.
  void* tag = nullptr;
  bool ok = false;
  while (pending_ > 0 && cq_.Next(&tag, &ok)) --pending_;
  cq_.Shutdown();
  while (cq_.Next(&tag, &ok)) {
  }
}

bool GetSession::Await(int n, absl::Time deadline, bool* timed_out) {
  bool all_ok = true;
  const auto until = absl::ToChronoTime(deadline);
  for (int i = 0; i < n; ++i) {
    void* tag = nullptr;
    bool ok = false;
    const grpc::CompletionQueue::NextStatus next =
        deadline == absl::InfiniteFuture()
            ? (cq_.Next(&tag, &ok) ? grpc::CompletionQueue::GOT_EVENT
                                   : grpc::CompletionQueue::SHUTDOWN)
            : cq_.AsyncNext(&tag, &ok, until);
    if (next != grpc::CompletionQueue::GOT_EVENT) {
      *timed_out = next == grpc::CompletionQueue::TIMEOUT;
      return false;
    }
    --pending_;
    all_ok = all_ok && ok;
  }
  return all_ok;
}

absl::Status GetSession::RoundTrip(const v1::GetBlocksRequest& req,
                                   v1::GetBlocksResponse* resp,
                                   absl::Time deadline) {
  if (broken_) {
    return absl::FailedPreconditionError("GetBlocksSession: session broken");
  }
  bool timed_out = false;
  // The call's start shares its operation set with writes: the first write
  // waits for it (it completes locally, without a round trip).
  if (!started_ && Await(pending_, deadline, &timed_out)) started_ = true;
  if (started_) {
    stream_->Write(req, kTag);
    stream_->Read(resp, kTag);
    pending_ += 2;
    if (Await(pending_, deadline, &timed_out)) return absl::OkStatus();
  }
  broken_ = true;
  if (timed_out) {
    return absl::DeadlineExceededError(
        "GetBlocksSession: no answer before the deadline");
  }
  return FinishStatus();
}

absl::Status GetSession::FinishStatus() {
  // A failed read or write means the call is over: the status is there or
  // about to be. The rest of the session's operations complete first.
  bool timed_out = false;
  if (pending_ > 0 && !Await(pending_, absl::Now() + kCloseWait, &timed_out) &&
      timed_out) {
    return absl::UnavailableError("GetBlocksSession: the call did not end");
  }
  stream_->Finish(&final_status_, kTag);
  ++pending_;
  finished_ = true;
  if (!Await(1, absl::Now() + kCloseWait, &timed_out) && timed_out) {
    return absl::UnavailableError("GetBlocksSession: no final status");
  }
  if (final_status_.ok()) {
    return absl::UnavailableError(
        "GetBlocksSession: the server ended the session");
  }
  return absl::Status(
      static_cast<absl::StatusCode>(final_status_.error_code()),
      absl::StrCat("GetBlocksSession: ", final_status_.error_message()));
}

}  // namespace vqkv::client
