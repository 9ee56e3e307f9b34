// Cluster membership: which vqkv-server endpoints a cluster client talks to.
// Either a static list ("10.0.0.1:50051,10.0.0.2:50051") or a DNS name that
// resolves to several addresses ("dns:///vqkv.cache.svc:50051", what a
// Kubernetes headless Service gives), re-resolved on Refresh(). The
// resolver is injectable so tests need no DNS.
//
// Errors: ParseMembership returns kInvalidArgument, naming the bad part,
// for an empty string or entry, an entry without host or port, a port that
// is not 1..65535, or "dns:///" with more than one name. Refresh returns
// the resolver's error (kUnavailable for a failed lookup) and keeps the
// previous set; a resolution to no address is kUnavailable too.
//
// Thread safety: ParseMembership and SystemResolver are pure; every
// Membership method may be called concurrently.
#ifndef VQKV_CLIENT_CLUSTER_MEMBERSHIP_H_
#define VQKV_CLIENT_CLUSTER_MEMBERSHIP_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace vqkv::client::cluster {

struct MembershipSpec {
  // A static list: the endpoints, "host:port", sorted and distinct.
  std::vector<std::string> endpoints;
  // A DNS name (when non-empty, endpoints is empty): host and port.
  std::string dns_host;
  int dns_port = 0;
};

// Whether `server` names a cluster: a comma-separated list or "dns:///".
bool IsClusterSpec(const std::string& server);

// Parses "host:port[,host:port...]" or "dns:///host:port". IPv6 hosts are
// written in brackets: "[::1]:50051".
absl::StatusOr<MembershipSpec> ParseMembership(const std::string& server);

// Resolves `host` to "address:port" endpoints (IPv6 as "[addr]:port").
using Resolver = std::function<absl::StatusOr<std::vector<std::string>>(
    const std::string& host, int port)>;

// getaddrinfo (TCP); kUnavailable naming the host when it fails.
Resolver SystemResolver();

class Membership {
 public:
  // A static spec is its own set; a DNS spec starts empty until Refresh().
  Membership(MembershipSpec spec, Resolver resolver);

  // Re-resolves a DNS spec (a static one never changes). Returns whether the
  // set changed.
  absl::StatusOr<bool> Refresh();

  // The current endpoints, sorted and distinct.
  std::vector<std::string> Current() const;
  // Incremented by every change of the set.
  uint64_t version() const;
  bool is_dns() const { return !spec_.dns_host.empty(); }
  // "a:1,b:2" or "dns:///host:port".
  std::string Describe() const;

 private:
  const MembershipSpec spec_;
  const Resolver resolver_;
  mutable absl::Mutex mu_;
  std::vector<std::string> current_ ABSL_GUARDED_BY(mu_);
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace vqkv::client::cluster

#endif  // VQKV_CLIENT_CLUSTER_MEMBERSHIP_H_
