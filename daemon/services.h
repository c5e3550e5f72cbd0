// gRPC front end of the Head for clients: HeadService. Session streams are on
// the async API, served by the head's CompletionLoop without threads of their
// own (session_stream.h, as agents' streams: agent_stream.h); the other calls
// are plain sync handlers.
#ifndef DRAGON_DAEMON_SERVICES_H_
#define DRAGON_DAEMON_SERVICES_H_

#include <functional>
#include <mutex>
#include <string>

#include "common/transport.h"
#include "daemon/completion_loop.h"
#include "daemon/head.h"
#include "proto/head.grpc.pb.h"

namespace dragon::daemon {

class HeadServiceImpl final
    : public dragon::v1::HeadService::WithAsyncMethod_Session<dragon::v1::HeadService::Service> {
 public:
  // `request_shutdown` is called (once per Shutdown RPC) to stop dragond;
  // it must not block on the server.
  // Every RPC is refused unless `auth` accepts its token.
  HeadServiceImpl(Head* head, const common::TokenCheck* auth,
                  std::function<void(const std::string&)> request_shutdown, std::string address,
                  std::string run_dir, absl::Duration cancel_wait);

  // Starts agents on more hosts and waits for them (the launcher's AddNodes);
  // without one, AddNodes answers UNIMPLEMENTED.
  using NodeAdder = std::function<absl::StatusOr<dragon::v1::AddNodesReply>(
      const dragon::v1::AddNodesRequest&)>;
  void set_node_adder(NodeAdder adder) {
    std::lock_guard<std::mutex> lock(address_mu_);
    node_adder_ = std::move(adder);
  }

  // The address is known only once the server listens.
  void set_address(const std::string& address) {
    std::lock_guard<std::mutex> lock(address_mu_);
    address_ = address;
  }

  // Takes Session calls on `loop` until it stops; call once the server is built.
  void AcceptSessionsOn(CompletionLoop* loop);

  grpc::Status Cancel(grpc::ServerContext* context, const dragon::v1::CancelRequest* request,
                      dragon::v1::CancelReply* reply) override;
  grpc::Status GetTask(grpc::ServerContext* context, const dragon::v1::GetTaskRequest* request,
                       dragon::v1::TaskInfo* reply) override;
  grpc::Status ListTasks(grpc::ServerContext* context,
                         const dragon::v1::ListTasksRequest* request,
                         dragon::v1::ListTasksReply* reply) override;
  grpc::Status ListNodes(grpc::ServerContext* context,
                         const dragon::v1::ListNodesRequest* request,
                         dragon::v1::ListNodesReply* reply) override;
  grpc::Status Status(grpc::ServerContext* context, const dragon::v1::StatusRequest* request,
                      dragon::v1::StatusReply* reply) override;
  grpc::Status Shutdown(grpc::ServerContext* context, const dragon::v1::ShutdownRequest* request,
                        dragon::v1::ShutdownReply* reply) override;
  grpc::Status DrainNode(grpc::ServerContext* context, const dragon::v1::DrainNodeRequest* request,
                         dragon::v1::NodeInfo* reply) override;
  grpc::Status AddNodes(grpc::ServerContext* context, const dragon::v1::AddNodesRequest* request,
                        dragon::v1::AddNodesReply* reply) override;
  grpc::Status RemoveNode(grpc::ServerContext* context, const dragon::v1::RemoveNodeRequest* request,
                          dragon::v1::NodeInfo* reply) override;
  // Rank 0's stdin/stdout of an MPI job (daemon/head_task_io.cc): a reader
  // (this handler's thread) and a writer thread per stream.
  grpc::Status TaskIO(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<dragon::v1::TaskIOFrame, dragon::v1::TaskIOFrame>* stream) override;
  grpc::Status TaskLogs(grpc::ServerContext* context, const dragon::v1::TaskLogsRequest* request,
                        dragon::v1::TaskLogsReply* reply) override;
  grpc::Status PublishDataPeer(grpc::ServerContext* context,
                               const dragon::v1::PublishDataPeerRequest* request,
                               dragon::v1::DataPeer* reply) override;

 private:
  Head* head_;
  const common::TokenCheck* auth_;
  std::function<void(const std::string&)> request_shutdown_;
  std::mutex address_mu_;  // also guards node_adder_
  std::string address_;
  NodeAdder node_adder_;
  std::string run_dir_;
  absl::Duration cancel_wait_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_SERVICES_H_
