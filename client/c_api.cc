// The C API (client/include/vqkv/vqkv.h) over vqkv::client::CacheClient.
// Every entry point converts its arguments, calls the C++ client inside
// Guard (which turns any exception into a status code) and records the
// message for vqkv_last_error() in a thread-local string.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <exception>
#include <iterator>
#include <memory>
#include <new>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/allocator_tuning.h"
#include "client/c_api_internal.h"
#include "client/cache_client.h"
#include "client/client_factory.h"
#include "client/include/vqkv/vqkv.h"

namespace {

using vqkv::c_api::BadStructSize;
using vqkv::c_api::Guard;
using vqkv::c_api::NullArgument;
using vqkv::c_api::ReadVersioned;
using vqkv::c_api::Str;
using vqkv::c_api::WriteVersioned;
using vqkv::client::CacheClient;

// The size of each struct in the first version of vqkv.h: its fields up to
// and including the last one that version had.
#define VQKV_V1_SIZE(type, last_field) \
  (offsetof(type, last_field) + sizeof(static_cast<type*>(nullptr)->last_field))
constexpr size_t kOptionsV1Size =
    VQKV_V1_SIZE(vqkv_client_options_t, embedded_memory_bytes);
constexpr size_t kStoreResultV1Size =
    VQKV_V1_SIZE(vqkv_store_result_t, bytes_sent);
constexpr size_t kLoadResultV1Size =
    VQKV_V1_SIZE(vqkv_load_result_t, bytes_received);
constexpr size_t kStatsV1Size = VQKV_V1_SIZE(vqkv_stats_t, circuit_open);
#undef VQKV_V1_SIZE

absl::Status CheckResultSize(const size_t* struct_size, size_t v1_size,
                             absl::string_view name) {
  if (struct_size != nullptr && *struct_size < v1_size) {
    return BadStructSize(name, *struct_size, v1_size);
  }
  return absl::OkStatus();
}

absl::StatusOr<vqkv::storage::KvDtype> ToDtype(int32_t dtype) {
  switch (dtype) {
    case VQKV_KV_FLOAT16:
      return vqkv::storage::KvDtype::kFloat16;
    case VQKV_KV_BFLOAT16:
      return vqkv::storage::KvDtype::kBfloat16;
    case VQKV_KV_FLOAT32:
      return vqkv::storage::KvDtype::kFloat32;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "kv_dtype must be 1 (float16), 2 (bfloat16) or 3 (float32), got ",
          dtype));
  }
}

