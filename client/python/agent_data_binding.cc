#include "client/python/agent_data_binding.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/python/lenient_text.h"
#include "client/python/without_gil.h"
#include "common/data_socket_client.h"
#include "proto/agent.pb.h"

namespace py = pybind11;

namespace dragon::client {
namespace {

using common::DataCallResult;
using common::DataMethod;

PyObject* g_data_plane_error = nullptr;  // set by RegisterAgentData; the module keeps it

// Beyond the transfer's own timeout, for the call around it (the service
// answers DeadlineExceeded itself; this only bounds a service that hangs).
constexpr double kCallMarginS = 5;
// The deadline of a call whose timeout is 0 (the agent's default, 30 s).
constexpr double kDefaultCallS = 60;

// "UNAVAILABLE", "NOT_FOUND", ...: the names gRPC gives its codes (absl
// numbers and names them alike), kept from when the socket spoke gRPC.
std::string CodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }

// One call to the agent serving `socket`, without the interpreter lock: this
// thread's kept connection to it (common/data_socket_client.h).
DataCallResult CallAgent(const std::string& socket, DataMethod method, absl::string_view request,
                         double timeout_s) {
  const double call_s = timeout_s > 0 ? timeout_s + kCallMarginS : kDefaultCallS;
  return WithoutGil([&] {
    return common::CallDataSocket(socket, method, request, absl::Seconds(call_s));
  });
}

[[noreturn]] void RaiseDataPlaneError(const std::string& message, absl::StatusCode code) {
  PyObject* error = PyObject_CallOneArg(g_data_plane_error, LenientText(message).ptr());
  if (error == nullptr) throw py::error_already_set();
  PyObject_SetAttrString(error, "code", py::str(CodeName(code)).ptr());
  PyErr_SetObject(g_data_plane_error, error);
  Py_DECREF(error);
  throw py::error_already_set();
}

// Raises DataPlaneError for the failed call `out` to the agent at `socket`:
// naming the socket when it was not reached, else `what` and the service's
// code and message.
[[noreturn]] void RaiseFailed(const std::string& socket, const DataCallResult& out,
                              const std::string& what) {
  const std::string code = CodeName(out.status.code());
  if (out.unreachable) {
    RaiseDataPlaneError(absl::StrCat("cannot reach the agent's data service at ", socket, ": ",
                                     code, ": ", out.status.message()),
                        out.status.code());
  }
  RaiseDataPlaneError(absl::StrCat(what, code, ": ", out.status.message()), out.status.code());
}

py::bytes Transfer(bool push, const std::string& socket, const std::string& node_id,
                   const py::bytes& ref, uint64_t size, int64_t owner_pid, double timeout_s) {
  if (timeout_s < 0) throw py::value_error("timeout_s must be >= 0 (0: the agent's default)");
  if (owner_pid <= 0 || owner_pid > INT32_MAX) {
    throw py::value_error(absl::StrCat("owner_pid ", owner_pid, " is not a process id"));
  }
  v1::BlockTransfer request;
  request.set_node_id(node_id);
  request.set_ref(std::string(ref));
  request.set_size(size);
  request.set_owner_pid(static_cast<int32_t>(owner_pid));
  request.set_timeout_ms(static_cast<uint32_t>(std::min(timeout_s * 1000.0, 4.0e9)));
  const std::string serialized = request.SerializeAsString();
  DataCallResult out =
      CallAgent(socket, push ? DataMethod::kPush : DataMethod::kPull, serialized, timeout_s);
  if (out.status.ok()) {
    v1::BlockTransferred reply;
    if (!reply.ParseFromString(out.reply)) {
      RaiseDataPlaneError("agent transfer: the reply is not a BlockTransferred",
                          absl::StatusCode::kInternal);
    }
    return py::bytes(reply.ref());
  }
  RaiseFailed(socket, out,
              absl::StrCat("agent ", push ? "push to" : "pull from", " node ", node_id, " failed: "));
}

// A call whose request and reply cross as serialized protobufs (Dict,
// Channel), passed through as they are: the agent parses the request (and
// answers INVALID_ARGUMENT when it is not one), the caller the reply. The
// request is sent from the bytes object's own buffer without the
// interpreter lock (bytes are immutable; a channel message may be 1 GiB).
py::bytes CallSerialized(const std::string& socket, DataMethod method,
                         const py::bytes& request_bytes, double timeout_s) {
  if (timeout_s < 0) throw py::value_error("timeout_s must be >= 0 (0: the agent's default)");
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(request_bytes.ptr(), &data, &size) != 0) {
    throw py::error_already_set();
  }
  if (size > INT_MAX) {
    throw py::value_error(absl::StrCat("request: ", size, " bytes, more than a protobuf message's ",
                                       INT_MAX, " (send smaller messages)"));
  }
  DataCallResult out =
      CallAgent(socket, method, absl::string_view(data, static_cast<size_t>(size)), timeout_s);
  if (out.status.ok()) return py::bytes(out.reply);
  RaiseFailed(socket, out, "");
}

