#include "client/python/client_data_plane_binding.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "agent/peer_directory.h"
#include "client/client_data_plane.h"
#include "client/python/without_gil.h"

namespace py = pybind11;

namespace dragon::client {
namespace {

PyObject* g_error = nullptr;  // set by RegisterClientDataPlane; the module keeps it

[[noreturn]] void Raise(const absl::Status& status) {
  const std::string code = absl::StatusCodeToString(status.code());
  py::object error = py::reinterpret_borrow<py::object>(g_error)(
      absl::StrCat(code, ": ", status.message()));
  error.attr("code") = code;
  PyErr_SetObject(g_error, error.ptr());
  throw py::error_already_set();
}

// The data plane as Python holds it: stop() (or the object's end) stops its
// threads with the interpreter lock released.
class Handle {
 public:
  explicit Handle(std::unique_ptr<ClientDataPlane> plane) : plane_(std::move(plane)) {}
  ~Handle() { Stop(); }

  ClientDataPlane& plane() const {
    if (plane_ == nullptr) Raise(absl::FailedPreconditionError("the client data plane is stopped"));
    return *plane_;
  }
  void Stop() {
    if (plane_ == nullptr) return;
    std::unique_ptr<ClientDataPlane> plane = std::move(plane_);
    if (Py_IsInitialized() && PyGILState_Check()) {
      WithoutGil([&] {
        plane.reset();
        return 0;
      });
    } else {
      plane.reset();
    }
  }
  bool running() const { return plane_ != nullptr; }

 private:
  std::unique_ptr<ClientDataPlane> plane_;
};

std::unique_ptr<Handle> Start(const std::string& peer_id, const std::string& head_address,
                              const std::string& token, const std::string& tls_ca,
                              uint64_t pool_bytes, const std::string& pool_dir,
                              const std::string& pool_option) {
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> plane = WithoutGil([&] {
    return [&]() -> absl::StatusOr<std::unique_ptr<ClientDataPlane>> {
      agent::HeadPeerDirectoryOptions dopts;
      dopts.head_address = head_address;
      dopts.token = token;
      dopts.tls_ca = tls_ca;
      absl::StatusOr<std::unique_ptr<agent::HeadPeerDirectory>> directory =
          agent::HeadPeerDirectory::Connect(dopts);
      if (!directory.ok()) {
        return absl::Status(directory.status().code(),
                            absl::StrCat("the peer directory (dragond at ", head_address,
                                         "): ", directory.status().message()));
      }
      ClientDataPlaneOptions options;
      options.peer_id = peer_id;
      options.pool_bytes = pool_bytes;
      options.pool_dir = pool_dir;
      options.pool_option = pool_option;
      return ClientDataPlane::Start(options, *std::move(directory));
    }();
  });
  if (!plane.ok()) Raise(plane.status());
  return std::make_unique<Handle>(*std::move(plane));
}

}  // namespace

void RegisterClientDataPlane(py::module_& m) {
  static py::exception<std::runtime_error> error(m, "ClientDataPlaneError", PyExc_RuntimeError);
  g_error = error.ptr();
  py::class_<Handle>(m, "ClientDataPlane")
      .def_static("start", &Start, py::arg("peer_id"), py::arg("head_address"),
                  py::arg("token") = "", py::arg("tls_ca") = "", py::arg("pool_bytes"),
                  py::arg("pool_dir") = "/dev/shm",
                  py::arg("pool_option") = "DragonExecutor(client_pool_mb=...)",
                  "Creates the client's pool (POOL_BYTES, in POOL_DIR until unlink_pool_file) and "
                  "starts a UCX data plane on it named PEER_ID, finding the agents through the "
                  "head at HEAD_ADDRESS. ClientDataPlaneError naming the part that failed.")
      .def("unlink_pool_file",
           [](Handle& h) {
             absl::Status unlinked = h.plane().UnlinkPoolFile();
             if (!unlinked.ok()) Raise(unlinked);
           },
           "Removes the pool's file once this process has attached it: the memory stays with "
           "the mappings and goes with the process.")
      .def("stop", &Handle::Stop, "Stops the data plane's threads and unmaps its pool.")
      .def_property_readonly("running", &Handle::running)
      .def_property_readonly("peer_id", [](const Handle& h) { return h.plane().peer_id(); })
      .def_property_readonly("pool_path", [](const Handle& h) { return h.plane().pool_path(); })
      .def_property_readonly("pool_bytes", [](const Handle& h) { return h.plane().pool_bytes(); })
      .def_property_readonly("pool_address",
                             [](const Handle& h) { return h.plane().pool_address(); })
      .def_property_readonly("ucx_address",
                             [](const Handle& h) { return py::bytes(h.plane().ucx_address()); })
      .def_property_readonly("pool_rkey",
                             [](const Handle& h) { return py::bytes(h.plane().pool_rkey()); });
}

}  // namespace dragon::client