absl::StatusOr<vqkv::client::ClientConfig> ToConfig(
    const vqkv_client_options_t& o) {
  vqkv::client::ClientConfig config;
  config.server = Str(o.server);
  config.auth_token = Str(o.auth_token);
  config.codec = o.codec == nullptr ? "fp16" : o.codec;
  config.codebook_path = Str(o.codebook_path);
  config.codebook_hash = o.codebook_hash;
  config.layout = {o.layers, o.kv_heads, o.head_dim};
  if (o.embedded_memory_bytes != 0) {
    config.embedded_memory_bytes = o.embedded_memory_bytes;
  }
  vqkv::client::CacheClientOptions& options = config.options;
  options.model_id = Str(o.model_id);
  options.weight_revision = Str(o.weight_revision);
  options.block_tokens = o.block_tokens;
  options.sink_tokens = o.sink_tokens;
  absl::StatusOr<vqkv::storage::KvDtype> dtype = ToDtype(o.kv_dtype);
  if (!dtype.ok()) return dtype.status();
  options.dtype = *dtype;
  if (o.lookup_timeout_ms != 0) {
    options.lookup_timeout = absl::Milliseconds(o.lookup_timeout_ms);
  }
  if (o.io_timeout_ms != 0) {
    options.io_timeout = absl::Milliseconds(o.io_timeout_ms);
  }
  if (o.replicas < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "options->replicas is ", o.replicas, "; it must be >= 1 (0: 2)"));
  }
  if (o.replicas != 0) config.replicas = o.replicas;
  config.key_sketch_bits = o.key_sketch_bits;
  config.key_sketch_first_layer = o.key_sketch_first_layer;
  if (o.key_pairs != VQKV_KEY_PAIRS_ADJACENT &&
      o.key_pairs != VQKV_KEY_PAIRS_HALF) {
    return absl::InvalidArgumentError(absl::StrCat(
        "options->key_pairs must be 0 (VQKV_KEY_PAIRS_ADJACENT) or 1 "
        "(VQKV_KEY_PAIRS_HALF), got ",
        o.key_pairs));
  }
  options.engine_key_pairs = o.key_pairs == VQKV_KEY_PAIRS_HALF
                                 ? vqkv::RopePairs::kHalf
                                 : vqkv::RopePairs::kAdjacent;
  if (o.encode_on_cuda != 0) {
    if (o.encode_cuda_device < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("options->encode_cuda_device is ", o.encode_cuda_device,
                       "; a CUDA device index is >= 0"));
    }
    options.encode_cuda_device = o.encode_cuda_device;
  }
  for (auto [value, name, use] :
       {std::tuple{o.decode_on_device, "decode_on_device",
                   &options.decode_on_device},
        std::tuple{o.encode_on_device, "encode_on_device",
                   &options.encode_on_device}}) {
    switch (value) {
      case VQKV_ON_DEVICE_OFF:
        *use = vqkv::client::DeviceUse::kOff;
        break;
      case VQKV_ON_DEVICE_AUTO:
        *use = vqkv::client::DeviceUse::kAuto;
        break;
      case VQKV_ON_DEVICE_ON:
        *use = vqkv::client::DeviceUse::kOn;
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "options->", name,
            " must be VQKV_ON_DEVICE_OFF (0), "
            "VQKV_ON_DEVICE_ON (1) or VQKV_ON_DEVICE_AUTO (2), got ",
            value));
    }
  }
  config.tls.ca_file = Str(o.tls_ca_file);
  config.tls.cert_file = Str(o.tls_cert_file);
  config.tls.key_file = Str(o.tls_key_file);
  config.tls.server_name = Str(o.tls_server_name);
  if (o.tls_reload_seconds != 0) {
    config.tls.reload_seconds = o.tls_reload_seconds;
  }
  return config;
}

// Common checks of the token-taking calls.
absl::Status CheckTokens(const vqkv_client_t* client, const int32_t* tokens,
                         size_t num_tokens) {
  if (client == nullptr) return NullArgument("client");
  if (tokens == nullptr && num_tokens > 0) return NullArgument("tokens");
  return absl::OkStatus();
}

absl::Status CheckBuffers(const void* keys, const void* values,
                          size_t num_tokens) {
  if (num_tokens == 0) return absl::OkStatus();
  if (keys == nullptr) return NullArgument("keys");
  if (values == nullptr) return NullArgument("values");
  return absl::OkStatus();
}

absl::Span<const int32_t> Tokens(const int32_t* tokens, size_t num_tokens) {
  return absl::Span<const int32_t>(tokens, num_tokens);
}

// The argument checks store and load share: the client and tokens, the KV
// buffers, and the caller's result struct size (null result allowed).
absl::Status CheckIo(const vqkv_client_t* client, const int32_t* tokens,
                     size_t num_tokens, const float* keys, const float* values,
                     const size_t* result_size, size_t v1_size) {
  if (absl::Status s = CheckTokens(client, tokens, num_tokens); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckBuffers(keys, values, num_tokens); !s.ok()) {
    return s;
  }
  return CheckResultSize(result_size, v1_size, "result");
}

}  // namespace

