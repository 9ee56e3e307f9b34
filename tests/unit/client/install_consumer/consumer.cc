// Uses the installed C++ headers (every one of them, so each is known to be
// complete with its includes) and the C++ API exported by libvqkv_client:
// a CacheClient over an embedded store, a KvConnector, a gRPC backend
// object, and a hash chain that must equal the C API's.
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "client/allocator_tuning.h"
#include "client/backend.h"
#include "client/cache_client.h"
#include "client/circuit_breaker.h"
#include "client/embedded_backend.h"
#include "client/grpc/grpc_backend.h"
#include "client/hash.h"
#include "client/kv_connector.h"
#include "client/paged_kv.h"
#include "kernels/codebook_set.h"
#include "kernels/codec.h"
#include "kernels/codec_factory.h"
#include "kernels/key_split.h"
#include "kernels/rvq.h"
#include "storage/keys.h"
#include "storage/namespace.h"
#include "storage/tier.h"
#include "storage/tiered_store.h"
#include "vqkv/vqkv.h"

namespace {

int Fail(const char* what, const absl::Status& status) {
  std::fprintf(stderr, "consumer_cxx: %s: %s\n", what,
               status.ToString().c_str());
  return 1;
}

}  // namespace

int main() {
  using vqkv::client::CacheClient;
  // Exported and callable; a sanitizer build says it did nothing.
  const absl::Status tuned = vqkv::client::TuneAllocatorForLargeMessages();
  if (!tuned.ok() && tuned.code() != absl::StatusCode::kUnimplemented) {
    return Fail("TuneAllocatorForLargeMessages", tuned);
  }
  const vqkv::KvLayout layout{2, 2, 64};
  auto codec = vqkv::MakeCodec("fp16", layout, nullptr);
  if (!codec.ok()) return Fail("MakeCodec", codec.status());
  auto backend =
      vqkv::client::EmbeddedBackend::Open(vqkv::storage::TieredStoreOptions{});
  if (!backend.ok()) return Fail("EmbeddedBackend::Open", backend.status());
  vqkv::client::CacheClientOptions options;
  options.model_id = "consumer";
  options.block_tokens = 16;
  auto client =
      CacheClient::Create(options, std::move(*codec), "", std::move(*backend));
  if (!client.ok()) return Fail("CacheClient::Create", client.status());
  vqkv::client::KvConnector connector(client->get());
  (void)connector.stats();
  auto grpc = vqkv::client::NewGrpcBackend({.target = "127.0.0.1:1"});
  if (!grpc.ok()) return Fail("NewGrpcBackend", grpc.status());

  std::vector<int32_t> tokens(64);
  for (int i = 0; i < 64; ++i) tokens[i] = 100 + i;
  auto hashes = (*client)->HashTokens(tokens);
  if (!hashes.ok()) return Fail("HashTokens", hashes.status());

  // The same namespace through the C API gives the same chain.
  vqkv_client_options_t c_options;
  vqkv_client_options_init(&c_options);
  c_options.model_id = "consumer";
  c_options.layers = 2;
  c_options.kv_heads = 2;
  c_options.head_dim = 64;
  c_options.block_tokens = 16;
  vqkv_client_t* c_client = nullptr;
  if (vqkv_client_create(&c_options, &c_client) != VQKV_OK) {
    std::fprintf(stderr, "consumer_cxx: create: %s\n", vqkv_last_error());
    return 1;
  }
  uint8_t c_hashes[4 * VQKV_HASH_BYTES];
  size_t n = 0;
  const vqkv_status_code code = vqkv_hash_chain(
      c_client, tokens.data(), tokens.size(), nullptr, c_hashes, 4, &n);
  vqkv_client_destroy(c_client);
  if (code != VQKV_OK || n != hashes->size()) {
    std::fprintf(stderr, "consumer_cxx: hash_chain: %s\n", vqkv_last_error());
    return 1;
  }
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(c_hashes + i * VQKV_HASH_BYTES, (*hashes)[i].bytes.data(),
                    VQKV_HASH_BYTES) != 0) {
      std::fprintf(stderr, "consumer_cxx: hash %zu differs\n", i);
      return 1;
    }
  }
  std::printf("consumer_cxx: %zu hashes equal through C and C++\n", n);
  return 0;
}
