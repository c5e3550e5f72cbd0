#include "daemon/membership.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace dragon::daemon {

const char* NodeStateName(NodeState state) {
  switch (state) {
    case NodeState::kJoining:
      return "joining";
    case NodeState::kReady:
      return "ready";
    case NodeState::kDraining:
      return "draining";
    case NodeState::kLost:
      return "lost";
    case NodeState::kGone:
      return "gone";
  }
  return "unknown";
}

Membership::Membership(MembershipOptions options, const common::Clock* clock)
    : options_(options), clock_(clock) {}

absl::StatusOr<Admission> Membership::Admit(const std::string& node_id,
                                            uint64_t previous_incarnation, int pid) {
  Admission admission;
  uint64_t incarnation = 1;
  auto latest = latest_.find(node_id);
  if (latest != latest_.end()) {
    const Member& current = members_[latest->second];
    incarnation = current.incarnation + 1;
    if (previous_incarnation != 0 && previous_incarnation != current.incarnation) {
      return absl::AlreadyExistsError(absl::StrCat(
          "node ", node_id, " is served by incarnation ", current.incarnation, " (pid ",
          current.pid, "); this agent was incarnation ", previous_incarnation,
          " and is stale: it must exit"));
    }
    if (IsLive(current)) admission.fenced = latest->second;
  }
  const absl::Time now = clock_->Now();
  if (admission.fenced != kNoAgent) {
    End(admission.fenced, NodeState::kLost,
        absl::StrCat("replaced by incarnation ", incarnation, " (pid ", pid, ")"));
  }
  admission.index = static_cast<AgentIndex>(members_.size());
  admission.incarnation = incarnation;
  Member& m = members_.emplace_back();
  m.node_id = node_id;
  m.incarnation = incarnation;
  m.pid = pid;
  m.joined = m.last_heard = now;
  m.last_ping = absl::InfinitePast();  // pinged at the next TakeDuePings
  latest_[node_id] = admission.index;
  ++live_;
  empty_since_.reset();
  return admission;
}

void Membership::Heard(AgentIndex index) {
  Member& m = members_[index];
  if (IsLive(m)) m.last_heard = clock_->Now();
}

void Membership::Answered(AgentIndex index, uint64_t seq) {
  Member& m = members_[index];
  if (!IsLive(m)) return;
  m.last_heard = clock_->Now();
  if (m.state == NodeState::kJoining && seq > 0) {
    m.state = m.drain_requested ? NodeState::kDraining : NodeState::kReady;
  }
}

void Membership::SetPoolUsage(AgentIndex index, uint64_t free_bytes, uint64_t blocks) {
  Member& m = members_[index];
  m.shm_pool_free_bytes = free_bytes;
  m.shm_pool_blocks = blocks;
}

bool Membership::End(AgentIndex index, NodeState to, const std::string& reason) {
  Member& m = members_[index];
  if (!IsLive(m)) return false;
  m.state = to;
  m.reason = reason;
  --live_;
  if (to == NodeState::kLost) {
    last_loss_ = absl::StrCat("node ", m.node_id, " (incarnation ", m.incarnation, ") was lost: ",
                              reason);
    if (live_ == 0) empty_since_ = clock_->Now();
  }
  return true;
}

bool Membership::Lose(AgentIndex index, const std::string& reason) {
  return End(index, NodeState::kLost, reason);
}

bool Membership::Leave(AgentIndex index, const std::string& reason) {
  return End(index, NodeState::kGone, reason);
}

absl::StatusOr<AgentIndex> Membership::SetDrain(const std::string& node_id, bool drain) {
  auto latest = latest_.find(node_id);
  if (latest == latest_.end()) {
    return absl::NotFoundError(absl::StrCat("no node '", node_id, "' in this run"));
  }
  Member& m = members_[latest->second];
  if (!IsLive(m)) {
    return absl::FailedPreconditionError(absl::StrCat("node ", node_id, " is ",
                                                      NodeStateName(m.state), " (", m.reason,
                                                      "): there is nothing to ",
                                                      drain ? "drain" : "undrain"));
  }
  m.drain_requested = drain;
  if (m.state != NodeState::kJoining) m.state = drain ? NodeState::kDraining : NodeState::kReady;
  return latest->second;
}

void Membership::SetAllocationEnd(AgentIndex index, absl::Time end, absl::Duration drain_before) {
  Member& m = members_[index];
  m.allocation_end = end;
  m.drain_at = end == absl::InfiniteFuture() ? end : end - drain_before;
}

std::vector<AgentIndex> Membership::TakeEnding() {
  std::vector<AgentIndex> ending;
  const absl::Time now = clock_->Now();
  for (size_t i = 0; i < members_.size(); ++i) {
    Member& m = members_[i];
    if (!IsLive(m) || m.drained_for_end || now < m.drain_at) continue;
    m.drained_for_end = true;
    m.drain_requested = true;
    if (m.state != NodeState::kJoining) m.state = NodeState::kDraining;
    ending.push_back(static_cast<AgentIndex>(i));
  }
  return ending;
}

std::vector<std::pair<AgentIndex, uint64_t>> Membership::TakeDuePings() {
  std::vector<std::pair<AgentIndex, uint64_t>> due;
  const absl::Time now = clock_->Now();
  for (size_t i = 0; i < members_.size(); ++i) {
    Member& m = members_[i];
    if (!IsLive(m) || now - m.last_ping < options_.heartbeat_interval) continue;
    m.last_ping = now;
    due.emplace_back(static_cast<AgentIndex>(i), ++m.ping_seq);
  }
  return due;
}

std::vector<AgentIndex> Membership::ExpireSilent() {
  std::vector<AgentIndex> expired;
  const absl::Time now = clock_->Now();
  for (size_t i = 0; i < members_.size(); ++i) {
    Member& m = members_[i];
    if (!IsLive(m)) continue;
    const absl::Duration silent = now - m.last_heard;
    if (silent < options_.heartbeat_timeout) continue;
    End(static_cast<AgentIndex>(i), NodeState::kLost,
        absl::StrFormat("no heartbeat for %.1f s (dragond --heartbeat-timeout-ms %d)",
                        absl::ToDoubleSeconds(silent),
                        absl::ToInt64Milliseconds(options_.heartbeat_timeout)));
    expired.push_back(static_cast<AgentIndex>(i));
  }
  return expired;
}

void Membership::ExpectNodes() {
  if (live_ == 0 && !empty_since_) {
    empty_since_ = clock_->Now();
    last_loss_ = "the agents the launcher started have not registered";
  }
}

bool Membership::NoNodeGraceExpired() const {
  return live_ == 0 && empty_since_ && clock_->Now() - *empty_since_ >= options_.no_node_grace;
}

std::string Membership::NoNodeReason() const {
  return absl::StrFormat(
      "no node is connected and none came back within %.0f s (dragond --node-grace); %s",
      absl::ToDoubleSeconds(options_.no_node_grace), last_loss_);
}

bool Membership::Live(AgentIndex index) const {
  return index >= 0 && static_cast<size_t>(index) < members_.size() && IsLive(members_[index]);
}

bool Membership::Schedulable(AgentIndex index) const {
  return Live(index) && members_[index].state == NodeState::kReady;
}

AgentIndex Membership::Latest(const std::string& node_id) const {
  auto it = latest_.find(node_id);
  return it == latest_.end() ? kNoAgent : it->second;
}

}  // namespace dragon::daemon