extern "C" {

const char* vqkv_last_error(void) { return vqkv::c_api::LastError(); }

const char* vqkv_status_code_name(vqkv_status_code code) {
  // The C codes are absl's (and gRPC's) numbers; the names are absl's.
  static const std::vector<std::string>* const kNames = [] {
    auto* names = new std::vector<std::string>();
    for (int i = 0; i <= static_cast<int>(absl::StatusCode::kUnauthenticated);
         ++i) {
      names->push_back(
          absl::StatusCodeToString(static_cast<absl::StatusCode>(i)));
    }
    return names;
  }();
  const int i = static_cast<int>(code);
  if (i < 0 || i >= static_cast<int>(kNames->size())) return "UNKNOWN_CODE";
  return (*kNames)[i].c_str();
}

const char* vqkv_version(void) { return VQKV_VERSION_STRING; }

vqkv_status_code vqkv_tune_allocator(void) {
  return Guard([] { return vqkv::client::TuneAllocatorForLargeMessages(); });
}

void vqkv_client_options_init_sized(vqkv_client_options_t* options,
                                    size_t struct_size) {
  if (options == nullptr) return;
  vqkv_client_options_t d;
  std::memset(&d, 0, sizeof(d));
  d.block_tokens = 64;
  d.sink_tokens = 4;
  d.kv_dtype = VQKV_KV_FLOAT16;
  d.replicas = 2;
  d.decode_on_device = VQKV_ON_DEVICE_AUTO;
  d.encode_on_device = VQKV_ON_DEVICE_AUTO;
  // The caller's struct is struct_size bytes: fields this library does not
  // know (a newer header) are zeroed, fields the caller does not have (an
  // older header) are not written.
  std::memset(options, 0, struct_size);
  std::memcpy(options, &d, std::min(struct_size, sizeof(d)));
  if (struct_size >= sizeof(options->struct_size)) {
    options->struct_size = struct_size;
  }
}

vqkv_status_code vqkv_client_create(const vqkv_client_options_t* options,
                                    vqkv_client_t** out) {
  return Guard([&]() -> absl::Status {
    if (out == nullptr) return NullArgument("out");
    *out = nullptr;
    vqkv_client_options_t o;
    vqkv_client_options_init(&o);
    if (absl::Status s = ReadVersioned(options, kOptionsV1Size, "options", &o);
        !s.ok()) {
      return s;
    }
    absl::StatusOr<vqkv::client::ClientConfig> config = ToConfig(o);
    if (!config.ok()) return config.status();
    const absl::Duration io_timeout = config->options.io_timeout;
    absl::StatusOr<std::unique_ptr<CacheClient>> impl =
        vqkv::client::OpenCacheClient(*std::move(config));
    if (!impl.ok()) return impl.status();
    *out = new vqkv_client{*std::move(impl), io_timeout};
    return absl::OkStatus();
  });
}

void vqkv_client_destroy(vqkv_client_t* client) {
  if (client == nullptr) return;
  try {
    client->impl->Shutdown(client->shutdown_timeout);
  } catch (...) {
    // Destroying anyway: nothing can be reported from here.
  }
  delete client;
}

int32_t vqkv_client_block_tokens(const vqkv_client_t* client) {
  return client == nullptr ? 0
                           : static_cast<int32_t>(client->impl->block_tokens());
}

vqkv_status_code vqkv_client_namespace_id(const vqkv_client_t* client,
                                          uint8_t out[VQKV_HASH_BYTES]) {
  return Guard([&]() -> absl::Status {
    if (client == nullptr) return NullArgument("client");
    if (out == nullptr) return NullArgument("out");
    const vqkv::storage::NamespaceId id =
        vqkv::storage::ComputeNamespaceId("", client->impl->namespace_spec());
    std::memcpy(out, id.bytes.data(), VQKV_HASH_BYTES);
    return absl::OkStatus();
  });
}

vqkv_status_code vqkv_hash_chain(const vqkv_client_t* client,
                                 const int32_t* tokens, size_t num_tokens,
                                 const char* salt, uint8_t* hashes,
                                 size_t capacity, size_t* num_hashes) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckTokens(client, tokens, num_tokens); !s.ok()) {
      return s;
    }
    absl::StatusOr<std::vector<vqkv::client::BlockHash>> chain =
        client->impl->HashTokens(Tokens(tokens, num_tokens), Str(salt));
    if (!chain.ok()) return chain.status();
    if (num_hashes != nullptr) *num_hashes = chain->size();
    if (hashes == nullptr) return absl::OkStatus();
    if (capacity < chain->size()) {
      return absl::OutOfRangeError(absl::StrCat("hashes has room for ",
                                                capacity, " hashes; ",
                                                chain->size(), " are needed"));
    }
    for (size_t i = 0; i < chain->size(); ++i) {
      std::memcpy(hashes + i * VQKV_HASH_BYTES, (*chain)[i].bytes.data(),
                  VQKV_HASH_BYTES);
    }
    return absl::OkStatus();
  });
}

