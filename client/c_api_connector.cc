// The C API's paged connector (client/include/vqkv/vqkv.h, "The paged,
// layer-wise worker API") over vqkv::client::KvConnector.
#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/c_api_internal.h"
#include "client/include/vqkv/vqkv.h"
#include "client/kv_connector.h"
#include "client/paged_kv.h"

struct vqkv_connector {
  std::unique_ptr<vqkv::client::KvConnector> impl;
  // Failed block ids taken from impl that did not fit the caller's array.
  absl::Mutex mu;
  std::deque<int32_t> pending_error_ids ABSL_GUARDED_BY(mu);
};

namespace {

using vqkv::c_api::Guard;
using vqkv::c_api::NullArgument;
using vqkv::c_api::Str;
using vqkv::client::LoadSpec;
using vqkv::client::SaveSpec;

constexpr size_t kPagedCachesV1Size =
    offsetof(vqkv_paged_caches_t, layers) + sizeof(void*);

absl::Status CheckConnector(const vqkv_connector_t* c) {
  return c == nullptr ? NullArgument("connector") : absl::OkStatus();
}

// The int32 array of a spec: NULL only when empty.
absl::Status Int32s(const int32_t* p, size_t n, absl::string_view name,
                    size_t index, std::vector<int32_t>* out) {
  if (p == nullptr && n > 0) {
    return NullArgument(absl::StrCat("specs[", index, "].", name));
  }
  out->assign(p, p + n);
  return absl::OkStatus();
}

template <typename CSpec, typename Spec>
absl::Status CopySpec(const CSpec& in, size_t i, Spec* out) {
  if (in.request_id == nullptr) {
    return NullArgument(absl::StrCat("specs[", i, "].request_id"));
  }
  out->request_id = in.request_id;
  out->salt = Str(in.salt);
  if (absl::Status s =
          Int32s(in.tokens, in.num_tokens, "tokens", i, &out->tokens);
      !s.ok()) {
    return s;
  }
  return Int32s(in.block_ids, in.num_block_ids, "block_ids", i,
                &out->block_ids);
}

absl::Status ToCaches(const vqkv_paged_caches_t* in,
                      vqkv::client::PagedKvCaches* out) {
  vqkv_paged_caches_t c{};
  if (absl::Status s =
          vqkv::c_api::ReadVersioned(in, kPagedCachesV1Size, "caches", &c);
      !s.ok()) {
    return s;
  }
  if (c.num_layers < 0 || (c.layers == nullptr && c.num_layers > 0)) {
    return absl::InvalidArgumentError(
        "caches->layers must hold caches->num_layers (>= 0) entries");
  }
  if (c.kv_dtype < VQKV_KV_FLOAT16 || c.kv_dtype > VQKV_KV_FLOAT32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "caches->kv_dtype must be 1 (float16), 2 (bfloat16) or 3 (float32), "
        "got ",
        c.kv_dtype));
  }
  out->num_blocks = c.num_blocks;
  out->block_size = c.block_size;
  out->kv_heads = c.kv_heads;
  out->head_dim = c.head_dim;
  out->dtype = static_cast<vqkv::client::DType>(c.kv_dtype);
  if (c.device != VQKV_DEVICE_HOST && c.device != VQKV_DEVICE_CUDA) {
    return absl::InvalidArgumentError(absl::StrCat(
        "caches->device must be 0 (host) or 1 (CUDA), got ", c.device));
  }
  out->device = c.device == VQKV_DEVICE_CUDA ? vqkv::client::Device::kCuda
                                             : vqkv::client::Device::kHost;
  out->cuda_device = c.cuda_device;
  out->cuda_stream = c.cuda_stream;
  out->layers.resize(static_cast<size_t>(c.num_layers));
  for (int32_t l = 0; l < c.num_layers; ++l) {
    vqkv::client::PagedLayer& pl = out->layers[l];
    pl.keys = c.layers[l].keys;
    pl.values = c.layers[l].values;
    for (int i = 0; i < 4; ++i) {
      pl.key_strides[i] = c.layers[l].key_strides[i];
      pl.value_strides[i] = c.layers[l].value_strides[i];
    }
  }
  return absl::OkStatus();
}

}  // namespace

extern "C" {

vqkv_status_code vqkv_connector_create(vqkv_client_t* client,
                                       vqkv_connector_t** out) {
  return Guard([&]() -> absl::Status {
    if (out == nullptr) return NullArgument("out");
    *out = nullptr;
    if (client == nullptr) return NullArgument("client");
    auto c = std::make_unique<vqkv_connector>();
    c->impl = std::make_unique<vqkv::client::KvConnector>(client->impl.get());
    *out = c.release();
    return absl::OkStatus();
  });
}

void vqkv_connector_destroy(vqkv_connector_t* connector) {
  if (connector == nullptr) return;
  try {
    connector->impl->Shutdown(absl::Seconds(5));
  } catch (...) {
    // Destroying anyway: nothing can be reported from here.
  }
  delete connector;
}

vqkv_status_code vqkv_connector_register_kv_caches(
    vqkv_connector_t* connector, const vqkv_paged_caches_t* caches) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckConnector(connector); !s.ok()) return s;
    vqkv::client::PagedKvCaches c;
    if (absl::Status s = ToCaches(caches, &c); !s.ok()) return s;
    return connector->impl->RegisterKvCaches(std::move(c));
  });
}

