#include "client/cluster/cluster_backend.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/cluster/rendezvous.h"

namespace vqkv::client::cluster {

struct ClusterBackend::Node {
  Node(std::string ep, std::unique_ptr<Backend> b,
       const CircuitBreakerOptions& c)
      : endpoint(std::move(ep)), backend(std::move(b)), breaker(c) {}

  const std::string endpoint;
  const std::unique_ptr<Backend> backend;
  CircuitBreaker breaker;
  std::atomic<int64_t> requests{0};
  std::atomic<int64_t> errors{0};
  std::atomic<int64_t> skipped{0};
  std::atomic<int64_t> health_checks{0};
  std::atomic<int64_t> latency_us{0};
  std::atomic<int64_t> latency_count{0};
  std::atomic<int64_t> buckets[kNodeLatencyBuckets] = {};
  absl::Mutex mu;
  // Codebook sets this node acknowledged; cleared when it fails (it may
  // come back empty).
  absl::flat_hash_set<uint64_t> codebooks ABSL_GUARDED_BY(mu);
};

struct ClusterBackend::View {
  uint64_t version = 0;
  RendezvousRing ring{{}};
  std::vector<std::shared_ptr<Node>> nodes;  // parallel to ring.nodes()
  RendezvousRing prev_ring{{}};
  std::vector<std::shared_ptr<Node>> prev_nodes;
  absl::Time changed_at = absl::InfinitePast();
};

struct ClusterBackend::CodebookRegistry {
  absl::Mutex mu;
  absl::flat_hash_map<uint64_t, std::shared_ptr<const std::string>> sets
      ABSL_GUARDED_BY(mu);
};

namespace {

using Node = ClusterBackend::Node;
using CodebookRegistry = ClusterBackend::CodebookRegistry;

const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

// A failure that says the node is unhealthy (not a rejected request).
bool IsNodeFailure(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s);
}

absl::string_view KeyOf(const storage::BlockHash& h) { return h.view(); }

// Calls `fn` on `node` unless its circuit is open; records the outcome,
// latency and health. A skipped call is kUnavailable. An open circuit is
// probed by ProbeOpenNodes, never here: the caller's request does not wait
// for a health check.
template <typename R, typename Fn>
R CallNode(Node* node, Fn&& fn) {
  if (node->breaker.open()) {
    ++node->skipped;
    return R(absl::UnavailableError(
        absl::StrCat(node->endpoint, ": circuit open (node unhealthy)")));
  }
  ++node->requests;
  const absl::Time start = absl::Now();
  R r = fn();
  const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  node->latency_us += static_cast<int64_t>(ms * 1000);
  ++node->latency_count;
  int b = 0;
  while (b < kNodeLatencyBuckets - 1 && ms > kNodeLatencyBoundsMs[b]) ++b;
  ++node->buckets[b];
  const absl::Status s = StatusOf(r);
  if (!s.ok() && !absl::IsNotFound(s)) ++node->errors;  // a miss is no error
  const bool failed = IsNodeFailure(s);
  node->breaker.Record(!failed);
  if (failed) {
    absl::MutexLock lock(&node->mu);
    node->codebooks.clear();
  }
  return r;
}

// Registers the known codebook sets `node` lacks; best effort (a failure
// shows in the node's stats and in the Put that follows).
void EnsureCodebooks(CodebookRegistry* registry, Node* node,
                     absl::Time deadline) {
  std::vector<std::pair<uint64_t, std::shared_ptr<const std::string>>> todo;
  {
    absl::MutexLock lock(&registry->mu);
    absl::MutexLock node_lock(&node->mu);
    for (const auto& [hash, data] : registry->sets) {
      if (!node->codebooks.contains(hash)) todo.emplace_back(hash, data);
    }
  }
  for (const auto& [hash, data] : todo) {
    // Named captures: clang before 16 cannot capture structured bindings.
    absl::Status s =
        CallNode<absl::Status>(node, [&, &hash = hash, &data = data] {
          return node->backend->PutCodebook(hash, *data, deadline);
        });
    if (!s.ok()) return;
    absl::MutexLock lock(&node->mu);
    node->codebooks.insert(hash);
  }
}

// Runs every task on its own thread and waits for all of them, but not
// past `deadline` (plus a little for the node's own deadline error to
// arrive): a task still running then is answered kDeadlineExceeded and
// left to finish on its own. Tasks must own what they use.
template <typename R>
std::vector<R> FanOut(std::vector<std::function<R()>> tasks,
                      const std::vector<Node*>& nodes, absl::Time deadline) {
  struct State {
    absl::Mutex mu;
    std::vector<std::optional<R>> results ABSL_GUARDED_BY(mu);
    size_t remaining ABSL_GUARDED_BY(mu) = 0;
    bool Done() const ABSL_SHARED_LOCKS_REQUIRED(mu) { return remaining == 0; }
  };
  auto state = std::make_shared<State>();
  {
    absl::MutexLock lock(&state->mu);
    state->results.resize(tasks.size());
    state->remaining = tasks.size();
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    std::thread([state, i, task = std::move(tasks[i])]() {
      R r = task();
      absl::MutexLock lock(&state->mu);
      state->results[i].emplace(std::move(r));
      --state->remaining;
    }).detach();
  }
  std::vector<R> out;
  out.reserve(tasks.size());
  absl::MutexLock lock(&state->mu);
  state->mu.AwaitWithDeadline(absl::Condition(state.get(), &State::Done),
                              deadline + absl::Milliseconds(50));
  for (size_t i = 0; i < state->results.size(); ++i) {
    if (state->results[i].has_value()) {
      out.push_back(std::move(*state->results[i]));
    } else {
      nodes[i]->breaker.Record(false);
      out.push_back(R(absl::DeadlineExceededError(
          absl::StrCat(nodes[i]->endpoint, ": no answer by the deadline"))));
    }
  }
  return out;
}

// Blocks (by index) grouped per node, in first-use order.
struct Groups {
  std::vector<Node*> nodes;
  std::vector<std::vector<int>> items;
  void Add(Node* n, int item) {
    for (size_t g = 0; g < nodes.size(); ++g) {
      if (nodes[g] == n) {
        items[g].push_back(item);
        return;
      }
    }
    nodes.push_back(n);
    items.push_back({item});
  }
};

absl::Status NoNodeError(const std::optional<absl::Status>& first) {
  if (first.has_value()) return *first;
  return absl::UnavailableError("cluster: no node to ask");
}

// Asks `nodes` one after the other: the first success, else the most telling
// error (a miss over a transient failure).
template <typename Fn>
absl::StatusOr<std::string> FirstAnswer(const std::vector<Node*>& nodes,
                                        Fn&& ask) {
  std::optional<absl::Status> error;
  for (Node* n : nodes) {
    absl::StatusOr<std::string> r =
        CallNode<absl::StatusOr<std::string>>(n, [&] { return ask(n); });
    if (r.ok()) return r;
    if (!error.has_value() || absl::IsNotFound(r.status())) error = r.status();
  }
  return NoNodeError(error);
}

// OK when any call succeeded, else the first call's error.
absl::Status AnyOk(const std::vector<absl::Status>& results) {
  for (const absl::Status& s : results) {
    if (s.ok()) return s;
  }
  return results.empty() ? NoNodeError(std::nullopt) : results.front();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClusterBackend>> ClusterBackend::Create(
    const std::string& server, ClusterBackendOptions options) {
  absl::StatusOr<MembershipSpec> spec = ParseMembership(server);
  if (!spec.ok()) return spec.status();
  if (options.replicas < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("replicas must be >= 1, got ", options.replicas));
  }
  if (!options.node_factory) {
    GrpcBackendOptions grpc = options.grpc;
    options.node_factory = [grpc](const std::string& endpoint) {
      GrpcBackendOptions o = grpc;
      o.target = endpoint;
      return NewGrpcBackend(o);
    };
  }
  if (options.circuit.clock == nullptr && options.clock) {
    options.circuit.clock = options.clock;
  }
  auto membership = std::make_unique<Membership>(*std::move(spec),
                                                 std::move(options.resolver));
  const bool dns = membership->is_dns();
  if (dns) (void)membership->Refresh();  // a failure leaves it empty
  std::unique_ptr<ClusterBackend> backend(
      new ClusterBackend(std::move(membership), std::move(options)));
  if (absl::Status s = backend->ApplyMembership(); !s.ok()) return s;
  ClusterBackend* self = backend.get();
  if (dns && backend->options_.refresh_interval > absl::ZeroDuration()) {
    backend->refresher_ = std::make_unique<std::thread>([self] {
      self->RunEvery(self->options_.refresh_interval,
                     [self] { (void)self->RefreshMembership(); });
    });
  }
  if (backend->options_.probe_tick > absl::ZeroDuration()) {
    backend->prober_ = std::make_unique<std::thread>([self] {
      self->RunEvery(self->options_.probe_tick,
                     [self] { (void)self->ProbeOpenNodes(); });
    });
  }
  if (backend->options_.read_repair) {
    backend->repairer_ =
        std::make_unique<std::thread>([self] { self->RunRepairs(); });
  }
  return backend;
}

ClusterBackend::ClusterBackend(std::unique_ptr<Membership> membership,
                               ClusterBackendOptions options)
    : membership_(std::move(membership)),
      options_(std::move(options)),
      view_(std::make_shared<View>()),
      codebooks_(std::make_shared<CodebookRegistry>()) {}

ClusterBackend::~ClusterBackend() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (refresher_ != nullptr) refresher_->join();
  if (prober_ != nullptr) prober_->join();
  {
    absl::MutexLock lock(&repair_mu_);
    repair_stop_ = true;
  }
  if (repairer_ != nullptr) repairer_->join();
}

