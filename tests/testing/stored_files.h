// Bit flips in a closed RocksDB directory, for corruption tests: loads the
// files that hold records (table files *.sst, blob files *.blob, write-ahead
// logs *.log), flips bits inside the stored copies of given values, and
// writes the files back. Values are found by their bytes: the block and
// codebook column families are uncompressed (storage/rocksdb_tier.cc), so a
// stored value appears verbatim in whichever file holds it.
//
// Thread safety: none; use from one thread while no database is open on the
// directory.
#ifndef VQKV_TESTS_TESTING_STORED_FILES_H_
#define VQKV_TESTS_TESTING_STORED_FILES_H_

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace vqkv::testing {

class StoredFiles {
 public:
  // Loads every *.sst, *.blob and *.log file under `dir` (recursively).
  explicit StoredFiles(const std::string& dir) {
    for (const auto& entry :
         std::filesystem::recursive_directory_iterator(dir)) {
      if (!entry.is_regular_file()) continue;
      const std::string path = entry.path().string();
      if (!absl::EndsWith(path, ".sst") && !absl::EndsWith(path, ".blob") &&
          !absl::EndsWith(path, ".log")) {
        continue;
      }
      std::ifstream in(path, std::ios::binary);
      files_[path].assign(std::istreambuf_iterator<char>(in),
                          std::istreambuf_iterator<char>());
    }
  }

  // Flips bit `bit` (0 = the lowest bit of value[0]) of every stored copy
  // of `value`. Returns the number of copies changed (0: not stored
  // verbatim in these files). REQUIRES: bit < 8 * value.size().
  int FlipBit(absl::string_view value, uint64_t bit) {
    int copies = 0;
    for (auto& [path, bytes] : files_) {
      for (size_t at = bytes.find(value.data(), 0, value.size());
           at != std::string::npos;
           at = bytes.find(value.data(), at + value.size(), value.size())) {
        bytes[at + bit / 8] ^= static_cast<char>(1u << (bit % 8));
        dirty_[path] = true;
        ++copies;
      }
    }
    return copies;
  }

  // Flips `n` bits at random positions of the loaded files (each byte
  // equally likely, whatever file it is in: data, index, footer). Returns
  // the number of bits flipped (0 when no file has bytes).
  int FlipRandomBits(std::mt19937_64& rng, int n) {
    uint64_t total = 0;
    for (const auto& [path, bytes] : files_) total += bytes.size();
    if (total == 0) return 0;
    for (int i = 0; i < n; ++i) {
      uint64_t at = rng() % total;
      for (auto& [path, bytes] : files_) {
        if (at >= bytes.size()) {
          at -= bytes.size();
          continue;
        }
        bytes[at] ^= static_cast<char>(1u << (rng() % 8));
        dirty_[path] = true;
        break;
      }
    }
    return n;
  }

  // Flips the lowest bit of the byte `from_end` bytes before the end of
  // every loaded file whose name ends in `suffix` (e.g. ".sst", 1: the last
  // byte of each table file's footer magic). Returns the files changed.
  int FlipNearEnd(absl::string_view suffix, uint64_t from_end) {
    int changed = 0;
    for (auto& [path, bytes] : files_) {
      if (!absl::EndsWith(path, suffix) || bytes.size() < from_end) continue;
      bytes[bytes.size() - from_end] ^= 1;
      dirty_[path] = true;
      ++changed;
    }
    return changed;
  }

  // Writes the changed files back. Returns false if one could not be
  // written.
  bool Save() {
    for (const auto& [path, dirty] : dirty_) {
      if (!dirty) continue;
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(files_[path].data(),
                static_cast<std::streamsize>(files_[path].size()));
      if (!out) return false;
    }
    dirty_.clear();
    return true;
  }

  size_t files() const { return files_.size(); }

 private:
  std::map<std::string, std::string> files_;
  std::map<std::string, bool> dirty_;
};

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_TESTING_STORED_FILES_H_
