// PeerInbox: the decode side's store of KV handoffs received from a prefill
// engine (peer_link.h), until the load of their request takes them. A
// request's messages (peer_message.h) accumulate until its last one; Take
// waits for that. Layer messages' slices are assembled into their blocks'
// payloads; a header-only block entry then seals its block (header, then
// the assembled payload). A block whose payload is incomplete by then (a
// layer missing) is handed over empty, and the loader takes it from the
// cache instead. Bounded: a message that would take the inbox over
// max_bytes drops its request's whole handoff, and a handoff nobody takes
// within ttl is dropped, so a decode engine that never loads a request does
// not leak it. A dropped handoff's Take answers at once (the engine then
// recomputes, or loads from the cache service what is there).
//
// Thread safety: all methods may be called from any thread.
#ifndef VQKV_CLIENT_PEER_PEER_INBOX_H_
#define VQKV_CLIENT_PEER_PEER_INBOX_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/cache_client.h"
#include "client/peer/peer_message.h"

namespace vqkv::client {

// A request's blocks from a peer: chain positions first_block, first_block
// + 1, ..., each still to be verified by the loader.
struct PeerTransfer {
  uint32_t first_block = 0;
  std::vector<EncodedBlock> blocks;
};

struct PeerInboxStats {
  int64_t transfers_received = 0;  // complete handoffs
  int64_t transfers_taken = 0;
  int64_t transfers_dropped = 0;  // over max_bytes, out of order, or expired
  uint64_t bytes = 0;             // held now
};

class PeerInbox {
 public:
  struct Options {
    uint64_t max_bytes = uint64_t{1} << 30;
    absl::Duration ttl = absl::Seconds(60);
  };
  explicit PeerInbox(const Options& options) : options_(options) {}

  // Files one message under its request id. A message that does not
  // continue its request's blocks (first_block) or would take the inbox over
  // max_bytes drops the request's handoff; the rest of a dropped handoff is
  // ignored. A message for a request whose complete handoff is not yet
  // taken starts a new handoff in its place.
  void Add(PeerMessage message);

  // Waits until `request_id`'s handoff is complete, then removes and
  // returns it. Errors: kDeadlineExceeded when it is not complete by
  // `deadline`; kResourceExhausted / kDataLoss / kDeadlineExceeded at once
  // when it was dropped (over max_bytes, out of order, expired), saying
  // which; kCancelled after Close.
  absl::StatusOr<PeerTransfer> Take(const std::string& request_id,
                                    absl::Time deadline);

  // Wakes every Take with kCancelled; later Adds are ignored.
  void Close();

  PeerInboxStats stats() const;

 private:
  // A block's payload being assembled from layer slices.
  struct Assembly {
    BlockHash hash;
    std::string payload;
    std::vector<int32_t> layers;  // received, so each counts once
    uint64_t covered = 0;         // bytes written
  };
  struct Entry {
    PeerTransfer transfer;
    bool blocks_started = false;  // a blocks message came
    absl::flat_hash_map<uint32_t, Assembly> assembling;  // by chain position
    bool complete = false;
    absl::Status dropped;  // not ok once dropped (a tombstone until ttl)
    uint64_t bytes = 0;
    absl::Time since;  // first message, or the drop
  };
  void DropLocked(Entry* e, absl::Status why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts `bytes` more for the entry, or drops its handoff (false) when
  // they would take the inbox over max_bytes.
  bool ReserveLocked(Entry* e, uint64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees an entry's assemblies.
  void ClearAssembliesLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Files a layer message's slices; false when one does not fit its block.
  bool AddSlicesLocked(Entry* e, PeerMessage* m)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  PeerInboxStats stats_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_PEER_PEER_INBOX_H_
