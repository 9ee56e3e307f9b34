// `import vqkv`: the Python binding of the client library (pybind11).
//
//   c = vqkv.Client("embedded", model_id="m", layers=2, kv_heads=2,
//                   head_dim=64, codec="fp16", block_tokens=16)
//   c.store(tokens, keys, values, salt="")   # numpy float32 arrays
//   c.lookup(tokens) -> tokens cached; c.load(tokens, k_out, v_out) -> tokens
//   vqkv.hash_chain(tokens, block_tokens, namespace_id=c.namespace_id)
//   vqkv.Connector(c): the paged, layer-wise API (connector_py.cc)
//
// Arrays are float32, C-contiguous, shape (layers, tokens, kv_heads,
// head_dim), i.e. the C++ layout [layer][token][kv_head][head_dim]
// (client/cache_client.h); anything else is a ValueError naming the array.
// Errors: kInvalidArgument becomes ValueError; every other absl status
// becomes vqkv.Error (a RuntimeError) whose `code` is the absl / gRPC code
// number and `code_name` its name.
//
// Thread safety: a Client may be used from several Python threads; the GIL
// is released during lookups, stores, loads, opening and closing. close()
// while another thread is in a call lets that call finish first.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/allocator_tuning.h"
#include "client/cache_client.h"
#include "client/client_factory.h"
#include "client/hash.h"
#include "client/python/connector_py.h"
#include "client/python/py_client.h"
#include "client/python/py_common.h"
#include "kernels/codec_factory.h"

namespace py = pybind11;

namespace vqkv::python {
namespace {

std::string ShapeText(const py::array& a) {
  std::vector<std::string> dims;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    dims.push_back(absl::StrCat(a.shape(i)));
  }
  return absl::StrCat("(", absl::StrJoin(dims, ", "),
                      a.ndim() == 1 ? ",)" : ")");
}

}  // namespace

py::array CheckKv(const py::handle& obj, const char* name,
                  const KvLayout& layout, size_t tokens, bool writable) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::value_error(
        absl::StrCat(name, " must be a numpy array, got ",
                     std::string(py::str(obj.get_type().attr("__name__")))));
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>())) {
    throw py::value_error(absl::StrCat(name, " must be float32, got ",
                                       std::string(py::str(a.dtype()))));
  }
  const py::ssize_t want[4] = {layout.layers, static_cast<py::ssize_t>(tokens),
                               layout.kv_heads, layout.head_dim};
  bool shape_ok = a.ndim() == 4;
  for (int i = 0; shape_ok && i < 4; ++i) shape_ok = a.shape(i) == want[i];
  if (!shape_ok) {
    throw py::value_error(absl::StrCat(
        name, " must have shape (layers, tokens, kv_heads, head_dim) = (",
        want[0], ", ", want[1], ", ", want[2], ", ", want[3], "), got ",
        ShapeText(a)));
  }
  if ((a.flags() & py::array::c_style) == 0) {
    throw py::value_error(absl::StrCat(
        name, " must be C-contiguous (use numpy.ascontiguousarray)"));
  }
  if (writable && !a.writeable()) {
    throw py::value_error(absl::StrCat(name, " must be writeable"));
  }
  return a;
}

py::list HashList(const std::vector<BlockHash>& hashes) {
  py::list out;
  for (const BlockHash& h : hashes) {
    out.append(py::bytes(h.view().data(), h.view().size()));
  }
  return out;
}

