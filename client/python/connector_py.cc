// vqkv.Connector over the engine's page arrays:
//
//   conn = vqkv.Connector(client)
//   conn.register_kv_caches(keys, values, layout="NHD")  # lists of arrays
//   conn.start_load([vqkv.LoadSpec("r1", tokens, block_ids, num_tokens)])
//   for layer in range(layers):
//       conn.wait_for_layer_load(layer)  # then the layer's attention
//       conn.save_layer(layer, [vqkv.SaveSpec("r1", tokens, block_ids)])
//   conn.wait_for_save()
//   conn.get_finished() -> (saved ids, loaded ids)
//
// Page arrays: one K and one V numpy array per layer, 4-d, NHD (num_blocks,
// block_size, kv_heads, head_dim) or HND (num_blocks, kv_heads, block_size,
// head_dim), float16 or float32, or 2-byte integers holding bfloat16 bits
// with dtype="bfloat16" (numpy has no bfloat16; a torch CPU tensor gives
// one with t.view(torch.int16).numpy()). Any element strides (views of a
// larger tensor are fine); writeable, since loads write them. The connector
// keeps the arrays alive; their memory must not move while it is open.
// CUDA pages: objects with __cuda_array_interface__ (torch CUDA tensors;
// bfloat16 as t.view(torch.int16)), with cuda_device and the engine's
// compute stream (cuda_stream=torch.cuda.current_stream().cuda_stream);
// copies are then ordered on the GPU (client/kv_device.h).
//
// Thread safety: as KvConnector; the GIL is released while a call waits or
// copies pages.
#include "client/python/connector_py.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/kv_connector.h"
#include "client/paged_kv.h"
#include "client/python/py_client.h"
#include "client/python/py_common.h"

