// FaultInjectionFileSystem: the storage seam. A rocksdb::FileSystem that
// forwards to a real one (by default rocksdb::FileSystem::Default()) and can
// be told to fail, so tests can drive the RocksDB tier into I/O errors and
// full disks and simulate a power loss (in the spirit of leveldb's
// db/fault_injection_test.cc).
//
// Switches (all may be flipped at any time, from any thread):
//   fail_writes: creating, appending to, syncing, renaming files fails with
//                IOStatus::IOError.
//   disk_full:   the same operations fail with IOStatus::NoSpace.
//   fail_reads:  opening files for reading and reading from them fails with
//                IOStatus::IOError.
//   hold_syncs:  Sync/Fsync of written files wait until it is turned off,
//                then go on (and fail if a write switch is on by then):
//                holds a durable write between its append and its sync,
//                for interleaving tests.
// DropUnsyncedData() simulates a power loss: every file written through this
// file system is truncated to the length it had at its last Sync/Fsync.
//
// Usage: pass a std::shared_ptr to it as RocksDbTierOptions::file_system or
// TieredStoreOptions::file_system; it must outlive the database.
//
// Thread safety: all methods are thread-safe.
#ifndef VQKV_STORAGE_FAULT_INJECTION_FS_H_
#define VQKV_STORAGE_FAULT_INJECTION_FS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "rocksdb/file_system.h"

namespace vqkv::storage {

class FaultInjectionFileSystem : public rocksdb::FileSystemWrapper {
 public:
  explicit FaultInjectionFileSystem(std::shared_ptr<rocksdb::FileSystem> base =
                                        rocksdb::FileSystem::Default());

  static const char* kClassName() { return "VqkvFaultInjectionFileSystem"; }
  const char* Name() const override { return kClassName(); }

  void SetFailWrites(bool on) { fail_writes_.store(on); }
  void SetDiskFull(bool on) { disk_full_.store(on); }
  void SetFailReads(bool on) { fail_reads_.store(on); }
  void SetHoldSyncs(bool on);
  // Sync/Fsync calls waiting on hold_syncs now.
  int held_syncs() const;

  // Successful Sync/Fsync calls on written files so far (e.g. to check that
  // a batch of puts costs one WAL sync, not one per block).
  uint64_t syncs() const { return syncs_.load(); }

  // Operations failed on purpose so far.
  uint64_t injected_write_errors() const { return write_errors_.load(); }
  uint64_t injected_read_errors() const { return read_errors_.load(); }

  // Truncates every file written through this file system to its last
  // synced length (files never synced become empty). Returns the number of
  // bytes dropped. REQUIRES: no database is open on these files.
  uint64_t DropUnsyncedData();

  // --- rocksdb::FileSystem overrides ----------------------------------
  rocksdb::IOStatus NewSequentialFile(
      const std::string& fname, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSSequentialFile>* result,
      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewRandomAccessFile(
      const std::string& fname, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSRandomAccessFile>* result,
      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewWritableFile(
      const std::string& fname, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(
      const std::string& fname, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(
      const std::string& fname, const std::string& old_fname,
      const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus RenameFile(const std::string& src,
                               const std::string& target,
                               const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteFile(const std::string& fname,
                               const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;

  // --- used by the file wrappers ----------------------------------------
  // The error a write should fail with now, or OK.
  rocksdb::IOStatus WriteFault(const char* op);
  rocksdb::IOStatus ReadFault(const char* op);
  // Returns once hold_syncs is off.
  void WaitWhileSyncsHeld();
  void RecordAppend(const std::string& fname, uint64_t end_offset);
  void RecordSync(const std::string& fname);
  void RecordTruncate(const std::string& fname, uint64_t size);

 private:
  struct FileState {
    uint64_t size = 0;    // bytes written (high-water mark)
    uint64_t synced = 0;  // bytes durable at the last sync
  };
  rocksdb::IOStatus WrapWritable(
      const std::string& fname, uint64_t initial_size,
      std::unique_ptr<rocksdb::FSWritableFile>* result);

  std::atomic<bool> fail_writes_{false};
  std::atomic<bool> disk_full_{false};
  std::atomic<bool> fail_reads_{false};
  std::atomic<uint64_t> write_errors_{0};
  std::atomic<uint64_t> syncs_{0};
  std::atomic<uint64_t> read_errors_{0};

  mutable absl::Mutex hold_mu_;
  bool hold_syncs_ ABSL_GUARDED_BY(hold_mu_) = false;
  int held_syncs_ ABSL_GUARDED_BY(hold_mu_) = 0;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, FileState> files_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_FAULT_INJECTION_FS_H_
