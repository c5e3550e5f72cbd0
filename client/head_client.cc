#include "client/head_client.h"

#include <chrono>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/head_locator.h"
#include "common/transport.h"

namespace dragon::client {
namespace {

std::string Seconds(absl::Duration d) { return absl::FormatDuration(d); }

absl::StatusCode ToAbsl(grpc::StatusCode code) {
  // gRPC and absl share the canonical code numbering.
  return static_cast<absl::StatusCode>(static_cast<int>(code));
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "OK";
  }
}

}  // namespace

absl::Status TranslateRpcError(const grpc::Status& status, const RpcErrorContext& context) {
  if (status.ok()) return absl::OkStatus();
  const grpc::StatusCode code = status.error_code();
  const std::string& msg = status.error_message();
  const std::string& address = context.address;
  const char* method = context.method;
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
      // A connected head can itself answer UNAVAILABLE (e.g. while shutting
      // down); only a channel that never got up means "cannot reach".
      if (!context.channel_was_ready) {
        return absl::UnavailableError(absl::StrCat("cannot reach dragond at ", address, ": ", msg));
      }
      return absl::UnavailableError(
          absl::StrCat("dragond at ", address, " is unavailable (", method, "): ", msg));
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      if (!context.channel_was_ready) {
        return absl::UnavailableError(absl::StrCat("cannot reach dragond at ", address,
                                                   ": no connection within ",
                                                   Seconds(context.timeout)));
      }
      return absl::DeadlineExceededError(absl::StrCat("dragond at ", address, " did not answer ",
                                                      method, " within ",
                                                      Seconds(context.timeout)));
    case grpc::StatusCode::CANCELLED:
      // This client cancels no call of its own (it has deadlines): the head
      // ended it, which a head does to the calls in flight when it stops.
      return absl::UnavailableError(absl::StrCat(
          "dragond at ", address, " ended ", method,
          " without an answer (CANCELLED: a head cancels the calls in flight when it stops)"));
    case grpc::StatusCode::UNAUTHENTICATED: {
      // The head says whether the token was missing or wrong and where
      // tokens are read from; only this side knows which one it sent.
      std::string text = msg.empty() ? absl::StrCat("dragond at ", address, " refused ", method,
                                                    ": UNAUTHENTICATED")
                                     : msg;
      if (context.sent_token) {
        absl::StrAppend(&text, "; the token this client sent came from ",
                        context.token_source.empty() ? "an unnamed source" : context.token_source);
      } else if (context.token_source.empty()) {
        absl::StrAppend(&text, "; this client sent no token");
      } else {
        absl::StrAppend(&text, "; this client sent no token (", context.token_source, ")");
      }
      return absl::UnauthenticatedError(text);
    }
    case grpc::StatusCode::NOT_FOUND:
      if (context.task_id != 0) {
        // A head's message naming the task says whether it never existed or
        // was forgotten under --keep-finished: keep it.
        if (absl::StrContains(msg, absl::StrCat("task ", context.task_id, " "))) {
          return absl::NotFoundError(msg);
        }
        return absl::NotFoundError(absl::StrCat("no task ", context.task_id, " in this run"));
      }
      if (!context.node_id.empty()) {
        if (absl::StrContains(msg, context.node_id)) return absl::NotFoundError(msg);
        return absl::NotFoundError(absl::StrCat("no node '", context.node_id, "' in this run"));
      }
      break;
    case grpc::StatusCode::UNIMPLEMENTED:
      // gRPC's own answer for a method the server lacks carries no text; a
      // head that has the method and says why it cannot do it does.
      if (msg.empty() || absl::StrContains(msg, "Method not found")) {
        return absl::UnimplementedError(absl::StrCat("dragond at ", address, " does not support ",
                                                     method, " (a different version?)",
                                                     msg.empty() ? "" : ": ", msg));
      }
      return absl::UnimplementedError(absl::StrCat(method, ": ", msg));
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
      // The head's own explanation is the useful part.
      return absl::Status(ToAbsl(code), absl::StrCat(method, ": ", msg));
    default:
      break;
  }
  return absl::Status(ToAbsl(code), absl::StrCat(method, " at ", address, " failed: ",
                                                 CodeName(code), ": ", msg));
}

absl::StatusOr<std::unique_ptr<HeadClient>> HeadClient::Create(
    const common::HeadLocation& location, absl::Duration timeout) {
  absl::Status valid = common::ValidateHostPort(location.address, "head");
  if (!valid.ok()) return valid;
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the RPC timeout must be positive");
  }
  common::ClientTransport transport;
  transport.token = location.token;
  transport.tls_ca = location.tls_ca;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      common::MakeChannel(location.address, transport);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<HeadClient>(new HeadClient(location.address, timeout,
                                                    *std::move(channel), !location.token.empty(),
                                                    location.token_source));
}

HeadClient::HeadClient(std::string address, absl::Duration timeout,
                       std::shared_ptr<grpc::Channel> channel, bool sent_token,
                       std::string token_source)
    : address_(std::move(address)),
      timeout_(timeout),
      channel_(std::move(channel)),
      stub_(dragon::v1::HeadService::NewStub(channel_)),
      sent_token_(sent_token),
      token_source_(std::move(token_source)) {}

void HeadClient::Prepare(grpc::ClientContext* context, absl::Duration extra) const {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout_ + extra));
  // Fail fast (the default, made explicit): a refused connection should be
  // reported at once, not retried until the deadline.
  context->set_wait_for_ready(false);
}