namespace vqkv::python {
namespace {

using client::DType;
using client::KvConnector;
using client::LoadSpec;
using client::PagedKvCaches;
using client::PagedLayer;
using client::SaveSpec;

std::string TypeName(const py::handle& obj) {
  return std::string(py::str(obj.get_type().attr("__name__")));
}

// The element type of a page array of numpy kind `kind` ('f', 'i', 'u')
// and `size` bytes: float16 / float32, or bfloat16 bits in 2-byte integers
// when asked for. `shown` is the array's type for messages.
DType PageDType(char kind, int64_t size, const std::string& shown,
                const std::string& dtype, const std::string& name) {
  if (dtype == "bfloat16") {
    if ((kind == 'i' || kind == 'u') && size == 2) return DType::kBfloat16;
    throw py::value_error(absl::StrCat(
        name,
        ": dtype='bfloat16' needs 2-byte integer arrays holding the "
        "bits (t.view(torch.int16)), got ",
        shown));
  }
  if (kind == 'f' && size == 2 && (dtype.empty() || dtype == "float16")) {
    return DType::kFloat16;
  }
  if (kind == 'f' && size == 4 && (dtype.empty() || dtype == "float32")) {
    return DType::kFloat32;
  }
  throw py::value_error(absl::StrCat(
      name,
      " must be float16 or float32 (or bfloat16 bits with "
      "dtype='bfloat16'), got ",
      shown, dtype.empty() ? "" : absl::StrCat(" for dtype='", dtype, "'")));
}

// A 4-d page array as the connector needs it: where, its shape, element
// strides and type.
struct PageArray {
  void* data = nullptr;
  int64_t shape[4] = {0, 0, 0, 0};
  int64_t strides[4] = {0, 0, 0, 0};  // elements
  DType dtype = DType::kFloat16;
  bool cuda = false;
};

void SetStrides(const int64_t bytes[4], int64_t itemsize,
                const std::string& name, PageArray* out) {
  for (int i = 0; i < 4; ++i) {
    if (bytes[i] < 0 || bytes[i] % itemsize != 0) {
      throw py::value_error(absl::StrCat(
          name,
          ": strides must be non-negative multiples of the element "
          "size"));
    }
    out->strides[i] = bytes[i] / itemsize;
  }
}

PageArray FromNumpy(py::array a, const std::string& dtype,
                    const std::string& name) {
  if (a.ndim() != 4) {
    throw py::value_error(
        absl::StrCat(name, " must be 4-d, got ", a.ndim(), "-d"));
  }
  if (!a.writeable()) {
    throw py::value_error(absl::StrCat(name, " must be writeable"));
  }
  PageArray p;
  p.dtype = PageDType(a.dtype().kind(), a.itemsize(),
                      std::string(py::str(a.dtype())), dtype, name);
  int64_t bytes[4];
  for (int i = 0; i < 4; ++i) {
    p.shape[i] = a.shape(i);
    bytes[i] = a.strides(i);
  }
  SetStrides(bytes, a.itemsize(), name, &p);
  p.data = a.mutable_data();
  return p;
}

// An object with __cuda_array_interface__ (a torch CUDA tensor, CuPy, Numba):
// its typestr ('<f2', '<f4', '<i2'), shape, strides in bytes (None: C
// order) and data (pointer, read-only flag).
PageArray FromCudaArrayInterface(const py::handle& obj,
                                 const std::string& dtype,
                                 const std::string& name) {
  const py::dict cai = obj.attr("__cuda_array_interface__");
  const py::tuple shape = cai["shape"];
  if (shape.size() != 4) {
    throw py::value_error(
        absl::StrCat(name, " must be 4-d, got ", shape.size(), "-d"));
  }
  const std::string typestr = py::str(cai["typestr"]);
  if (typestr.size() < 3 || (typestr[0] != '<' && typestr[0] != '|')) {
    throw py::value_error(absl::StrCat(name, ": typestr '", typestr,
                                       "' is not a little-endian type"));
  }
  const int64_t itemsize = std::stoll(typestr.substr(2));
  PageArray p;
  p.cuda = true;
  p.dtype = PageDType(typestr[1], itemsize, typestr, dtype, name);
  const py::tuple data = cai["data"];
  if (py::cast<bool>(data[1])) {
    throw py::value_error(absl::StrCat(name, " must be writeable"));
  }
  p.data = reinterpret_cast<void*>(py::cast<uintptr_t>(data[0]));
  int64_t bytes[4];
  for (int i = 0; i < 4; ++i) p.shape[i] = py::cast<int64_t>(shape[i]);
  if (!cai.contains("strides") || cai["strides"].is_none()) {
    bytes[3] = itemsize;
    for (int i = 2; i >= 0; --i) bytes[i] = bytes[i + 1] * p.shape[i + 1];
  } else {
    const py::tuple st = cai["strides"];
    for (int i = 0; i < 4; ++i) bytes[i] = py::cast<int64_t>(st[i]);
  }
  SetStrides(bytes, itemsize, name, &p);
  return p;
}

class PyConnector {
 public:
  explicit PyConnector(const PyClient& client)
      : client_(client.Get()),
        connector_(std::make_unique<KvConnector>(client_.get())) {}

  ~PyConnector() {
    // Background loads write into the arrays: stop them before the arrays
    // go (members are destroyed after this body).
    py::gil_scoped_release release;
    connector_.reset();
  }

