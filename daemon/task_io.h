// What the Head keeps for HeadService.TaskIO (rank 0's stdin/stdout of MPI
// jobs, relayed to the leader agent) and TaskLogs (dragonctl logs, read by
// the agent that ran a task). The Head's side is daemon/head_task_io.cc; the
// gRPC side is daemon/services.cc. docs/INTERFACES.md "TaskIO".
#ifndef DRAGON_DAEMON_TASK_IO_H_
#define DRAGON_DAEMON_TASK_IO_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "daemon/outbox.h"
#include "daemon/task_table.h"
#include "proto/agent.pb.h"
#include "proto/common.pb.h"

namespace dragon::daemon {

// Data a TaskIO client may have unacknowledged toward rank 0 (the agent's
// window, kTaskIOWindow in agent/mpi_launcher.h); the head ends the stream of
// a client that sends twice as much.
inline constexpr uint64_t kTaskIOWindowBytes = 256u << 10;

// The client's end of a TaskIO stream: frames to write, and once the Head
// ends it, the status the stream finishes with.
struct TaskIOClient {
  Outbox<dragon::v1::TaskIOFrame> outbox;

  // Sets the final status (the first one counts) and closes the outbox: its
  // writer sends what is queued, then finishes the stream with it.
  void End(absl::Status status) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!ended) {
        ended = true;
        end = std::move(status);
      }
    }
    outbox.Close();
  }
  absl::Status status() {
    std::lock_guard<std::mutex> lock(mu);
    return end;
  }

  std::mutex mu;
  bool ended = false;
  absl::Status end;
};

// One attached client, by channel id (the Head's lock guards it).
struct TaskIOChannel {
  TaskId task = 0;
  std::shared_ptr<TaskIOClient> client;
  std::string peer;
  // The agent the open went to; kNoAgent while the task has not started.
  AgentIndex agent = kNoAgent;
  uint64_t stdout_offset = 0;
  uint64_t stdin_sent = 0;   // bytes of stdin the client sent
  uint64_t stdin_acked = 0;  // of those, written to rank 0 (the agent's ack)
  // Client frames that came before the open reached an agent.
  std::vector<dragon::v1::TaskIOFrame> pending;
};

// A TaskLogs call waiting for its agent's answer.
struct TaskLogsWait {
  AgentIndex agent = kNoAgent;
  bool done = false;
  absl::Status status;
  dragon::v1::TaskLogsAnswer answer;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_TASK_IO_H_
