// A Backend over several vqkv-servers: each block lives on the R nodes of
// highest rendezvous weight for its hash (client/cluster/rendezvous.h), so
// CacheClient works on a cluster unchanged.
//
// Contract:
// - Lookup sends one batched Lookup per node (the hashes it owns, in chain
//   order) in parallel; a block is present when any owner has it.
// - Put sends each block to its R owners in parallel; a block is stored
//   when at least one owner stored it (the per-block status is then OK or
//   kAlreadyExists); failures of the other owners are counted
//   (ClusterStats::replica_put_failures), not reported.
// - Get asks each block's owners in rendezvous order, one round per replica,
//   the blocks of a round batched per node and sent in parallel; a miss or
//   an error moves the block to its next owner. For `previous_owner_window`
//   after a membership change the owners under the previous node set are
//   asked too (after the current ones), so a scale-up is no miss storm.
// - Read repair: a block a Get found on a later owner is written back, in
//   the background, to the current owners asked before it that answered
//   "not found" (one that was down when the block was stored, or its new
//   owner after a membership change), so the copies reads go to first heal
//   as they are read. Owners after the one that had it are not asked, so
//   a lost second copy stays lost until that block is stored again. At most
//   max_repair_bytes wait for the repair thread; more are dropped and
//   counted. The block's index in the Get is its chain position hint
//   (loads fetch a prefix from its first block).
// - Codebooks are registered on every node (and remembered, so a node that
//   joins or comes back gets them before its first Put) and fetched from any.
// - Rendezvous entries go to their key's owners like blocks.
// - Health: a circuit breaker per node (client/circuit_breaker.h, with
//   jitter); a node whose circuit is open is skipped without a network
//   call. A background thread probes it again after an exponential
//   backoff: the probe is the node's health check (Backend::CheckHealth,
//   grpc.health.v1 for a server), and the node is readmitted when it
//   reports SERVING. Probes never run inside a caller's request, so a
//   black-holed node costs no request its deadline, and a node that gets
//   no traffic is still readmitted (Stats, metrics). Only kUnavailable and
//   kDeadlineExceeded count as node failures.
// - Deadlines: every node call gets the caller's deadline, and the fan-out
//   returns at the deadline even if a node's call has not (it is then
//   counted as kDeadlineExceeded), so a hung node costs one deadline.
//
// Errors: Create returns ParseMembership's kInvalidArgument, or the node
// factory's error. A call-level error (kUnavailable, kDeadlineExceeded, ...)
// means no node could answer: every node asked failed, or none was healthy.
//
// Thread safety: every method may be called concurrently. Background
// threads re-resolve a DNS membership every `refresh_interval` and probe
// open circuits every `probe_tick`.
#ifndef VQKV_CLIENT_CLUSTER_CLUSTER_BACKEND_H_
#define VQKV_CLIENT_CLUSTER_CLUSTER_BACKEND_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/backend.h"
#include "client/circuit_breaker.h"
#include "client/cluster/membership.h"
#include "client/grpc/grpc_backend.h"