void ClusterBackend::EnqueueRepair(Repair repair) {
  const int64_t blocks = static_cast<int64_t>(repair.hashes.size());
  absl::MutexLock lock(&repair_mu_);
  if (repair_stop_ ||
      repair_bytes_ + repair.bytes > options_.max_repair_bytes) {
    read_repairs_dropped_ += blocks;
    return;
  }
  repair_bytes_ += repair.bytes;
  repairs_.push_back(std::move(repair));
}

void ClusterBackend::RunRepairs() {
  for (;;) {
    Repair r;
    {
      absl::MutexLock lock(&repair_mu_);
      repair_mu_.Await(absl::Condition(
          +[](ClusterBackend* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->repair_mu_) {
            return b->repair_stop_ || !b->repairs_.empty();
          },
          this));
      if (repair_stop_) {
        for (const Repair& left : repairs_) {
          read_repairs_dropped_ += static_cast<int64_t>(left.hashes.size());
        }
        repairs_.clear();
        repair_bytes_ = 0;
        return;
      }
      r = std::move(repairs_.front());
      repairs_.pop_front();
      repairing_ = true;
    }
    const absl::Time deadline = absl::Now() + options_.repair_timeout;
    EnsureCodebooks(codebooks_.get(), r.node.get(), deadline);
    std::vector<PutItem> items;
    for (size_t i = 0; i < r.hashes.size(); ++i) {
      items.push_back(PutItem{r.hashes[i], r.data[i], r.positions[i]});
    }
    Node* node = r.node.get();
    absl::StatusOr<std::vector<absl::Status>> put =
        CallNode<absl::StatusOr<std::vector<absl::Status>>>(
            node, [&] { return node->backend->Put(*r.ns, items, deadline); });
    for (size_t i = 0; i < items.size(); ++i) {
      const bool stored = put.ok() && put->size() == items.size() &&
                          ((*put)[i].ok() || absl::IsAlreadyExists((*put)[i]));
      ++(stored ? read_repairs_ : read_repairs_dropped_);
    }
    absl::MutexLock lock(&repair_mu_);
    repair_bytes_ -= r.bytes;
    repairing_ = false;
  }
}

