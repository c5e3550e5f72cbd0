#include "daemon/services.h"

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/grpc_status.h"
#include "daemon/message_batching.h"
#include "daemon/session_stream.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

HeadServiceImpl::HeadServiceImpl(Head* head, const common::TokenCheck* auth,
                                 std::function<void(const std::string&)> request_shutdown,
                                 std::string address, std::string run_dir,
                                 absl::Duration cancel_wait)
    : head_(head),
      auth_(auth),
      request_shutdown_(std::move(request_shutdown)),
      address_(std::move(address)),
      run_dir_(std::move(run_dir)),
      cancel_wait_(cancel_wait) {}

void HeadServiceImpl::AcceptSessionsOn(CompletionLoop* loop) {
  SessionStream::AcceptOn(
      loop,
      [this](grpc::ServerContext* context,
             grpc::ServerAsyncReaderWriter<dragon::v1::HeadMessage, dragon::v1::ClientMessage>*
                 stream,
             grpc::ServerCompletionQueue* cq, void* tag) {
        RequestSession(context, stream, cq, cq, tag);
      },
      head_, auth_);
}

grpc::Status HeadServiceImpl::Cancel(grpc::ServerContext* context,
                                     const dragon::v1::CancelRequest* request,
                                     dragon::v1::CancelReply* reply) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  auto result = head_->Cancel(request->task_id(), absl::StrCat("request from ", context->peer()),
                              cancel_wait_);
  if (!result.ok()) return ToGrpcStatus(result.status());
  *reply = *result;
  return grpc::Status::OK;
}

grpc::Status HeadServiceImpl::GetTask(grpc::ServerContext* context,
                                      const dragon::v1::GetTaskRequest* request,
                                      dragon::v1::TaskInfo* reply) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  auto info = head_->GetTask(request->task_id());
  if (!info.ok()) return ToGrpcStatus(info.status());
  *reply = *info;
  return grpc::Status::OK;
}

grpc::Status HeadServiceImpl::ListTasks(grpc::ServerContext* context,
                                        const dragon::v1::ListTasksRequest* request,
                                        dragon::v1::ListTasksReply* reply) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  if (!dragon::v1::TaskState_IsValid(request->state())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("unknown task state ", request->state()));
  }
  *reply = head_->ListTasks(*request);
  return grpc::Status::OK;
}

grpc::Status HeadServiceImpl::ListNodes(grpc::ServerContext* context,
                                        const dragon::v1::ListNodesRequest*,
                                        dragon::v1::ListNodesReply* reply) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  *reply = head_->ListNodes();
  return grpc::Status::OK;
}

grpc::Status HeadServiceImpl::PublishDataPeer(grpc::ServerContext* context,
                                              const dragon::v1::PublishDataPeerRequest* request,
                                              dragon::v1::DataPeer* reply) {
  // The token admits it as it admits the session itself; the session id
  // must be one that is open.
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  auto peer = head_->PublishDataPeer(request->session_id(), request->peer());
  if (!peer.ok()) return ToGrpcStatus(peer.status());
  *reply = *std::move(peer);
  return grpc::Status::OK;
}

grpc::Status HeadServiceImpl::Status(grpc::ServerContext* context,
                                     const dragon::v1::StatusRequest*,
                                     dragon::v1::StatusReply* reply) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  head_->FillStatus(reply);
  {
    std::lock_guard<std::mutex> lock(address_mu_);
    reply->set_address(address_);
  }
  reply->set_pid(getpid());
  reply->set_run_dir(run_dir_);
  return grpc::Status::OK;
}

grpc::Status HeadServiceImpl::Shutdown(grpc::ServerContext* context,
                                       const dragon::v1::ShutdownRequest*,
                                       dragon::v1::ShutdownReply*) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  request_shutdown_(absl::StrCat("Shutdown requested by ", context->peer()));
  return grpc::Status::OK;
}

grpc::Status HeadServiceImpl::DrainNode(grpc::ServerContext* context,
                                        const dragon::v1::DrainNodeRequest* request,
                                        dragon::v1::NodeInfo* reply) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  if (request->node_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "DrainNode needs a node_id");
  }
  auto info = head_->DrainNode(request->node_id(), request->drain());
  if (!info.ok()) return ToGrpcStatus(info.status());
  spdlog::info("node {} {} by {}", request->node_id(), request->drain() ? "drained" : "undrained",
               context->peer());
  *reply = *std::move(info);
  return grpc::Status::OK;
}

