// dragon_parsl._core: the C++ client core (client/session_client) for Python.
//
// A thin binding: the stream, batching, encoding and decoding run on the
// core's own threads, outside the interpreter lock. Python submits tasks as
// plain values and takes whatever has arrived in one call (take()), which
// waits with the lock released and returns every Accepted pair and result
// gathered meanwhile as tuples: one lock acquisition for many futures.
// Errors come back as (code, message, detail, from_grpc_status,
// head_protocol_version) tuples (client/session_client.h's payloads); dragon_parsl.core_session turns them into dragon_parsl.errors
// classes, so that the error classes and texts live in one place.
#include <pybind11/pybind11.h>

#include <unistd.h>

#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/time/time.h"
#include "client/python/agent_data_binding.h"
#include "client/python/channel_binding.h"
#include "client/python/client_data_plane_binding.h"
#include "client/python/lenient_text.h"
#include "client/python/session_inbox.h"
#include "client/python/owned_buffer.h"
#include "client/python/shm_pool_binding.h"
#include "client/python/without_gil.h"
#include "client/session_client.h"

namespace py = pybind11;

namespace dragon::client {
namespace {

// Text from the head or the transport may not be valid UTF-8: never fail on it.
py::object Text(const std::string& s) { return LenientText(s); }

py::object Payload(const absl::Status& s, const char* type_url) {
  auto p = s.GetPayload(type_url);
  if (!p.has_value()) return py::none();
  return Text(std::string(*p));
}

// (code name, message, detail or None, from a gRPC status, head protocol version or None).
py::tuple ErrorTuple(const absl::Status& s) {
  py::object head_version = py::none();
  if (auto v = s.GetPayload(kHeadProtocolPayload); v.has_value()) {
    head_version = py::int_(std::stoll(std::string(*v)));
  }
  return py::make_tuple(absl::StatusCodeToString(s.code()), Text(std::string(s.message())),
                        Payload(s, kDetailPayload), s.GetPayload(kGrpcStatusPayload).has_value(),
                        head_version);
}

absl::Duration Seconds(double s) { return absl::Seconds(s > 0 ? s : 0); }

class CoreSession {
 public:
  CoreSession(std::string address, std::string token, std::string tls_ca, std::string client_name,
              std::string cwd, py::object infra_retries, size_t max_batch_tasks,
              size_t max_batch_bytes, double linger_s, size_t linger_in_flight,
              uint32_t protocol_version) {
    options_.address = std::move(address);
    options_.token = std::move(token);
    options_.tls_ca = std::move(tls_ca);
    options_.client_name = std::move(client_name);
    options_.cwd = std::move(cwd);
    if (!infra_retries.is_none()) options_.infra_retries = infra_retries.cast<uint32_t>();
    options_.max_batch_tasks = max_batch_tasks;
    options_.max_batch_bytes = max_batch_bytes;
    options_.linger = Seconds(linger_s);
    options_.linger_in_flight = linger_in_flight;
    options_.protocol_version = protocol_version;
  }

  // ("welcome", serialized Welcome) or ("error", error tuple).
  py::tuple Connect(double timeout_s) {
    if (client_ != nullptr) throw std::logic_error("connect() was called already");
    options_.connect_timeout = Seconds(timeout_s);
    SessionCallbacks callbacks;
    SessionInbox* inbox = &inbox_;
    callbacks.on_accepted = [inbox](const dragon::v1::Accepted& a) { inbox->AddAccepted(a); };
    callbacks.on_results = [inbox](dragon::v1::ResultBatch* b) { inbox->AddResults(b); };
    callbacks.on_end = [inbox](const absl::Status& s) { inbox->End(s); };
    absl::StatusOr<std::unique_ptr<SessionClient>> client =
        WithoutGil([&] { return SessionClient::Connect(options_, std::move(callbacks)); });
    if (!client.ok()) return py::make_tuple("error", ErrorTuple(client.status()));
    client_ = *std::move(client);
    return py::make_tuple("welcome", py::bytes(client_->welcome().SerializeAsString()));
  }

  // None, or the error tuple (closed, broken, or larger than the head accepts).
  // data_node: the node whose shared-memory pool holds the arguments, which
  // the head prefers ("" for none).
  py::object Submit(uint64_t client_ref, int kind, py::bytes payload, const std::string& name,
                    py::object resources, bool whole_result, const std::string& data_node) {
    if (client_ == nullptr) throw std::logic_error("submit() before connect()");
    dragon::v1::TaskSubmission task;
    task.set_client_ref(client_ref);
    task.set_kind(static_cast<dragon::v1::TaskKind>(kind));
    char* data = nullptr;
    Py_ssize_t size = 0;
    if (PyBytes_AsStringAndSize(payload.ptr(), &data, &size) != 0) throw py::error_already_set();
    task.set_payload(data, static_cast<size_t>(size));
    task.set_name(name);
    if (!data_node.empty()) task.set_data_node(data_node);
    if (!resources.is_none()) {
      char* r = nullptr;
      Py_ssize_t rsize = 0;
      if (PyBytes_AsStringAndSize(resources.ptr(), &r, &rsize) != 0) throw py::error_already_set();
      if (!task.mutable_resources()->ParseFromArray(r, static_cast<int>(rsize))) {
        throw py::value_error("resources: not a serialized dragon.v1.ResourceRequest");
      }
    }
    if (whole_result) inbox_.WantWhole(client_ref);
    absl::Status st = client_->Submit(std::move(task));
    if (!st.ok()) return ErrorTuple(st);
    return py::none();
  }

