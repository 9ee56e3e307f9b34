// What the files of the `vqkv` Python module share: absl errors on their
// way to Python (StatusError, translated to ValueError or vqkv.Error by the
// module), and int32 lists from Python sequences or numpy arrays.
//
// Thread safety: the functions need the GIL (they touch Python objects),
// except ThrowIfError and ValueOrThrow.
#ifndef VQKV_CLIENT_PYTHON_PY_COMMON_H_
#define VQKV_CLIENT_PYTHON_PY_COMMON_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace vqkv::python {

namespace py = pybind11;

// An absl error on its way to Python (see the translator in the module).
class StatusError : public std::runtime_error {
 public:
  explicit StatusError(absl::Status status)
      : std::runtime_error(std::string(status.message())),
        status_(std::move(status)) {}
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

inline PyObject* error_type = nullptr;  // vqkv.Error; owned by the module

inline void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) throw StatusError(status);
}

template <typename T>
T ValueOrThrow(absl::StatusOr<T> value) {
  ThrowIfError(value.status());
  return *std::move(value);
}

// int32 values from a sequence of ints or a 1-d integer numpy array; errors
// name them as `what` ("tokens") and one of them as `item_name` ("token").
inline std::vector<int32_t> ToInt32s(const py::handle& obj,
                                     const char* item_name, const char* what) {
  std::vector<int32_t> out;
  auto append = [&](int64_t v) {
    if (v < std::numeric_limits<int32_t>::min() ||
        v > std::numeric_limits<int32_t>::max()) {
      throw py::value_error(absl::StrCat(item_name, " ", out.size(), " is ", v,
                                         ": ", what, " are int32"));
    }
    out.push_back(static_cast<int32_t>(v));
  };
  if (py::isinstance<py::array>(obj)) {
    const py::array a = py::reinterpret_borrow<py::array>(obj);
    const char kind = a.dtype().kind();
    if ((kind != 'i' && kind != 'u') || a.ndim() != 1) {
      throw py::value_error(absl::StrCat(
          what, " must be a 1-d integer array or a sequence of ints"));
    }
    const auto ints =
        py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(
            a);
    if (!ints)
      throw py::value_error(absl::StrCat(what, ": cannot convert to int64"));
    out.reserve(ints.size());
    for (py::ssize_t i = 0; i < ints.size(); ++i) append(ints.data()[i]);
    return out;
  }
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj)) {
    throw py::value_error(absl::StrCat(
        what, " must be a 1-d integer array or a sequence of ints"));
  }
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  out.reserve(seq.size());
  for (const py::handle item : seq) {
    if (!PyLong_Check(item.ptr())) {
      throw py::value_error(absl::StrCat(
          item_name, " ", out.size(), " is not an int (",
          std::string(py::str(item.get_type().attr("__name__"))), ")"));
    }
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(item.ptr(), &overflow);
    if (overflow != 0) {
      throw py::value_error(absl::StrCat(item_name, " ", out.size(),
                                         " is out of the int32 range"));
    }
    append(v);
  }
  return out;
}

inline std::vector<int32_t> ToTokens(const py::handle& tokens) {
  return ToInt32s(tokens, "token", "tokens");
}

}  // namespace vqkv::python

#endif  // VQKV_CLIENT_PYTHON_PY_COMMON_H_
