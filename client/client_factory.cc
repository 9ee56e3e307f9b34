#include "client/client_factory.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "client/cluster/cluster_backend.h"
#include "client/cluster/membership.h"
#include "client/embedded_backend.h"
#include "client/gpu_encoder.h"
#include "client/grpc/grpc_backend.h"
#include "kernels/codebook_set.h"
#include "kernels/codec_factory.h"
#include "storage/tiered_store.h"

namespace vqkv::client {
namespace {

constexpr absl::string_view kEmbedded = "embedded";

absl::Status WithPrefix(const absl::Status& s, absl::string_view prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(
    const std::string& server, const std::string& auth_token,
    uint64_t embedded_memory_bytes) {
  BackendConfig config;
  config.server = server;
  config.auth_token = auth_token;
  config.embedded_memory_bytes = embedded_memory_bytes;
  return OpenBackend(config);
}

absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(
    const BackendConfig& config) {
  const std::string& server = config.server;
  if (server.empty() || server == kEmbedded ||
      absl::StartsWith(server, absl::StrCat(kEmbedded, ":"))) {
    const TlsClientOptions& tls = config.tls;
    if (tls.enabled() || !tls.cert_file.empty() || !tls.key_file.empty() ||
        !tls.server_name.empty()) {
      return absl::InvalidArgumentError(
          "TLS settings are for vqkv-servers, not the embedded store");
    }
    storage::TieredStoreOptions options;
    options.memory_bytes = config.embedded_memory_bytes;
    if (server.size() > kEmbedded.size()) {
      options.data_dir = server.substr(kEmbedded.size() + 1);
      if (options.data_dir.empty()) {
        return absl::InvalidArgumentError(
            "server \"embedded:\" needs a directory, e.g. embedded:/tmp/vqkv");
      }
    }
    absl::StatusOr<std::unique_ptr<EmbeddedBackend>> backend =
        EmbeddedBackend::Open(std::move(options));
    if (!backend.ok()) {
      return WithPrefix(backend.status(), "embedded store: ");
    }
    return std::unique_ptr<Backend>(std::move(*backend));
  }
  GrpcBackendOptions options;
  options.target = server;
  options.auth_token = config.auth_token;
  options.tls = config.tls;
  if (absl::Status s = ValidateTlsClientOptions(options.tls); !s.ok()) {
    return s;
  }
  options.max_message_bytes = config.max_message_bytes;
  if (cluster::IsClusterSpec(server)) {
    cluster::ClusterBackendOptions co;
    co.replicas = config.replicas;
    co.grpc = options;
    absl::StatusOr<std::unique_ptr<cluster::ClusterBackend>> backend =
        cluster::ClusterBackend::Create(server, std::move(co));
    if (!backend.ok()) return backend.status();
    return std::unique_ptr<Backend>(std::move(*backend));
  }
  return NewGrpcBackend(options);
}

absl::StatusOr<std::unique_ptr<CacheClient>> OpenCacheClient(
    ClientConfig config) {
  if (absl::Status s = config.layout.Validate(); !s.ok()) {
    return WithPrefix(s, "layout: ");
  }
  const bool vq = config.codec == "vq";
  if (!vq && (!config.codebook_path.empty() || config.codebook_hash != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "codec ", config.codec, " takes no codebooks (only vq does)"));
  }
  if (!vq &&
      (config.key_sketch_bits != 0 || config.key_sketch_first_layer != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "codec ", config.codec, " takes no key sketch (only vq does)"));
  }
  if (vq && config.codebook_path.empty() && config.codebook_hash == 0) {
    return absl::InvalidArgumentError(
        "codec vq needs a codebook file or the hash of a registered set");
  }

  std::string codebook_file;
  CodebookSet codebooks;
  if (vq && !config.codebook_path.empty()) {
    absl::StatusOr<std::string> bytes = base::ReadFile(config.codebook_path);
    if (!bytes.ok()) return bytes.status();
    absl::StatusOr<CodebookSet> set = CodebookSet::Deserialize(*bytes);
    if (!set.ok()) {
      return WithPrefix(set.status(), absl::StrCat("codebook file ",
                                                   config.codebook_path, ": "));
    }
    codebook_file = *std::move(bytes);
    codebooks = *std::move(set);
  }

  // The codec first: an unknown name or a set for another layout is
  // reported before any store is opened.
  std::shared_ptr<const Codec> codec;
  if (!vq || !codebook_file.empty()) {
    absl::StatusOr<std::unique_ptr<Codec>> made =
        MakeCodec(config.codec, config.layout, vq ? &codebooks : nullptr,
                  /*beam_width=*/1, config.key_sketch_bits,
                  config.key_sketch_first_layer);
    if (!made.ok()) return made.status();
    if (absl::Status st =
            AttachCudaEncoder(config.options.encode_cuda_device, made->get());
        !st.ok()) {
      return st;
    }
    codec = *std::move(made);
    if (config.codebook_hash != 0 &&
        codec->codebook_hash() != config.codebook_hash) {
      return absl::InvalidArgumentError(
          absl::StrCat("codebook file ", config.codebook_path, " has hash ",
                       absl::Hex(codec->codebook_hash(), absl::kZeroPad16),
                       ", not the requested ",
                       absl::Hex(config.codebook_hash, absl::kZeroPad16)));
    }
  }

  BackendConfig backend_config;
  backend_config.server = config.server;
  backend_config.auth_token = config.auth_token;
  backend_config.tls = config.tls;
  backend_config.embedded_memory_bytes = config.embedded_memory_bytes;
  backend_config.replicas = config.replicas;
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      OpenBackend(backend_config);
  if (!backend.ok()) return backend.status();
  if (codec == nullptr) {
    return CacheClient::CreateFromCodebookHash(
        std::move(config.options), config.codebook_hash, config.layout,
        *std::move(backend), config.key_sketch_bits,
        config.key_sketch_first_layer);
  }
  return CacheClient::Create(std::move(config.options), std::move(codec),
                             std::move(codebook_file), *std::move(backend));
}

}  // namespace vqkv::client
