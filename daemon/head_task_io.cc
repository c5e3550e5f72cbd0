// The Head's side of TaskIO (rank 0's stdin/stdout of MPI jobs, relayed
// between a client's stream and the leader agent's) and TaskLogs (a task's
// output, read by the agent that ran it). See head.h and daemon/task_io.h.
//
// A channel is a client's stream attached to one task. Its open goes to the
// task's (leader) agent once the task runs there, or at once for a task that
// ran and ended (the agent still has its files); client frames that come
// earlier wait with the channel. Frames from the agent go to the client as
// they come; the agent keeps rank 0's stdout within a window the client
// acknowledges, and the head ends a client that sends more than twice the
// window of stdin unacknowledged, so nothing here grows without bound.
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/head.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

namespace {

bool Ran(const Task& task) { return task.agent != kNoAgent && task.running_us > 0; }

}  // namespace

absl::StatusOr<uint64_t> Head::OpenTaskIO(const dragon::v1::TaskIOFrame& open,
                                          std::shared_ptr<TaskIOClient> client,
                                          const std::string& peer) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) return absl::UnavailableError("dragond is shutting down");
  const TaskId id = open.task_id();
  Task* task = table_.Find(id);
  if (task == nullptr) return TaskNotFoundLocked(id);
  if (task->kind != dragon::v1::EXECUTABLE || !task->resources || !task->resources->mpi) {
    return absl::FailedPreconditionError(absl::StrCat(
        "task ", id, " is not an MPI job (an EXECUTABLE task with MPI ranks, as @mpi_app "
        "submits): TaskIO serves rank 0 of MPI jobs only"));
  }
  if (IsTerminal(task->state) && !Ran(*task)) {
    return absl::FailedPreconditionError(
        absl::StrCat("task ", id, " ended without running (",
                     dragon::v1::TaskState_Name(task->state), "): ", task->error));
  }
  if (IsTerminal(task->state) && !membership_.Live(task->agent)) {
    return absl::UnavailableError(absl::StrCat(
        "task ", id, " ran on node ", NodeNameLocked(task->agent),
        ", which is no longer connected: its rank 0's output cannot be read through the head"));
  }
  if (auto old = io_by_task_.find(id); old != io_by_task_.end()) {
    EndTaskIOChannelLocked(old->second,
                           absl::AbortedError(absl::StrCat(
                               "another client (", peer, ") attached to task ", id, "'s TaskIO")));
  }
  const uint64_t channel = next_io_channel_++;
  TaskIOChannel& ch = io_channels_[channel];
  ch.task = id;
  ch.client = std::move(client);
  ch.peer = peer;
  ch.stdout_offset = open.stdout_offset();
  io_by_task_[id] = channel;
  if (task->state == dragon::v1::RUNNING || IsTerminal(task->state)) {
    SendTaskIOOpenLocked(channel, &ch);
  }
  spdlog::info("task {}: TaskIO channel {} opened by {} ({})", id, channel, peer,
               ch.agent != kNoAgent ? absl::StrCat("sent to node ", NodeNameLocked(ch.agent))
                                    : std::string("waiting for the task to start"));
  return channel;
}

void Head::SendTaskIOOpenLocked(uint64_t channel, TaskIOChannel* ch) {
  const Task* task = table_.Find(ch->task);
  if (task == nullptr || task->agent == kNoAgent) return;
  ch->agent = task->agent;
  std::vector<dragon::v1::TaskIOFrame> frames;
  dragon::v1::TaskIOFrame& open = frames.emplace_back();
  open.set_task_id(ch->task);
  open.set_channel(channel);
  open.set_open(true);
  open.set_stdout_offset(ch->stdout_offset);
  for (auto& f : ch->pending) frames.push_back(std::move(f));
  ch->pending.clear();
  PushTaskIOLocked(ch->agent, std::move(frames));
}

void Head::PushTaskIOLocked(AgentIndex agent, std::vector<dragon::v1::TaskIOFrame> frames) {
  if (agent == kNoAgent || frames.empty()) return;
  dragon::v1::HeadToAgent msg;
  for (auto& f : frames) msg.mutable_task_io()->add_frames()->Swap(&f);
  agents_[agent].link.outbox->Push(std::move(msg));
}