namespace {

absl::StatusOr<storage::KvDtype> ParseDtype(const std::string& name) {
  if (name == "float16") return storage::KvDtype::kFloat16;
  if (name == "bfloat16") return storage::KvDtype::kBfloat16;
  if (name == "float32") return storage::KvDtype::kFloat32;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype must be float16, bfloat16 or float32, got ", name));
}

absl::Duration Seconds(double s, const char* name) {
  if (!(s > 0)) {
    throw py::value_error(absl::StrCat(name, " must be > 0 seconds"));
  }
  return absl::Seconds(s);
}

std::unique_ptr<PyClient> MakeClient(
    const std::string& server, const std::string& codec,
    const py::object& codebooks, uint64_t codebook_hash,
    const std::string& model_id, int layers, int kv_heads, int head_dim,
    int block_tokens, int sink_tokens, const std::string& dtype,
    const std::string& weight_revision,
    const std::optional<std::string>& auth_token, double lookup_timeout,
    double io_timeout, uint64_t memory_bytes, int replicas, int key_sketch_bits,
    const py::object& tls_ca_file, const py::object& tls_cert_file,
    const py::object& tls_key_file,
    const std::optional<std::string>& tls_server_name,
    unsigned tls_reload_seconds, int key_sketch_first_layer,
    const std::string& key_pairs, int encode_cuda_device,
    std::optional<bool> decode_on_device,
    std::optional<bool> encode_on_device) {
  client::ClientConfig config;
  config.server = server;
  config.replicas = replicas;
  config.key_sketch_bits = key_sketch_bits;
  config.key_sketch_first_layer = key_sketch_first_layer;
  config.codec = codec;
  if (!codebooks.is_none()) {
    config.codebook_path =
        py::module_::import("os").attr("fspath")(codebooks).cast<std::string>();
  }
  config.codebook_hash = codebook_hash;
  config.layout = {layers, kv_heads, head_dim};
  config.auth_token = auth_token.value_or("");
  // Paths as str or os.PathLike, like `codebooks`.
  auto path = [](const py::object& p) {
    return p.is_none() ? std::string()
                       : py::module_::import("os")
                             .attr("fspath")(p)
                             .cast<std::string>();
  };
  config.tls.ca_file = path(tls_ca_file);
  config.tls.cert_file = path(tls_cert_file);
  config.tls.key_file = path(tls_key_file);
  config.tls.server_name = tls_server_name.value_or("");
  config.tls.reload_seconds = tls_reload_seconds;
  if (memory_bytes == 0) throw py::value_error("memory_bytes must be > 0");
  config.embedded_memory_bytes = memory_bytes;
  client::CacheClientOptions& o = config.options;
  o.model_id = model_id;
  o.weight_revision = weight_revision;
  o.block_tokens = block_tokens;
  o.sink_tokens = sink_tokens;
  o.encode_cuda_device = encode_cuda_device;
  // None: where possible; True: required; False: never.
  auto use = [](std::optional<bool> v) {
    return !v.has_value() ? client::DeviceUse::kAuto
           : *v           ? client::DeviceUse::kOn
                          : client::DeviceUse::kOff;
  };
  o.decode_on_device = use(decode_on_device);
  o.encode_on_device = use(encode_on_device);
  if (key_pairs == "half") {
    o.engine_key_pairs = RopePairs::kHalf;
  } else if (key_pairs != "adjacent") {
    throw py::value_error("key_pairs must be 'adjacent' or 'half', not '" +
                          key_pairs + "'");
  }
  o.dtype = ValueOrThrow(ParseDtype(dtype));
  o.lookup_timeout = Seconds(lookup_timeout, "lookup_timeout");
  o.io_timeout = Seconds(io_timeout, "io_timeout");
  return std::make_unique<PyClient>(std::move(config));
}

py::list HashChain(const py::handle& tokens, int64_t block_tokens,
                   const std::string& salt, const py::bytes& namespace_id) {
  const std::vector<int32_t> t = ToTokens(tokens);
  const storage::NamespaceId ns =
      ValueOrThrow(storage::NamespaceId::FromBytes(std::string(namespace_id)));
  return HashList(ValueOrThrow(client::HashChain(t, block_tokens, salt, ns)));
}

void TranslateStatusError(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const StatusError& e) {
    const absl::StatusCode code = e.status().code();
    if (code == absl::StatusCode::kInvalidArgument) {
      PyErr_SetString(PyExc_ValueError, e.what());
      return;
    }
    py::object err = py::reinterpret_borrow<py::object>(error_type)(e.what());
    err.attr("code") = static_cast<int>(code);
    err.attr("code_name") = absl::StatusCodeToString(code);
    PyErr_SetObject(error_type, err.ptr());
  }
}

}  // namespace
}  // namespace vqkv::python