vqkv_status_code vqkv_lookup(vqkv_client_t* client, const int32_t* tokens,
                             size_t num_tokens, const char* salt,
                             int64_t* cached_tokens) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckTokens(client, tokens, num_tokens); !s.ok()) {
      return s;
    }
    if (cached_tokens == nullptr) return NullArgument("cached_tokens");
    *cached_tokens = 0;
    absl::StatusOr<int64_t> found =
        client->impl->Lookup(Tokens(tokens, num_tokens), Str(salt));
    if (!found.ok()) return found.status();
    *cached_tokens = *found;
    return absl::OkStatus();
  });
}

vqkv_status_code vqkv_store(vqkv_client_t* client, const int32_t* tokens,
                            size_t num_tokens, const char* salt,
                            const float* keys, const float* values,
                            vqkv_store_result_t* result) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckIo(client, tokens, num_tokens, keys, values,
                                 result ? &result->struct_size : nullptr,
                                 kStoreResultV1Size);
        !s.ok()) {
      return s;
    }
    absl::StatusOr<vqkv::client::StoreResult> stored = client->impl->Store(
        Tokens(tokens, num_tokens), Str(salt), keys, values);
    if (!stored.ok()) return stored.status();
    if (result == nullptr) return absl::OkStatus();
    vqkv_store_result_t r{};
    r.blocks = stored->blocks;
    r.stored = stored->stored;
    r.already_present = stored->already_present;
    r.failed = stored->failed;
    r.bytes_sent = stored->bytes_sent;
    return WriteVersioned(r, kStoreResultV1Size, "result", result);
  });
}

vqkv_status_code vqkv_load(vqkv_client_t* client, const int32_t* tokens,
                           size_t num_tokens, const char* salt, float* keys,
                           float* values, int64_t* loaded_tokens,
                           vqkv_load_result_t* result) {
  return Guard([&]() -> absl::Status {
    if (loaded_tokens != nullptr) *loaded_tokens = 0;
    if (absl::Status s =
            CheckIo(client, tokens, num_tokens, keys, values,
                    result ? &result->struct_size : nullptr, kLoadResultV1Size);
        !s.ok()) {
      return s;
    }
    absl::StatusOr<vqkv::client::LoadResult> loaded =
        client->impl->Load(Tokens(tokens, num_tokens), Str(salt), keys, values);
    if (!loaded.ok()) return loaded.status();
    if (loaded_tokens != nullptr) *loaded_tokens = loaded->tokens;
    if (result == nullptr) return absl::OkStatus();
    vqkv_load_result_t r{};
    r.tokens = loaded->tokens;
    r.blocks = loaded->blocks;
    r.bytes_received = loaded->bytes_received;
    return WriteVersioned(r, kLoadResultV1Size, "result", result);
  });
}

vqkv_status_code vqkv_client_stats(const vqkv_client_t* client,
                                   vqkv_stats_t* stats) {
  return Guard([&]() -> absl::Status {
    if (client == nullptr) return NullArgument("client");
    if (stats == nullptr) return NullArgument("stats");
    const vqkv::client::CacheClientStats s = client->impl->stats();
    vqkv_stats_t r{};
    r.lookups = s.lookups;
    r.lookup_errors = s.lookup_errors;
    r.blocks_stored = s.blocks_stored;
    r.blocks_already_present = s.blocks_already_present;
    r.blocks_store_failed = s.blocks_store_failed;
    r.saves_dropped = s.saves_dropped;
    r.blocks_loaded = s.blocks_loaded;
    r.blocks_load_failed = s.blocks_load_failed;
    r.bytes_sent = s.bytes_sent;
    r.bytes_received = s.bytes_received;
    r.fp16_equivalent_bytes = s.fp16_equivalent_bytes;
    r.circuit_open = s.circuit_open ? 1 : 0;
    return WriteVersioned(r, kStatsV1Size, "stats", stats);
  });
}

}  // extern "C"
