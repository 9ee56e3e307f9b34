// RvqBatchEncoder: where a VqCodec runs the greedy RVQ encodes of one
// Encode or EncodeMany call. By default the codec encodes quantizer by
// quantizer on the CPU; with a batch encoder (VqCodec::SetBatchEncoder) it
// hands every job of the call over at once (each payload's layers' key
// groups and values, each head's when codebooks are per head), so a GPU can
// encode them all in one launch (client/cuda/cuda_rvq_encoder.h).
//
// Contract: EncodeGreedy writes, for every job, greedy codes: at each stage
// the nearest codeword, or one whose score is within the implementation's
// stated bound of the nearest (job.q->EncodeGreedy's picks up to float
// near-ties; the CUDA encoder's within its bf16 bound). The codec builds a
// valid block from either; blocks are found by their tokens' hashes, not
// their bytes, so blocks encoded with and without a batch encoder share the
// store.
//
// Errors: any status; the codec's Encode then fails with it (it does not
// fall back to the CPU, so a broken device is visible as failed encodes,
// not as a silent slowdown).
//
// Thread safety: EncodeGreedy may be called from several threads at once
// (a codec encodes blocks concurrently); implementations serialise or not
// as they need.
#ifndef VQKV_KERNELS_RVQ_BATCH_ENCODER_H_
#define VQKV_KERNELS_RVQ_BATCH_ENCODER_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/rvq.h"

namespace vqkv {

class RvqBatchEncoder {
 public:
  // n vectors x [n][q->dim()] to code under q into codes [n][q->stages()].
  // q is a fitted quantizer owned by the codec; it lives and stays
  // unchanged as long as the codec does, so implementations may cache
  // device copies of its codebooks by its address.
  struct Job {
    const ResidualQuantizer* q = nullptr;
    const float* x = nullptr;
    int64_t n = 0;
    uint16_t* codes = nullptr;
  };

  virtual ~RvqBatchEncoder() = default;

  virtual absl::Status EncodeGreedy(absl::Span<const Job> jobs) = 0;
};

}  // namespace vqkv

#endif  // VQKV_KERNELS_RVQ_BATCH_ENCODER_H_
