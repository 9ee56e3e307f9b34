#include "client/cuda/cuda_kv_device.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cuda/cuda_device.h"
#include "kernels/cuda/paged_copy.cuh"
#include "kernels/cuda/paged_decode.cuh"
#include "kernels/cuda/paged_encode.cuh"
#include "kernels/cuda/rvq_cuda.cuh"
#include "kernels/vq_codec.h"
#include "kernels/vq_decode_plan.h"
#include "kernels/vq_encode_element.h"

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
    for (void* p : decode_memory_) cudaFree(p);
    if (scratch_ != nullptr) cudaFree(scratch_);
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

  absl::Status EnableDecode(const VqDecodePlan& plan) override {
    absl::MutexLock lock(&mu_);
    if (decode_ready_) {
      return absl::FailedPreconditionError("EnableDecode was already called");
    }
    if (absl::Status st = UploadViewLocked(plan); !st.ok()) return st;
    decode_ready_ = true;
    return absl::OkStatus();
  }

  absl::Status EnableEncode(const VqDecodePlan& plan,
                            const VqCodec& codec) override {
    absl::MutexLock lock(&mu_);
    if (encode_ready_) {
      return absl::FailedPreconditionError("EnableEncode was already called");
    }
    cudaError_t e = cudaSetDevice(caches_.cuda_device);
    if (e != cudaSuccess) return CudaError("cudaSetDevice", e);
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                           caches_.cuda_device);
    if (major < 8) {
      return absl::UnimplementedError(absl::StrCat(
          "encoding from the pages needs tensor cores of compute capability "
          "8.0 or newer; CUDA device ",
          caches_.cuda_device, " is ", major, ".x"));
    }
    const VqDecodeView& w = plan.shape;
    for (int g = 0; g < w.key_groups; ++g) {
      if (w.group_dims[g] > cuda::kMaxTcEncodeDim) {
        return absl::UnimplementedError(absl::StrCat(
            "encoding from the pages takes quantizers of at most ",
            cuda::kMaxTcEncodeDim, " dimensions, not ", w.group_dims[g]));
      }
    }
    if (w.head_dim > cuda::kMaxTcEncodeDim) {
      return absl::UnimplementedError(
          absl::StrCat("encoding from the pages takes quantizers of at most ",
                       cuda::kMaxTcEncodeDim, " dimensions, not ", w.head_dim));
    }
    if (absl::Status st = UploadViewLocked(plan); !st.ok()) return st;
    // Per quantizer, in the plan's order (keys [layer][slot][group], then
    // values [layer][slot]): its norms and the tensor cores' copy.
    const std::vector<const ResidualQuantizer*> quantizers =
        PlanQuantizers(codec);
    for (size_t i = 0; i < quantizers.size(); ++i) {
      absl::StatusOr<Quantizer> d = UploadQuantizerLocked(
          *quantizers[i], i < key_books_.size()
                              ? key_books_[i]
                              : value_books_[i - key_books_.size()]);
      if (!d.ok()) return d.status();
      quantizers_.push_back(*d);
    }
    // The key refinements', [layer][slot] (empty for an unrefined layer).
    const CodebookSet& set = codec.codebooks();
    refine_quantizers_.assign(refine_books_.size(), Quantizer{});
    for (size_t i = 0; i < refine_books_.size(); ++i) {
      if (refine_books_[i] == nullptr) continue;
      const int layer = static_cast<int>(i / w.slots);
      const int slot = static_cast<int>(i % w.slots);
      absl::StatusOr<Quantizer> d = UploadQuantizerLocked(
          set.key_refinement(layer, slot), refine_books_[i]);
      if (!d.ok()) return d.status();
      refine_quantizers_[i] = *d;
    }
    e = cudaStreamSynchronize(stream_);
    if (e != cudaSuccess) return CudaError("tensor-core codebooks", e);
    encode_ready_ = true;
    return absl::OkStatus();
  }

  absl::StatusOr<Event> EncodeLayer(
      int layer, absl::Span<const EncodeRows> rows) override {
    absl::MutexLock lock(&mu_);
    if (!encode_ready_) {
      return absl::FailedPreconditionError("EncodeLayer before EnableEncode");
    }
    if (layer < 0 || layer >= decode_layers_) {
      return absl::InvalidArgumentError(absl::StrCat("no layer ", layer));
    }
    cudaError_t e = cudaSetDevice(caches_.cuda_device);
    if (e != cudaSuccess) return CudaError("cudaSetDevice", e);
    const VqDecodeView& w = view_;
    const bool refined = !refined_index_.empty() && refined_index_[layer] >= 0;
    int64_t n = 0;
    int64_t pack_bytes = 0;
    for (const EncodeRows& r : rows) {
      if (refined && r.refine_codes == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", layer, " has a key refinement: its codes need a place"));
      }
      n += r.n;
      pack_bytes += VqSliceBytes(w, VqSection::kKeys, r.n) +
                    VqSliceBytes(w, VqSection::kValues, r.n);
      if (refined) {
        pack_bytes += VqSliceBytes(w, VqSection::kKeyRefinement, r.n);
      }
    }
    if (n == 0) return RecordLocked(nullptr);
    // The layer's jobs, then on a refined layer one refinement job per slot
    // (VqEncodeRefineJob), coded once the key jobs are.
    const int base_jobs = VqEncodeJobCount(w);
    const int jobs = base_jobs + (refined ? w.slots : 0);
    const int64_t job_rows = VqEncodeJobRows(w, n);
    auto job_dims = [&](int j) {
      return j < base_jobs ? VqEncodeJobDims(w, j) : w.head_dim;
    };
    auto job_stages = [&](int j) {
      return j < base_jobs ? VqEncodeJobStages(w, j) : w.refine_stages;
    };
    // Device scratch: the tables (copied from pinned staging in one
    // transfer), then each job's inputs and codes, then the tensor-core
    // batch's job table.
    const size_t tokens_at = 0;
    const size_t inputs_table_at =
        Align16(tokens_at + n * sizeof(cuda::EncodeTokenRow));
    const size_t codes_table_at =
        Align16(inputs_table_at + jobs * sizeof(void*));
    const size_t blocks_at = Align16(codes_table_at + jobs * sizeof(void*));
    const size_t tables_bytes =
        Align16(blocks_at + rows.size() * sizeof(cuda::PackBlock));
    std::vector<size_t> input_at(jobs), codes_at(jobs);
    size_t at = tables_bytes;
    for (int j = 0; j < jobs; ++j) {
      input_at[j] = at;
      at = Align16(at + job_rows * job_dims(j) * sizeof(float));
    }
    for (int j = 0; j < jobs; ++j) {
      codes_at[j] = at;
      at = Align16(at + job_rows * job_stages(j) * sizeof(uint16_t));
    }
    const size_t batch_at = at;
    const size_t batch_bytes = cuda::RvqTcBatchScratchBytes(jobs);
    if (absl::Status st = EnsureScratchLocked(batch_at + batch_bytes);
        !st.ok()) {
      return st;
    }
    std::shared_ptr<float[]> staging = pool_->Get((tables_bytes + 3) / 4);
    if (staging == nullptr) {
      return absl::ResourceExhaustedError("no pinned memory for encode tables");
    }
    auto* host = reinterpret_cast<uint8_t*>(staging.get());
    auto* tokens = reinterpret_cast<cuda::EncodeTokenRow*>(host + tokens_at);
    auto* inputs = reinterpret_cast<float**>(host + inputs_table_at);
    auto* codes = reinterpret_cast<uint16_t**>(host + codes_table_at);
    auto* blocks = reinterpret_cast<cuda::PackBlock*>(host + blocks_at);
    int64_t i = 0;
    for (size_t b = 0; b < rows.size(); ++b) {
      const EncodeRows& r = rows[b];
      blocks[b] = {i, r.n, r.key_codes, r.value_codes,
                   refined ? r.refine_codes : nullptr};
      for (int64_t t = 0; t < r.n; ++t, ++i) {
        const int64_t pos = r.t0 + t;
        tokens[i] = {r.block_ids[pos / caches_.block_size],
                     static_cast<int32_t>(pos % caches_.block_size), pos};
      }
    }
    for (int j = 0; j < jobs; ++j) {
      inputs[j] = reinterpret_cast<float*>(scratch_ + input_at[j]);
      codes[j] = reinterpret_cast<uint16_t*>(scratch_ + codes_at[j]);
    }
    e = cudaMemcpyAsync(scratch_, host, tables_bytes, cudaMemcpyHostToDevice,
                        stream_);
    if (e != cudaSuccess) return CudaError("encode tables upload", e);
    const auto [keys, values] = LayerTensors(layer);
    e = cuda::LaunchVqEncodeInputs(
        w, keys, values,
        reinterpret_cast<const cuda::EncodeTokenRow*>(scratch_ + tokens_at), n,
        reinterpret_cast<float* const*>(scratch_ + inputs_table_at), stream_);
    if (e != cudaSuccess) return CudaError("encode inputs launch", e);
    // Jobs [first, last) on the tensor cores: one launch per head-dimension
    // class (1-32, 33-64, ...).
    auto encode_jobs = [&](int first, int last) -> cudaError_t {
      for (int dim_class = 0; dim_class < 4; ++dim_class) {
        std::vector<cuda::RvqTcJob> batch;
        for (int j = first; j < last; ++j) {
          const Quantizer& q =
              j < base_jobs ? quantizers_[VqEncodeJobQuantizer(
                                  w, decode_layers_, layer, j)]
                            : refine_quantizers_[int64_t{layer} * w.slots +
                                                 (j - base_jobs)];
          if ((q.dim - 1) / 32 != dim_class) continue;
          batch.push_back({inputs[j], job_rows, q.dim, q.stages, q.K,
                           q.codebooks, q.norms, q.tc, codes[j]});
        }
        if (batch.empty()) continue;
        const cudaError_t err = cuda::LaunchRvqEncodeGreedyTcBatch(
            batch.data(), static_cast<int>(batch.size()),
            cuda::InputType::kFloat32, scratch_ + batch_at, batch_bytes,
            stream_);
        if (err != cudaSuccess) return err;
      }
      return cudaSuccess;
    };
    e = encode_jobs(0, base_jobs);
    if (e != cudaSuccess) return CudaError("tensor-core encode launch", e);
    if (refined) {
      // The batch's job table is rewritten in stream order: the launch
      // above has read it by the time this one's copy lands.
      e = cuda::LaunchVqEncodeRefineInputs(
          w, layer, keys,
          reinterpret_cast<const cuda::EncodeTokenRow*>(scratch_ + tokens_at),
          n,
          reinterpret_cast<const uint16_t* const*>(scratch_ + codes_table_at),
          reinterpret_cast<float* const*>(scratch_ + inputs_table_at) +
              base_jobs,
          stream_);
      if (e != cudaSuccess) return CudaError("key refinement inputs launch", e);
      e = encode_jobs(base_jobs, jobs);
      if (e != cudaSuccess) {
        return CudaError("key refinement tensor-core encode launch", e);
      }
    }
    e = cuda::LaunchVqPackLayer(
        w, reinterpret_cast<const uint16_t* const*>(scratch_ + codes_table_at),
        reinterpret_cast<const cuda::PackBlock*>(scratch_ + blocks_at),
        static_cast<int>(rows.size()), pack_bytes, stream_);
    if (e != cudaSuccess) return CudaError("code packing launch", e);
    return RecordLocked(std::move(staging));
  }

  absl::StatusOr<Event> ScatterCoded(
      int layer, absl::Span<const CodedRows> rows) override {
    {
      absl::MutexLock lock(&mu_);
      if (!decode_ready_) {
        return absl::FailedPreconditionError(
            "ScatterCoded before EnableDecode");
      }
    }
    if (layer < 0 || layer >= decode_layers_) {
      return absl::InvalidArgumentError(absl::StrCat("no layer ", layer));
    }
    // One pinned buffer, copied to the device in one transfer: the row
    // table, then every block's codes (16-byte aligned).
    const bool refined = !refined_index_.empty() && refined_index_[layer] >= 0;
    int64_t n = 0;
    size_t code_bytes = 0;
    for (const CodedRows& r : rows) {
      const size_t kb =
          static_cast<size_t>(VqSliceBytes(view_, VqSection::kKeys, r.n));
      const size_t vb =
          static_cast<size_t>(VqSliceBytes(view_, VqSection::kValues, r.n));
      const size_t rb = refined ? static_cast<size_t>(VqSliceBytes(
                                      view_, VqSection::kKeyRefinement, r.n))
                                : 0;
      if (r.key_codes.size() != kb || r.value_codes.size() != vb ||
          r.refine_codes.size() != rb) {
        return absl::InvalidArgumentError(absl::StrCat(
            "coded rows of ", r.n, " tokens need ", kb, " + ", vb, " + ", rb,
            " code bytes (K + V + key refinement), got ", r.key_codes.size(),
            " + ", r.value_codes.size(), " + ", r.refine_codes.size()));
      }
      n += r.n;
      code_bytes += Align16(kb) + Align16(vb) + Align16(rb);
    }
    const size_t table_bytes =
        Align16(static_cast<size_t>(n) * sizeof(cuda::CodedPageRow));
    const size_t bytes = table_bytes + code_bytes;
    std::shared_ptr<float[]> staging;
    if (n > 0) {
      staging = pool_->Get((bytes + 3) / 4);
      if (staging == nullptr) {
        return absl::ResourceExhaustedError("no pinned memory for codes");
      }
    }
    auto* host = reinterpret_cast<uint8_t*>(staging.get());
    const auto [k, v] = LayerTensors(layer);
    absl::MutexLock lock(&mu_);
    cudaError_t e = cudaSetDevice(caches_.cuda_device);
    if (e != cudaSuccess) return CudaError("cudaSetDevice", e);
    if (n > 0) {
      if (absl::Status st = EnsureScratchLocked(bytes); !st.ok()) return st;
      // The table holds device addresses into the scratch copy.
      auto* table = reinterpret_cast<cuda::CodedPageRow*>(host);
      size_t at = table_bytes;
      int64_t i = 0;
      for (const CodedRows& r : rows) {
        const uint8_t* dk = scratch_ + at;
        std::memcpy(host + at, r.key_codes.data(), r.key_codes.size());
        at += Align16(r.key_codes.size());
        const uint8_t* dv = scratch_ + at;
        std::memcpy(host + at, r.value_codes.data(), r.value_codes.size());
        at += Align16(r.value_codes.size());
        const uint8_t* dr = refined ? scratch_ + at : nullptr;
        if (refined) {
          std::memcpy(host + at, r.refine_codes.data(), r.refine_codes.size());
          at += Align16(r.refine_codes.size());
        }
        for (int64_t t = 0; t < r.n; ++t, ++i) {
          const int64_t pos = r.t0 + t;
          table[i].page = r.block_ids[pos / caches_.block_size];
          table[i].slot = static_cast<int32_t>(pos % caches_.block_size);
          table[i].token = {dk, dv, static_cast<int32_t>(t), pos, dr};
        }
      }
      e = cudaMemcpyAsync(scratch_, host, bytes, cudaMemcpyHostToDevice,
                          stream_);
      if (e != cudaSuccess) return CudaError("code upload", e);
      e = cuda::LaunchVqDecodeToPages(
          view_, layer, k, v,
          reinterpret_cast<const cuda::CodedPageRow*>(scratch_), n, stream_);
      if (e != cudaSuccess) return CudaError("decode launch", e);
    }
    return RecordLocked(std::move(staging));
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
  // One quantizer on the device, for encoding.
  struct Quantizer {
    const float* codebooks = nullptr;
    const float* norms = nullptr;
    const void* tc = nullptr;
    int stages = 0, K = 0, dim = 0;
  };

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
    const auto [k, v] = LayerTensors(layer);
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
    return RecordLocked(std::move(table_buf));
  }

  // Records the event of the operations enqueued so far in the next ring
  // slot, which keeps `keep` (what they read) alive until it is reused.
  absl::StatusOr<Event> RecordLocked(std::shared_ptr<float[]> keep)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    cudaError_t e = cudaSuccess;
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
    s.table = std::move(keep);
    return ordinal;
  }

  // The plan's arrays on the device, once (EnableDecode and EnableEncode
  // share them): codebooks in one allocation, the view's tables.
  absl::Status UploadViewLocked(const VqDecodePlan& plan)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (view_ready_) return absl::OkStatus();
    cudaError_t e = cudaSetDevice(caches_.cuda_device);
    if (e != cudaSuccess) return CudaError("cudaSetDevice", e);
    size_t floats = 0;
    for (size_t n : plan.key_codebook_floats) floats += n;
    for (size_t n : plan.value_codebook_floats) floats += n;
    for (size_t n : plan.key_refine_codebook_floats) floats += n;
    float* books = nullptr;
    if (absl::Status st =
            UploadLocked<float>(nullptr, floats * sizeof(float), &books);
        !st.ok()) {
      return st;
    }
    float* at = books;
    auto upload = [&](const std::vector<const float*>& src,
                      const std::vector<size_t>& sizes,
                      std::vector<const float*>* out) {
      for (size_t i = 0; i < src.size(); ++i) {
        if (src[i] == nullptr) {  // a layer without a key refinement
          out->push_back(nullptr);
          continue;
        }
        const cudaError_t err = cudaMemcpy(at, src[i], sizes[i] * sizeof(float),
                                           cudaMemcpyHostToDevice);
        if (err != cudaSuccess) return CudaError("codebook upload", err);
        out->push_back(at);
        at += sizes[i];
      }
      return absl::OkStatus();
    };
    if (absl::Status st =
            upload(plan.key_codebooks, plan.key_codebook_floats, &key_books_);
        !st.ok()) {
      return st;
    }
    if (absl::Status st = upload(plan.value_codebooks,
                                 plan.value_codebook_floats, &value_books_);
        !st.ok()) {
      return st;
    }
    if (absl::Status st =
            upload(plan.key_refine_codebooks, plan.key_refine_codebook_floats,
                   &refine_books_);
        !st.ok()) {
      return st;
    }
    view_ = plan.shape;
    absl::Status st = UploadVectorLocked(key_books_, &view_.key_codebooks);
    if (st.ok()) st = UploadVectorLocked(value_books_, &view_.value_codebooks);
    if (st.ok()) st = UploadVectorLocked(plan.dim_group, &view_.dim_group);
    if (st.ok()) st = UploadVectorLocked(plan.dim_index, &view_.dim_index);
    for (int g = 0; st.ok() && g < plan.shape.key_groups; ++g) {
      st = UploadVectorLocked(plan.group_dim[g], &view_.group_dim[g]);
    }
    if (st.ok() && !plan.key_gains.empty()) {
      st = UploadVectorLocked(plan.key_gains, &view_.key_gains);
    }
    if (st.ok() && !plan.inv_freq.empty()) {
      st = UploadVectorLocked(plan.inv_freq, &view_.inv_freq);
    }
    if (st.ok() && !refine_books_.empty()) {
      st = UploadVectorLocked(refine_books_, &view_.key_refine_codebooks);
    }
    if (!st.ok()) return st;
    refined_index_ = plan.refined_index;
    decode_layers_ = plan.layers;
    view_ready_ = true;
    return absl::OkStatus();
  }

  // `q` on the device for the tensor-core encode: `books` (its codebooks,
  // already there), its norms and the tensor cores' copy (prepared on
  // stream_).
  absl::StatusOr<Quantizer> UploadQuantizerLocked(const ResidualQuantizer& q,
                                                  const float* books)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Quantizer d;
    d.codebooks = books;
    d.stages = q.stages();
    d.K = q.K();
    d.dim = q.dim();
    float* norms = nullptr;
    if (absl::Status st = UploadLocked<float>(
            q.norms().data(), q.norms().size() * sizeof(float), &norms);
        !st.ok()) {
      return st;
    }
    d.norms = norms;
    void* tc = nullptr;
    const size_t tc_bytes = cuda::RvqTcCodebookBytes(d.stages, d.K, d.dim);
    if (absl::Status st = UploadLocked<void>(nullptr, tc_bytes, &tc);
        !st.ok()) {
      return st;
    }
    const cudaError_t e = cuda::LaunchRvqPrepareTcCodebooks(
        d.codebooks, d.stages, d.K, d.dim, tc, stream_);
    if (e != cudaSuccess) return CudaError("tensor-core codebooks", e);
    d.tc = tc;
    return d;
  }

  // Layer `layer`'s K and V page tensors.
  std::pair<cuda::PageTensor, cuda::PageTensor> LayerTensors(int layer) const {
    const PagedLayer& p = caches_.layers[layer];
    return {Tensor(caches_, p.keys, p.key_strides),
            Tensor(caches_, p.values, p.value_strides)};
  }

  static size_t Align16(size_t n) { return (n + 15) & ~size_t{15}; }

  // A device allocation of `bytes` holding `host` (when not null), owned by
  // this device until it goes.
  template <typename T>
  absl::Status UploadLocked(const T* host, size_t bytes, T** out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
    if (e != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate ", bytes, " bytes on CUDA device ",
          caches_.cuda_device, " for decoding: ", cudaGetErrorString(e)));
    }
    decode_memory_.push_back(p);
    if (host != nullptr && bytes > 0) {
      e = cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
      if (e != cudaSuccess) return CudaError("decode table upload", e);
    }
    *out = static_cast<T*>(p);
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status UploadVectorLocked(const std::vector<T>& v, const T** out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    T* p = nullptr;
    absl::Status s = UploadLocked(v.data(), v.size() * sizeof(T), &p);
    *out = p;
    return s;
  }

  // Device scratch of at least `bytes` for the codes of one ScatterCoded.
  // Earlier decodes read it in stream order, so growing it waits for them.
  absl::Status EnsureScratchLocked(size_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (bytes <= scratch_bytes_) return absl::OkStatus();
    const size_t grown = std::bit_ceil(std::max(bytes, size_t{1} << 20));
    cudaError_t e = cudaStreamSynchronize(stream_);
    if (e != cudaSuccess) return CudaError("KV device stream", e);
    if (scratch_ != nullptr) cudaFree(scratch_);
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    e = cudaMalloc(reinterpret_cast<void**>(&scratch_), grown);
    if (e != cudaSuccess) {
      cudaGetLastError();
      scratch_ = nullptr;
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate ", grown, " bytes of code scratch on CUDA device ",
          caches_.cuda_device));
    }
    scratch_bytes_ = grown;
    return absl::OkStatus();
  }

  const PagedKvCaches caches_;
  const cudaStream_t compute_;
  const std::shared_ptr<PinnedPool> pool_;
  cudaStream_t stream_ = nullptr;
  absl::Mutex mu_;
  cudaEvent_t compute_mark_ = nullptr;  // recorded under mu_
  std::array<Slot, kRing> ring_ ABSL_GUARDED_BY(mu_);
  Event next_ ABSL_GUARDED_BY(mu_) = 0;
  // Decoding (EnableDecode): the view with device pointers, the memory it
  // points to, and the scratch the codes are copied into.
  bool view_ready_ ABSL_GUARDED_BY(mu_) = false;
  bool decode_ready_ ABSL_GUARDED_BY(mu_) = false;
  bool encode_ready_ ABSL_GUARDED_BY(mu_) = false;
  int decode_layers_ = 0;  // written once, before view_ready_
  VqDecodeView view_;      // ditto
  std::vector<const float*> key_books_, value_books_;  // ditto
  std::vector<const float*> refine_books_;  // ditto; [layer][slot] or empty
  std::vector<int32_t> refined_index_;      // ditto; the plan's
  std::vector<Quantizer> quantizers_;       // plan order; before encode_ready_
  std::vector<Quantizer> refine_quantizers_;  // [layer][slot]; ditto
  std::vector<void*> decode_memory_ ABSL_GUARDED_BY(mu_);
  uint8_t* scratch_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t scratch_bytes_ ABSL_GUARDED_BY(mu_) = 0;
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