  void Register(const py::list& keys, const py::list& values,
                const std::string& layout, const std::string& dtype,
                int cuda_device, uintptr_t cuda_stream) {
    if (layout != "NHD" && layout != "HND") {
      throw py::value_error(
          absl::StrCat("layout must be 'NHD' or 'HND', got '", layout, "'"));
    }
    if (keys.empty() || keys.size() != values.size()) {
      throw py::value_error(
          absl::StrCat("keys and values must be non-empty lists of one array "
                       "per layer of equal length, got ",
                       keys.size(), " and ", values.size()));
    }
    const bool hnd = layout == "HND";
    PagedKvCaches caches;
    py::list arrays;
    for (size_t l = 0; l < keys.size(); ++l) {
      PagedLayer pl;
      for (int kv = 0; kv < 2; ++kv) {
        const py::handle obj = kv == 0 ? keys[l] : values[l];
        const std::string name =
            absl::StrCat(kv == 0 ? "keys[" : "values[", l, "]");
        PageArray a;
        if (py::isinstance<py::array>(obj)) {
          a = FromNumpy(py::reinterpret_borrow<py::array>(obj), dtype, name);
        } else if (py::hasattr(obj, "__cuda_array_interface__")) {
          a = FromCudaArrayInterface(obj, dtype, name);
        } else {
          throw py::value_error(absl::StrCat(
              name,
              " must be a numpy array or a CUDA array (an object with "
              "__cuda_array_interface__, e.g. a torch CUDA tensor), got ",
              TypeName(obj)));
        }
        const int64_t blocks = a.shape[0];
        const int64_t slots = a.shape[hnd ? 2 : 1];
        const int64_t heads = a.shape[hnd ? 1 : 2];
        const int64_t dim = a.shape[3];
        if (arrays.empty()) {
          caches.dtype = a.dtype;
          caches.num_blocks = blocks;
          caches.block_size = slots;
          caches.kv_heads = static_cast<int>(heads);
          caches.head_dim = static_cast<int>(dim);
          caches.device =
              a.cuda ? client::Device::kCuda : client::Device::kHost;
        } else if (a.dtype != caches.dtype || blocks != caches.num_blocks ||
                   slots != caches.block_size || heads != caches.kv_heads ||
                   dim != caches.head_dim ||
                   a.cuda != (caches.device == client::Device::kCuda)) {
          throw py::value_error(absl::StrCat(
              name,
              " differs from keys[0] in dtype, shape or device: every page "
              "array must be alike"));
        }
        // (block, slot, kv_head, dim), whatever the layout.
        const int64_t ordered[4] = {a.strides[0], a.strides[hnd ? 2 : 1],
                                    a.strides[hnd ? 1 : 2], a.strides[3]};
        int64_t* out = kv == 0 ? pl.key_strides : pl.value_strides;
        for (int i = 0; i < 4; ++i) out[i] = ordered[i];
        (kv == 0 ? pl.keys : pl.values) = a.data;
        arrays.append(obj);
      }
      caches.layers.push_back(pl);
    }
    caches.cuda_device = cuda_device;
    caches.cuda_stream = reinterpret_cast<void*>(cuda_stream);
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = connector_->RegisterKvCaches(std::move(caches));
    }
    ThrowIfError(s);
    arrays_ = std::move(arrays);
  }

  void StartLoad(std::vector<LoadSpec> loads) {
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = connector_->StartLoad(std::move(loads));
    }
    ThrowIfError(s);
  }

  void WaitForLayerLoad(int layer) {
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = connector_->WaitForLayerLoad(layer);
    }
    ThrowIfError(s);
  }

  void SaveLayer(int layer, const std::vector<SaveSpec>& saves) {
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = connector_->SaveLayer(layer, saves);
    }
    ThrowIfError(s);
  }

  void WaitForSave() {
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = connector_->WaitForSave();
    }
    ThrowIfError(s);
  }

  py::tuple GetFinished() {
    client::FinishedRequests f = connector_->GetFinished();
    return py::make_tuple(f.saved, f.loaded);
  }

  std::vector<int32_t> TakeLoadErrorBlockIds() {
    return connector_->TakeLoadErrorBlockIds();
  }

  void Cancel(const std::string& request_id) { connector_->Cancel(request_id); }

  void Shutdown(double timeout) {
    py::gil_scoped_release release;
    connector_->Shutdown(absl::Seconds(timeout));
  }

  py::dict Stats() const {
    const client::ConnectorStats s = connector_->stats();
    py::dict out;
    out["loads_started"] = s.loads_started;
    out["loads_failed"] = s.loads_failed;
    out["saves_started"] = s.saves_started;
    out["saves_dropped"] = s.saves_dropped;
    out["blocks_decoded_on_device"] = s.blocks_decoded_on_device;
    out["blocks_encoded_on_device"] = s.blocks_encoded_on_device;
    out["peer_blocks_sent"] = s.peer_blocks_sent;
    out["peer_blocks_loaded"] = s.peer_blocks_loaded;
    out["peer_handoffs_missed"] = s.peer_handoffs_missed;
    out["peer_messages_rejected"] = s.peer_messages_rejected;
    out["peer_sends_failed"] = s.peer_sends_failed;
    return out;
  }

  void AttachPeer(std::shared_ptr<client::KvPeerLink> link, double wait,
                  uint64_t inbox_bytes, double inbox_ttl) {
    if (wait < 0 || inbox_ttl <= 0) {
      throw py::value_error("wait must be >= 0 and inbox_ttl > 0 seconds");
    }
    client::PeerOptions o;
    o.wait = absl::Seconds(wait);
    o.inbox.max_bytes = inbox_bytes;
    o.inbox.ttl = absl::Seconds(inbox_ttl);
    ThrowIfError(connector_->AttachPeer(std::move(link), o));
  }

  py::dict DevicePaths() const {
    const client::DevicePaths p = connector_->device_paths();
    py::dict out;
    out["decode_on_device"] = p.decode_on_device;
    out["encode_on_device"] = p.encode_on_device;
    out["decode_on_host_because"] = p.decode_on_host_because;
    out["encode_on_host_because"] = p.encode_on_host_because;
    return out;
  }

 private:
  std::shared_ptr<CacheClient> client_;
  py::list arrays_;  // the registered pages, kept alive
  std::unique_ptr<KvConnector> connector_;
};

}  // namespace

