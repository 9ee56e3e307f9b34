#include "kernels/key_split.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace vqkv {

const char* KeySplitName(KeySplit split) {
  switch (split) {
    case KeySplit::kNone:
      return "none";
    case KeySplit::kRopeAdjacentPairs:
      return "rope_adjacent_pairs";
    case KeySplit::kRopeHalfRotate:
      return "rope_half_rotate";
  }
  return "unknown";
}

const char* KeySplitNames() {
  return "none, rope (= rope-adjacent = rope_adjacent_pairs, the GGUF "
         "layout), rope-half (= rope_half_rotate)";
}

absl::StatusOr<KeySplit> ParseKeySplit(absl::string_view name) {
  struct Alias {
    absl::string_view name;
    KeySplit split;
  };
  static constexpr Alias kAliases[] = {
      {"rope", KeySplit::kRopeAdjacentPairs},
      {"rope-adjacent", KeySplit::kRopeAdjacentPairs},
      {"rope-half", KeySplit::kRopeHalfRotate},
  };
  for (KeySplit s : {KeySplit::kNone, KeySplit::kRopeAdjacentPairs,
                     KeySplit::kRopeHalfRotate}) {
    if (name == KeySplitName(s)) return s;
  }
  for (const Alias& a : kAliases) {
    if (name == a.name) return a.split;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown key split '", name, "': use ", KeySplitNames()));
}

absl::StatusOr<std::vector<std::vector<int>>> KeyGroupDims(KeySplit split,
                                                           int head_dim) {
  if (head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim must be >= 1, got ", head_dim));
  }
  std::vector<std::vector<int>> groups;
  switch (split) {
    case KeySplit::kNone: {
      groups.resize(1);
      for (int d = 0; d < head_dim; ++d) groups[0].push_back(d);
      return groups;
    }
    case KeySplit::kRopeAdjacentPairs: {
      if (head_dim % 2 != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "rope_adjacent_pairs split needs an even head_dim, got ",
            head_dim));
      }
      groups.resize(2);
      for (int d = 0; d < head_dim; ++d) {
        groups[d < head_dim / 2 ? 0 : 1].push_back(d);
      }
      return groups;
    }
    case KeySplit::kRopeHalfRotate: {
      if (head_dim % 4 != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "rope_half_rotate split needs head_dim divisible by 4, got ",
            head_dim));
      }
      groups.resize(2);
      const int half = head_dim / 2;
      for (int d = 0; d < head_dim; ++d) {
        const int freq = d % half;  // frequency index of d's rotation pair
        groups[freq < half / 2 ? 0 : 1].push_back(d);
      }
      return groups;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown key split ", static_cast<int>(split)));
}

}  // namespace vqkv