PYBIND11_MODULE(vqkv, m) {
  namespace vp = vqkv::python;
  m.doc() =
      "vqkv: the KV-cache offload client (prefix hashing, lookup, store, "
      "load of compressed KV blocks).";
  m.attr("__version__") = VQKV_VERSION_STRING;
  m.attr("CODECS") = vqkv::CodecNames();

  vp::error_type =
      PyErr_NewException("vqkv.Error", PyExc_RuntimeError, nullptr);
  m.attr("Error") = py::handle(vp::error_type);  // the module holds a ref
  py::register_exception_translator(&vp::TranslateStatusError);

  m.def(
      "tune_allocator",
      [] { vp::ThrowIfError(vqkv::client::TuneAllocatorForLargeMessages()); },
      "Opt-in, process-wide: sets glibc's malloc thresholds (mmap 32 MiB, "
      "trim 256 MiB) so that large loads reuse memory instead of faulting in "
      "fresh pages each time (docs/CLIENT.md, Allocator). Call once at "
      "startup; raises vqkv.Error when the C library is not glibc.");
  m.def("hash_chain", &vp::HashChain, py::arg("tokens"),
        py::arg("block_tokens"), py::arg("salt") = "", py::kw_only(),
        py::arg("namespace_id"),
        "The chain hashes (16-byte bytes) of the full blocks of `tokens`, "
        "rooted at the 16-byte `namespace_id` (Client.namespace_id) and "
        "`salt` (client/hash.h).");

  py::class_<vp::PyClient>(m, "Client")
      .def(py::init(&vp::MakeClient), py::arg("server") = "embedded",
           py::kw_only(), py::arg("codec") = "fp16",
           py::arg("codebooks") = py::none(), py::arg("codebook_hash") = 0,
           py::arg("model_id"), py::arg("layers"), py::arg("kv_heads"),
           py::arg("head_dim"), py::arg("block_tokens") = 64,
           py::arg("sink_tokens") = 4, py::arg("dtype") = "float16",
           py::arg("weight_revision") = "", py::arg("auth_token") = py::none(),
           py::arg("lookup_timeout") = 0.5, py::arg("io_timeout") = 10.0,
           py::arg("memory_bytes") = uint64_t{256} << 20,
           py::arg("replicas") = 2, py::arg("key_sketch_bits") = 0,
           py::arg("tls_ca_file") = py::none(),
           py::arg("tls_cert_file") = py::none(),
           py::arg("tls_key_file") = py::none(),
           py::arg("tls_server_name") = py::none(),
           py::arg("tls_reload_seconds") = 60,
           py::arg("key_sketch_first_layer") = 0,
           py::arg("key_pairs") = "adjacent",
           py::arg("encode_cuda_device") = -1,
           py::arg("decode_on_device") = py::none(),
           py::arg("encode_on_device") = py::none(),
           "Opens a client. server: 'embedded' (in-memory store in this "
           "process), 'embedded:DIR' (with a disk tier in DIR), a "
           "vqkv-server 'host:port', or a cluster: 'host:port,host:port' or "
           "'dns:///name:port' (each block on `replicas` servers). codec: "
           "fp16, kivi2, kivi4 or vq (vq "
           "needs codebooks=path or codebook_hash=; key_sketch_bits=64 adds "
           "the key sketch, key_sketch_first_layer=16 keeps it to layers 16.., "
           "docs/CODEC.md). Timeouts in seconds. TLS to "
           "servers: tls_ca_file (turns TLS on), tls_cert_file + "
           "tls_key_file for servers that require client certificates, "
           "tls_server_name when the certificates name another host than "
           "the address dialled; the files are re-read every "
           "tls_reload_seconds (docs/CLIENT.md \"TLS\"). key_pairs: how "
           "the engine's key dimensions pair under RoPE, 'adjacent' (GGUF, "
           "llama.cpp) or 'half' (Hugging Face checkpoints in vLLM or "
           "SGLang); blocks are shared either way (docs/CLIENT.md \"Key "
           "position\"). encode_cuda_device: a CUDA device whose tensor "
           "cores run the vq searches of saves (-1: the CPU; needs a build "
           "with CUDA). decode_on_device: vq loads into CUDA pages decode "
           "on the GPU (docs/CLIENT.md \"Decoding loads on the GPU\"). "
           "encode_on_device: vq saves from CUDA pages encode on the GPU "
           "from the pages (\"Encoding saves from the pages\"). Both: "
           "None (default) where the codec and GPU allow it, True to "
           "require it, False for the host; Connector.device_paths() says "
           "which was taken.")
      .def("hash_tokens", &vp::PyClient::HashTokens, py::arg("tokens"),
           py::arg("salt") = "",
           "Chain hashes (16-byte bytes) of the full blocks of `tokens`.")
      .def("lookup", &vp::PyClient::Lookup, py::arg("tokens"),
           py::arg("salt") = "", py::arg("lease") = true,
           "Leading tokens of `tokens` cached (a multiple of block_tokens).")
      .def("store", &vp::PyClient::Store, py::arg("tokens"), py::arg("keys"),
           py::arg("values"), py::arg("salt") = "",
           "Stores the full blocks; keys/values float32 (layers, "
           "len(tokens), kv_heads, head_dim). Returns counts as a dict.")
      .def("load", &vp::PyClient::Load, py::arg("tokens"), py::arg("keys_out"),
           py::arg("values_out"), py::arg("salt") = "",
           "Loads the longest cached prefix into keys_out/values_out; "
           "returns the number of leading tokens written.")
      .def("stats", &vp::PyClient::Stats, "Counters since the client opened.")
      .def("close", &vp::PyClient::Close,
           "Waits for background work (up to io_timeout) and closes.")
      .def_property_readonly("closed", &vp::PyClient::closed)
      .def_property_readonly("namespace", &vp::PyClient::Namespace)
      .def_property_readonly("namespace_id", &vp::PyClient::NamespaceIdBytes)
      .def_property_readonly(
          "block_tokens",
          [](const vp::PyClient& c) { return c.Get()->block_tokens(); })
      .def_property_readonly(
          "layers",
          [](const vp::PyClient& c) { return c.Get()->layout().layers; })
      .def_property_readonly(
          "kv_heads",
          [](const vp::PyClient& c) { return c.Get()->layout().kv_heads; })
      .def_property_readonly(
          "head_dim",
          [](const vp::PyClient& c) { return c.Get()->layout().head_dim; })
      .def("wait_idle", &vp::PyClient::WaitIdle, py::arg("timeout") = 10.0,
           "Waits up to `timeout` seconds for background saves; True when "
           "none is left.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](vp::PyClient& c, const py::args&) { c.Close(); });

  vp::BindConnector(m);
}
