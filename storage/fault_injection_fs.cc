#include "storage/fault_injection_fs.h"

#include <unistd.h>

#include <string>
#include <utility>

namespace vqkv::storage {
namespace {

using rocksdb::FileOptions;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Slice;

class FaultyWritableFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultyWritableFile(std::unique_ptr<rocksdb::FSWritableFile> base,
                     std::string fname, FaultInjectionFileSystem* fs,
                     uint64_t initial_size)
      : FSWritableFileOwnerWrapper(std::move(base)),
        fname_(std::move(fname)),
        fs_(fs),
        pos_(initial_size) {}

  IOStatus Append(const Slice& data, const IOOptions& options,
                  IODebugContext* dbg) override {
    if (IOStatus s = fs_->WriteFault("append"); !s.ok()) return s;
    IOStatus s = target()->Append(data, options, dbg);
    if (s.ok()) Advance(pos_ + data.size());
    return s;
  }
  IOStatus Append(const Slice& data, const IOOptions& options,
                  const rocksdb::DataVerificationInfo& info,
                  IODebugContext* dbg) override {
    if (IOStatus s = fs_->WriteFault("append"); !s.ok()) return s;
    IOStatus s = target()->Append(data, options, info, dbg);
    if (s.ok()) Advance(pos_ + data.size());
    return s;
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset,
                            const IOOptions& options,
                            IODebugContext* dbg) override {
    if (IOStatus s = fs_->WriteFault("positioned append"); !s.ok()) return s;
    IOStatus s = target()->PositionedAppend(data, offset, options, dbg);
    if (s.ok()) Advance(offset + data.size());
    return s;
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset,
                            const IOOptions& options,
                            const rocksdb::DataVerificationInfo& info,
                            IODebugContext* dbg) override {
    if (IOStatus s = fs_->WriteFault("positioned append"); !s.ok()) return s;
    IOStatus s = target()->PositionedAppend(data, offset, options, info, dbg);
    if (s.ok()) Advance(offset + data.size());
    return s;
  }
  IOStatus Truncate(uint64_t size, const IOOptions& options,
                    IODebugContext* dbg) override {
    if (IOStatus s = fs_->WriteFault("truncate"); !s.ok()) return s;
    IOStatus s = target()->Truncate(size, options, dbg);
    if (s.ok()) {
      pos_ = size;
      fs_->RecordTruncate(fname_, size);
    }
    return s;
  }
  IOStatus Flush(const IOOptions& options, IODebugContext* dbg) override {
    if (IOStatus s = fs_->WriteFault("flush"); !s.ok()) return s;
    return target()->Flush(options, dbg);
  }
  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override {
    fs_->WaitWhileSyncsHeld();
    if (IOStatus s = fs_->WriteFault("sync"); !s.ok()) return s;
    IOStatus s = target()->Sync(options, dbg);
    if (s.ok()) fs_->RecordSync(fname_);
    return s;
  }
  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    fs_->WaitWhileSyncsHeld();
    if (IOStatus s = fs_->WriteFault("fsync"); !s.ok()) return s;
    IOStatus s = target()->Fsync(options, dbg);
    if (s.ok()) fs_->RecordSync(fname_);
    return s;
  }
  IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const IOOptions& options,
                     IODebugContext* dbg) override {
    if (IOStatus s = fs_->WriteFault("range sync"); !s.ok()) return s;
    // A range sync makes no durability promise for the whole file; it is
    // not recorded as a sync.
    return target()->RangeSync(offset, nbytes, options, dbg);
  }

 private:
  void Advance(uint64_t end) {
    if (end > pos_) pos_ = end;
    fs_->RecordAppend(fname_, end);
  }

  const std::string fname_;
  FaultInjectionFileSystem* const fs_;
  uint64_t pos_;
};

class FaultyRandomAccessFile : public rocksdb::FSRandomAccessFileOwnerWrapper {
 public:
  FaultyRandomAccessFile(std::unique_ptr<rocksdb::FSRandomAccessFile> base,
                         FaultInjectionFileSystem* fs)
      : FSRandomAccessFileOwnerWrapper(std::move(base)), fs_(fs) {}

