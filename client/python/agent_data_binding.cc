#include "client/python/agent_data_binding.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/python/without_gil.h"
#include "proto/agent.grpc.pb.h"

namespace py = pybind11;

namespace dragon::client {
namespace {

PyObject* g_data_plane_error = nullptr;  // set by RegisterAgentData; the module keeps it

// Beyond the transfer's own timeout, for the call around it (the service
// answers DeadlineExceeded itself; this only bounds a service that hangs).
constexpr double kCallMarginS = 5;
// The deadline of a call whose timeout is 0 (the agent's default, 30 s).
constexpr double kDefaultCallS = 60;

// "UNAVAILABLE", "NOT_FOUND", ...: gRPC and absl number their codes alike,
// and absl names them as gRPC does.
std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(static_cast<int>(code)));
}

// One channel per socket path, for the life of the process: a worker makes
// many transfers through its one agent.
class Channels {
 public:
  std::shared_ptr<grpc::Channel> Get(const std::string& socket) {
    std::lock_guard<std::mutex> lock(mu_);
    std::shared_ptr<grpc::Channel>& channel = channels_[socket];
    if (channel == nullptr) {
      grpc::ChannelArguments args;
      // A restarted agent is reached again soon, not after gRPC's growing
      // reconnect backoff (up to 2 minutes).
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
      // Dictionary values of any size come back (gRPC's default is 4 MiB).
      args.SetMaxReceiveMessageSize(-1);
      channel = grpc::CreateCustomChannel(absl::StrCat("unix:", socket),
                                          grpc::InsecureChannelCredentials(), args);
    }
    return channel;
  }
  // After the socket could not be reached: the next call starts afresh.
  void Forget(const std::string& socket) {
    std::lock_guard<std::mutex> lock(mu_);
    channels_.erase(socket);
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;
};

Channels& AllChannels() {
  static Channels* channels = new Channels();  // never destroyed: used until exit
  return *channels;
}

// The outcome of one call, made without the interpreter lock.
struct Outcome {
  grpc::Status status;
  std::string reply;         // the new block's ref (Pull/Push), the DictReply (Dict)
  bool unreachable = false;  // the socket, not the service, failed
};

// Makes one AgentData call, `rpc(stub, context, &reply)`, to the agent
// serving `socket`, and tells an unreachable socket from the service's own
// errors.
template <typename Rpc>
Outcome CallAgent(const std::string& socket, double timeout_s, Rpc rpc) {
  Outcome out;
  struct stat st {};
  if (stat(socket.c_str(), &st) != 0) {
    out.unreachable = true;
    out.status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "no such socket (is the node's agent running with a data plane?)");
    return out;
  }
  std::shared_ptr<grpc::Channel> channel = AllChannels().Get(socket);
  std::unique_ptr<v1::AgentData::Stub> stub = v1::AgentData::NewStub(channel);
  grpc::ClientContext context;
  const double call_s = timeout_s > 0 ? timeout_s + kCallMarginS : kDefaultCallS;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::microseconds(static_cast<int64_t>(call_s * 1e6)));
  out.status = rpc(*stub, &context, &out.reply);
  if (!out.status.ok() && out.status.error_code() == grpc::StatusCode::UNAVAILABLE &&
      channel->GetState(false) != GRPC_CHANNEL_READY) {
    // The service's own Unavailable (a peer node lost) comes over a ready
    // channel; a channel that is not ready never reached the service.
    out.unreachable = true;
    AllChannels().Forget(socket);
  }
  return out;
}

Outcome Call(bool push, const std::string& socket, const v1::BlockTransfer& request,
             double timeout_s) {
  return CallAgent(socket, timeout_s,
                   [&](v1::AgentData::Stub& stub, grpc::ClientContext* context, std::string* ref) {
                     v1::BlockTransferred reply;
                     grpc::Status status = push ? stub.Push(context, request, &reply)
                                                : stub.Pull(context, request, &reply);
                     *ref = reply.ref();
                     return status;
                   });
}

[[noreturn]] void RaiseDataPlaneError(const std::string& message, grpc::StatusCode code) {
  PyObject* error = PyObject_CallFunction(g_data_plane_error, "s", message.c_str());
  if (error == nullptr) throw py::error_already_set();
  PyObject_SetAttrString(error, "code", py::str(CodeName(code)).ptr());
  PyErr_SetObject(g_data_plane_error, error);
  Py_DECREF(error);
  throw py::error_already_set();
}