bool ClusterBackend::WaitForRepairs(absl::Duration timeout) {
  absl::MutexLock lock(&repair_mu_);
  return repair_mu_.AwaitWithTimeout(
      absl::Condition(
          +[](ClusterBackend* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->repair_mu_) {
            return b->repairs_.empty() && !b->repairing_;
          },
          this),
      timeout);
}

absl::Time ClusterBackend::Now() const {
  return options_.clock ? options_.clock() : absl::Now();
}

void ClusterBackend::RunEvery(absl::Duration interval,
                              const std::function<void()>& fn) {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), interval);
      if (stop_) return;
    }
    fn();
  }
}

int ClusterBackend::ProbeOpenNodes() {
  // Only nodes a call can reach: the members, and the previous owners while
  // reads still ask them. A node that left is probed again once it is back.
  std::shared_ptr<const View> view = Snapshot();
  std::vector<std::shared_ptr<Node>> nodes = view->nodes;
  if (ReadsPreviousOwners(*view)) {
    for (const std::shared_ptr<Node>& n : view->prev_nodes) {
      if (std::find(nodes.begin(), nodes.end(), n) == nodes.end()) {
        nodes.push_back(n);
      }
    }
  }
  int readmitted = 0;
  for (const std::shared_ptr<Node>& n : nodes) {
    // Allow() on an open circuit answers true once per backoff interval.
    if (!n->breaker.open() || !n->breaker.Allow()) continue;
    ++n->health_checks;
    const absl::Status health =
        n->backend->CheckHealth(absl::Now() + options_.health_check_timeout);
    n->breaker.Record(health.ok());
    if (health.ok()) ++readmitted;
  }
  return readmitted;
}

