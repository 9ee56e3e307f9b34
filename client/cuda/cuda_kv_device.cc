#include "client/cuda/cuda_kv_device.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <bit>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cuda/cuda_device.h"
#include "kernels/cuda/paged_copy.cuh"

namespace vqkv::client {
namespace {

absl::Status CudaError(absl::string_view what, cudaError_t e) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}

// Pinned, mapped host buffers in power-of-two sizes, reused: cudaHostAlloc
// takes milliseconds, too long for a forward pass.
class PinnedPool : public std::enable_shared_from_this<PinnedPool> {
 public:
  static constexpr size_t kMinBytes = size_t{64} << 10;
  static constexpr size_t kMaxCachedBytes = size_t{1} << 30;

  ~PinnedPool() {
    for (auto& [bytes, list] : free_) {
      for (void* p : list) cudaFreeHost(p);
    }
  }

  std::shared_ptr<float[]> Get(size_t floats) {
    const size_t bytes =
        std::bit_ceil(std::max(kMinBytes, floats * sizeof(float)));
    void* p = nullptr;
    {
      absl::MutexLock lock(&mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
      }
    }
    if (p == nullptr &&
        cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable) !=
            cudaSuccess) {
      return nullptr;
    }
    std::shared_ptr<PinnedPool> self = shared_from_this();
    return std::shared_ptr<float[]>(
        static_cast<float*>(p),
        [self, bytes](float* q) { self->Put(q, bytes); });
  }

 private:
  void Put(void* p, size_t bytes) {
    {
      absl::MutexLock lock(&mu_);
      if (cached_ + bytes <= kMaxCachedBytes) {
        free_[bytes].push_back(p);
        cached_ += bytes;
        return;
      }
    }
    cudaFreeHost(p);
  }

  absl::Mutex mu_;
  absl::flat_hash_map<size_t, std::vector<void*>> free_ ABSL_GUARDED_BY(mu_);
  size_t cached_ ABSL_GUARDED_BY(mu_) = 0;
};

cuda::PageTensor Tensor(const PagedKvCaches& c, void* data,
                        const int64_t strides[4]) {
  cuda::PageTensor t;
  t.data = data;
  t.dtype = static_cast<int32_t>(c.dtype);
  std::copy(strides, strides + 4, t.strides);
  return t;
}

class CudaKvDevice final : public KvDevice {
 public:
  explicit CudaKvDevice(const PagedKvCaches& caches)
      : caches_(caches),
        compute_(static_cast<cudaStream_t>(caches.cuda_stream)),
        pool_(std::make_shared<PinnedPool>()) {}

