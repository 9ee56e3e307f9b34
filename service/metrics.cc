#include "service/metrics.h"

#include <charconv>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "httplib.h"

namespace vqkv::service {
namespace {

std::string Num(double v) { return absl::StrFormat("%.9g", v); }

void Header(std::string* out, absl::string_view name, absl::string_view type,
            absl::string_view help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type,
                  "\n");
}

}  // namespace

absl::string_view StatusCodeName(int code) {
  static constexpr absl::string_view kNames[] = {"OK",
                                                 "CANCELLED",
                                                 "UNKNOWN",
                                                 "INVALID_ARGUMENT",
                                                 "DEADLINE_EXCEEDED",
                                                 "NOT_FOUND",
                                                 "ALREADY_EXISTS",
                                                 "PERMISSION_DENIED",
                                                 "RESOURCE_EXHAUSTED",
                                                 "FAILED_PRECONDITION",
                                                 "ABORTED",
                                                 "OUT_OF_RANGE",
                                                 "UNIMPLEMENTED",
                                                 "INTERNAL",
                                                 "UNAVAILABLE",
                                                 "DATA_LOSS",
                                                 "UNAUTHENTICATED"};
  if (code < 0 || code > 16) return "UNKNOWN";
  return kNames[code];
}

void Metrics::RecordRpc(absl::string_view method, int code, double seconds) {
  absl::MutexLock lock(&mu_);
  ++requests_[{std::string(method), code}];
  if (code != 0) ++errors_[code];
  Histogram& h = latency_[std::string(method)];
  ++h.count;
  h.sum += seconds;
  for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
    if (seconds <= kLatencyBuckets[i]) {
      ++h.buckets[i];
      break;
    }
  }
}

void Metrics::RecordHits(absl::string_view op, uint64_t hit_blocks,
                         uint64_t miss_blocks, uint64_t hit_tokens,
                         uint64_t miss_tokens) {
  absl::MutexLock lock(&mu_);
  HitCounters& c = hits_[std::string(op)];
  c.hit_blocks += hit_blocks;
  c.miss_blocks += miss_blocks;
  c.hit_tokens += hit_tokens;
  c.miss_tokens += miss_tokens;
}

std::string Metrics::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  Header(&out, "vqkv_requests_total", "counter",
         "RPCs finished, by method and gRPC status code.");
  for (const auto& [key, n] : requests_) {
    absl::StrAppend(&out, "vqkv_requests_total{method=\"", key.first,
                    "\",code=\"", StatusCodeName(key.second), "\"} ", n, "\n");
  }
  Header(&out, "vqkv_errors_total", "counter",
         "RPCs finished with a non-OK status, by code.");
  for (const auto& [code, n] : errors_) {
    absl::StrAppend(&out, "vqkv_errors_total{code=\"", StatusCodeName(code),
                    "\"} ", n, "\n");
  }
  Header(&out, "vqkv_request_duration_seconds", "histogram",
         "RPC latency from arrival to completion, by method.");
  for (const auto& [method, h] : latency_) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
      cumulative += h.buckets[i];
      absl::StrAppend(&out, "vqkv_request_duration_seconds_bucket{method=\"",
                      method, "\",le=\"", Num(kLatencyBuckets[i]), "\"} ",
                      cumulative, "\n");
    }
    absl::StrAppend(&out, "vqkv_request_duration_seconds_bucket{method=\"",
                    method, "\",le=\"+Inf\"} ", h.count, "\n");
    absl::StrAppend(&out, "vqkv_request_duration_seconds_sum{method=\"", method,
                    "\"} ", Num(h.sum), "\n");
    absl::StrAppend(&out, "vqkv_request_duration_seconds_count{method=\"",
                    method, "\"} ", h.count, "\n");
  }
  struct Field {
    const char* name;
    const char* help;
    uint64_t HitCounters::*member;
  };
  static constexpr Field kFields[] = {
      {"vqkv_block_hits_total", "Blocks found, by operation.",
       &HitCounters::hit_blocks},
      {"vqkv_block_misses_total", "Blocks not found, by operation.",
       &HitCounters::miss_blocks},
      {"vqkv_token_hits_total",
       "Tokens in blocks found (lookup counts block_tokens per block, get "
       "the tokens in the block header).",
       &HitCounters::hit_tokens},
      {"vqkv_token_misses_total",
       "Tokens in blocks not found (block_tokens per missing block).",
       &HitCounters::miss_tokens},
  };
  for (const Field& f : kFields) {
    Header(&out, f.name, "counter", f.help);
    for (const auto& [op, c] : hits_) {
      absl::StrAppend(&out, f.name, "{op=\"", op, "\"} ", c.*(f.member), "\n");
    }
  }
  Header(&out, "vqkv_bytes_received_total", "counter",
         "Encoded block bytes received by puts.");
  absl::StrAppend(&out, "vqkv_bytes_received_total ", bytes_received_.load(),
                  "\n");
  Header(&out, "vqkv_bytes_sent_total", "counter",
         "Encoded block bytes sent by gets.");
  absl::StrAppend(&out, "vqkv_bytes_sent_total ", bytes_sent_.load(), "\n");
  Header(&out, "vqkv_blocks_stored_total", "counter",
         "Blocks newly stored by puts.");
  absl::StrAppend(&out, "vqkv_blocks_stored_total ", blocks_stored_.load(),
                  "\n");
  return out;
}

MetricsHttpServer::MetricsHttpServer(std::function<std::string()> render,
                                     std::function<bool()> healthy)
    : http_(std::make_unique<httplib::Server>()) {
  http_->Get("/metrics", [render = std::move(render)](const httplib::Request&,
                                                      httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http_->Get("/healthz", [healthy = std::move(healthy)](
                             const httplib::Request&, httplib::Response& res) {
    if (healthy()) {
      res.set_content("ok\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content("shutting down\n", "text/plain");
    }
  });
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::StatusOr<int> MetricsHttpServer::Start(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(host_port.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address must be host:port, got '", host_port, "'"));
  }
  std::string host = host_port.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int bound = port;
  if (port == 0) {
    bound = http_->bind_to_any_port(host);
  } else if (!http_->bind_to_port(host, port)) {
    bound = -1;
  }
  if (bound <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot bind the metrics endpoint to ", host_port));
  }
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return bound;
}

void MetricsHttpServer::Stop() {
  if (thread_.joinable()) {
    http_->stop();
    thread_.join();
  }
}

}  // namespace vqkv::service
