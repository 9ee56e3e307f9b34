// A KvDevice (client/kv_device.h) that emulates a GPU in host memory, to
// test the connector's device path without one: "device" pages are host
// arrays; operations run in order on a thread of their own, each after a
// delay, so a connector that reads or hands out pages without waiting for
// the right event sees stale data; the engine's compute stream is emulated
// by SyncCompute(), which returns once every event the connector told the
// compute stream to wait for is done (what the engine's kernels would wait
// for). It also checks that the rows are staging it handed out, and can be
// made to fail. It decodes codes (EnableDecode, ScatterCoded) with the
// device kernel's host reference (kernels/vq_decode_element.h), rounding
// into the pages as Scatter does; and encodes pages (EnableEncode,
// EncodeLayer) with the device encode's host reference
// (kernels/vq_layer_encode.h).
//
// Thread safety: all methods may be called from any thread.
#ifndef VQKV_TESTS_UNIT_CLIENT_FAKE_KV_DEVICE_H_
#define VQKV_TESTS_UNIT_CLIENT_FAKE_KV_DEVICE_H_

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/kv_device.h"
#include "client/paged_kv.h"
#include "kernels/vq_decode_plan.h"
#include "kernels/vq_layer_encode.h"

namespace vqkv::client::testing {

class FakeKvDevice : public KvDevice {
 public:
  explicit FakeKvDevice(const PagedKvCaches& caches,
                        absl::Duration op_delay = absl::Milliseconds(2))
      : caches_(caches), delay_(op_delay), worker_([this] { Run(); }) {}

  ~FakeKvDevice() override {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    worker_.join();
  }

  std::shared_ptr<float[]> NewStaging(size_t floats) override {
    auto p = std::make_shared_for_overwrite<float[]>(floats);
    absl::MutexLock lock(&mu_);
    staging_[p.get()] = floats;
    ++staging_handed_out_;
    return p;
  }

  absl::Status OrderAfterCompute() override {
    absl::MutexLock lock(&mu_);
    ++order_after_compute_;
    return absl::OkStatus();
  }

  absl::StatusOr<Event> Gather(int layer,
                               absl::Span<const Rows> rows) override {
    return Submit(layer, rows, true);
  }
  absl::StatusOr<Event> Scatter(int layer,
                                absl::Span<const Rows> rows) override {
    return Submit(layer, rows, false);
  }

  absl::Status EnableDecode(const VqDecodePlan& plan) override {
    absl::MutexLock lock(&mu_);
    if (refuse_codebooks_) {
      return absl::ResourceExhaustedError("fake device: no memory to decode");
    }
    plan_ = plan;
    return absl::OkStatus();
  }

  absl::StatusOr<Event> ScatterCoded(
      int layer, absl::Span<const CodedRows> rows) override {
    absl::MutexLock lock(&mu_);
    if (!plan_) {
      return absl::FailedPreconditionError("ScatterCoded before EnableDecode");
    }
    if (fail_scatter_layer_ == layer) {
      return absl::InternalError("fake device: coded scatter refused");
    }
    // The codes are copied now, as the contract says; the decode runs later.
    struct Block {
      std::vector<int32_t> ids;
      int64_t t0, n;
      std::vector<uint8_t> k, v, r;
    };
    std::vector<Block> blocks;
    for (const CodedRows& r : rows) {
      const VqDecodePlan::LayerSlices s = plan_->Slices(r.n, layer);
      if (r.key_codes.size() != s.key_bytes ||
          r.value_codes.size() != s.value_bytes ||
          r.refine_codes.size() != s.refine_bytes) {
        return absl::InvalidArgumentError("fake device: wrong code slices");
      }
      blocks.push_back(
          {std::vector<int32_t>(r.block_ids.begin(), r.block_ids.end()), r.t0,
           r.n, std::vector<uint8_t>(r.key_codes.begin(), r.key_codes.end()),
           std::vector<uint8_t>(r.value_codes.begin(), r.value_codes.end()),
           std::vector<uint8_t>(r.refine_codes.begin(), r.refine_codes.end())});
    }
    coded_scatters_ += static_cast<int>(rows.size());
    queue_.push_back([this, layer, blocks = std::move(blocks)] {
      const VqDecodeView view = plan_->view();
      const int64_t row = int64_t{caches_.kv_heads} * caches_.head_dim;
      for (const Block& b : blocks) {
        std::vector<CodedToken> tokens(b.n);
        for (int64_t t = 0; t < b.n; ++t) {
          tokens[t] = {b.k.data(), b.v.data(), static_cast<int32_t>(t),
                       b.t0 + t, b.r.empty() ? nullptr : b.r.data()};
        }
        std::vector<float> k(b.n * row), v(b.n * row);
        VqDecodeTokensRef(view, layer, tokens.data(), b.n, k.data(), v.data());
        ScatterLayer(caches_, layer, b.ids, b.t0, b.n, k.data(), v.data());
      }
    });
    return ++submitted_;
  }