  // ([(client_ref, task_id)], [result tuple], None | end) where a result tuple
  // is (client_ref, task_id, outcome, data, failure, error, node, worker_pid,
  // whole) with whole the serialized ClientResult for refs submitted with
  // whole_result, else None; end is "ok" after close(), else an error tuple.
  py::tuple Take(double timeout_s) {
    InboxBatch batch = WithoutGil([&] { return inbox_.Take(Seconds(timeout_s)); });
    py::list accepted(batch.accepted.size());
    for (size_t i = 0; i < batch.accepted.size(); ++i) {
      accepted[i] = py::make_tuple(batch.accepted[i].first, batch.accepted[i].second);
    }
    py::list results(batch.results.size());
    for (size_t i = 0; i < batch.results.size(); ++i) {
      const dragon::v1::ClientResult& r = batch.results[i];
      const dragon::v1::TaskResult& res = r.result();
      py::object whole = py::none();
      if (inbox_.TakeWantsWhole(r.client_ref())) whole = py::bytes(r.SerializeAsString());
      results[i] = py::make_tuple(r.client_ref(), r.task_id(), static_cast<int>(res.outcome()),
                                  py::bytes(res.data()), static_cast<int>(res.failure()),
                                  Text(res.error()), Text(res.node()), res.worker_pid(), whole);
    }
    py::object end = py::none();
    if (batch.end.has_value()) end = batch.end->ok() ? py::object(py::str("ok")) : ErrorTuple(*batch.end);
    return py::make_tuple(std::move(accepted), std::move(results), std::move(end));
  }

  // Sends what is queued, ends the stream (waiting up to timeout for the
  // head), joins the core's threads. None, or how the stream ended badly.
  py::object Close(double timeout_s) {
    if (client_ == nullptr) return py::none();
    absl::Status st = WithoutGil([&] { return client_->Close(Seconds(timeout_s)); });
    if (st.ok()) return py::none();
    return ErrorTuple(st);
  }

  void set_size_check(bool on) {
    if (client_ != nullptr) client_->set_size_check(on);
  }

  uint64_t batches_sent() const { return client_ ? client_->batches_sent() : 0; }
  uint64_t tasks_sent() const { return client_ ? client_->tasks_sent() : 0; }
  uint64_t lingers() const { return client_ ? client_->lingers() : 0; }

  ~CoreSession() {
    if (client_ != nullptr) {
      // The core's threads never take the lock; joining them must not hold it.
      WithoutGil([&] {
        client_.reset();
        return true;
      });
    }
  }

 private:
  SessionOptions options_;
  SessionInbox inbox_;
  std::unique_ptr<SessionClient> client_;
};

// The current directory, or None when getcwd(3) fails (a deleted directory, a path
// longer than the buffer: os.getcwd() then raises the error that says why). Unlike
// os.getcwd() it keeps the interpreter lock: DragonExecutor asks once per task on the
// DataFlowKernel's launch thread, and each release hands the lock to a queued thread
// (see dragon_parsl/_cwd.py); unlike the ctypes call it replaces, it costs about
// 0.7 us (mostly the syscall) instead of 1.3-2.1.
py::object GetcwdKeepingGil() {
  char buf[4096];
  if (::getcwd(buf, sizeof buf) == nullptr) return py::none();
  PyObject* text = PyUnicode_DecodeFSDefault(buf);
  if (text == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(text);
}

}  // namespace
}  // namespace dragon::client

PYBIND11_MODULE(_core, m) {
  using dragon::client::CoreSession;
  m.doc() = "The C++ client core of dragon (HeadService.Session), for dragon_parsl.core_session.";
  m.attr("PROTOCOL_VERSION") = static_cast<int>(dragon::client::kSessionProtocolVersion);
  py::class_<CoreSession>(m, "CoreSession")
      .def(py::init<std::string, std::string, std::string, std::string, std::string, py::object,
                    size_t, size_t, double, size_t, uint32_t>(),
           py::arg("address"), py::arg("token"), py::arg("tls_ca"), py::arg("client_name"),
           py::arg("cwd"), py::arg("infra_retries"), py::arg("max_batch_tasks"),
           py::arg("max_batch_bytes"), py::arg("linger_s"), py::arg("linger_in_flight"),
           py::arg("protocol_version") = dragon::client::kSessionProtocolVersion)
      .def("connect", &CoreSession::Connect, py::arg("timeout_s"))
      .def("submit", &CoreSession::Submit, py::arg("client_ref"), py::arg("kind"),
           py::arg("payload"), py::arg("name"), py::arg("resources"), py::arg("whole_result"),
           py::arg("data_node") = "")
      .def("take", &CoreSession::Take, py::arg("timeout_s"))
      .def("close", &CoreSession::Close, py::arg("timeout_s"))
      .def("set_size_check", &CoreSession::set_size_check, py::arg("on"))
      .def_property_readonly("batches_sent", &CoreSession::batches_sent)
      .def_property_readonly("tasks_sent", &CoreSession::tasks_sent)
      .def_property_readonly("lingers", &CoreSession::lingers);
  m.def("getcwd_keeping_gil", &dragon::client::GetcwdKeepingGil,
        "os.getcwd() without releasing the interpreter lock; None when getcwd(3) fails.");
  dragon::client::RegisterShmPool(m);
  dragon::client::RegisterOwnedBuffer(m);
  dragon::client::RegisterChannels(m);  // after the two above: it raises ShmPoolFull, uses copy_buffer
  dragon::client::RegisterAgentData(m);
  dragon::client::RegisterClientDataPlane(m);
}
