#include "client/cluster/rendezvous.h"

#include <xxhash.h>

#include <algorithm>
#include <utility>

#include "client/hash.h"

namespace vqkv::client::cluster {

uint64_t RendezvousNodeId(absl::string_view node) {
  return XXH3_64bits_withSeed(node.data(), node.size(), kHashSeed);
}

uint64_t RendezvousWeight(uint64_t node_id, absl::string_view key) {
  // u64le(node_id) || key; keys are short (16 bytes for a block hash), so
  // the common case stays on the stack.
  char stack[8 + 64];
  std::string heap;
  char* buf = stack;
  if (key.size() > sizeof(stack) - 8) {
    heap.resize(8 + key.size());
    buf = heap.data();
  }
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>(node_id >> (8 * i));
  std::copy(key.begin(), key.end(), buf + 8);
  return XXH3_64bits_withSeed(buf, 8 + key.size(), kHashSeed);
}

std::string CodebookKey(uint64_t codebook_hash) {
  std::string key(8, '\0');
  for (int i = 0; i < 8; ++i) {
    key[i] = static_cast<char>(codebook_hash >> (8 * i));
  }
  return key;
}

RendezvousRing::RendezvousRing(std::vector<std::string> nodes)
    : nodes_(std::move(nodes)) {
  std::sort(nodes_.begin(), nodes_.end());
  nodes_.erase(std::unique(nodes_.begin(), nodes_.end()), nodes_.end());
  ids_.reserve(nodes_.size());
  for (const std::string& n : nodes_) ids_.push_back(RendezvousNodeId(n));
}

std::vector<int> RendezvousRing::Owners(absl::string_view key, int r) const {
  const int n = static_cast<int>(nodes_.size());
  const int want = (r <= 0 || r > n) ? n : r;
  std::vector<std::pair<uint64_t, int>> w;
  w.reserve(n);
  for (int i = 0; i < n; ++i) w.emplace_back(RendezvousWeight(ids_[i], key), i);
  // Highest weight first; nodes_ is sorted, so a tie goes to the smaller
  // index, i.e. the smaller name.
  auto better = [](const std::pair<uint64_t, int>& a,
                   const std::pair<uint64_t, int>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  std::partial_sort(w.begin(), w.begin() + want, w.end(), better);
  std::vector<int> out;
  out.reserve(want);
  for (int i = 0; i < want; ++i) out.push_back(w[i].second);
  return out;
}

}  // namespace vqkv::client::cluster