vqkv_status_code vqkv_connector_device_paths(vqkv_connector_t* connector,
                                             int32_t* decode_on_device,
                                             int32_t* encode_on_device) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckConnector(connector); !s.ok()) return s;
    const vqkv::client::DevicePaths p = connector->impl->device_paths();
    if (decode_on_device != nullptr) *decode_on_device = p.decode_on_device;
    if (encode_on_device != nullptr) *encode_on_device = p.encode_on_device;
    return absl::OkStatus();
  });
}

vqkv_status_code vqkv_connector_start_load(vqkv_connector_t* connector,
                                           const vqkv_load_spec_t* loads,
                                           size_t num_loads) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckConnector(connector); !s.ok()) return s;
    if (loads == nullptr && num_loads > 0) return NullArgument("loads");
    std::vector<LoadSpec> specs(num_loads);
    for (size_t i = 0; i < num_loads; ++i) {
      if (absl::Status s = CopySpec(loads[i], i, &specs[i]); !s.ok()) return s;
      specs[i].num_tokens = loads[i].load_tokens;
    }
    return connector->impl->StartLoad(std::move(specs));
  });
}

vqkv_status_code vqkv_connector_wait_for_layer_load(vqkv_connector_t* connector,
                                                    int32_t layer) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckConnector(connector); !s.ok()) return s;
    return connector->impl->WaitForLayerLoad(layer);
  });
}

vqkv_status_code vqkv_connector_save_layer(vqkv_connector_t* connector,
                                           int32_t layer,
                                           const vqkv_save_spec_t* saves,
                                           size_t num_saves) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckConnector(connector); !s.ok()) return s;
    if (saves == nullptr && num_saves > 0) return NullArgument("saves");
    std::vector<SaveSpec> specs(num_saves);
    for (size_t i = 0; i < num_saves; ++i) {
      if (absl::Status s = CopySpec(saves[i], i, &specs[i]); !s.ok()) return s;
      specs[i].skip_tokens = saves[i].skip_tokens;
    }
    return connector->impl->SaveLayer(layer, specs);
  });
}

vqkv_status_code vqkv_connector_wait_for_save(vqkv_connector_t* connector) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckConnector(connector); !s.ok()) return s;
    return connector->impl->WaitForSave();
  });
}

vqkv_status_code vqkv_connector_get_finished(vqkv_connector_t* connector,
                                             vqkv_request_fn saved,
                                             vqkv_request_fn loaded,
                                             void* context) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckConnector(connector); !s.ok()) return s;
    const vqkv::client::FinishedRequests f = connector->impl->GetFinished();
    if (saved != nullptr) {
      for (const std::string& id : f.saved) saved(context, id.c_str());
    }
    if (loaded != nullptr) {
      for (const std::string& id : f.loaded) loaded(context, id.c_str());
    }
    return absl::OkStatus();
  });
}

vqkv_status_code vqkv_connector_take_load_error_block_ids(
    vqkv_connector_t* connector, int32_t* ids, size_t capacity, size_t* count,
    size_t* pending) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckConnector(connector); !s.ok()) return s;
    if (count == nullptr) return NullArgument("count");
    if (ids == nullptr && capacity > 0) return NullArgument("ids");
    absl::MutexLock lock(&connector->mu);
    for (int32_t id : connector->impl->TakeLoadErrorBlockIds()) {
      connector->pending_error_ids.push_back(id);
    }
    size_t n = 0;
    while (n < capacity && !connector->pending_error_ids.empty()) {
      ids[n++] = connector->pending_error_ids.front();
      connector->pending_error_ids.pop_front();
    }
    *count = n;
    if (pending != nullptr) *pending = connector->pending_error_ids.size();
    return absl::OkStatus();
  });
}

vqkv_status_code vqkv_connector_cancel(vqkv_connector_t* connector,
                                       const char* request_id) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckConnector(connector); !s.ok()) return s;
    if (request_id == nullptr) return NullArgument("request_id");
    connector->impl->Cancel(request_id);
    return absl::OkStatus();
  });
}

vqkv_status_code vqkv_connector_shutdown(vqkv_connector_t* connector,
                                         uint32_t timeout_ms) {
  return Guard([&]() -> absl::Status {
    if (absl::Status s = CheckConnector(connector); !s.ok()) return s;
    connector->impl->Shutdown(absl::Milliseconds(timeout_ms));
    return absl::OkStatus();
  });
}

}  // extern "C"