  ~CudaKvDevice() override {
    cudaSetDevice(caches_.cuda_device);
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (Slot& s : ring_) {
      if (s.event != nullptr) cudaEventDestroy(s.event);
    }
    if (compute_mark_ != nullptr) cudaEventDestroy(compute_mark_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init() {
    std::string why_not;
    const int count = cuda::CudaDeviceCount(&why_not);
    if (count == 0) return absl::FailedPreconditionError(why_not);
    if (caches_.cuda_device < 0 || caches_.cuda_device >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("cuda_device ", caches_.cuda_device,
                       " is not one of the ", count, " CUDA devices"));
    }
    cudaError_t e = cudaSetDevice(caches_.cuda_device);
    if (e != cudaSuccess) {
      return absl::FailedPreconditionError(
          CudaError("cudaSetDevice", e).message());
    }
    int unified = 0;
    cudaDeviceGetAttribute(&unified, cudaDevAttrUnifiedAddressing,
                           caches_.cuda_device);
    if (unified == 0) {
      return absl::FailedPreconditionError(
          "the CUDA device has no unified addressing, which the mapped host "
          "staging needs");
    }
    for (size_t l = 0; l < caches_.layers.size(); ++l) {
      for (const void* p : {caches_.layers[l].keys, caches_.layers[l].values}) {
        cudaPointerAttributes a{};
        if (cudaPointerGetAttributes(&a, p) != cudaSuccess ||
            (a.type != cudaMemoryTypeDevice &&
             a.type != cudaMemoryTypeManaged) ||
            a.device != caches_.cuda_device) {
          cudaGetLastError();  // not sticky; clear it
          return absl::FailedPreconditionError(absl::StrCat(
              "layer ", l, ": the pages are not memory of CUDA device ",
              caches_.cuda_device));
        }
      }
    }
    e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    if (e != cudaSuccess) return CudaError("cudaStreamCreate", e);
    e = cudaEventCreateWithFlags(&compute_mark_, cudaEventDisableTiming);
    if (e != cudaSuccess) return CudaError("cudaEventCreate", e);
    return absl::OkStatus();
  }

  std::shared_ptr<float[]> NewStaging(size_t floats) override {
    return pool_->Get(floats);
  }

  absl::Status OrderAfterCompute() override {
    absl::MutexLock lock(&mu_);
    cudaError_t e = cudaSetDevice(caches_.cuda_device);
    if (e == cudaSuccess) e = cudaEventRecord(compute_mark_, compute_);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(stream_, compute_mark_, 0);
    if (e != cudaSuccess) return CudaError("ordering after compute", e);
    return absl::OkStatus();
  }

  absl::StatusOr<Event> Gather(int layer,
                               absl::Span<const Rows> rows) override {
    return Submit(layer, rows, /*gather=*/true);
  }

  absl::StatusOr<Event> Scatter(int layer,
                                absl::Span<const Rows> rows) override {
    return Submit(layer, rows, /*gather=*/false);
  }

  absl::Status Wait(Event event) override {
    cudaEvent_t e;
    {
      absl::MutexLock lock(&mu_);
      const Slot& s = ring_[event % kRing];
      // A slot is reused only after its event completed: an older ordinal
      // is done.
      if (s.ordinal != event || s.event == nullptr) return absl::OkStatus();
      e = s.event;
    }
    // If the slot is recorded again meanwhile this waits for a later
    // operation, which is done only after this one.
    const cudaError_t err = cudaEventSynchronize(e);
    if (err != cudaSuccess) return CudaError("KV page copy", err);
    return absl::OkStatus();
  }

  absl::Status ComputeStreamWaitFor(Event event) override {
    absl::MutexLock lock(&mu_);
    const Slot& s = ring_[event % kRing];
    if (s.ordinal != event || s.event == nullptr) return absl::OkStatus();
    cudaSetDevice(caches_.cuda_device);
    const cudaError_t e = cudaStreamWaitEvent(compute_, s.event, 0);
    if (e != cudaSuccess) return CudaError("cudaStreamWaitEvent", e);
    return absl::OkStatus();
  }

 private:
  // Events of the last kRing operations; an operation's row table lives in
  // its slot until the slot is reused.
  static constexpr size_t kRing = 256;
  struct Slot {
    cudaEvent_t event = nullptr;
    Event ordinal = 0;
    std::shared_ptr<float[]> table;
  };

  absl::StatusOr<Event> Submit(int layer, absl::Span<const Rows> rows,
                               bool gather) {
    int64_t n = 0;
    for (const Rows& r : rows) n += r.n;
    // The row table, in mapped host memory the kernel reads directly.
    std::shared_ptr<float[]> table_buf;
    cuda::PagedRow* table = nullptr;
    if (n > 0) {
      const size_t floats =
          (static_cast<size_t>(n) * sizeof(cuda::PagedRow) + 3) / 4;
      table_buf = pool_->Get(floats);
      if (table_buf == nullptr) {
        return absl::ResourceExhaustedError("no pinned memory for a row table");
      }
      table = reinterpret_cast<cuda::PagedRow*>(table_buf.get());
      const int64_t row = int64_t{caches_.kv_heads} * caches_.head_dim;
      int64_t i = 0;
      for (const Rows& r : rows) {
        for (int64_t j = 0; j < r.n; ++j, ++i) {
          const int64_t t = r.t0 + j;
          table[i].page = r.block_ids[t / caches_.block_size];
          table[i].slot = static_cast<int32_t>(t % caches_.block_size);
          table[i].keys = r.keys + j * row;
          table[i].values = r.values + j * row;
        }
      }
    }
    const PagedLayer& p = caches_.layers[layer];
    const cuda::PageTensor k = Tensor(caches_, p.keys, p.key_strides);
    const cuda::PageTensor v = Tensor(caches_, p.values, p.value_strides);
    absl::MutexLock lock(&mu_);
    cudaError_t e = cudaSetDevice(caches_.cuda_device);
    if (e != cudaSuccess) return CudaError("cudaSetDevice", e);
    if (gather) {
      e = cuda::LaunchPagedGather(k, v, table, n, caches_.kv_heads,
                                  caches_.head_dim, stream_);
    } else {
      e = cuda::LaunchPagedScatter(k, v, table, n, caches_.kv_heads,
                                   caches_.head_dim, stream_);
    }
    if (e != cudaSuccess) return CudaError("KV page copy launch", e);
    const Event ordinal = ++next_;
    Slot& s = ring_[ordinal % kRing];
    if (s.event == nullptr) {
      e = cudaEventCreateWithFlags(&s.event, cudaEventDisableTiming);
      if (e != cudaSuccess) {
        s.event = nullptr;
        return CudaError("cudaEventCreate", e);
      }
    } else {
      // kRing operations ago: done long since, unless the device is far
      // behind, in which case submitting more should wait anyway.
      cudaEventSynchronize(s.event);
    }
    e = cudaEventRecord(s.event, stream_);
    if (e != cudaSuccess) return CudaError("cudaEventRecord", e);
    s.ordinal = ordinal;
    s.table = std::move(table_buf);
    return ordinal;
  }

  const PagedKvCaches caches_;
  const cudaStream_t compute_;
  const std::shared_ptr<PinnedPool> pool_;
  cudaStream_t stream_ = nullptr;
  absl::Mutex mu_;
  cudaEvent_t compute_mark_ = nullptr;  // recorded under mu_
  std::array<Slot, kRing> ring_ ABSL_GUARDED_BY(mu_);
  Event next_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvDevice>> NewCudaKvDevice(
    const PagedKvCaches& caches) {
  auto device = std::make_unique<CudaKvDevice>(caches);
  absl::Status s = device->Init();
  if (!s.ok()) return s;
  return device;
}

}  // namespace vqkv::client
