// The two directions between the head connection and the worker pool, as
// interfaces so that either side can be unit-tested without the other.
#ifndef DRAGON_AGENT_INTERFACES_H_
#define DRAGON_AGENT_INTERFACES_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "proto/agent.pb.h"
#include "proto/common.pb.h"

namespace dragon::agent {

// Where the pool reports what happened to tasks (the head connection batches
// these into AgentUpdate messages). Called from the pool's thread.
class TaskEventSink {
 public:
  virtual ~TaskEventSink() = default;
  virtual void TaskStarted(v1::TaskStarted started) = 0;
  virtual void TaskFinished(v1::TaskResult result) = 0;
  // Many events at once (starts before results). A sink that batches should
  // take them under one lock, so that its writing thread wakes once per
  // burst, not once per event and sends a first update with a single item.
  virtual void TaskEvents(std::vector<v1::TaskStarted> started,
                          std::vector<v1::TaskResult> results) {
    for (auto& s : started) TaskStarted(std::move(s));
    for (auto& r : results) TaskFinished(std::move(r));
  }
  // The answer to the head's ping `beat.ping_seq()`, from the loop that runs
  // the tasks: if that loop hangs, the head stops hearing from this agent.
  virtual void Heartbeat(v1::Heartbeat beat) = 0;
  // Tasks given back after TaskHandler::ReclaimTasks (never started here).
  virtual void TasksReleased(std::vector<uint64_t> task_ids) = 0;
  // MPI jobs' TaskIO frames toward their clients (agent/mpi_launcher.h).
  virtual void TaskIO(std::vector<v1::TaskIOFrame> frames) {}
  // The answer to a TaskLogsQuery (dragonctl logs).
  virtual void TaskLogs(v1::TaskLogsAnswer answer) {}
};

// What the head connection asks of the pool. Thread-safe, never blocks on
// task execution.
class TaskHandler {
 public:
  virtual ~TaskHandler() = default;
  virtual void SubmitTasks(std::vector<v1::TaskAssignment> tasks) = 0;
  virtual void CancelTasks(std::vector<uint64_t> task_ids, std::string reason) = 0;
  // Of these, the tasks not started yet are dropped (not reported as ended)
  // and handed back through TaskEventSink::TasksReleased; the others run on.
  virtual void ReclaimTasks(std::vector<uint64_t> task_ids) = 0;
  // Answer with TaskEventSink::Heartbeat(seq) from the task loop.
  virtual void Ping(uint64_t seq) = 0;
  // TaskIO frames from clients of MPI jobs led here (stdin, acks, attach).
  virtual void TaskIO(std::vector<v1::TaskIOFrame> frames) {}
  // dragonctl logs: answer with TaskEventSink::TaskLogs.
  virtual void TaskLogs(v1::TaskLogsQuery query) {}
  virtual int BusyWorkers() const = 0;
  // Tasks received and waiting for a free slot. While it is > 0 no slot
  // idles for want of a task, so the head connection may hold results back
  // briefly and send more of them per message.
  virtual int QueuedTasks() const { return 0; }
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_INTERFACES_H_