  IOStatus Read(uint64_t offset, size_t n, const IOOptions& options,
                Slice* result, char* scratch,
                IODebugContext* dbg) const override {
    if (IOStatus s = fs_->ReadFault("read"); !s.ok()) return s;
    return target()->Read(offset, n, options, result, scratch, dbg);
  }
  IOStatus MultiRead(rocksdb::FSReadRequest* reqs, size_t num_reqs,
                     const IOOptions& options, IODebugContext* dbg) override {
    if (IOStatus s = fs_->ReadFault("multi read"); !s.ok()) {
      for (size_t i = 0; i < num_reqs; ++i) reqs[i].status = s;
      return s;
    }
    return target()->MultiRead(reqs, num_reqs, options, dbg);
  }
  IOStatus ReadAsync(
      rocksdb::FSReadRequest& req, const IOOptions& opts,
      std::function<void(const rocksdb::FSReadRequest&, void*)> cb,
      void* cb_arg, void** io_handle, rocksdb::IOHandleDeleter* del_fn,
      IODebugContext* dbg) override {
    if (IOStatus s = fs_->ReadFault("async read"); !s.ok()) return s;
    return target()->ReadAsync(req, opts, std::move(cb), cb_arg, io_handle,
                               del_fn, dbg);
  }

 private:
  FaultInjectionFileSystem* const fs_;
};

class FaultySequentialFile : public rocksdb::FSSequentialFileOwnerWrapper {
 public:
  FaultySequentialFile(std::unique_ptr<rocksdb::FSSequentialFile> base,
                       FaultInjectionFileSystem* fs)
      : FSSequentialFileOwnerWrapper(std::move(base)), fs_(fs) {}

  IOStatus Read(size_t n, const IOOptions& options, Slice* result,
                char* scratch, IODebugContext* dbg) override {
    if (IOStatus s = fs_->ReadFault("sequential read"); !s.ok()) return s;
    return target()->Read(n, options, result, scratch, dbg);
  }
  IOStatus PositionedRead(uint64_t offset, size_t n, const IOOptions& options,
                          Slice* result, char* scratch,
                          IODebugContext* dbg) override {
    if (IOStatus s = fs_->ReadFault("positioned read"); !s.ok()) return s;
    return target()->PositionedRead(offset, n, options, result, scratch, dbg);
  }

 private:
  FaultInjectionFileSystem* const fs_;
};

}  // namespace

FaultInjectionFileSystem::FaultInjectionFileSystem(
    std::shared_ptr<rocksdb::FileSystem> base)
    : FileSystemWrapper(std::move(base)) {}

IOStatus FaultInjectionFileSystem::WriteFault(const char* op) {
  if (disk_full_.load()) {
    write_errors_.fetch_add(1);
    return IOStatus::NoSpace("injected disk full", op);
  }
  if (fail_writes_.load()) {
    write_errors_.fetch_add(1);
    return IOStatus::IOError("injected write error", op);
  }
  return IOStatus::OK();
}

void FaultInjectionFileSystem::SetHoldSyncs(bool on) {
  absl::MutexLock lock(&hold_mu_);
  hold_syncs_ = on;
}

int FaultInjectionFileSystem::held_syncs() const {
  absl::MutexLock lock(&hold_mu_);
  return held_syncs_;
}

void FaultInjectionFileSystem::WaitWhileSyncsHeld() {
  absl::MutexLock lock(&hold_mu_);
  if (!hold_syncs_) return;
  ++held_syncs_;
  hold_mu_.Await(absl::Condition(
      +[](bool* hold) { return !*hold; }, &hold_syncs_));
  --held_syncs_;
}

IOStatus FaultInjectionFileSystem::ReadFault(const char* op) {
  if (fail_reads_.load()) {
    read_errors_.fetch_add(1);
    return IOStatus::IOError("injected read error", op);
  }
  return IOStatus::OK();
}

void FaultInjectionFileSystem::RecordAppend(const std::string& fname,
                                            uint64_t end_offset) {
  absl::MutexLock lock(&mu_);
  FileState& f = files_[fname];
  if (end_offset > f.size) f.size = end_offset;
}

void FaultInjectionFileSystem::RecordSync(const std::string& fname) {
  syncs_.fetch_add(1);
  absl::MutexLock lock(&mu_);
  FileState& f = files_[fname];
  f.synced = f.size;
}

void FaultInjectionFileSystem::RecordTruncate(const std::string& fname,
                                              uint64_t size) {
  absl::MutexLock lock(&mu_);
  FileState& f = files_[fname];
  f.size = size;
  if (f.synced > size) f.synced = size;
}