absl::StatusOr<bool> ClusterBackend::RefreshMembership() {
  absl::StatusOr<bool> changed = membership_->Refresh();
  if (!changed.ok()) return changed.status();
  if (*changed) {
    if (absl::Status s = ApplyMembership(); !s.ok()) return s;
  }
  return changed;
}

absl::Status ClusterBackend::ApplyMembership() {
  const std::vector<std::string> endpoints = membership_->Current();
  absl::MutexLock lock(&mu_);
  if (view_->ring.nodes() == endpoints) return absl::OkStatus();
  auto next = std::make_shared<View>();
  next->version = membership_->version();
  std::vector<std::string> made;
  absl::Status first_error;
  for (const std::string& ep : endpoints) {
    auto it = nodes_.find(ep);
    if (it == nodes_.end()) {
      absl::StatusOr<std::unique_ptr<Backend>> b = options_.node_factory(ep);
      if (!b.ok()) {
        if (first_error.ok()) first_error = b.status();
        continue;
      }
      it = nodes_
               .emplace(ep, std::make_shared<Node>(ep, *std::move(b),
                                                   options_.circuit))
               .first;
    }
    made.push_back(ep);
  }
  if (!first_error.ok() && !membership_->is_dns()) return first_error;
  next->ring = RendezvousRing(made);
  for (const std::string& ep : next->ring.nodes()) {
    next->nodes.push_back(nodes_.at(ep));
  }
  if (!view_->nodes.empty()) {
    next->prev_ring = view_->ring;
    next->prev_nodes = view_->nodes;
    next->changed_at = Now();
    ++membership_changes_;
  }
  view_ = std::move(next);
  return absl::OkStatus();
}

std::shared_ptr<const ClusterBackend::View> ClusterBackend::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return view_;
}

bool ClusterBackend::ReadsPreviousOwners(const View& view) const {
  return !view.prev_nodes.empty() &&
         Now() < view.changed_at + options_.previous_owner_window;
}

std::vector<Node*> ClusterBackend::ReadOrder(const View& view,
                                             absl::string_view key) const {
  std::vector<Node*> out;
  for (int i : view.ring.Owners(key, options_.replicas)) {
    out.push_back(view.nodes[i].get());
  }
  if (ReadsPreviousOwners(view)) {
    for (int i : view.prev_ring.Owners(key, options_.replicas)) {
      Node* n = view.prev_nodes[i].get();
      if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
    }
  }
  return out;
}

