// Rendezvous (highest-random-weight) placement of keys over cluster nodes.
// Every node gets a weight per key; the key's owners are the R nodes of
// highest weight. Adding or removing a node moves only the keys it wins or
// held (about R/N of them), and the order of the node list never matters.
//
// The weight, byte for byte (docs/CLIENT.md "Clusters"):
//   node_id(node)     = XXH3_64bits_withSeed(node name bytes, kHashSeed)
//   weight(node, key) = XXH3_64bits_withSeed(u64le(node_id) || key bytes,
//                                            kHashSeed)
// with kHashSeed = 0x766B7176 (client/hash.h). The key bytes of a block are
// its 16-byte chain hash; of a rendezvous entry, its key string; of a
// codebook set, its 8-byte content hash (u64le). Owners are ordered by
// weight, highest first; equal weights by node name, ascending.
//
// Errors: none (an empty node list has no owners).
// Thread safety: pure functions; a RendezvousRing is immutable after
// construction and may be shared by any number of threads.
#ifndef VQKV_CLIENT_CLUSTER_RENDEZVOUS_H_
#define VQKV_CLIENT_CLUSTER_RENDEZVOUS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace vqkv::client::cluster {

// node_id(node) above.
uint64_t RendezvousNodeId(absl::string_view node);

// weight(node, key) above, from the node's id.
uint64_t RendezvousWeight(uint64_t node_id, absl::string_view key);

// The 8 key bytes of a codebook set's content hash.
std::string CodebookKey(uint64_t codebook_hash);

// A fixed set of nodes with their ids precomputed.
class RendezvousRing {
 public:
  // `nodes` may come in any order and hold duplicates (kept once).
  explicit RendezvousRing(std::vector<std::string> nodes);

  // Sorted, distinct node names.
  const std::vector<std::string>& nodes() const { return nodes_; }
  size_t size() const { return nodes_.size(); }

  // Indices into nodes() of the min(r, size()) owners of `key`, highest
  // weight first. r <= 0 gives every node, in weight order.
  std::vector<int> Owners(absl::string_view key, int r) const;

 private:
  std::vector<std::string> nodes_;
  std::vector<uint64_t> ids_;
};

}  // namespace vqkv::client::cluster

#endif  // VQKV_CLIENT_CLUSTER_RENDEZVOUS_H_