// Raises DataPlaneError for the failed call `out` to the agent at `socket`:
// naming the socket when it was not reached, else `what` and the service's
// code and message.
[[noreturn]] void RaiseFailed(const std::string& socket, const Outcome& out,
                              const std::string& what) {
  const std::string code = CodeName(out.status.error_code());
  if (out.unreachable) {
    RaiseDataPlaneError(absl::StrCat("cannot reach the agent's data service at ", socket, ": ",
                                     code, ": ", out.status.error_message()),
                        out.status.error_code());
  }
  RaiseDataPlaneError(absl::StrCat(what, code, ": ", out.status.error_message()),
                      out.status.error_code());
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
  Outcome out = WithoutGil([&] { return Call(push, socket, request, timeout_s); });
  if (out.status.ok()) return py::bytes(out.reply);
  RaiseFailed(socket, out,
              absl::StrCat("agent ", push ? "push to" : "pull from", " node ", node_id, " failed: "));
}

// A call whose request and reply cross as serialized protobufs (Dict,
// Channel): `rpc(stub, context, request, &reply)`. The request is parsed
// from the bytes object's own buffer without the interpreter lock (bytes are
// immutable; a channel message may be 1 GiB), not from a copy of it.
template <typename Request, typename Reply, typename Rpc>
py::bytes CallSerialized(const std::string& socket, const py::bytes& request_bytes,
                         double timeout_s, Rpc rpc) {
  if (timeout_s < 0) throw py::value_error("timeout_s must be >= 0 (0: the agent's default)");
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(request_bytes.ptr(), &data, &size) != 0) {
    throw py::error_already_set();
  }
  const std::string type = Request::descriptor()->full_name();
  if (size > INT_MAX) {
    throw py::value_error(absl::StrCat("request: ", size, " bytes, more than a protobuf message's ",
                                       INT_MAX, " (send smaller messages)"));
  }
  Request request;
  const bool parsed = WithoutGil([&] { return request.ParseFromArray(data, static_cast<int>(size)); });
  if (!parsed) throw py::value_error(absl::StrCat("request: not a serialized ", type));
  Outcome out = WithoutGil([&] {
    return CallAgent(socket, timeout_s,
                     [&](v1::AgentData::Stub& stub, grpc::ClientContext* context,
                         std::string* serialized) {
                       Reply reply;
                       grpc::Status status = rpc(stub, context, request, &reply);
                       if (status.ok()) *serialized = reply.SerializeAsString();
                       return status;
                     });
  });
  if (out.status.ok()) return py::bytes(out.reply);
  RaiseFailed(socket, out, "");
}

// A Dictionary operation (dragon_parsl.comm_dict).
py::bytes Dict(const std::string& socket, const py::bytes& request_bytes, double timeout_s) {
  return CallSerialized<v1::DictRequest, v1::DictReply>(
      socket, request_bytes, timeout_s,
      [](v1::AgentData::Stub& stub, grpc::ClientContext* context, const v1::DictRequest& request,
         v1::DictReply* reply) { return stub.Dict(context, request, reply); });
}

// A channel operation (dragon_parsl.comm, a Pipe or Queue used on another
// node).
py::bytes Channel(const std::string& socket, const py::bytes& request_bytes, double timeout_s) {
  return CallSerialized<v1::ChannelRequest, v1::ChannelReply>(
      socket, request_bytes, timeout_s,
      [](v1::AgentData::Stub& stub, grpc::ClientContext* context,
         const v1::ChannelRequest& request, v1::ChannelReply* reply) {
        return stub.Channel(context, request, reply);
      });
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
        "DictReply. Raises DataPlaneError (.code: the gRPC code's name).");
  m.def("agent_channel", &Channel, py::arg("socket"), py::arg("request"), py::arg("timeout_s"),
        "Sends a serialized dragon.v1.ChannelRequest to the agent serving `socket` (which does it "
        "on its pool's channel or forwards it to the channel's home node) and returns the "
        "serialized ChannelReply. Raises DataPlaneError (.code: the gRPC code's name).");
}

}  // namespace dragon::client