std::vector<std::string> ClusterBackend::OwnersOf(
    const storage::BlockHash& hash) const {
  std::shared_ptr<const View> view = Snapshot();
  std::vector<std::string> out;
  for (int i : view->ring.Owners(KeyOf(hash), options_.replicas)) {
    out.push_back(view->ring.nodes()[i]);
  }
  return out;
}

absl::StatusOr<std::vector<bool>> ClusterBackend::Lookup(
    const storage::NamespaceSpec& ns,
    absl::Span<const storage::BlockHash> hashes, uint32_t lease_ms,
    absl::Time deadline) {
  std::shared_ptr<const View> view = Snapshot();
  std::vector<bool> present(hashes.size(), false);
  if (hashes.empty()) return present;
  Groups groups;
  for (size_t i = 0; i < hashes.size(); ++i) {
    for (Node* n : ReadOrder(*view, KeyOf(hashes[i]))) {
      groups.Add(n, static_cast<int>(i));
    }
  }
  auto shared_ns = std::make_shared<const storage::NamespaceSpec>(ns);
  std::vector<std::function<absl::StatusOr<std::vector<bool>>()>> tasks;
  for (size_t g = 0; g < groups.nodes.size(); ++g) {
    std::vector<storage::BlockHash> sub;
    for (int i : groups.items[g]) sub.push_back(hashes[i]);
    Node* n = groups.nodes[g];
    tasks.push_back(
        [n, view, shared_ns, sub = std::move(sub), lease_ms, deadline] {
          return CallNode<absl::StatusOr<std::vector<bool>>>(n, [&] {
            return n->backend->Lookup(*shared_ns, sub, lease_ms, deadline);
          });
        });
  }
  std::vector<absl::StatusOr<std::vector<bool>>> results =
      FanOut(std::move(tasks), groups.nodes, deadline);
  std::optional<absl::Status> first_error;
  bool any_ok = false;
  for (size_t g = 0; g < results.size(); ++g) {
    const auto& r = results[g];
    if (!r.ok() || r->size() != groups.items[g].size()) {
      if (!first_error.has_value()) {
        first_error = r.ok() ? absl::InternalError(absl::StrCat(
                                   groups.nodes[g]->endpoint,
                                   ": lookup answered the wrong count"))
                             : r.status();
      }
      continue;
    }
    any_ok = true;
    for (size_t j = 0; j < r->size(); ++j) {
      if ((*r)[j]) present[groups.items[g][j]] = true;
    }
  }
  if (!any_ok) return NoNodeError(first_error);
  return present;
}