void Head::TaskIOFromClient(uint64_t channel, dragon::v1::TaskIOFrame frame) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = io_channels_.find(channel);
  if (it == io_channels_.end()) return;  // ended meanwhile
  TaskIOChannel& ch = it->second;
  if (frame.open()) {
    EndTaskIOChannelLocked(channel, absl::InvalidArgumentError(
                                        "a TaskIO stream attaches once, in its first frame"));
    return;
  }
  ch.stdin_sent += frame.data().size();
  if (ch.stdin_sent - std::min(ch.stdin_sent, ch.stdin_acked) > 2 * kTaskIOWindowBytes) {
    EndTaskIOChannelLocked(
        channel, absl::ResourceExhaustedError(absl::StrCat(
                     "the client sent more than ", 2 * kTaskIOWindowBytes,
                     " bytes of stdin to task ", ch.task,
                     " without waiting for acknowledgements (the window is ", kTaskIOWindowBytes,
                     " bytes)")));
    return;
  }
  dragon::v1::TaskIOFrame out;
  out.set_task_id(ch.task);
  out.set_channel(channel);
  out.set_data(std::move(*frame.mutable_data()));
  out.set_eof(frame.eof());
  out.set_ack(frame.ack());
  if (ch.agent == kNoAgent) {
    ch.pending.push_back(std::move(out));
    return;
  }
  if (!membership_.Live(ch.agent)) return;  // its end is on the way
  PushTaskIOLocked(ch.agent, {std::move(out)});
}

void Head::CloseTaskIO(uint64_t channel, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = io_channels_.find(channel);
  if (it == io_channels_.end()) return;
  const TaskIOChannel& ch = it->second;
  spdlog::info("task {}: TaskIO channel {} closed ({})", ch.task, channel, why);
  if (ch.agent != kNoAgent && membership_.Live(ch.agent)) {
    dragon::v1::TaskIOFrame detach;
    detach.set_task_id(ch.task);
    detach.set_channel(channel);
    detach.set_close(true);
    PushTaskIOLocked(ch.agent, {std::move(detach)});
  }
  EndTaskIOChannelLocked(channel, absl::CancelledError(why));
}

void Head::EndTaskIOChannelLocked(uint64_t channel, absl::Status status) {
  auto it = io_channels_.find(channel);
  if (it == io_channels_.end()) return;
  if (!status.ok()) {
    spdlog::info("task {}: TaskIO channel {} ends: {}", it->second.task, channel,
                 std::string(status.message()));
  }
  it->second.client->End(std::move(status));
  auto by_task = io_by_task_.find(it->second.task);
  if (by_task != io_by_task_.end() && by_task->second == channel) io_by_task_.erase(by_task);
  io_channels_.erase(it);
}

void Head::TaskIOUpdateLocked(AgentIndex agent, dragon::v1::AgentUpdate* update) {
  for (auto& frame : *update->mutable_task_io()) {
    auto it = io_channels_.find(frame.channel());
    if (it == io_channels_.end() || it->second.task != frame.task_id() ||
        it->second.agent != agent) {
      continue;  // a client that went away, or a stale agent
    }
    TaskIOChannel& ch = it->second;
    if (!frame.error().empty()) {
      EndTaskIOChannelLocked(frame.channel(),
                             absl::FailedPreconditionError(std::move(*frame.mutable_error())));
      continue;
    }
    if (frame.ack() > ch.stdin_acked) ch.stdin_acked = frame.ack();
    const bool eof = frame.eof();
    frame.clear_channel();
    ch.client->outbox.Push(std::move(frame));
    // Rank 0's stdout has ended with the job: nothing more will come.
    if (eof) EndTaskIOChannelLocked(it->first, absl::OkStatus());
  }
  for (auto& answer : *update->mutable_task_logs()) {
    auto it = logs_waits_.find(answer.query_id());
    if (it == logs_waits_.end() || it->second->agent != agent) continue;
    it->second->answer = std::move(answer);
    it->second->done = true;
    logs_cv_.notify_all();
  }
  // Channels waiting for their task to start on an agent.
  for (auto& [channel, ch] : io_channels_) {
    if (ch.agent != kNoAgent) continue;
    const Task* task = table_.Find(ch.task);
    if (task != nullptr && (task->state == dragon::v1::RUNNING || (IsTerminal(task->state) && Ran(*task)))) {
      SendTaskIOOpenLocked(channel, &ch);
    }
  }
}