// A Dictionary operation (dragon_parsl.comm_dict).
py::bytes Dict(const std::string& socket, const py::bytes& request_bytes, double timeout_s) {
  return CallSerialized(socket, DataMethod::kDict, request_bytes, timeout_s);
}

// A channel operation (dragon_parsl.comm, a Pipe or Queue used on another
// node).
py::bytes Channel(const std::string& socket, const py::bytes& request_bytes, double timeout_s) {
  return CallSerialized(socket, DataMethod::kChannel, request_bytes, timeout_s);
}

}  // namespace

void RegisterAgentData(py::module_& m) {
  static py::exception<std::runtime_error> data_plane_error(m, "DataPlaneError",
                                                             PyExc_RuntimeError);
  g_data_plane_error = data_plane_error.ptr();
  m.def(
      "agent_pull",
      [](const std::string& socket, const std::string& node_id, const py::bytes& ref,
         uint64_t size, int64_t owner_pid, double timeout_s) {
        return Transfer(false, socket, node_id, ref, size, owner_pid, timeout_s);
      },
      py::arg("socket"), py::arg("node_id"), py::arg("ref"), py::arg("size"),
      py::arg("owner_pid"), py::arg("timeout_s"),
      "Has the agent serving `socket` copy the first `size` bytes of block `ref` of node "
      "`node_id`'s pool into a new block of its own pool owned by `owner_pid`; returns the new "
      "block's 24-byte ref. timeout_s 0: the agent's default. Raises DataPlaneError.");
  m.def(
      "agent_push",
      [](const std::string& socket, const std::string& node_id, const py::bytes& ref,
         uint64_t size, int64_t owner_pid, double timeout_s) {
        return Transfer(true, socket, node_id, ref, size, owner_pid, timeout_s);
      },
      py::arg("socket"), py::arg("node_id"), py::arg("ref"), py::arg("size"),
      py::arg("owner_pid"), py::arg("timeout_s"),
      "Has node `node_id`'s agent copy the first `size` bytes of block `ref` of this node's pool "
      "into a new block of its pool, owned there by `owner_pid`; returns that block's 24-byte ref "
      "(in node_id's pool). The source block is left as it is. Raises DataPlaneError.");
  m.def("agent_dict", &Dict, py::arg("socket"), py::arg("request"), py::arg("timeout_s"),
        "Sends a serialized dragon.v1.DictRequest to the agent serving `socket` (which applies "
        "it to its shard or forwards it to the node named in it) and returns the serialized "
        "DictReply. Raises DataPlaneError (.code: the status code's name, as gRPC names it).");
  m.def("agent_channel", &Channel, py::arg("socket"), py::arg("request"), py::arg("timeout_s"),
        "Sends a serialized dragon.v1.ChannelRequest to the agent serving `socket` (which does it "
        "on its pool's channel or forwards it to the channel's home node) and returns the "
        "serialized ChannelReply. Raises DataPlaneError (.code: the status code's name, as gRPC names it).");
}

}  // namespace dragon::client