namespace vqkv::client::cluster {

// Opens the Backend of one node, given its "host:port".
using NodeBackendFactory =
    std::function<absl::StatusOr<std::unique_ptr<Backend>>(
        const std::string& endpoint)>;

struct ClusterBackendOptions {
  // Owners of each block (1..nodes; more than the nodes means all of them).
  int replicas = 2;
  // How often a dns:/// membership is re-resolved (0: only on
  // RefreshMembership()).
  absl::Duration refresh_interval = absl::Seconds(30);
  // How long after a membership change reads also ask the previous owners.
  absl::Duration previous_owner_window = absl::Minutes(5);
  // How often the prober looks for open circuits whose backoff has passed
  // (0: only on ProbeOpenNodes()), and the deadline of one health check.
  absl::Duration probe_tick = absl::Milliseconds(100);
  absl::Duration health_check_timeout = absl::Seconds(1);
  // Per node. Backoff: probe_interval doubling up to max_probe_interval,
  // each wait spread by `jitter`.
  CircuitBreakerOptions circuit = {.failures_to_open = 2,
                                   .probe_interval = absl::Seconds(1),
                                   .max_probe_interval = absl::Seconds(30),
                                   .jitter = 0.2};
  // Read repair (above) and the bytes of blocks that may wait for it.
  bool read_repair = true;
  uint64_t max_repair_bytes = uint64_t{64} << 20;
  // Deadline of one repair write.
  absl::Duration repair_timeout = absl::Seconds(10);
  // Settings of every node's GrpcBackend (the target is the node's).
  GrpcBackendOptions grpc;
  // Test seams: per-node backends (default NewGrpcBackend with `grpc`), the
  // DNS resolver (default SystemResolver) and the clock (default absl::Now).
  NodeBackendFactory node_factory;
  Resolver resolver;
  std::function<absl::Time()> clock;
};

// Latency buckets of NodeStats::latency_buckets: upper bounds in ms (the
// last bucket has no bound).
inline constexpr double kNodeLatencyBoundsMs[] = {1, 5, 25, 100, 500, 2500};
inline constexpr int kNodeLatencyBuckets = 7;

struct NodeStats {
  std::string endpoint;
  bool member = false;  // in the current set (else: a previous owner)
  bool circuit_open = false;
  int64_t requests = 0;       // calls sent
  int64_t errors = 0;         // calls that failed (call-level, not kNotFound)
  int64_t skipped = 0;        // calls not sent: circuit open
  int64_t health_checks = 0;  // the prober's grpc.health.v1 checks
  int64_t times_opened = 0;
  double latency_sum_ms = 0;
  int64_t latency_count = 0;
  int64_t latency_buckets[kNodeLatencyBuckets] = {};
};

struct ClusterStats {
  uint64_t membership_version = 0;
  int64_t membership_changes = 0;
  int64_t replica_put_failures = 0;  // owner writes that failed, block stored
  int64_t fallback_reads = 0;        // blocks found on a later owner
  int64_t previous_owner_reads = 0;  // of which on a previous owner
  int64_t read_repairs = 0;          // blocks written back to an owner
  int64_t read_repairs_dropped = 0;  // not written: queue full, write failed
  std::vector<NodeStats> nodes;      // current members first, then previous
};

class ClusterBackend : public Backend {
 public:
  // `server`: "host:port,host:port..." or "dns:///name:port"
  // (client/cluster/membership.h). A DNS name is resolved once here; a
  // failure leaves the cluster empty (every call kUnavailable) until a
  // refresh succeeds.
  static absl::StatusOr<std::unique_ptr<ClusterBackend>> Create(
      const std::string& server, ClusterBackendOptions options);
  ~ClusterBackend() override;

  absl::StatusOr<std::vector<bool>> Lookup(
      const storage::NamespaceSpec& ns,
      absl::Span<const storage::BlockHash> hashes, uint32_t lease_ms,
      absl::Time deadline) override;
  absl::StatusOr<std::vector<absl::Status>> Put(
      const storage::NamespaceSpec& ns, absl::Span<const PutItem> blocks,
      absl::Time deadline) override;
  absl::StatusOr<std::vector<GetItem>> Get(
      const storage::NamespaceSpec& ns,
      absl::Span<const storage::BlockHash> hashes,
      absl::Time deadline) override;
  absl::Status PutCodebook(uint64_t hash, absl::string_view data,
                           absl::Time deadline) override;
  absl::StatusOr<std::string> GetCodebook(uint64_t hash,
                                          absl::Time deadline) override;
  absl::Status PutRendezvous(absl::string_view key, absl::string_view value,
                             absl::Duration ttl, absl::Time deadline) override;
  absl::StatusOr<std::string> GetRendezvous(absl::string_view key,
                                            absl::Time deadline) override;
  // "cluster(R=2, 3 nodes: a:1 ok 10 req 0 err 0.4 ms, ...)".
  std::string Describe() const override;

  // Re-resolves the membership now (a static list never changes); a changed
  // set takes effect for the next call. Returns whether it changed.
  absl::StatusOr<bool> RefreshMembership();