absl::StatusOr<std::vector<absl::Status>> ClusterBackend::Put(
    const storage::NamespaceSpec& ns, absl::Span<const PutItem> blocks,
    absl::Time deadline) {
  std::shared_ptr<const View> view = Snapshot();
  std::vector<absl::Status> out(blocks.size(), absl::OkStatus());
  if (blocks.empty()) return out;
  if (view->nodes.empty()) return NoNodeError(std::nullopt);
  // One copy of the bytes, shared by the node calls (which may outlive
  // this call when a node hangs past the deadline).
  struct Owned {
    storage::NamespaceSpec ns;
    std::vector<std::string> data;
    std::vector<storage::BlockHash> hashes;
    std::vector<uint32_t> positions;
  };
  auto owned = std::make_shared<Owned>();
  owned->ns = ns;
  Groups groups;
  for (size_t i = 0; i < blocks.size(); ++i) {
    owned->data.emplace_back(blocks[i].data);
    owned->hashes.push_back(blocks[i].hash);
    owned->positions.push_back(blocks[i].chain_position);
    for (int o : view->ring.Owners(KeyOf(blocks[i].hash), options_.replicas)) {
      groups.Add(view->nodes[o].get(), static_cast<int>(i));
    }
  }
  std::vector<std::function<absl::StatusOr<std::vector<absl::Status>>()>> tasks;
  for (size_t g = 0; g < groups.nodes.size(); ++g) {
    Node* n = groups.nodes[g];
    tasks.push_back([registry = codebooks_, n, view, owned,
                     items = groups.items[g], deadline]() {
      EnsureCodebooks(registry.get(), n, deadline);
      std::vector<PutItem> sub;
      sub.reserve(items.size());
      for (int i : items) {
        sub.push_back(
            PutItem{owned->hashes[i], owned->data[i], owned->positions[i]});
      }
      return CallNode<absl::StatusOr<std::vector<absl::Status>>>(
          n, [&] { return n->backend->Put(owned->ns, sub, deadline); });
    });
  }
  std::vector<absl::StatusOr<std::vector<absl::Status>>> results =
      FanOut(std::move(tasks), groups.nodes, deadline);
  // Per block: stored somewhere (OK beats ALREADY_EXISTS), else the first
  // owner's error; and how many owners failed.
  std::vector<int> stored(blocks.size(), 0), fresh(blocks.size(), 0),
      failed(blocks.size(), 0);
  std::vector<std::optional<absl::Status>> error(blocks.size());
  std::optional<absl::Status> first_error;
  bool any_ok = false;
  for (size_t g = 0; g < results.size(); ++g) {
    const auto& r = results[g];
    const bool call_ok = r.ok() && r->size() == groups.items[g].size();
    if (!call_ok && !first_error.has_value()) {
      first_error = r.ok() ? absl::InternalError("put answered the wrong count")
                           : r.status();
    }
    any_ok = any_ok || call_ok;
    for (size_t j = 0; j < groups.items[g].size(); ++j) {
      const int i = groups.items[g][j];
      const absl::Status s = call_ok ? (*r)[j] : r.status();
      if (s.ok() || absl::IsAlreadyExists(s)) {
        ++stored[i];
        if (s.ok()) ++fresh[i];
      } else {
        ++failed[i];
        if (!error[i].has_value()) error[i] = s;
      }
    }
  }
  if (!any_ok) return NoNodeError(first_error);
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (stored[i] > 0) {
      replica_put_failures_ += failed[i];
      out[i] = fresh[i] > 0 ? absl::OkStatus()
                            : absl::AlreadyExistsError("block already stored");
    } else {
      out[i] = error[i].value_or(absl::UnavailableError("no owner answered"));
    }
  }
  return out;
}

