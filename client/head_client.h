// A small synchronous client for HeadService's unary RPCs (everything except
// the Session stream, which belongs to dragon_parsl). Every call has a
// deadline so that a caller never hangs on a head that does not answer, and
// every failure comes back as an absl::Status whose message a user can act on.
#ifndef DRAGON_CLIENT_HEAD_CLIENT_H_
#define DRAGON_CLIENT_HEAD_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/head.grpc.pb.h"

namespace dragon::client {

inline constexpr absl::Duration kDefaultTimeout = absl::Seconds(10);

class HeadClient {
 public:
  // Validates `address` (HOST:PORT) and opens a channel to it. The channel
  // connects on the first RPC, within that RPC's deadline; nothing here blocks.
  static absl::StatusOr<std::unique_ptr<HeadClient>> Create(
      const std::string& address, absl::Duration timeout = kDefaultTimeout);

  // Waits up to the timeout for the channel to be connected. Fails with
  // "cannot reach dragond at ADDR: ..." when the head does not answer; the
  // RPCs below do the same on their own, so calling this is optional.
  absl::Status Connect();

  absl::StatusOr<dragon::v1::StatusReply> Status();
  absl::StatusOr<dragon::v1::ListNodesReply> ListNodes();
  absl::StatusOr<dragon::v1::ListTasksReply> ListTasks(dragon::v1::TaskState state,
                                                       uint32_t limit);
  // NotFound "no task ID in this run" for an id the head does not know.
  absl::StatusOr<dragon::v1::TaskInfo> GetTask(uint64_t task_id);
  absl::StatusOr<dragon::v1::CancelReply> Cancel(uint64_t task_id);
  absl::Status Shutdown();

  const std::string& address() const { return address_; }

 private:
  HeadClient(std::string address, absl::Duration timeout,
             std::shared_ptr<grpc::Channel> channel);

  // Sets the deadline every call gets.
  void Prepare(grpc::ClientContext* context) const;
  // Turns a failed call into a message naming the head and the cause.
  // `task_id` (0 = none) lets NOT_FOUND say which task was unknown.
  absl::Status Translate(const grpc::Status& status, const char* method,
                         uint64_t task_id) const;

  std::string address_;
  absl::Duration timeout_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<dragon::v1::HeadService::Stub> stub_;
};

// The message for a gRPC failure of `method` against `address`; exposed so
// the mapping can be unit-tested without a server.
absl::Status TranslateRpcError(const grpc::Status& status, const std::string& address,
                               const char* method, uint64_t task_id, absl::Duration timeout,
                               bool channel_was_ready);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_HEAD_CLIENT_H_
