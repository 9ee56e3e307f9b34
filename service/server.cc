#include "service/server.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"

namespace vqkv::service {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read TLS ", what, " '", path, "'"));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string pem = ss.str();
  if (pem.find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS ", what, " '", path, "' is not PEM"));
  }
  return pem;
}

void Gauge(std::string* out, absl::string_view name, absl::string_view type,
           absl::string_view help, absl::string_view labels, uint64_t value) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type,
                  "\n", name, labels, " ", value, "\n");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerConfig& config) {
  absl::Status s = config.Validate();
  if (!s.ok()) return s;
  std::unique_ptr<Server> server(new Server(config));

  if (!config.tokens_file.empty()) {
    auto tokens = TokenStore::Load(config.tokens_file);
    if (!tokens.ok()) return tokens.status();
    server->tokens_ = *std::move(tokens);
    std::fprintf(stderr, "vqkv-server: auth on: %zu token(s) from %s\n",
                 server->tokens_.size(), config.tokens_file.c_str());
  } else {
    std::fprintf(stderr,
                 "vqkv-server: WARNING: AUTH IS OFF (no --tokens-file): every "
                 "caller is the anonymous tenant and can read and write all "
                 "of its data. Use --tokens-file for anything but a local "
                 "test.\n");
  }

  storage::TieredStoreOptions opt;
  opt.memory_bytes = config.memory_bytes;
  opt.data_dir = config.data_dir;
  opt.disk_bytes = config.disk_bytes;
  opt.durability = config.durability;
  opt.write_policy = config.write_policy;
  opt.ttl = absl::Seconds(static_cast<int64_t>(config.ttl_seconds));
  opt.default_tenant_quota = config.default_quota_bytes;
  opt.file_system = config.file_system;
  for (const auto& [tenant, quota] : config.tenant_quotas) {
    opt.tenant_quotas[tenant] = quota;
  }
  auto store = storage::TieredStore::Open(std::move(opt));
  if (!store.ok()) return store.status();
  server->store_ = *std::move(store);

  KvServiceOptions sopt;
  sopt.max_message_bytes = config.max_message_bytes;
  sopt.workers =
      config.workers > 0
          ? config.workers
          : std::max(8,
                     2 * static_cast<int>(std::thread::hardware_concurrency()));
  sopt.max_lease = absl::Milliseconds(config.max_lease_ms);
  server->service_ = std::make_unique<KvCacheService>(
      server->store_.get(), &server->tokens_, &server->metrics_, sopt);

  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!config.tls_cert.empty()) {
    auto cert = ReadPem(config.tls_cert, "certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(config.tls_key, "key");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.listen, creds, &port);
  const int max_msg = static_cast<int>(config.max_message_bytes);
  builder.SetMaxReceiveMessageSize(max_msg);
  builder.SetMaxSendMessageSize(max_msg);
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
      std::fprintf(stderr,
                   "vqkv-server: calls still running after the grace "
                   "period; cancelling them\n");
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
  absl::StrAppend(&out,
                  "# HELP vqkv_tier_bytes Block bytes held per tier.\n"
                  "# TYPE vqkv_tier_bytes gauge\n",
                  "vqkv_tier_bytes{tier=\"memory\"} ", st.memory.bytes, "\n",
                  "vqkv_tier_bytes{tier=\"disk\"} ", st.disk.bytes, "\n");
  absl::StrAppend(&out,
                  "# HELP vqkv_tier_blocks Blocks held per tier.\n"
                  "# TYPE vqkv_tier_blocks gauge\n",
                  "vqkv_tier_blocks{tier=\"memory\"} ", st.memory.blocks, "\n",
                  "vqkv_tier_blocks{tier=\"disk\"} ", st.disk.blocks, "\n");
  Gauge(&out, "vqkv_memory_evictions_total", "counter",
        "Blocks evicted from the memory tier.", "", st.memory_evictions);
  Gauge(&out, "vqkv_spills_total", "counter",
        "Blocks evicted from memory and written to disk.", "", st.spills);
  Gauge(&out, "vqkv_dropped_total", "counter",
        "Blocks that left the store for lack of room.", "", st.dropped);
  Gauge(&out, "vqkv_promotions_total", "counter",
        "Disk hits copied back into memory.", "", st.promotions);
  Gauge(&out, "vqkv_store_hits_total", "counter", "Store reads by tier.",
        "{tier=\"memory\"}", st.memory_hits);
  absl::StrAppend(&out, "vqkv_store_hits_total{tier=\"disk\"} ", st.disk_hits,
                  "\n");
  Gauge(&out, "vqkv_store_misses_total", "counter", "Store reads that missed.",
        "", st.misses);
  Gauge(&out, "vqkv_expired_total", "counter",
        "Disk records dropped by the TTL.", "", st.expired);
  Gauge(&out, "vqkv_corrupt_dropped_total", "counter",
        "Disk records that failed verification (dropped, never served).", "",
        st.corrupt_dropped);
  Gauge(&out, "vqkv_disk_faults_total", "counter",
        "Failed disk operations (the store keeps serving from memory).", "",
        st.disk_faults);
  Gauge(&out, "vqkv_quota_rejections_total", "counter",
        "Puts refused by a tenant quota.", "", st.quota_rejections);
  Gauge(&out, "vqkv_namespaces", "gauge", "Registered namespaces.", "",
        st.namespaces);
  Gauge(&out, "vqkv_codebooks", "gauge", "Registered codebook sets.", "",
        st.codebooks);
  Gauge(&out, "vqkv_up", "gauge", "1 while serving.", "",
        serving_.load() ? 1 : 0);
  return out;
}

}  // namespace vqkv::service
