#include "client/peer/peer_inbox.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace vqkv::client {

void PeerInbox::DropLocked(Entry* e, absl::Status why) {
  stats_.bytes -= e->bytes;
  ++stats_.transfers_dropped;
  e->transfer = {};
  e->bytes = 0;
  e->complete = false;
  e->dropped = std::move(why);
  e->since = absl::Now();
}

void PeerInbox::ExpireLocked(absl::Time now) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    Entry& e = it->second;
    if (now - e.since <= options_.ttl) {
      ++it;
      continue;
    }
    if (e.dropped.ok()) {
      DropLocked(&e, absl::DeadlineExceededError(absl::StrCat(
                         "the peer's handoff was not loaded within ",
                         absl::FormatDuration(options_.ttl), " and expired")));
      ++it;  // its tombstone answers Take until it expires in turn
    } else {
      entries_.erase(it++);
    }
  }
}

void PeerInbox::Add(PeerMessage m) {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  const absl::Time now = absl::Now();
  ExpireLocked(now);
  auto [it, fresh] = entries_.try_emplace(m.request_id);
  Entry& e = it->second;
  // The rest of a dropped handoff is ignored: its tombstone answers Take.
  if (!e.dropped.ok()) return;
  if (e.complete) {
    // A new handoff under a request id not yet taken replaces it.
    stats_.bytes -= e.bytes;
    e = Entry{};
    fresh = true;
  }
  if (fresh) {
    e.since = now;
    e.transfer.first_block = m.first_block;
  }
  const uint32_t expected =
      e.transfer.first_block + static_cast<uint32_t>(e.transfer.blocks.size());
  if (m.first_block != expected) {
    DropLocked(&e, absl::DataLossError(
                       absl::StrCat("the peer's handoff skipped from block ",
                                    expected, " to ", m.first_block)));
    return;
  }
  uint64_t bytes = 0;
  for (const EncodedBlock& b : m.blocks) bytes += b.data.size();
  if (stats_.bytes + bytes > options_.max_bytes) {
    DropLocked(&e, absl::ResourceExhaustedError(absl::StrCat(
                       "the peer inbox is full (", options_.max_bytes,
                       " bytes); the handoff was dropped")));
    return;
  }
  e.bytes += bytes;
  stats_.bytes += bytes;
  for (EncodedBlock& b : m.blocks) e.transfer.blocks.push_back(std::move(b));
  if (m.last) {
    e.complete = true;
    ++stats_.transfers_received;
  }
}

absl::StatusOr<PeerTransfer> PeerInbox::Take(const std::string& request_id,
                                             absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto settled = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    if (closed_) return true;
    auto it = entries_.find(request_id);
    return it != entries_.end() &&
           (it->second.complete || !it->second.dropped.ok());
  };
  mu_.AwaitWithDeadline(absl::Condition(&settled), deadline);
  if (closed_) return absl::CancelledError("the peer inbox is closed");
  auto it = entries_.find(request_id);
  if (it == entries_.end() ||
      (!it->second.complete && it->second.dropped.ok())) {
    return absl::DeadlineExceededError(
        absl::StrCat("no complete handoff for request ", request_id,
                     " came from the peer in time"));
  }
  if (!it->second.dropped.ok()) {
    absl::Status why = it->second.dropped;
    entries_.erase(it);
    return why;
  }
  PeerTransfer t = std::move(it->second.transfer);
  stats_.bytes -= it->second.bytes;
  ++stats_.transfers_taken;
  entries_.erase(it);
  return t;
}

void PeerInbox::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

PeerInboxStats PeerInbox::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace vqkv::client
