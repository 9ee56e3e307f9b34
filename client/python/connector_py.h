// vqkv.Connector, vqkv.LoadSpec, vqkv.SaveSpec: the paged, layer-wise worker
// API (client/kv_connector.h) for Python engines such as vLLM and SGLang.
#ifndef VQKV_CLIENT_PYTHON_CONNECTOR_PY_H_
#define VQKV_CLIENT_PYTHON_CONNECTOR_PY_H_

#include <pybind11/pybind11.h>

namespace vqkv::python {

// Adds the classes to `m`; vqkv.Client must be bound already.
void BindConnector(pybind11::module_& m);

}  // namespace vqkv::python

#endif  // VQKV_CLIENT_PYTHON_CONNECTOR_PY_H_
