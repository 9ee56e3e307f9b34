// KvDevice: how the connector reaches KV caches in device (CUDA) memory. It
// moves one layer's rows between the engine's pages and host float32 rows,
// ordered with the engine's compute stream, so that neither a save nor a
// load makes the forward pass wait on the host:
//
//   SaveLayer(l):        OrderAfterCompute(), Gather(l, rows): after the
//                        layer's compute; the encoder Waits for it on a
//                        background thread.
//   WaitForSave():       ComputeStreamWaitFor(last gather): later kernels
//                        may overwrite the pages only once they are copied.
//   StartLoad():         OrderAfterCompute(): the pages may still be read
//                        by kernels of earlier passes.
//   load thread:         decodes layer l into staging, Scatter(l, rows);
//                        or, with EnableDecode, ScatterCoded(l, coded rows):
//                        the device decodes the codes into the pages.
//   SaveLayer(l), with EnableEncode: OrderAfterCompute(), EncodeLayer(l,
//                        rows): the device codes the pages' rows and writes
//                        each block's slices of the layer into staging.
//   WaitForLayerLoad(l): ComputeStreamWaitFor(layer l's scatter).
//
// Ordering model: a device runs the operations it is given in submission
// order on its own queue (for CUDA, a stream of its own). An Event names a
// submitted operation; it is done once that operation and every one before
// it are. Host rows must come from NewStaging (memory the device reads and
// writes directly: pinned and mapped for CUDA) and must stay alive and
// untouched until the operation's event is done.
//
// Implementations: client/cuda/cuda_kv_device.h (CUDA); a host emulation
// in the tests (tests/unit/client/fake_kv_device.h).
//
// Thread safety: every method may be called from any thread.
#ifndef VQKV_CLIENT_KV_DEVICE_H_
#define VQKV_CLIENT_KV_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/paged_kv.h"

namespace vqkv {
struct VqDecodePlan;  // kernels/vq_decode_plan.h
class VqCodec;        // kernels/vq_codec.h
}  // namespace vqkv

namespace vqkv::client {

class KvDevice {
 public:
  using Event = uint64_t;

  // A run of a request's tokens [t0, t0 + n) of one layer, and the host rows
  // ([n][kv_heads][head_dim] float32 each) they come from or go to.
  struct Rows {
    absl::Span<const int32_t> block_ids;  // the request's engine pages
    int64_t t0 = 0;
    int64_t n = 0;
    float* keys = nullptr;
    float* values = nullptr;
  };

  // One block's codes for one layer: the block holds the request's tokens
  // [t0, t0 + n) (at those positions: a chain starts at position 0), and
  // key_codes / value_codes / refine_codes are its VqDecodePlan::Slices of
  // that layer (refine_codes empty for a layer without a key refinement).
  struct CodedRows {
    absl::Span<const int32_t> block_ids;  // the request's engine pages
    int64_t t0 = 0;
    int64_t n = 0;
    absl::Span<const uint8_t> key_codes;
    absl::Span<const uint8_t> value_codes;
    absl::Span<const uint8_t> refine_codes;
  };

  // One block to encode from the pages: the request's tokens [t0, t0 + n)
  // (at those positions), and where its slices of the layer go (the sizes of
  // VqDecodePlan::Slices(n, layer), in staging from NewStaging; refine_codes
  // null on a layer without a key refinement).
  struct EncodeRows {
    absl::Span<const int32_t> block_ids;  // the request's engine pages
    int64_t t0 = 0;
    int64_t n = 0;
    uint8_t* key_codes = nullptr;
    uint8_t* value_codes = nullptr;
    uint8_t* refine_codes = nullptr;
  };

  virtual ~KvDevice() = default;

  // `floats` float32s of host memory the device can read and write, freed
  // when the last copy of the pointer goes; null when none can be had.
  virtual std::shared_ptr<float[]> NewStaging(size_t floats) = 0;

  // Makes the operations submitted from now on run after all the work the
  // engine has submitted to its compute stream so far. Call it from the
  // thread that drives the engine's stream, never from a thread that may
  // run while the engine enqueues work that waits for this device (that
  // would order the device after work that waits for it).
  // Errors: the device's (kInternal naming the CUDA error).
  virtual absl::Status OrderAfterCompute() = 0;

  // Enqueues the copy of `layer`'s rows into rows[i].keys/values.
  virtual absl::StatusOr<Event> Gather(int layer,
                                       absl::Span<const Rows> rows) = 0;
  // Enqueues the copy of rows[i].keys/values into `layer`'s pages (rounded
  // to the pages' dtype as ScatterLayer does).
  virtual absl::StatusOr<Event> Scatter(int layer,
                                        absl::Span<const Rows> rows) = 0;
  // Makes ScatterCoded decode with `plan` (copying what it needs: the plan
  // may go afterwards). Call once, before any ScatterCoded.
  // Errors: kUnimplemented for a device that cannot decode; the device's
  // (kResourceExhausted when the codebooks do not fit, kInternal).
  virtual absl::Status EnableDecode(const VqDecodePlan& plan) {
    (void)plan;
    return absl::UnimplementedError("this KV device does not decode codes");
  }
  // Enqueues decoding `layer` of each rows[i] into its pages (rounded to
  // the pages' dtype as Scatter rounds). The codes are copied before it
  // returns. Errors: kFailedPrecondition before EnableDecode;
  // kInvalidArgument for code slices of the wrong size; the device's.
  virtual absl::StatusOr<Event> ScatterCoded(int layer,
                                             absl::Span<const CodedRows> rows) {
    (void)layer;
    (void)rows;
    return absl::FailedPreconditionError("ScatterCoded before EnableDecode");
  }
  // Makes EncodeLayer encode with `codec`'s quantizers as `plan` (made from
  // it) lays them out; both must outlive the device. Call once, before any
  // EncodeLayer. Errors: kUnimplemented for a device that cannot encode (or
  // a shape its encoder refuses, naming it); the device's.
  virtual absl::Status EnableEncode(const VqDecodePlan& plan,
                                    const VqCodec& codec) {
    (void)plan;
    (void)codec;
    return absl::UnimplementedError("this KV device does not encode");
  }
  // Enqueues encoding `layer` of each rows[i] from the pages into its
  // slices (kernels/vq_layer_encode.h's arithmetic; each pick the CPU's or
  // within the device encoder's stated bound of it). Errors:
  // kFailedPrecondition before EnableEncode; the device's.
  virtual absl::StatusOr<Event> EncodeLayer(int layer,
                                            absl::Span<const EncodeRows> rows) {
    (void)layer;
    (void)rows;
    return absl::FailedPreconditionError("EncodeLayer before EnableEncode");
  }
  // Blocks the calling thread until `event` is done; an error if the
  // operations up to it failed on the device.
  virtual absl::Status Wait(Event event) = 0;
  // Makes the work the engine submits to its compute stream from now on
  // wait for `event`, without blocking the calling thread.
  virtual absl::Status ComputeStreamWaitFor(Event event) = 0;
};

// The device for `caches` (caches.device == Device::kCuda): a CUDA device
// in a build with CUDA. Errors: kUnimplemented in a build without CUDA;
// kFailedPrecondition when caches.cuda_device is not a usable GPU (the
// message says why, e.g. no driver).
absl::StatusOr<std::unique_ptr<KvDevice>> NewKvDevice(
    const PagedKvCaches& caches);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_KV_DEVICE_H_
