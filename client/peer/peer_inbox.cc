#include "client/peer/peer_inbox.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace vqkv::client {

void PeerInbox::DropLocked(Entry* e, absl::Status why) {
  stats_.bytes -= e->bytes;
  ++stats_.transfers_dropped;
  e->transfer = {};
  e->assembling.clear();
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
  if (fresh) e.since = now;
  if (m.is_layer) {
    uint64_t bytes = 0;
    for (const PeerSlice& sl : m.slices) {
      if (!e.assembling.contains(sl.chain_position)) bytes += sl.payload_bytes;
    }
    if (!ReserveLocked(&e, bytes)) return;
    if (!AddSlicesLocked(&e, &m)) {
      DropLocked(&e, absl::DataLossError(
                         "a layer slice of the peer's handoff does not fit "
                         "the block it names"));
    }
    return;
  }
  if (!e.blocks_started) {
    e.blocks_started = true;
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
  // Header-only blocks take their assembled payloads (whose bytes are
  // already counted).
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    if (i >= m.header_only.size() || !m.header_only[i]) continue;
    EncodedBlock& b = m.blocks[i];
    auto a = e.assembling.find(b.chain_position);
    if (a != e.assembling.end() && a->second.hash == b.hash &&
        a->second.covered == a->second.payload.size()) {
      b.data += a->second.payload;
    } else {
      b.data.clear();  // incomplete: the loader fetches it from the cache
    }
    if (a != e.assembling.end()) {
      e.bytes -= a->second.payload.size();
      stats_.bytes -= a->second.payload.size();
      e.assembling.erase(a);
    }
  }
  uint64_t bytes = 0;
  for (const EncodedBlock& b : m.blocks) bytes += b.data.size();
  if (!ReserveLocked(&e, bytes)) return;
  for (EncodedBlock& b : m.blocks) e.transfer.blocks.push_back(std::move(b));
  if (m.last) {
    e.complete = true;
    ++stats_.transfers_received;
    ClearAssembliesLocked(&e);  // slices of blocks the handoff did not seal
  }
}

bool PeerInbox::ReserveLocked(Entry* e, uint64_t bytes) {
  if (stats_.bytes + bytes > options_.max_bytes) {
    DropLocked(e, absl::ResourceExhaustedError(absl::StrCat(
                      "the peer inbox is full (", options_.max_bytes,
                      " bytes); the handoff was dropped")));
    return false;
  }
  e->bytes += bytes;
  stats_.bytes += bytes;
  return true;
}

void PeerInbox::ClearAssembliesLocked(Entry* e) {
  for (const auto& [position, a] : e->assembling) {
    e->bytes -= a.payload.size();
    stats_.bytes -= a.payload.size();
  }
  e->assembling.clear();
}

bool PeerInbox::AddSlicesLocked(Entry* e, PeerMessage* m) {
  for (PeerSlice& sl : m->slices) {
    auto [it, fresh] = e->assembling.try_emplace(sl.chain_position);
    Assembly& a = it->second;
    if (fresh) {
      a.hash = sl.hash;
      a.payload.assign(sl.payload_bytes, '\0');
    }
    if (a.hash != sl.hash || a.payload.size() != sl.payload_bytes ||
        uint64_t{sl.key_offset} + sl.key.size() > a.payload.size() ||
        uint64_t{sl.value_offset} + sl.value.size() > a.payload.size() ||
        uint64_t{sl.refine_offset} + sl.refine.size() > a.payload.size()) {
      return false;
    }
    // A layer sent twice writes the same bytes again; it counts once.
    if (std::find(a.layers.begin(), a.layers.end(), m->layer) !=
        a.layers.end()) {
      continue;
    }
    a.layers.push_back(m->layer);
    a.payload.replace(sl.key_offset, sl.key.size(), sl.key);
    a.payload.replace(sl.value_offset, sl.value.size(), sl.value);
    a.payload.replace(sl.refine_offset, sl.refine.size(), sl.refine);
    a.covered += sl.key.size() + sl.value.size() + sl.refine.size();
  }
  return true;
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
