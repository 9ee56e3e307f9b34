#include "client/nccl/nccl_rendezvous.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace vqkv::client {
namespace {

absl::Status CheckArgs(const Backend* backend, absl::string_view channel) {
  if (backend == nullptr) {
    return absl::InvalidArgumentError("backend must not be null");
  }
  if (channel.empty() || channel.size() > kMaxNcclChannelBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("channel must be 1..", kMaxNcclChannelBytes,
                     " bytes, got ", channel.size()));
  }
  return absl::OkStatus();
}

// Poll outcomes worth another try: the id is not there yet, or the cache
// did not answer this time.
bool Retryable(absl::StatusCode code) {
  return code == absl::StatusCode::kNotFound ||
         code == absl::StatusCode::kUnavailable ||
         code == absl::StatusCode::kDeadlineExceeded;
}

}  // namespace

std::string NcclRendezvousKey(absl::string_view channel) {
  return absl::StrCat("nccl/", channel);
}

absl::Status PublishNcclId(Backend* backend, absl::string_view channel,
                           absl::Span<const uint8_t> id, absl::Duration ttl,
                           absl::Duration timeout) {
  absl::Status s = CheckArgs(backend, channel);
  if (!s.ok()) return s;
  if (id.size() != kNcclUniqueIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("an NCCL unique id is ",
                                                   kNcclUniqueIdBytes,
                                                   " bytes, got ", id.size()));
  }
  if (ttl < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError("ttl must be at least 1 ms");
  }
  const absl::string_view value(reinterpret_cast<const char*>(id.data()),
                                id.size());
  return backend->PutRendezvous(NcclRendezvousKey(channel), value, ttl,
                                absl::Now() + timeout);
}

absl::StatusOr<NcclUniqueIdBytes> AwaitNcclId(Backend* backend,
                                              absl::string_view channel,
                                              absl::Duration timeout,
                                              const NcclAwaitOptions& options) {
  absl::Status s = CheckArgs(backend, channel);
  if (!s.ok()) return s;
  const std::string key = NcclRendezvousKey(channel);
  const absl::Time deadline = absl::Now() + timeout;
  const absl::Duration max_poll =
      std::max(options.max_poll, absl::Milliseconds(1));
  absl::Duration wait =
      std::clamp(options.initial_poll, absl::Milliseconds(1), max_poll);
  absl::Status last;
  for (;;) {
    const absl::Time call_deadline =
        std::min(deadline, absl::Now() + options.call_timeout);
    absl::StatusOr<std::string> got =
        backend->GetRendezvous(key, call_deadline);
    if (got.ok()) {
      if (got->size() != kNcclUniqueIdBytes) {
        return absl::DataLossError(absl::StrCat(
            "the value under ", key, " is ", got->size(),
            " bytes, not an NCCL unique id (", kNcclUniqueIdBytes, " bytes)"));
      }
      NcclUniqueIdBytes id;
      std::memcpy(id.data(), got->data(), id.size());
      return id;
    }
    if (!Retryable(got.status().code())) return got.status();
    last = got.status();
    const absl::Time now = absl::Now();
    if (now >= deadline) break;
    absl::SleepFor(std::min(wait, deadline - now));
    wait = std::min(2 * wait, max_poll);
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "no NCCL id published on channel \"", channel, "\" within ",
      absl::FormatDuration(timeout), "; last poll: ", last.ToString()));
}

}  // namespace vqkv::client
