#include "client/cuda/cuda_rvq_encoder.h"

#include <cuda_runtime.h>

#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cuda/cuda_device.h"
#include "kernels/cuda/rvq_cuda.cuh"

namespace vqkv::client {
namespace {

absl::Status CudaError(absl::string_view what, cudaError_t e) {
  return absl::InternalError(absl::StrCat("CUDA encode: ", what, ": ",
                                          cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}

#define VQKV_CUDA_RETURN_IF_ERROR(expr)                     \
  do {                                                      \
    const cudaError_t err_ = (expr);                        \
    if (err_ != cudaSuccess) return CudaError(#expr, err_); \
  } while (0)

cudaError_t DeviceAlloc(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
cudaError_t PinnedAlloc(void** p, size_t bytes) {
  return cudaHostAlloc(p, bytes, cudaHostAllocDefault);
}

// Memory from Alloc / Free that grows to the largest request and is reused
// (its contents are not kept when it grows).
template <cudaError_t (*Alloc)(void**, size_t), cudaError_t (*Free)(void*)>
class GrowingBuffer {
 public:
  GrowingBuffer() = default;
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;
  ~GrowingBuffer() {
    if (ptr_ != nullptr) Free(ptr_);
  }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (ptr_ != nullptr) Free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    VQKV_CUDA_RETURN_IF_ERROR(Alloc(&ptr_, bytes));
    bytes_ = bytes;
    return absl::OkStatus();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

using DeviceBuffer = GrowingBuffer<DeviceAlloc, cudaFree>;
using PinnedBuffer = GrowingBuffer<PinnedAlloc, cudaFreeHost>;

// A quantizer's codebooks on the device: float32 (rescoring, residual
// updates) and the tensor-core copy (empty when dim > 128).
struct DeviceCodebooks {
  DeviceBuffer codebooks, norms, tc;
};

// The head-dimension classes of the tensor-core kernel; 0 for the float32
// kernel.
int DimClass(int dim, bool tensor_cores) {
  if (!tensor_cores || dim > cuda::kMaxTcEncodeDim) return 0;
  return (dim + 31) / 32;
}

class CudaRvqBatchEncoder final : public RvqBatchEncoder {
 public:
  explicit CudaRvqBatchEncoder(int device) : device_(device) {}
  ~CudaRvqBatchEncoder() override {
    cudaSetDevice(device_);
    if (stream_ != nullptr) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }

  absl::Status Init() {
    std::string why_not;
    const int count = cuda::CudaDeviceCount(&why_not);
    if (count == 0) return absl::FailedPreconditionError(why_not);
    if (device_ < 0 || device_ >= count) {
      return absl::FailedPreconditionError(absl::StrCat(
          "CUDA device ", device_, " is not one of the ", count, " devices"));
    }
    if (const cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
      return absl::FailedPreconditionError(
          CudaError("cudaSetDevice", e).message());
    }
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_);
    tensor_cores_ = major >= 8;
    VQKV_CUDA_RETURN_IF_ERROR(
        cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    return absl::OkStatus();
  }

  absl::Status EncodeGreedy(absl::Span<const Job> jobs) override {
    absl::MutexLock lock(&mu_);
    VQKV_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    // One launch per class; the float32 kernel takes the rest, job by job.
    absl::flat_hash_map<int, std::vector<const Job*>> classes;
    for (const Job& j : jobs) {
      if (j.q == nullptr || !j.q->fitted() || j.n < 0 ||
          (j.n > 0 && (j.x == nullptr || j.codes == nullptr))) {
        return absl::InvalidArgumentError(
            "CUDA encode: a job without a fitted quantizer or buffers");
      }
      if (j.n == 0) continue;
      if (j.q->dim() > cuda::kMaxEncodeDim) {
        // Beyond the float32 kernel too: the CPU's exact encoder.
        if (absl::Status s = j.q->EncodeGreedy(j.x, j.n, j.codes); !s.ok()) {
          return s;
        }
        continue;
      }
      classes[DimClass(j.q->dim(), tensor_cores_)].push_back(&j);
    }
    for (auto& [dim_class, members] : classes) {
      if (absl::Status s = EncodeClass(dim_class, members); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<DeviceCodebooks*> Codebooks(const ResidualQuantizer& q,
                                             bool tensor_cores)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::unique_ptr<DeviceCodebooks>& slot = books_[&q];
    if (slot != nullptr) return slot.get();
    slot = std::make_unique<DeviceCodebooks>();
    DeviceCodebooks& d = *slot;
    const size_t cb_bytes = q.codebooks().size() * sizeof(float);
    const size_t norm_bytes = q.norms().size() * sizeof(float);
    absl::Status s = d.codebooks.Reserve(cb_bytes);
    if (s.ok()) s = d.norms.Reserve(norm_bytes);
    if (s.ok() && tensor_cores) {
      s = d.tc.Reserve(cuda::RvqTcCodebookBytes(q.stages(), q.K(), q.dim()));
    }
    if (!s.ok()) {
      books_.erase(&q);
      return s;
    }
    cudaError_t e =
        cudaMemcpyAsync(d.codebooks.as<void>(), q.codebooks().data(), cb_bytes,
                        cudaMemcpyHostToDevice, stream_);
    if (e == cudaSuccess) {
      e = cudaMemcpyAsync(d.norms.as<void>(), q.norms().data(), norm_bytes,
                          cudaMemcpyHostToDevice, stream_);
    }
    if (e == cudaSuccess && tensor_cores) {
      e = cuda::LaunchRvqPrepareTcCodebooks(d.codebooks.as<float>(), q.stages(),
                                            q.K(), q.dim(), d.tc.as<void>(),
                                            stream_);
    }
    if (e != cudaSuccess) {
      books_.erase(&q);
      return CudaError("uploading codebooks", e);
    }
    return &d;
  }

  absl::Status EncodeClass(int dim_class, const std::vector<const Job*>& jobs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const bool tc = dim_class != 0;
    size_t in_floats = 0, out_codes = 0;
    for (const Job* j : jobs) {
      in_floats += static_cast<size_t>(j->n) * j->q->dim();
      out_codes += static_cast<size_t>(j->n) * j->q->stages();
    }
    const size_t in_bytes = in_floats * sizeof(float);
    const size_t out_bytes = out_codes * sizeof(uint16_t);
    absl::Status s = host_in_.Reserve(in_bytes);
    if (s.ok()) s = host_out_.Reserve(out_bytes);
    if (s.ok()) s = device_in_.Reserve(in_bytes);
    if (s.ok()) s = device_out_.Reserve(out_bytes);
    if (s.ok() && tc) {
      s = scratch_.Reserve(
          cuda::RvqTcBatchScratchBytes(static_cast<int>(jobs.size())));
    }
    if (!s.ok()) return s;

    std::vector<cuda::RvqTcJob> launch;
    size_t in_off = 0, out_off = 0;
    for (const Job* j : jobs) {
      absl::StatusOr<DeviceCodebooks*> d = Codebooks(*j->q, tc);
      if (!d.ok()) return d.status();
      const size_t floats = static_cast<size_t>(j->n) * j->q->dim();
      std::memcpy(host_in_.as<float>() + in_off, j->x, floats * sizeof(float));
      launch.push_back({device_in_.as<float>() + in_off, j->n, j->q->dim(),
                        j->q->stages(), j->q->K(), (*d)->codebooks.as<float>(),
                        (*d)->norms.as<float>(), (*d)->tc.as<void>(),
                        device_out_.as<uint16_t>() + out_off});
      in_off += floats;
      out_off += static_cast<size_t>(j->n) * j->q->stages();
    }
    VQKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_in_.as<void>(),
                                              host_in_.as<void>(), in_bytes,
                                              cudaMemcpyHostToDevice, stream_));
    if (tc) {
      VQKV_CUDA_RETURN_IF_ERROR(cuda::LaunchRvqEncodeGreedyTcBatch(
          launch.data(), static_cast<int>(launch.size()),
          cuda::InputType::kFloat32, scratch_.as<void>(), scratch_.bytes(),
          stream_));
    } else {
      for (const cuda::RvqTcJob& l : launch) {
        VQKV_CUDA_RETURN_IF_ERROR(cuda::LaunchRvqEncodeGreedy(
            static_cast<const float*>(l.x), l.n, l.dim, l.codebooks, l.norms,
            l.stages, l.K, l.codes, stream_));
      }
    }
    VQKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_out_.as<void>(),
                                              device_out_.as<void>(), out_bytes,
                                              cudaMemcpyDeviceToHost, stream_));
    VQKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    out_off = 0;
    for (const Job* j : jobs) {
      const size_t codes = static_cast<size_t>(j->n) * j->q->stages();
      std::memcpy(j->codes, host_out_.as<uint16_t>() + out_off,
                  codes * sizeof(uint16_t));
      out_off += codes;
    }
    return absl::OkStatus();
  }

  const int device_;
  bool tensor_cores_ = false;
  cudaStream_t stream_ = nullptr;
  absl::Mutex mu_;
  absl::flat_hash_map<const ResidualQuantizer*,
                      std::unique_ptr<DeviceCodebooks>>
      books_ ABSL_GUARDED_BY(mu_);
  PinnedBuffer host_in_ ABSL_GUARDED_BY(mu_), host_out_ ABSL_GUARDED_BY(mu_);
  DeviceBuffer device_in_ ABSL_GUARDED_BY(mu_),
      device_out_ ABSL_GUARDED_BY(mu_), scratch_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::shared_ptr<RvqBatchEncoder>> NewCudaRvqBatchEncoder(
    int device) {
  auto encoder = std::make_shared<CudaRvqBatchEncoder>(device);
  if (absl::Status s = encoder->Init(); !s.ok()) return s;
  return encoder;
}

}  // namespace vqkv::client