grpc::Status HeadServiceImpl::AddNodes(grpc::ServerContext* context,
                                       const dragon::v1::AddNodesRequest* request,
                                       dragon::v1::AddNodesReply* reply) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  if (request->hosts().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "AddNodes needs at least one host");
  }
  NodeAdder adder;
  {
    std::lock_guard<std::mutex> lock(address_mu_);
    adder = node_adder_;
  }
  if (!adder) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "this head has no launcher that can add nodes (dragond start --launcher "
                        "ssh can; agents started by hand just connect)");
  }
  spdlog::info("AddNodes {} requested by {}", absl::StrJoin(request->hosts(), ","),
               context->peer());
  auto added = adder(*request);
  if (!added.ok()) return ToGrpcStatus(added.status());
  *reply = *std::move(added);
  return grpc::Status::OK;
}

grpc::Status HeadServiceImpl::TaskIO(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<dragon::v1::TaskIOFrame, dragon::v1::TaskIOFrame>* stream) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  dragon::v1::TaskIOFrame frame;
  if (!stream->Read(&frame)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "TaskIO stream closed before its open");
  }
  if (!frame.open() || frame.task_id() == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the first TaskIO frame must be an open naming the task (task_id, open)");
  }
  auto client = std::make_shared<TaskIOClient>();
  absl::StatusOr<uint64_t> channel = head_->OpenTaskIO(frame, client, context->peer());
  if (!channel.ok()) return ToGrpcStatus(channel.status());
  // The writer sends what the head queues until the head ends the channel;
  // a failed write means the client is gone.
  std::mutex done_mu;
  std::condition_variable done_cv;
  bool writer_done = false;
  std::thread writer([&, channel = *channel] {
    std::vector<dragon::v1::TaskIOFrame> drained;
    bool broken = false;
    while (client->outbox.Drain(&drained)) {
      for (auto& f : drained) {
        if (!broken && !stream->Write(f)) {
          broken = true;
          head_->CloseTaskIO(channel, "the client's stream broke");
        }
      }
      drained.clear();
    }
    std::lock_guard<std::mutex> lock(done_mu);
    writer_done = true;
    done_cv.notify_all();
  });
  while (stream->Read(&frame)) head_->TaskIOFromClient(*channel, std::move(frame));
  // The client half-closed (it may still read stdout: the head ends the
  // channel at stdout's end) or went away, which only IsCancelled tells.
  {
    std::unique_lock<std::mutex> lock(done_mu);
    while (!done_cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return writer_done; })) {
      if (context->IsCancelled()) {
        lock.unlock();
        head_->CloseTaskIO(*channel, "the client went away");
        lock.lock();
      }
    }
  }
  writer.join();
  return ToGrpcStatus(client->status());
}

grpc::Status HeadServiceImpl::TaskLogs(grpc::ServerContext* context,
                                       const dragon::v1::TaskLogsRequest* request,
                                       dragon::v1::TaskLogsReply* reply) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  if (request->task_id() == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "TaskLogs needs a task_id");
  }
  // Within the client's deadline (dragonctl --timeout), at most 30 s.
  absl::Duration wait = absl::Seconds(30);
  const auto deadline = context->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    wait = std::min(wait, absl::FromChrono(deadline - std::chrono::system_clock::now()) -
                              absl::Milliseconds(200));
    if (wait < absl::Milliseconds(100)) wait = absl::Milliseconds(100);
  }
  auto logs = head_->TaskLogs(*request, wait);
  if (!logs.ok()) return ToGrpcStatus(logs.status());
  *reply = *std::move(logs);
  return grpc::Status::OK;
}

grpc::Status HeadServiceImpl::RemoveNode(grpc::ServerContext* context,
                                         const dragon::v1::RemoveNodeRequest* request,
                                         dragon::v1::NodeInfo* reply) {
  if (grpc::Status refused = auth_->Check(*context); !refused.ok()) return refused;
  if (request->node_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "RemoveNode needs a node_id");
  }
  auto info = head_->RemoveNode(request->node_id());
  if (!info.ok()) return ToGrpcStatus(info.status());
  spdlog::info("node {} removal requested by {}", request->node_id(), context->peer());
  *reply = *std::move(info);
  return grpc::Status::OK;
}

}  // namespace dragon::daemon
