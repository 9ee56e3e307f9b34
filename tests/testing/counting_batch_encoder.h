// A RvqBatchEncoder for tests: encodes each job with its quantizer on the
// CPU (so payloads are the CPU path's), counts calls and jobs, and fails
// every call with `error` when that is set.
//
// Thread safety: EncodeGreedy may run on several threads; set `error`
// before sharing.
#ifndef VQKV_TESTS_TESTING_COUNTING_BATCH_ENCODER_H_
#define VQKV_TESTS_TESTING_COUNTING_BATCH_ENCODER_H_

#include <atomic>

#include "absl/status/status.h"
#include "kernels/rvq_batch_encoder.h"

namespace vqkv::testing {

class CountingBatchEncoder : public RvqBatchEncoder {
 public:
  absl::Status EncodeGreedy(absl::Span<const Job> jobs) override {
    calls.fetch_add(1);
    job_count.fetch_add(static_cast<int>(jobs.size()));
    if (!error.ok()) return error;
    for (const Job& j : jobs) {
      if (absl::Status s = j.q->EncodeGreedy(j.x, j.n, j.codes); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  std::atomic<int> calls{0};
  std::atomic<int> job_count{0};
  absl::Status error;
};

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_TESTING_COUNTING_BATCH_ENCODER_H_