absl::Status HeadClient::Translate(const grpc::Status& status, const char* method,
                                   uint64_t task_id, const std::string& node_id) const {
  if (status.ok()) return absl::OkStatus();
  RpcErrorContext context;
  context.address = address_;
  context.method = method;
  context.timeout = timeout_;
  context.channel_was_ready = channel_->GetState(false) == GRPC_CHANNEL_READY;
  context.task_id = task_id;
  context.node_id = node_id;
  context.sent_token = sent_token_;
  context.token_source = token_source_;
  return TranslateRpcError(status, context);
}

absl::Status HeadClient::Connect() {
  const auto deadline = absl::ToChronoTime(absl::Now() + timeout_);
  grpc_connectivity_state state = channel_->GetState(true);
  while (state != GRPC_CHANNEL_READY) {
    // gRPC keeps a channel in TRANSIENT_FAILURE while it backs off and
    // retries (it does not pass through CONNECTING again), so waiting for a
    // change would only run out the deadline on a refused address.
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      return absl::UnavailableError(
          absl::StrCat("cannot reach dragond at ", address_, ": connection failed"));
    }
    if (!channel_->WaitForStateChange(state, deadline)) {
      return absl::UnavailableError(absl::StrCat("cannot reach dragond at ", address_,
                                                 ": no connection within ", Seconds(timeout_)));
    }
    state = channel_->GetState(true);
  }
  return absl::OkStatus();
}

absl::StatusOr<dragon::v1::StatusReply> HeadClient::Status() {
  grpc::ClientContext context;
  Prepare(&context);
  dragon::v1::StatusReply reply;
  absl::Status s = Translate(stub_->Status(&context, {}, &reply), "Status", 0);
  if (!s.ok()) return s;
  return reply;
}

absl::StatusOr<dragon::v1::ListNodesReply> HeadClient::ListNodes() {
  grpc::ClientContext context;
  Prepare(&context);
  dragon::v1::ListNodesReply reply;
  absl::Status s = Translate(stub_->ListNodes(&context, {}, &reply), "ListNodes", 0);
  if (!s.ok()) return s;
  return reply;
}

absl::StatusOr<dragon::v1::ListTasksReply> HeadClient::ListTasks(dragon::v1::TaskState state,
                                                                 uint32_t limit) {
  grpc::ClientContext context;
  Prepare(&context);
  dragon::v1::ListTasksRequest request;
  request.set_state(state);
  request.set_limit(limit);
  dragon::v1::ListTasksReply reply;
  absl::Status s = Translate(stub_->ListTasks(&context, request, &reply), "ListTasks", 0);
  if (!s.ok()) return s;
  return reply;
}

absl::StatusOr<dragon::v1::TaskInfo> HeadClient::GetTask(uint64_t task_id) {
  grpc::ClientContext context;
  Prepare(&context);
  dragon::v1::GetTaskRequest request;
  request.set_task_id(task_id);
  dragon::v1::TaskInfo reply;
  absl::Status s = Translate(stub_->GetTask(&context, request, &reply), "GetTask", task_id);
  if (!s.ok()) return s;
  return reply;
}

absl::StatusOr<dragon::v1::CancelReply> HeadClient::Cancel(uint64_t task_id) {
  grpc::ClientContext context;
  Prepare(&context);
  dragon::v1::CancelRequest request;
  request.set_task_id(task_id);
  dragon::v1::CancelReply reply;
  absl::Status s = Translate(stub_->Cancel(&context, request, &reply), "Cancel", task_id);
  if (!s.ok()) return s;
  return reply;
}

absl::StatusOr<dragon::v1::TaskLogsReply> HeadClient::TaskLogs(uint64_t task_id,
                                                               std::optional<int32_t> rank,
                                                               uint64_t max_bytes) {
  grpc::ClientContext context;
  Prepare(&context);
  dragon::v1::TaskLogsRequest request;
  request.set_task_id(task_id);
  if (rank) request.set_rank(*rank);
  request.set_max_bytes(max_bytes);
  dragon::v1::TaskLogsReply reply;
  absl::Status s = Translate(stub_->TaskLogs(&context, request, &reply), "TaskLogs", task_id);
  if (!s.ok()) return s;
  return reply;
}

absl::StatusOr<dragon::v1::NodeInfo> HeadClient::DrainNode(const std::string& node_id,
                                                           bool drain) {
  grpc::ClientContext context;
  Prepare(&context);
  dragon::v1::DrainNodeRequest request;
  request.set_node_id(node_id);
  request.set_drain(drain);
  dragon::v1::NodeInfo reply;
  absl::Status s =
      Translate(stub_->DrainNode(&context, request, &reply), "DrainNode", 0, node_id);
  if (!s.ok()) return s;
  return reply;
}

absl::StatusOr<dragon::v1::AddNodesReply> HeadClient::AddNodes(
    const std::vector<std::string>& hosts) {
  grpc::ClientContext context;
  Prepare(&context, kAddNodesWait);
  dragon::v1::AddNodesRequest request;
  for (const std::string& host : hosts) request.add_hosts(host);
  dragon::v1::AddNodesReply reply;
  absl::Status s = Translate(stub_->AddNodes(&context, request, &reply), "AddNodes", 0);
  if (!s.ok()) return s;
  return reply;
}

absl::StatusOr<dragon::v1::NodeInfo> HeadClient::RemoveNode(const std::string& node_id) {
  grpc::ClientContext context;
  Prepare(&context);
  dragon::v1::RemoveNodeRequest request;
  request.set_node_id(node_id);
  dragon::v1::NodeInfo reply;
  absl::Status s =
      Translate(stub_->RemoveNode(&context, request, &reply), "RemoveNode", 0, node_id);
  if (!s.ok()) return s;
  return reply;
}

absl::Status HeadClient::Shutdown() {
  grpc::ClientContext context;
  Prepare(&context);
  dragon::v1::ShutdownReply reply;
  return Translate(stub_->Shutdown(&context, {}, &reply), "Shutdown", 0);
}

}  // namespace dragon::client
