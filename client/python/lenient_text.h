// Text for Python from C++ strings that may not be valid UTF-8 (an error
// from the head, a remote agent or another node's name): decoded with
// replacement characters, so that the error a caller gets is the one meant,
// never a UnicodeDecodeError raised while building it.
#ifndef DRAGON_CLIENT_PYTHON_LENIENT_TEXT_H_
#define DRAGON_CLIENT_PYTHON_LENIENT_TEXT_H_

#include <pybind11/pybind11.h>

#include <string_view>

namespace dragon::client {

inline pybind11::object LenientText(std::string_view s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (o == nullptr) throw pybind11::error_already_set();
  return pybind11::reinterpret_steal<pybind11::object>(o);
}

// Raises `type` with `message` (the caller then throws error_already_set).
inline void SetErrorText(PyObject* type, std::string_view message) {
  PyErr_SetObject(type, LenientText(message).ptr());
}

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_PYTHON_LENIENT_TEXT_H_