absl::StatusOr<std::vector<GetItem>> ClusterBackend::Get(
    const storage::NamespaceSpec& ns,
    absl::Span<const storage::BlockHash> hashes, absl::Time deadline) {
  std::shared_ptr<const View> view = Snapshot();
  const size_t n = hashes.size();
  std::vector<GetItem> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.emplace_back(absl::NotFoundError("block not found on any owner"));
  }
  if (n == 0) return out;
  std::vector<std::vector<Node*>> order(n);
  std::vector<size_t> current_owners(n);
  std::vector<size_t> next(n, 0);
  std::vector<bool> done(n, false), answered(n, false);
  for (size_t i = 0; i < n; ++i) {
    order[i] = ReadOrder(*view, KeyOf(hashes[i]));
    current_owners[i] = std::min<size_t>(
        view->ring.Owners(KeyOf(hashes[i]), options_.replicas).size(),
        order[i].size());
  }
  auto shared_ns = std::make_shared<const storage::NamespaceSpec>(ns);
  absl::flat_hash_set<Node*> failed_nodes;
  std::optional<absl::Status> first_error;
  bool any_ok = false;
  // Read repair: current owners that answered "not found" for a block, and
  // the copies to write back to each node once a later owner had it.
  std::vector<std::vector<Node*>> missed(n);
  absl::flat_hash_map<Node*, Repair> repairs;
  auto plan_repair = [&](size_t i, const std::string& data) {
    for (Node* m : missed[i]) {
      Repair& r = repairs[m];
      if (r.node == nullptr) {
        for (const std::shared_ptr<Node>& sp : view->nodes) {
          if (sp.get() == m) r.node = sp;
        }
        r.ns = shared_ns;
      }
      if (r.node == nullptr) continue;  // not a member (cannot happen)
      r.hashes.push_back(hashes[i]);
      r.data.push_back(data);
      r.positions.push_back(static_cast<uint32_t>(i));
      r.bytes += data.size();
    }
  };
  while (absl::Now() < deadline) {
    Groups groups;
    for (size_t i = 0; i < n; ++i) {
      if (done[i]) continue;
      while (next[i] < order[i].size() &&
             failed_nodes.contains(order[i][next[i]])) {
        ++next[i];
      }
      if (next[i] < order[i].size()) {
        groups.Add(order[i][next[i]], static_cast<int>(i));
      }
    }
    if (groups.nodes.empty()) break;
    std::vector<std::function<absl::StatusOr<std::vector<GetItem>>()>> tasks;
    for (size_t g = 0; g < groups.nodes.size(); ++g) {
      std::vector<storage::BlockHash> sub;
      for (int i : groups.items[g]) sub.push_back(hashes[i]);
      Node* node = groups.nodes[g];
      tasks.push_back([node, view, shared_ns, sub = std::move(sub), deadline] {
        return CallNode<absl::StatusOr<std::vector<GetItem>>>(node, [&] {
          return node->backend->Get(*shared_ns, sub, deadline);
        });
      });
    }
    std::vector<absl::StatusOr<std::vector<GetItem>>> results =
        FanOut(std::move(tasks), groups.nodes, deadline);
    for (size_t g = 0; g < results.size(); ++g) {
      auto& r = results[g];
      const std::vector<int>& items = groups.items[g];
      if (!r.ok() || r->size() != items.size()) {
        if (!first_error.has_value()) {
          first_error = r.ok() ? absl::InternalError("get answered wrong count")
                               : r.status();
        }
        failed_nodes.insert(groups.nodes[g]);
        continue;
      }
      any_ok = true;
      for (size_t j = 0; j < items.size(); ++j) {
        const int i = items[j];
        GetItem& item = (*r)[j];
        if (item.ok()) {
          if (next[i] > 0) ++fallback_reads_;
          if (next[i] >= current_owners[i]) ++previous_owner_reads_;
          if (options_.read_repair && !missed[i].empty()) {
            plan_repair(i, *item);
          }
          out[i] = std::move(item);
          done[i] = true;
          continue;
        }
        if (absl::IsNotFound(item.status()) && next[i] < current_owners[i]) {
          missed[i].push_back(groups.nodes[g]);
        }
        // Keep the most telling answer: a miss over a transient error.
        if (!answered[i] || !absl::IsNotFound(out[i].status())) {
          out[i] = item.status();
        }
        answered[i] = true;
        ++next[i];
      }
    }
  }
  for (auto& [node, repair] : repairs) {
    if (repair.node != nullptr) EnqueueRepair(std::move(repair));
  }
  if (!any_ok) return NoNodeError(first_error);
  return out;
}

absl::Status ClusterBackend::PutCodebook(uint64_t hash, absl::string_view data,
                                         absl::Time deadline) {
  auto owned = std::make_shared<const std::string>(data);
  {
    absl::MutexLock lock(&codebooks_->mu);
    codebooks_->sets[hash] = owned;
  }
  std::shared_ptr<const View> view = Snapshot();
  if (view->nodes.empty()) return NoNodeError(std::nullopt);
  std::vector<Node*> nodes;
  std::vector<std::function<absl::Status()>> tasks;
  for (const std::shared_ptr<Node>& node : view->nodes) {
    Node* n = node.get();
    nodes.push_back(n);
    tasks.push_back([n, view, owned, hash, deadline] {
      absl::Status s = CallNode<absl::Status>(
          n, [&] { return n->backend->PutCodebook(hash, *owned, deadline); });
      if (s.ok()) {
        absl::MutexLock lock(&n->mu);
        n->codebooks.insert(hash);
      }
      return s;
    });
  }
  return AnyOk(FanOut(std::move(tasks), nodes, deadline));
}

absl::StatusOr<std::string> ClusterBackend::GetCodebook(uint64_t hash,
                                                        absl::Time deadline) {
  std::shared_ptr<const View> view = Snapshot();
  // Every node holds the sets: ask them in rendezvous order of the hash.
  std::vector<Node*> order;
  for (int i : view->ring.Owners(CodebookKey(hash), 0)) {
    order.push_back(view->nodes[i].get());
  }
  return FirstAnswer(
      order, [&](Node* n) { return n->backend->GetCodebook(hash, deadline); });
}

