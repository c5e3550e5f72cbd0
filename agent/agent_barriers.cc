#include "agent/agent_barriers.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/shm_barrier.h"
#include "common/utf8.h"

namespace dragon::agent {
namespace {

// Of BARRIER_INTERRUPT's `why` (the barrier keeps 160 bytes of a cause).
constexpr size_t kMaxWhyBytes = 100;

using common::BarrierTicket;
using common::ShmBarrier;

BarrierTicket TicketOf(const v1::BarrierTicket& t) {
  return BarrierTicket{t.generation(), t.breaks(), t.index()};
}

void SetTicket(const BarrierTicket& t, v1::BarrierTicket* out) {
  out->set_generation(t.generation);
  out->set_breaks(t.breaks);
  out->set_index(t.index);
}

// The round's outcome of one slice as the reply says it.
absl::StatusOr<v1::ChannelReply> SliceReply(absl::StatusOr<bool> over, v1::ChannelReply reply) {
  if (!over.ok()) return over.status();
  reply.set_would_block(!*over);
  return reply;
}

}  // namespace

AgentBarriers::AgentBarriers(common::ShmPool* pool, Clock clock)
    : pool_(pool), clock_(clock ? std::move(clock) : Clock(common::shm_object::MonotonicNow)) {}

bool AgentBarriers::Handles(v1::ChannelRequest::Op op) {
  switch (op) {
    case v1::ChannelRequest::BARRIER_ARRIVE:
    case v1::ChannelRequest::BARRIER_AWAIT:
    case v1::ChannelRequest::BARRIER_GIVE_UP:
    case v1::ChannelRequest::BARRIER_ABORT:
    case v1::ChannelRequest::BARRIER_RESET:
    case v1::ChannelRequest::BARRIER_STATS:
    case v1::ChannelRequest::BARRIER_INTERRUPT:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<v1::ChannelReply> AgentBarriers::Apply(const common::BlockRef& ref,
                                                      const v1::ChannelRequest& request,
                                                      absl::Duration wait) {
  // Opened for each request, as channels are: a destroyed barrier's block
  // may be reused.
  absl::StatusOr<ShmBarrier> barrier = ShmBarrier::Open(*pool_, ref);
  if (!barrier.ok()) return barrier.status();
  v1::ChannelReply reply;
  switch (request.op()) {
    case v1::ChannelRequest::BARRIER_ARRIVE: {
      const common::RemoteParty party{request.caller_pid(), request.caller_node(),
                                      clock_() + kLease};
      absl::StatusOr<BarrierTicket> ticket = barrier->Arrive(party);
      if (!ticket.ok()) return ticket.status();
      SetTicket(*ticket, reply.mutable_ticket());
      return SliceReply(barrier->AwaitRound(*ticket, wait, clock_() + kLease), std::move(reply));
    }
    case v1::ChannelRequest::BARRIER_AWAIT:
      return SliceReply(barrier->AwaitRound(TicketOf(request.ticket()), wait, clock_() + kLease),
                        std::move(reply));
    case v1::ChannelRequest::BARRIER_GIVE_UP:
      if (absl::Status done = barrier->GiveUp(TicketOf(request.ticket()),
                                              absl::Milliseconds(request.party_timeout_ms()));
          !done.ok()) {
        return done;
      }
      return reply;
    case v1::ChannelRequest::BARRIER_INTERRUPT: {
      // The party's own words, cut short: they travel in every other party's error.
      const std::string why(common::Utf8Prefix(request.why(), kMaxWhyBytes));
      if (absl::Status done = barrier->Interrupt(
              TicketOf(request.ticket()),
              absl::StrCat(why.empty() ? "stopped waiting" : why, " (process ",
                           request.caller_pid(), " of node ", request.caller_node(), ")"));
          !done.ok()) {
        return done;
      }
      return reply;
    }
    case v1::ChannelRequest::BARRIER_ABORT:
      if (absl::Status done = barrier->Abort(); !done.ok()) return done;
      return reply;
    case v1::ChannelRequest::BARRIER_RESET:
      if (absl::Status done = barrier->Reset(); !done.ok()) return done;
      return reply;
    case v1::ChannelRequest::BARRIER_STATS: {
      absl::StatusOr<uint32_t> waiting = barrier->n_waiting();
      if (!waiting.ok()) return waiting.status();
      absl::StatusOr<bool> broken = barrier->broken();
      if (!broken.ok()) return broken.status();
      reply.set_parties(barrier->parties());
      reply.set_n_waiting(*waiting);
      reply.set_broken(*broken);
      return reply;
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "ChannelRequest.op ", static_cast<int>(request.op()), " is not a Barrier operation"));
  }
}

}  // namespace dragon::agent