void Head::TaskIOTaskEndedLocked(const Task& task) {
  auto it = io_by_task_.find(task.id);
  if (it == io_by_task_.end()) return;
  const TaskIOChannel& ch = io_channels_[it->second];
  // Sent to an agent: its stdout's end (or the node's loss) ends the channel.
  // Not sent and ran (its start and end came together): the open goes out
  // with the rest of the agent's update. Not sent and never ran: over.
  if (ch.agent != kNoAgent || Ran(task)) return;
  EndTaskIOChannelLocked(it->second, absl::FailedPreconditionError(absl::StrCat(
                                         "task ", task.id, " ended without running (",
                                         dragon::v1::TaskState_Name(task.state), ")",
                                         task.error.empty() ? "" : ": ", task.error)));
}

void Head::EndTaskIOOfAgentLocked(AgentIndex agent, const std::string& why) {
  std::vector<uint64_t> ending;
  for (const auto& [channel, ch] : io_channels_) {
    if (ch.agent == agent) ending.push_back(channel);
  }
  const Agent& a = agents_[agent];
  for (uint64_t channel : ending) {
    const TaskId task = io_channels_[channel].task;
    // Its task may run again elsewhere (an infrastructure retry): a new open
    // reaches the new leader; this stream ends.
    EndTaskIOChannelLocked(
        channel, absl::UnavailableError(absl::StrCat(
                     "node ", a.info.node_id(), " (incarnation ", a.incarnation,
                     "), which ran rank 0 of task ", task, ", was lost (", why,
                     "): its stdin and stdout are gone")));
  }
  for (auto& [id, wait] : logs_waits_) {
    if (wait->agent != agent || wait->done) continue;
    wait->status = absl::UnavailableError(
        absl::StrCat("node ", a.info.node_id(), " was lost while it read the output (", why, ")"));
    wait->done = true;
  }
  logs_cv_.notify_all();
}

void Head::EndAllTaskIOLocked(const std::string& why) {
  while (!io_channels_.empty()) {
    EndTaskIOChannelLocked(io_channels_.begin()->first, absl::UnavailableError(why));
  }
  for (auto& [id, wait] : logs_waits_) {
    if (wait->done) continue;
    wait->status = absl::UnavailableError(why);
    wait->done = true;
  }
  logs_cv_.notify_all();
}

absl::StatusOr<dragon::v1::TaskLogsReply> Head::TaskLogs(const dragon::v1::TaskLogsRequest& request,
                                                        absl::Duration wait) {
  std::unique_lock<std::mutex> lock(mu_);
  const TaskId id = request.task_id();
  const Task* task = table_.Find(id);
  if (task == nullptr) return TaskNotFoundLocked(id);
  dragon::v1::TaskLogsReply reply;
  reply.set_task_id(id);
  if (task->agent == kNoAgent || task->running_us == 0) {
    reply.set_note(absl::StrCat("task ", id, " has not run yet (",
                                dragon::v1::TaskState_Name(task->state), "): no output"));
    return reply;
  }
  const AgentIndex agent = task->agent;
  const Agent& a = agents_[agent];
  reply.set_node(a.info.node_id());
  reply.set_host(a.info.host());
  if (!membership_.Live(agent)) {
    return absl::UnavailableError(absl::StrCat(
        "task ", id, " ran on node ", a.info.node_id(), " (host ", a.info.host(),
        "), which is no longer connected; its output stays in that host's run directory (",
        "tasks/", id, "/ for an MPI job, workers/", a.info.node_id(), "/ for a Python task)"));
  }
  TaskLogsWait waiter;
  waiter.agent = agent;
  const uint64_t query = next_logs_query_++;
  logs_waits_[query] = &waiter;
  dragon::v1::HeadToAgent msg;
  auto* q = msg.mutable_task_logs();
  q->set_query_id(query);
  q->set_task_id(id);
  if (request.has_rank()) q->set_rank(request.rank());
  q->set_max_bytes(request.max_bytes());
  a.link.outbox->Push(std::move(msg));
  const bool answered = logs_cv_.wait_for(lock, absl::ToChronoMicroseconds(wait),
                                          [&waiter] { return waiter.done; });
  logs_waits_.erase(query);
  if (!answered) {
    return absl::DeadlineExceededError(absl::StrCat("node ", reply.node(),
                                                    " did not answer within ",
                                                    absl::FormatDuration(wait)));
  }
  if (!waiter.status.ok()) return waiter.status;
  if (!waiter.answer.error().empty()) {
    return absl::NotFoundError(absl::StrCat("node ", reply.node(), ": ", waiter.answer.error()));
  }
  for (auto& f : *waiter.answer.mutable_files()) reply.add_files()->Swap(&f);
  reply.set_note(waiter.answer.note());
  return reply;
}

}  // namespace dragon::daemon