  // Health-checks, one after another, every node a call can reach (the
  // members, and inside previous_owner_window the previous owners) whose
  // circuit is open and whose backoff has passed, and readmits those that
  // serve. Returns how many were readmitted. The prober thread calls it
  // every probe_tick.
  int ProbeOpenNodes();

  // Per-node counters and the cluster's.
  ClusterStats Stats() const;
  std::vector<NodeStats> NodeStatsList() const { return Stats().nodes; }

  // Waits until no read repair is queued or running, or `timeout` passed;
  // true when idle (for tests and orderly shutdowns).
  bool WaitForRepairs(absl::Duration timeout);

  // The current owners of a block, highest weight first (for tests and
  // tools).
  std::vector<std::string> OwnersOf(const storage::BlockHash& hash) const;

  struct Node;
  struct View;
  struct CodebookRegistry;

 private:
  ClusterBackend(std::unique_ptr<Membership> membership,
                 ClusterBackendOptions options);
  absl::Status ApplyMembership() ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<const View> Snapshot() const ABSL_LOCKS_EXCLUDED(mu_);
  // Whether reads still ask `view`'s previous owners (a change less than
  // previous_owner_window ago).
  bool ReadsPreviousOwners(const View& view) const;
  // Nodes to ask for `key`, in order: current owners, then (inside the
  // window) previous owners not among them.
  std::vector<Node*> ReadOrder(const View& view, absl::string_view key) const;
  // Calls `fn` every `interval` until the destructor stops the backend (the
  // refresher's and the prober's loop).
  void RunEvery(absl::Duration interval, const std::function<void()>& fn)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Time Now() const;

  // Blocks to write back to one node (read repair).
  struct Repair {
    std::shared_ptr<Node> node;
    std::shared_ptr<const storage::NamespaceSpec> ns;
    std::vector<storage::BlockHash> hashes;
    std::vector<std::string> data;
    std::vector<uint32_t> positions;
    uint64_t bytes = 0;
  };
  // Queues `repair` unless the queue would pass max_repair_bytes (then it
  // is dropped and counted).
  void EnqueueRepair(Repair repair) ABSL_LOCKS_EXCLUDED(repair_mu_);
  // The repair thread's loop: writes queued repairs until the destructor.
  void RunRepairs() ABSL_LOCKS_EXCLUDED(repair_mu_);

  const std::unique_ptr<Membership> membership_;
  const ClusterBackendOptions options_;

  mutable absl::Mutex mu_;
  std::shared_ptr<const View> view_ ABSL_GUARDED_BY(mu_);
  // Every node ever created, by endpoint (a node that left keeps its stats
  // and can come back).
  absl::flat_hash_map<std::string, std::shared_ptr<Node>> nodes_
      ABSL_GUARDED_BY(mu_);
  int64_t membership_changes_ ABSL_GUARDED_BY(mu_) = 0;
  // Codebook sets registered through this backend (shared with node calls
  // that may outlive this object).
  const std::shared_ptr<CodebookRegistry> codebooks_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;

  std::atomic<int64_t> replica_put_failures_{0};
  std::atomic<int64_t> fallback_reads_{0};
  std::atomic<int64_t> previous_owner_reads_{0};
  std::atomic<int64_t> read_repairs_{0};
  std::atomic<int64_t> read_repairs_dropped_{0};
  absl::Mutex repair_mu_;
  std::deque<Repair> repairs_ ABSL_GUARDED_BY(repair_mu_);
  uint64_t repair_bytes_ ABSL_GUARDED_BY(repair_mu_) = 0;
  bool repairing_ ABSL_GUARDED_BY(repair_mu_) = false;  // one in flight
  bool repair_stop_ ABSL_GUARDED_BY(repair_mu_) = false;
  std::unique_ptr<std::thread> refresher_;
  std::unique_ptr<std::thread> prober_;
  std::unique_ptr<std::thread> repairer_;
};

}  // namespace vqkv::client::cluster

#endif  // VQKV_CLIENT_CLUSTER_CLUSTER_BACKEND_H_