void BindConnector(py::module_& m) {
  py::class_<LoadSpec>(m, "LoadSpec",
                       "A request's cached blocks to load into its pages.")
      .def(py::init([](std::string request_id, const py::handle& tokens,
                       const py::handle& block_ids, int64_t num_tokens,
                       std::string salt, bool from_peer) {
             return LoadSpec{std::move(request_id),
                             ToTokens(tokens),
                             std::move(salt),
                             ToInt32s(block_ids, "block id", "block_ids"),
                             num_tokens,
                             from_peer};
           }),
           py::arg("request_id"), py::arg("tokens"), py::arg("block_ids"),
           py::arg("num_tokens"), py::arg("salt") = "",
           py::arg("from_peer") = false,
           "num_tokens: the leading tokens to load (Client.lookup's answer, "
           "a multiple of block_tokens); block_ids: the engine pages that "
           "hold them, in order. from_peer: the blocks come from the "
           "handoff a prefill engine sent under this request_id "
           "(Connector.attach_peer), the rest from the cache.")
      .def_readonly("request_id", &LoadSpec::request_id)
      .def_readonly("tokens", &LoadSpec::tokens)
      .def_readonly("salt", &LoadSpec::salt)
      .def_readonly("block_ids", &LoadSpec::block_ids)
      .def_readonly("num_tokens", &LoadSpec::num_tokens)
      .def_readonly("from_peer", &LoadSpec::from_peer);

  py::class_<SaveSpec>(m, "SaveSpec", "A request's KV to save from its pages.")
      .def(py::init([](std::string request_id, const py::handle& tokens,
                       const py::handle& block_ids, int64_t skip_tokens,
                       std::string salt, bool send_to_peer) {
             return SaveSpec{std::move(request_id),
                             ToTokens(tokens),
                             std::move(salt),
                             ToInt32s(block_ids, "block id", "block_ids"),
                             skip_tokens,
                             send_to_peer};
           }),
           py::arg("request_id"), py::arg("tokens"), py::arg("block_ids"),
           py::arg("skip_tokens") = 0, py::arg("salt") = "",
           py::arg("send_to_peer") = false,
           "The full blocks of tokens[skip_tokens:] are saved (skip_tokens: "
           "loaded or known cached; rounded down to a block). "
           "send_to_peer: they also go to the attached peer engine "
           "(Connector.attach_peer).")
      .def_readonly("request_id", &SaveSpec::request_id)
      .def_readonly("tokens", &SaveSpec::tokens)
      .def_readonly("salt", &SaveSpec::salt)
      .def_readonly("block_ids", &SaveSpec::block_ids)
      .def_readonly("skip_tokens", &SaveSpec::skip_tokens)
      .def_readonly("send_to_peer", &SaveSpec::send_to_peer);

  py::class_<client::KvPeerLink, std::shared_ptr<client::KvPeerLink>>(
      m, "PeerLink",
      "One end of a link between a prefill and a decode engine "
      "(disaggregated serving), for Connector.attach_peer.")
      .def_property_readonly("max_message_bytes",
                             &client::KvPeerLink::max_message_bytes)
      .def("close", &client::KvPeerLink::Close,
           py::call_guard<py::gil_scoped_release>());
  m.def(
      "loopback_peer_links",
      [](uint64_t max_message_bytes) {
        auto [a, b] = client::NewLoopbackPeerLinks(max_message_bytes);
        return py::make_tuple(
            std::shared_ptr<client::KvPeerLink>(std::move(a)),
            std::shared_ptr<client::KvPeerLink>(std::move(b)));
      },
      py::arg("max_message_bytes") = uint64_t{64} << 20,
      "Two connected PeerLinks in this process: what one end's connector "
      "sends, the other's receives.");

  py::class_<PyConnector>(
      m, "Connector",
      "The worker side of an engine integration (vLLM's KV connector v1): "
      "layer-wise loads into and saves from the engine's paged KV cache in "
      "host or CUDA memory. docs/CLIENT.md maps it method by method.")
      .def(py::init<const PyClient&>(), py::arg("client"))
      .def("register_kv_caches", &PyConnector::Register, py::arg("keys"),
           py::arg("values"), py::arg("layout") = "NHD", py::arg("dtype") = "",
           py::arg("cuda_device") = 0, py::arg("cuda_stream") = 0,
           "One K and one V page array per layer (NHD or HND), numpy arrays "
           "or CUDA arrays (__cuda_array_interface__: torch CUDA tensors); "
           "dtype 'bfloat16' for 2-byte integer arrays holding bfloat16 "
           "bits. CUDA pages: cuda_device is their device index and "
           "cuda_stream the engine's compute stream as an integer "
           "(torch.cuda.current_stream().cuda_stream; 0: the legacy default "
           "stream).")
      .def("start_load", &PyConnector::StartLoad, py::arg("loads"),
           "Starts loading each LoadSpec's tokens into its pages.")
      .def("wait_for_layer_load", &PyConnector::WaitForLayerLoad,
           py::arg("layer"),
           "Returns once `layer` of every load started last is in the pages.")
      .def("save_layer", &PyConnector::SaveLayer, py::arg("layer"),
           py::arg("saves"),
           "Copies `layer` of each SaveSpec's new full blocks out of the "
           "pages; after the last layer they are encoded and sent in the "
           "background.")
      .def("wait_for_save", &PyConnector::WaitForSave,
           "Returns once this pass's pages may be reused.")
      .def("get_finished", &PyConnector::GetFinished,
           "(saved request ids, loaded request ids) since the last call.")
      .def("take_load_error_block_ids", &PyConnector::TakeLoadErrorBlockIds,
           "Engine block ids whose load failed since the last call (the "
           "engine recomputes them).")
      .def("cancel", &PyConnector::Cancel, py::arg("request_id"))
      .def("shutdown", &PyConnector::Shutdown, py::arg("timeout") = 5.0,
           "Waits up to `timeout` seconds for background work; saves not "
           "started by then are dropped.")
      .def("attach_peer", &PyConnector::AttachPeer, py::arg("link"),
           py::arg("wait") = 30.0, py::arg("inbox_bytes") = uint64_t{1} << 30,
           py::arg("inbox_ttl") = 60.0,
           "Connects this engine to another for disaggregated serving "
           "(docs/CLIENT.md \"Prefill to decode\"): SaveSpecs with "
           "send_to_peer send their blocks through `link`; LoadSpecs with "
           "from_peer wait up to `wait` seconds for the peer's handoff, "
           "received into an inbox of inbox_bytes that drops handoffs not "
           "loaded within inbox_ttl seconds.")
      .def("stats", &PyConnector::Stats)
      .def("device_paths", &PyConnector::DevicePaths,
           "Whether loads decode and saves encode on the GPU of the "
           "registered CUDA pages, and for a path left on the host, why.");
}

}  // namespace vqkv::python
