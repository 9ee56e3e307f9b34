#include "service/server.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/logging.h"
#include "base/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "service/auth_credentials.h"

namespace vqkv::service {
namespace {

// TLS from config.tls_cert / tls_key (and tls_client_ca for mTLS), or
// plaintext when they are empty. The files are read here once so a missing
// or non-PEM file fails the start instead of every handshake; gRPC reads
// them again every tls_reload_seconds (service/auth_credentials.h). With
// auth on, the credentials authenticate every call from its metadata before
// its request is read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(
    const ServerConfig& config, const TokenStore& tokens, Metrics* metrics) {
  const TokenStore* auth = tokens.enabled() ? &tokens : nullptr;
  if (config.tls_cert.empty()) {
    return MakeServerCredentials(auth, metrics, nullptr);
  }
  VQKV_RETURN_IF_ERROR(
      base::ReadPemFile(config.tls_cert, "certificate").status());
  VQKV_RETURN_IF_ERROR(base::ReadPemFile(config.tls_key, "key").status());
  if (!config.tls_client_ca.empty()) {
    VQKV_RETURN_IF_ERROR(
        base::ReadPemFile(config.tls_client_ca, "client CA").status());
  }
  TlsFiles tls;
  tls.cert = config.tls_cert;
  tls.key = config.tls_key;
  tls.client_ca = config.tls_client_ca;
  tls.reload_seconds = config.tls_reload_seconds;
  return MakeServerCredentials(auth, metrics, &tls);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerConfig& config) {
  VQKV_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Server> server(new Server(config));

  if (!config.tokens_file.empty()) {
    VQKV_ASSIGN_OR_RETURN(server->tokens_,
                          TokenStore::Load(config.tokens_file));
    VQKV_LOG(kInfo) << "auth on: " << server->tokens_.size()
                    << " token(s) from " << config.tokens_file;
    if (config.tls_cert.empty() && !IsLoopbackListen(config.listen)) {
      VQKV_LOG(kWarning)
          << "bearer tokens travel in PLAINTEXT: " << config.listen
          << " is not a loopback address and TLS is off, so anyone on the "
             "network path can read the tokens and act as their tenants. "
             "Give --tls-cert and --tls-key (or terminate TLS in front of "
             "the server on this host).";
    }
  } else {
    VQKV_LOG(kWarning)
        << "AUTH IS OFF (no --tokens-file): every caller is the anonymous "
           "tenant and can read and write all of its data. Use --tokens-file "
           "for anything but a local test.";
  }

  storage::TieredStoreOptions store_options = config.store;
  store_options.disk_bytes = StoreDiskBytes(config.store.disk_bytes);
  VQKV_ASSIGN_OR_RETURN(server->store_,
                        storage::TieredStore::Open(std::move(store_options)));
  server->service_ =
      std::make_unique<KvCacheService>(server->store_.get(), &server->tokens_,
                                       &server->metrics_, config.service);

  VQKV_ASSIGN_OR_RETURN(
      std::shared_ptr<grpc::ServerCredentials> creds,
      Credentials(config, server->tokens_, &server->metrics_));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.listen, creds, &port);
  const int max_msg = static_cast<int>(config.service.max_message_bytes);
  builder.SetMaxReceiveMessageSize(max_msg);
  builder.SetMaxSendMessageSize(max_msg);
  // Admission at the transport: calls open at once per connection, and the
  // memory gRPC may hold in buffers (requests being received, responses
  // being sent) across all connections.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             config.max_concurrent_streams);
  if (config.grpc_memory_bytes != 0) {
    grpc::ResourceQuota quota("vqkv-server");
    quota.Resize(static_cast<size_t>(config.grpc_memory_bytes));
    builder.SetResourceQuota(quota);
  }
  builder.RegisterService(server->service_.get());
  server->grpc_ = builder.BuildAndStart();
  if (server->grpc_ == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", config.listen));
  }
  server->port_ = port;
  server->serving_ = true;

  if (!config.metrics_listen.empty()) {
    Server* raw = server.get();
    server->http_ = std::make_unique<MetricsHttpServer>(
        [raw] { return raw->RenderMetrics(); },
        [raw] { return raw->serving_.load(); });
    auto mport = server->http_->Start(config.metrics_listen);
    if (!mport.ok()) {
      server->grpc_->Shutdown();
      return mport.status();
    }
    server->metrics_port_ = *mport;
  }
  return server;
}