absl::Status ClusterBackend::PutRendezvous(absl::string_view key,
                                           absl::string_view value,
                                           absl::Duration ttl,
                                           absl::Time deadline) {
  std::shared_ptr<const View> view = Snapshot();
  if (view->nodes.empty()) return NoNodeError(std::nullopt);
  auto k = std::make_shared<const std::string>(key);
  auto v = std::make_shared<const std::string>(value);
  std::vector<Node*> nodes;
  std::vector<std::function<absl::Status()>> tasks;
  for (int i : view->ring.Owners(key, options_.replicas)) {
    Node* n = view->nodes[i].get();
    nodes.push_back(n);
    tasks.push_back([n, view, k, v, ttl, deadline] {
      return CallNode<absl::Status>(
          n, [&] { return n->backend->PutRendezvous(*k, *v, ttl, deadline); });
    });
  }
  return AnyOk(FanOut(std::move(tasks), nodes, deadline));
}

absl::StatusOr<std::string> ClusterBackend::GetRendezvous(absl::string_view key,
                                                          absl::Time deadline) {
  std::shared_ptr<const View> view = Snapshot();
  return FirstAnswer(ReadOrder(*view, key), [&](Node* n) {
    return n->backend->GetRendezvous(key, deadline);
  });
}

ClusterStats ClusterBackend::Stats() const {
  ClusterStats out;
  std::shared_ptr<const View> view;
  std::vector<std::shared_ptr<Node>> others;
  {
    absl::MutexLock lock(&mu_);
    view = view_;
    out.membership_changes = membership_changes_;
    for (const auto& [ep, node] : nodes_) {
      if (std::find(view->nodes.begin(), view->nodes.end(), node) ==
          view->nodes.end()) {
        others.push_back(node);
      }
    }
  }
  std::sort(others.begin(), others.end(), [](const auto& a, const auto& b) {
    return a->endpoint < b->endpoint;
  });
  out.membership_version = view->version;
  out.replica_put_failures = replica_put_failures_.load();
  out.fallback_reads = fallback_reads_.load();
  out.read_repairs = read_repairs_.load();
  out.read_repairs_dropped = read_repairs_dropped_.load();
  out.previous_owner_reads = previous_owner_reads_.load();
  auto add = [&](const Node& n, bool member) {
    NodeStats s;
    s.endpoint = n.endpoint;
    s.member = member;
    s.circuit_open = n.breaker.open();
    s.requests = n.requests.load();
    s.errors = n.errors.load();
    s.skipped = n.skipped.load();
    s.health_checks = n.health_checks.load();
    s.times_opened = n.breaker.times_opened();
    s.latency_sum_ms = static_cast<double>(n.latency_us.load()) / 1000.0;
    s.latency_count = n.latency_count.load();
    for (int b = 0; b < kNodeLatencyBuckets; ++b) {
      s.latency_buckets[b] = n.buckets[b].load();
    }
    out.nodes.push_back(std::move(s));
  };
  for (const auto& n : view->nodes) add(*n, true);
  for (const auto& n : others) add(*n, false);
  return out;
}

std::string ClusterBackend::Describe() const {
  const ClusterStats stats = Stats();
  std::vector<std::string> parts;
  for (const NodeStats& n : stats.nodes) {
    if (!n.member) continue;
    parts.push_back(absl::StrFormat(
        "%s %s %d req %d err %.1f ms", n.endpoint,
        n.circuit_open ? "open" : "ok", n.requests, n.errors,
        n.latency_count > 0 ? n.latency_sum_ms / n.latency_count : 0.0));
  }
  return absl::StrCat("cluster(", membership_->Describe(),
                      ", R=", options_.replicas, ", ", parts.size(),
                      " nodes: ", absl::StrJoin(parts, "; "), ")");
}

}  // namespace vqkv::client::cluster
