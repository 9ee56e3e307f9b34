// vqkv.Client's object: one CacheClient, shared with the connectors made
// from it (connector_py.cc).
//
// Thread safety: see vqkv_py.cc; the GIL is released during backend calls.
#ifndef VQKV_CLIENT_PYTHON_PY_CLIENT_H_
#define VQKV_CLIENT_PYTHON_PY_CLIENT_H_

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/cache_client.h"
#include "client/client_factory.h"
#include "client/python/py_common.h"

namespace vqkv::python {

using client::BlockHash;
using client::CacheClient;

// Checks one K or V array against the client's layout and returns it
// (vqkv_py.cc).
py::array CheckKv(const py::handle& obj, const char* name,
                  const KvLayout& layout, size_t tokens, bool writable);
py::list HashList(const std::vector<BlockHash>& hashes);

// vqkv.Client: one CacheClient. The shared_ptr lets close() run while
// another thread (GIL released) is still inside a call.
class PyClient {
 public:
  explicit PyClient(client::ClientConfig config)
      : io_timeout_(config.options.io_timeout) {
    absl::StatusOr<std::unique_ptr<CacheClient>> opened;
    {
      py::gil_scoped_release release;
      opened = client::OpenCacheClient(std::move(config));
    }
    client_ = ValueOrThrow(std::move(opened));
  }

  std::shared_ptr<CacheClient> Get() const {
    if (client_ == nullptr) {
      throw StatusError(absl::FailedPreconditionError("the client is closed"));
    }
    return client_;
  }

  py::list HashTokens(const py::handle& tokens, const std::string& salt) {
    const std::vector<int32_t> t = ToTokens(tokens);
    return HashList(ValueOrThrow(Get()->HashTokens(t, salt)));
  }

  int64_t Lookup(const py::handle& tokens, const std::string& salt,
                 bool lease) {
    const std::vector<int32_t> t = ToTokens(tokens);
    std::shared_ptr<CacheClient> c = Get();
    absl::StatusOr<int64_t> found;
    {
      py::gil_scoped_release release;
      found = c->Lookup(t, salt, lease);
    }
    return ValueOrThrow(std::move(found));
  }

  py::dict Store(const py::handle& tokens, const py::handle& keys,
                 const py::handle& values, const std::string& salt) {
    const std::vector<int32_t> t = ToTokens(tokens);
    std::shared_ptr<CacheClient> c = Get();
    const py::array k = CheckKv(keys, "keys", c->layout(), t.size(), false);
    const py::array v = CheckKv(values, "values", c->layout(), t.size(), false);
    absl::StatusOr<client::StoreResult> stored;
    {
      py::gil_scoped_release release;
      stored = c->Store(t, salt, static_cast<const float*>(k.data()),
                        static_cast<const float*>(v.data()));
    }
    const client::StoreResult r = ValueOrThrow(std::move(stored));
    py::dict out;
    out["blocks"] = r.blocks;
    out["stored"] = r.stored;
    out["already_present"] = r.already_present;
    out["failed"] = r.failed;
    out["bytes_sent"] = r.bytes_sent;
    return out;
  }

  int64_t Load(const py::handle& tokens, const py::handle& keys_out,
               const py::handle& values_out, const std::string& salt) {
    const std::vector<int32_t> t = ToTokens(tokens);
    std::shared_ptr<CacheClient> c = Get();
    py::array k = CheckKv(keys_out, "keys_out", c->layout(), t.size(), true);
    py::array v =
        CheckKv(values_out, "values_out", c->layout(), t.size(), true);
    absl::StatusOr<client::LoadResult> loaded;
    {
      py::gil_scoped_release release;
      loaded = c->Load(t, salt, static_cast<float*>(k.mutable_data()),
                       static_cast<float*>(v.mutable_data()));
    }
    return ValueOrThrow(std::move(loaded)).tokens;
  }

  py::dict Stats() const {
    const client::CacheClientStats s = Get()->stats();
    py::dict out;
    out["lookups"] = s.lookups;
    out["lookup_errors"] = s.lookup_errors;
    out["blocks_stored"] = s.blocks_stored;
    out["blocks_already_present"] = s.blocks_already_present;
    out["blocks_store_failed"] = s.blocks_store_failed;
    out["saves_dropped"] = s.saves_dropped;
    out["blocks_loaded"] = s.blocks_loaded;
    out["blocks_load_failed"] = s.blocks_load_failed;
    out["bytes_sent"] = s.bytes_sent;
    out["bytes_received"] = s.bytes_received;
    out["fp16_equivalent_bytes"] = s.fp16_equivalent_bytes;
    out["circuit_open"] = s.circuit_open;
    return out;
  }

  py::dict Namespace() const {
    const storage::NamespaceSpec& ns = Get()->namespace_spec();
    py::dict out;
    out["model_id"] = ns.model_id;
    out["weight_revision"] = ns.weight_revision;
    out["codec"] = ns.codec;
    out["codec_id"] = ns.codec_id;
    out["codebook_hash"] = ns.codebook_hash;
    out["block_tokens"] = ns.block_tokens;
    out["layers"] = ns.layers;
    out["kv_heads"] = ns.kv_heads;
    out["head_dim"] = ns.head_dim;
    out["dtype"] = static_cast<uint32_t>(ns.dtype);
    return out;
  }

  py::bytes NamespaceIdBytes() const {
    const storage::NamespaceId id =
        storage::ComputeNamespaceId("", Get()->namespace_spec());
    return py::bytes(id.view().data(), id.view().size());
  }

  // Waits up to the I/O timeout for background work; idempotent.
  void Close() {
    std::shared_ptr<CacheClient> c = std::move(client_);
    client_ = nullptr;
    if (c == nullptr) return;
    py::gil_scoped_release release;
    c->Shutdown(io_timeout_);
    c.reset();
  }

  bool closed() const { return client_ == nullptr; }

  bool WaitIdle(double timeout) {
    std::shared_ptr<CacheClient> c = Get();
    py::gil_scoped_release release;
    return c->WaitIdle(absl::Seconds(timeout));
  }

 private:
  const absl::Duration io_timeout_;
  std::shared_ptr<CacheClient> client_;
};

}  // namespace vqkv::python

#endif  // VQKV_CLIENT_PYTHON_PY_CLIENT_H_
