// Prometheus metrics of vqkv-server and the HTTP endpoint that serves them.
//
// Metrics (text exposition format 0.0.4):
//   vqkv_requests_total{method,code}          RPCs finished, by status code
//   vqkv_errors_total{code}                   RPCs finished with a non-OK code
//   vqkv_request_duration_seconds{method}     latency histogram
//   vqkv_block_hits_total{op} / vqkv_block_misses_total{op}
//   vqkv_token_hits_total{op} / vqkv_token_misses_total{op}
//                                             op = lookup | get
//   vqkv_bytes_received_total / vqkv_bytes_sent_total   block payload bytes
//   vqkv_blocks_stored_total                  blocks newly stored by puts
//   vqkv_auth_failures_total                  calls refused for their token
// plus whatever the server appends (store gauges: bytes per tier,
// evictions, faults) through the render callback.
//
// Thread safety: every method is thread-safe.
#ifndef VQKV_SERVICE_METRICS_H_
#define VQKV_SERVICE_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace httplib {
class Server;
}

namespace vqkv::service {

// The Prometheus text writer (exposition format 0.0.4), used by
// Metrics::Render and by whatever a render callback appends (the server's
// store gauges). AppendMetricHeader starts a metric family:
// "# HELP name help\n# TYPE name type\n". AppendMetricSample writes one
// sample, "name{labels} value\n"; labels are `tier="disk"` pairs without the
// braces, empty for none. AppendMetric is a family of one unlabelled sample.
void AppendMetricHeader(std::string* out, absl::string_view name,
                        absl::string_view type, absl::string_view help);
void AppendMetricSample(std::string* out, absl::string_view name,
                        absl::string_view labels, uint64_t value);
void AppendMetricSample(std::string* out, absl::string_view name,
                        absl::string_view labels, double value);
void AppendMetric(std::string* out, absl::string_view name,
                  absl::string_view type, absl::string_view help,
                  uint64_t value);

class Metrics {
 public:
  // Upper bounds (seconds) of the latency histogram buckets.
  static constexpr std::array<double, 14> kLatencyBuckets = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
      0.025,  0.05,    0.1,    0.25,  0.5,    1.0,   2.5};

  void RecordRpc(absl::string_view method, int code, double seconds);
  // op: "lookup" or "get".
  void RecordHits(absl::string_view op, uint64_t hit_blocks,
                  uint64_t miss_blocks, uint64_t hit_tokens,
                  uint64_t miss_tokens);
  void AddBytesReceived(uint64_t n) { bytes_received_ += n; }
  void AddBytesSent(uint64_t n) { bytes_sent_ += n; }
  void AddBlocksStored(uint64_t n) { blocks_stored_ += n; }
  // A call refused before its handler ran: no or an unknown bearer token
  // (service/auth_credentials.h).
  void AddAuthFailure() { auth_failures_ += 1; }

  // The exposition text of every metric above.
  std::string Render() const;

 private:
  struct Histogram {
    std::array<uint64_t, kLatencyBuckets.size()> buckets{};  // non-cumulative
    uint64_t count = 0;
    double sum = 0;
  };
  struct HitCounters {
    uint64_t hit_blocks = 0, miss_blocks = 0, hit_tokens = 0, miss_tokens = 0;
  };

  // Render's latency histogram and hit counters.
  void RenderLatencyLocked(std::string* out) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RenderHitsLocked(std::string* out) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_
      ABSL_GUARDED_BY(mu_);
  std::map<int, uint64_t> errors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Histogram> latency_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, HitCounters> hits_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> blocks_stored_{0};
  std::atomic<uint64_t> auth_failures_{0};
};

// A small HTTP server on its own thread: GET /metrics (Prometheus text from
// `render`), GET /healthz (200 "ok" while `healthy` returns true, else 503).
class MetricsHttpServer {
 public:
  MetricsHttpServer(std::function<std::string()> render,
                    std::function<bool()> healthy);
  ~MetricsHttpServer();  // Stops the server.
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Binds host:port (port 0 = any free port) and starts serving. Returns the
  // bound port. Errors: kInvalidArgument for a bad address, kUnavailable
  // when binding fails. REQUIRES: called at most once.
  absl::StatusOr<int> Start(const std::string& host_port);
  // Stops serving and joins the thread. Idempotent.
  void Stop();

 private:
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
};

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_METRICS_H_