  absl::Status EnableEncode(const VqDecodePlan& plan,
                            const VqCodec& codec) override {
    absl::MutexLock lock(&mu_);
    if (refuse_codebooks_) {
      return absl::ResourceExhaustedError("fake device: no memory to encode");
    }
    encode_plan_ = &plan;
    encode_codec_ = &codec;
    return absl::OkStatus();
  }

  absl::StatusOr<Event> EncodeLayer(
      int layer, absl::Span<const EncodeRows> rows) override {
    absl::MutexLock lock(&mu_);
    if (encode_codec_ == nullptr) {
      return absl::FailedPreconditionError("EncodeLayer before EnableEncode");
    }
    if (fail_gather_) {
      fail_gather_ = false;
      return absl::InternalError("fake device: encode refused");
    }
    struct Block {
      std::vector<int32_t> ids;
      int64_t t0, n;
      uint8_t *k, *v, *r;
    };
    std::vector<Block> blocks;
    for (const EncodeRows& r : rows) {
      blocks.push_back(
          {std::vector<int32_t>(r.block_ids.begin(), r.block_ids.end()), r.t0,
           r.n, r.key_codes, r.value_codes, r.refine_codes});
    }
    encoded_blocks_ += static_cast<int>(rows.size());
    // Runs later, reading the pages as they are then (a missing stream
    // order shows as codes of stale pages).
    queue_.push_back([this, layer, blocks = std::move(blocks)] {
      const int64_t row = int64_t{caches_.kv_heads} * caches_.head_dim;
      std::vector<std::vector<float>> k(blocks.size()), v(blocks.size());
      std::vector<LayerBlockToEncode> batch;
      for (size_t i = 0; i < blocks.size(); ++i) {
        const Block& b = blocks[i];
        k[i].resize(b.n * row);
        v[i].resize(b.n * row);
        GatherLayer(caches_, layer, b.ids, b.t0, b.n, k[i].data(), v[i].data());
        batch.push_back({k[i].data(), v[i].data(), b.n, b.t0, b.k, b.v, b.r});
      }
      VqEncodeLayerRef(*encode_codec_, *encode_plan_, layer, batch)
          .IgnoreError();
    });
    return ++submitted_;
  }

  // Blocks handed to EncodeLayer so far (one per block and layer).
  int encoded_blocks() {
    absl::MutexLock lock(&mu_);
    return encoded_blocks_;
  }

  // EnableDecode and EnableEncode fail (as a GPU without room for the
  // codebooks would).
  void RefuseCodebooks() {
    absl::MutexLock lock(&mu_);
    refuse_codebooks_ = true;
  }
  // Blocks handed to ScatterCoded so far (one per block and layer).
  int coded_scatters() {
    absl::MutexLock lock(&mu_);
    return coded_scatters_;
  }

  absl::Status Wait(Event event) override {
    absl::MutexLock lock(&mu_);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return done_ >= event;
    };
    mu_.Await(absl::Condition(&done));
    return absl::OkStatus();
  }

  absl::Status ComputeStreamWaitFor(Event event) override {
    absl::MutexLock lock(&mu_);
    compute_waits_for_ = std::max(compute_waits_for_, event);
    return absl::OkStatus();
  }

  // The engine's kernels run: returns once every event the compute stream
  // was told to wait for is done.
  void SyncCompute() {
    Event e;
    {
      absl::MutexLock lock(&mu_);
      e = compute_waits_for_;
    }
    Wait(e).IgnoreError();
  }