Server::~Server() { (void)Shutdown(absl::ZeroDuration()); }

absl::Status Server::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return absl::OkStatus();
    shut_down_ = true;
  }
  serving_ = false;
  if (grpc_ != nullptr) {
    if (auto* health = grpc_->GetHealthCheckService()) health->Shutdown();
    // New calls get UNAVAILABLE from here on; accepted ones run to the end
    // (up to `grace`). Then the gRPC server shuts down at once: it cancels
    // whatever is left and closes idle client connections, which would
    // otherwise hold Shutdown until its deadline. Cancelled reactors finish
    // through the workers, which keep running until every call is done.
    service_->BeginDrain();
    if (!service_->WaitIdle(grace)) {
      VQKV_LOG(kWarning)
          << "calls still running after the grace period; cancelling them";
    }
    grpc_->Shutdown(absl::ToChronoTime(absl::Now()));
    grpc_->Wait();
  }
  if (service_ != nullptr) service_->StopWorkers();
  if (http_ != nullptr) http_->Stop();
  absl::Status flushed = absl::OkStatus();
  if (store_ != nullptr) flushed = store_->Flush();
  return flushed;
}

std::string Server::RenderMetrics() const {
  std::string out = metrics_.Render();
  const storage::StoreStats st = store_->Stats();
  AppendMetricHeader(&out, "vqkv_tier_bytes", "gauge",
                     "Block bytes held per tier.");
  AppendMetricSample(&out, "vqkv_tier_bytes", "tier=\"memory\"",
                     st.memory.bytes);
  AppendMetricSample(&out, "vqkv_tier_bytes", "tier=\"disk\"", st.disk.bytes);
  AppendMetricHeader(&out, "vqkv_tier_blocks", "gauge",
                     "Blocks held per tier.");
  AppendMetricSample(&out, "vqkv_tier_blocks", "tier=\"memory\"",
                     st.memory.blocks);
  AppendMetricSample(&out, "vqkv_tier_blocks", "tier=\"disk\"", st.disk.blocks);
  AppendMetric(&out, "vqkv_memory_evictions_total", "counter",
               "Blocks evicted from the memory tier.", st.memory_evictions);
  AppendMetric(&out, "vqkv_spills_total", "counter",
               "Blocks evicted from memory and written to disk.", st.spills);
  AppendMetric(&out, "vqkv_dropped_total", "counter",
               "Blocks that left the store for lack of room.", st.dropped);
  AppendMetric(&out, "vqkv_promotions_total", "counter",
               "Disk hits copied back into memory.", st.promotions);
  AppendMetricHeader(&out, "vqkv_store_hits_total", "counter",
                     "Store reads by tier.");
  AppendMetricSample(&out, "vqkv_store_hits_total", "tier=\"memory\"",
                     st.memory_hits);
  AppendMetricSample(&out, "vqkv_store_hits_total", "tier=\"disk\"",
                     st.disk_hits);
  AppendMetric(&out, "vqkv_store_misses_total", "counter",
               "Store reads that missed.", st.misses);
  AppendMetric(&out, "vqkv_expired_total", "counter",
               "Disk records dropped by the TTL.", st.expired);
  AppendMetric(&out, "vqkv_corrupt_dropped_total", "counter",
               "Disk records that failed verification (dropped, never served).",
               st.corrupt_dropped);
  AppendMetric(&out, "vqkv_disk_faults_total", "counter",
               "Failed disk operations (the store keeps serving from memory).",
               st.disk_faults);
  AppendMetric(&out, "vqkv_quota_rejections_total", "counter",
               "Puts refused by a tenant quota.", st.quota_rejections);
  AppendMetric(&out, "vqkv_namespaces", "gauge", "Registered namespaces.",
               st.namespaces);
  AppendMetric(&out, "vqkv_codebooks", "gauge", "Registered codebook sets.",
               st.codebooks);
  AppendMetric(&out, "vqkv_up", "gauge", "1 while serving.",
               uint64_t{serving_.load() ? 1u : 0u});
  return out;
}

}  // namespace vqkv::service
