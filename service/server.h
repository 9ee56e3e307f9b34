// vqkv-server as a library: opens the tiered store, starts the gRPC server
// (KVCache, health, reflection) and the metrics endpoint, and shuts them
// down in order. service/main.cc wraps it with flags and signals.
//
// Thread safety: Start, Shutdown and Wait may be called from different
// threads; Shutdown is idempotent.
#ifndef VQKV_SERVICE_SERVER_H_
#define VQKV_SERVICE_SERVER_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "service/auth.h"
#include "service/config.h"
#include "service/kv_service.h"
#include "service/metrics.h"
#include "storage/tiered_store.h"

namespace vqkv::service {

class Server {
 public:
  // Opens the store (config.store), loads tokens, binds the gRPC port
  // and (when configured) the metrics port, and starts serving.
  // Errors: kInvalidArgument for a bad config; the store's open error;
  // kNotFound / kInvalidArgument for a bad tokens file or TLS file;
  // kUnavailable when a port cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServerConfig& config);
  ~Server();  // Shutdown(0) if still running.

  // The bound gRPC port (the real one when config.listen used port 0).
  int port() const { return port_; }
  // The bound metrics port, 0 when metrics are off.
  int metrics_port() const { return metrics_port_; }
  const ServerConfig& config() const { return config_; }
  bool auth_enabled() const { return tokens_.enabled(); }

  // Stops accepting calls, waits up to `grace` for in-flight calls (then
  // cancels them), stops the metrics endpoint and flushes the store.
  // Returns the flush status. Idempotent: later calls return OK at once.
  absl::Status Shutdown(absl::Duration grace);

  // Prometheus text: the service metrics plus store gauges.
  std::string RenderMetrics() const;

 private:
  explicit Server(const ServerConfig& config) : config_(config) {}

  ServerConfig config_;
  TokenStore tokens_;
  Metrics metrics_;
  std::unique_ptr<storage::TieredStore> store_;
  std::unique_ptr<KvCacheService> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<MetricsHttpServer> http_;
  int port_ = 0;
  int metrics_port_ = 0;
  std::atomic<bool> serving_{false};
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_SERVER_H_