  // The next Gather is refused; so is every Scatter of layer `layer`.
  void FailNextGather() {
    absl::MutexLock lock(&mu_);
    fail_gather_ = true;
  }
  void FailScatterOfLayer(int layer) {
    absl::MutexLock lock(&mu_);
    fail_scatter_layer_ = layer;
  }
  // Operations that ran with rows outside any staging it handed out.
  int bad_rows() {
    absl::MutexLock lock(&mu_);
    return bad_rows_;
  }
  int order_after_compute() {
    absl::MutexLock lock(&mu_);
    return order_after_compute_;
  }
  int staging_handed_out() {
    absl::MutexLock lock(&mu_);
    return staging_handed_out_;
  }

 private:
  // Whether [p, p + n) lies in one staging buffer.
  bool InStaging(const float* p, int64_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = staging_.upper_bound(p);
    if (it == staging_.begin()) return false;
    --it;
    return p + n <= it->first + it->second;
  }

  absl::StatusOr<Event> Submit(int layer, absl::Span<const Rows> rows,
                               bool gather) {
    absl::MutexLock lock(&mu_);
    if (gather && fail_gather_) {
      fail_gather_ = false;
      return absl::InternalError("fake device: gather refused");
    }
    if (!gather && fail_scatter_layer_ == layer) {
      return absl::InternalError("fake device: scatter refused");
    }
    const int64_t row = int64_t{caches_.kv_heads} * caches_.head_dim;
    struct Copy {
      std::vector<int32_t> ids;
      int64_t t0, n;
      float *k, *v;
    };
    std::vector<Copy> copies;
    for (const Rows& r : rows) {
      if (!InStaging(r.keys, r.n * row) || !InStaging(r.values, r.n * row)) {
        ++bad_rows_;
      }
      copies.push_back(
          {std::vector<int32_t>(r.block_ids.begin(), r.block_ids.end()), r.t0,
           r.n, r.keys, r.values});
    }
    queue_.push_back([this, layer, gather, copies = std::move(copies)] {
      for (const Copy& c : copies) {
        if (gather) {
          GatherLayer(caches_, layer, c.ids, c.t0, c.n, c.k, c.v);
        } else {
          ScatterLayer(caches_, layer, c.ids, c.t0, c.n, c.k, c.v);
        }
      }
    });
    return ++submitted_;
  }

  void Run() {
    for (;;) {
      std::function<void()> op;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || !queue_.empty();
        };
        mu_.Await(absl::Condition(&ready));
        if (queue_.empty()) return;
        op = std::move(queue_.front());
        queue_.pop_front();
      }
      absl::SleepFor(delay_);
      op();
      absl::MutexLock lock(&mu_);
      ++done_;
    }
  }

  const PagedKvCaches caches_;
  const absl::Duration delay_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  std::map<const float*, size_t> staging_ ABSL_GUARDED_BY(mu_);
  Event submitted_ ABSL_GUARDED_BY(mu_) = 0;
  Event done_ ABSL_GUARDED_BY(mu_) = 0;
  Event compute_waits_for_ ABSL_GUARDED_BY(mu_) = 0;
  bool fail_gather_ ABSL_GUARDED_BY(mu_) = false;
  int fail_scatter_layer_ ABSL_GUARDED_BY(mu_) = -1;
  int bad_rows_ ABSL_GUARDED_BY(mu_) = 0;
  int order_after_compute_ ABSL_GUARDED_BY(mu_) = 0;
  int staging_handed_out_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<VqDecodePlan> plan_;  // set under mu_, then only read
  bool refuse_codebooks_ ABSL_GUARDED_BY(mu_) = false;
  int coded_scatters_ ABSL_GUARDED_BY(mu_) = 0;
  const VqDecodePlan* encode_plan_ = nullptr;  // set under mu_, then read
  const VqCodec* encode_codec_ = nullptr;      // ditto
  int encoded_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread worker_;
};

}  // namespace vqkv::client::testing

#endif  // VQKV_TESTS_UNIT_CLIENT_FAKE_KV_DEVICE_H_
