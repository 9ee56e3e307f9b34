#include "service/metrics.h"

#include <charconv>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "httplib.h"

namespace vqkv::service {
namespace {

std::string Num(double v) { return absl::StrFormat("%.9g", v); }

// A status code's name as labels show it: "OK", "RESOURCE_EXHAUSTED", ...
std::string CodeName(int code) {
  std::string name =
      absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? "UNKNOWN" : name;
}

}  // namespace

void AppendMetricHeader(std::string* out, absl::string_view name,
                        absl::string_view type, absl::string_view help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type,
                  "\n");
}

void AppendMetricSample(std::string* out, absl::string_view name,
                        absl::string_view labels, uint64_t value) {
  if (labels.empty()) {
    absl::StrAppend(out, name, " ", value, "\n");
  } else {
    absl::StrAppend(out, name, "{", labels, "} ", value, "\n");
  }
}

void AppendMetricSample(std::string* out, absl::string_view name,
                        absl::string_view labels, double value) {
  if (labels.empty()) {
    absl::StrAppend(out, name, " ", Num(value), "\n");
  } else {
    absl::StrAppend(out, name, "{", labels, "} ", Num(value), "\n");
  }
}

void AppendMetric(std::string* out, absl::string_view name,
                  absl::string_view type, absl::string_view help,
                  uint64_t value) {
  AppendMetricHeader(out, name, type, help);
  AppendMetricSample(out, name, "", value);
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
  AppendMetricHeader(&out, "vqkv_requests_total", "counter",
                     "RPCs finished, by method and gRPC status code.");
  for (const auto& [key, n] : requests_) {
    AppendMetricSample(&out, "vqkv_requests_total",
                       absl::StrCat("method=\"", key.first, "\",code=\"",
                                    CodeName(key.second), "\""),
                       n);
  }
  AppendMetricHeader(&out, "vqkv_errors_total", "counter",
                     "RPCs finished with a non-OK status, by code.");
  for (const auto& [code, n] : errors_) {
    AppendMetricSample(&out, "vqkv_errors_total",
                       absl::StrCat("code=\"", CodeName(code), "\""), n);
  }
  RenderLatencyLocked(&out);
  RenderHitsLocked(&out);
  AppendMetric(&out, "vqkv_bytes_received_total", "counter",
               "Encoded block bytes received by puts.", bytes_received_.load());
  AppendMetric(&out, "vqkv_bytes_sent_total", "counter",
               "Encoded block bytes sent by gets.", bytes_sent_.load());
  AppendMetric(&out, "vqkv_blocks_stored_total", "counter",
               "Blocks newly stored by puts.", blocks_stored_.load());
  AppendMetric(&out, "vqkv_auth_failures_total", "counter",
               "Calls refused before their handler ran: no or an unknown "
               "bearer token.",
               auth_failures_.load());
  return out;
}

void Metrics::RenderLatencyLocked(std::string* out) const {
  constexpr absl::string_view kLatency = "vqkv_request_duration_seconds";
  AppendMetricHeader(out, kLatency, "histogram",
                     "RPC latency from arrival to completion, by method.");
  for (const auto& [method, h] : latency_) {
    const std::string label = absl::StrCat("method=\"", method, "\"");
    const std::string bucket = absl::StrCat(kLatency, "_bucket");
    uint64_t cumulative = 0;
    for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
      cumulative += h.buckets[i];
      AppendMetricSample(
          out, bucket,
          absl::StrCat(label, ",le=\"", Num(kLatencyBuckets[i]), "\""),
          cumulative);
    }
    AppendMetricSample(out, bucket, absl::StrCat(label, ",le=\"+Inf\""),
                       h.count);
    AppendMetricSample(out, absl::StrCat(kLatency, "_sum"), label, h.sum);
    AppendMetricSample(out, absl::StrCat(kLatency, "_count"), label, h.count);
  }
}

void Metrics::RenderHitsLocked(std::string* out) const {
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
    AppendMetricHeader(out, f.name, "counter", f.help);
    for (const auto& [op, c] : hits_) {
      AppendMetricSample(out, f.name, absl::StrCat("op=\"", op, "\""),
                         c.*(f.member));
    }
  }
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