IOStatus FaultInjectionFileSystem::WrapWritable(
    const std::string& fname, uint64_t initial_size,
    std::unique_ptr<rocksdb::FSWritableFile>* result) {
  {
    absl::MutexLock lock(&mu_);
    // A file that already existed counts as synced up to its current size.
    files_[fname] = FileState{initial_size, initial_size};
  }
  *result = std::make_unique<FaultyWritableFile>(std::move(*result), fname,
                                                 this, initial_size);
  return IOStatus::OK();
}

IOStatus FaultInjectionFileSystem::NewSequentialFile(
    const std::string& fname, const FileOptions& options,
    std::unique_ptr<rocksdb::FSSequentialFile>* result, IODebugContext* dbg) {
  if (IOStatus s = ReadFault("open for sequential read"); !s.ok()) return s;
  IOStatus s = target()->NewSequentialFile(fname, options, result, dbg);
  if (!s.ok()) return s;
  *result = std::make_unique<FaultySequentialFile>(std::move(*result), this);
  return s;
}

IOStatus FaultInjectionFileSystem::NewRandomAccessFile(
    const std::string& fname, const FileOptions& options,
    std::unique_ptr<rocksdb::FSRandomAccessFile>* result, IODebugContext* dbg) {
  if (IOStatus s = ReadFault("open for random read"); !s.ok()) return s;
  IOStatus s = target()->NewRandomAccessFile(fname, options, result, dbg);
  if (!s.ok()) return s;
  *result = std::make_unique<FaultyRandomAccessFile>(std::move(*result), this);
  return s;
}

IOStatus FaultInjectionFileSystem::NewWritableFile(
    const std::string& fname, const FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, IODebugContext* dbg) {
  if (IOStatus s = WriteFault("create"); !s.ok()) return s;
  IOStatus s = target()->NewWritableFile(fname, options, result, dbg);
  if (!s.ok()) return s;
  return WrapWritable(fname, 0, result);
}

IOStatus FaultInjectionFileSystem::ReopenWritableFile(
    const std::string& fname, const FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, IODebugContext* dbg) {
  if (IOStatus s = WriteFault("reopen"); !s.ok()) return s;
  uint64_t size = 0;
  if (!target()->GetFileSize(fname, IOOptions(), &size, dbg).ok()) size = 0;
  IOStatus s = target()->ReopenWritableFile(fname, options, result, dbg);
  if (!s.ok()) return s;
  return WrapWritable(fname, size, result);
}

IOStatus FaultInjectionFileSystem::ReuseWritableFile(
    const std::string& fname, const std::string& old_fname,
    const FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, IODebugContext* dbg) {
  if (IOStatus s = WriteFault("reuse"); !s.ok()) return s;
  IOStatus s =
      target()->ReuseWritableFile(fname, old_fname, options, result, dbg);
  if (!s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    files_.erase(old_fname);
  }
  return WrapWritable(fname, 0, result);
}

IOStatus FaultInjectionFileSystem::RenameFile(const std::string& src,
                                              const std::string& target_name,
                                              const IOOptions& options,
                                              IODebugContext* dbg) {
  if (IOStatus s = WriteFault("rename"); !s.ok()) return s;
  IOStatus s = target()->RenameFile(src, target_name, options, dbg);
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    auto it = files_.find(src);
    if (it != files_.end()) {
      FileState state = it->second;
      files_.erase(it);
      files_[target_name] = state;
    } else {
      files_.erase(target_name);
    }
  }
  return s;
}

IOStatus FaultInjectionFileSystem::DeleteFile(const std::string& fname,
                                              const IOOptions& options,
                                              IODebugContext* dbg) {
  IOStatus s = target()->DeleteFile(fname, options, dbg);
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    files_.erase(fname);
  }
  return s;
}

uint64_t FaultInjectionFileSystem::DropUnsyncedData() {
  uint64_t dropped = 0;
  absl::MutexLock lock(&mu_);
  for (auto& [name, state] : files_) {
    if (state.size > state.synced &&
        ::truncate(name.c_str(), static_cast<off_t>(state.synced)) == 0) {
      dropped += state.size - state.synced;
    }
    state.size = state.synced;
  }
  return dropped;
}

}  // namespace vqkv::storage
