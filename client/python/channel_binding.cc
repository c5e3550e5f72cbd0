#include "client/python/channel_binding.h"

#include <pybind11/stl.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/python/lenient_text.h"
#include "client/python/shm_pool_binding.h"
#include "client/python/without_gil.h"
#include "common/shm_barrier.h"
#include "common/shm_channel.h"

namespace py = pybind11;

namespace dragon::client {
namespace {

using common::BlockRef;
using common::BarrierTicket;
using common::ShmBarrier;
using common::ShmChannel;
using common::ShmPool;

// Set by RegisterChannels; the module keeps them alive (raw pointers: a
// py::object in a static would be released after the interpreter is gone).
PyObject* g_timeout = nullptr;
PyObject* g_closed = nullptr;
PyObject* g_peer_lost = nullptr;
PyObject* g_broken = nullptr;
PyObject* g_pool_error = nullptr;
PyObject* g_pool_full = nullptr;
PyObject* g_copy_buffer = nullptr;

// From this size on, recv_bytes returns an OwnedBuffer (copied without the
// interpreter lock, memory populated in one call) instead of bytes.
constexpr uint64_t kOwnedBufferAtLeast = uint64_t{256} << 10;
// A receive without a deadline waits in slices of this, so that Ctrl-C works.
constexpr absl::Duration kSignalSlice = absl::Milliseconds(200);

[[noreturn]] void Raise(const absl::Status& s, bool barrier = false) {
  PyObject* type = g_pool_error;
  switch (s.code()) {
    case absl::StatusCode::kDeadlineExceeded:
      type = g_timeout;
      break;
    case absl::StatusCode::kOutOfRange:
      type = g_closed;
      break;
    case absl::StatusCode::kFailedPrecondition:
      type = barrier ? g_broken : g_closed;
      break;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kNotFound:  // the object is gone (destroyed, creator reclaimed)
      type = g_peer_lost;
      break;
    case absl::StatusCode::kResourceExhausted:
      type = g_pool_full;
      break;
    default:
      break;
  }
  SetErrorText(type, std::string_view(s.message().data(), s.message().size()));
  throw py::error_already_set();
}

template <typename T>
T Value(absl::StatusOr<T> v, bool barrier = false) {
  if (!v.ok()) Raise(v.status(), barrier);
  return *std::move(v);
}

void Check(const absl::Status& s, bool barrier = false) {
  if (!s.ok()) Raise(s, barrier);
}

absl::Duration Timeout(const std::optional<double>& seconds) {
  if (!seconds.has_value()) return absl::InfiniteDuration();
  return absl::Seconds(std::max(0.0, *seconds));
}

BlockRef Ref(const py::bytes& encoded) {
  absl::StatusOr<BlockRef> ref = BlockRef::Decode(std::string(encoded));
  if (!ref.ok()) throw py::value_error(std::string(ref.status().message()));
  return *ref;
}

// The pool is shared: closing the ShmPool object leaves this one's mapping.
struct Channel {
  std::shared_ptr<ShmPool> pool;
  ShmChannel channel;
};

struct Barrier {
  std::shared_ptr<ShmPool> pool;
  ShmBarrier barrier;
};

py::tuple TicketTuple(const BarrierTicket& t) {
  return py::make_tuple(t.generation, t.breaks, t.index);
}

BarrierTicket TicketOf(const py::tuple& t) {
  if (t.size() != 3) throw py::value_error("a barrier ticket is (generation, breaks, index)");
  return BarrierTicket{t[0].cast<uint64_t>(), t[1].cast<uint64_t>(), t[2].cast<uint32_t>()};
}

// Barrier.wait of a party of this node: in slices, so that Ctrl-C interrupts
// it; an interrupted party breaks the barrier for the others (ShmBarrier::
// Interrupt) before the KeyboardInterrupt propagates.
uint32_t WaitHere(Barrier& b, const std::optional<double>& timeout_s) {
  const absl::Duration timeout = Timeout(timeout_s);
  const absl::Duration deadline = common::shm_object::MonotonicNow() + timeout;
  const BarrierTicket ticket = Value(b.barrier.ArriveHere(), true);
  for (;;) {
    const absl::Duration left = deadline - common::shm_object::MonotonicNow();
    if (left <= absl::ZeroDuration()) {
      Check(b.barrier.GiveUp(ticket, timeout), true);  // Ok: the round ended just now
      return ticket.index;
    }
    const absl::Duration slice = std::min(left, kSignalSlice);
    absl::StatusOr<bool> over =
        WithoutGil([&] { return b.barrier.AwaitRound(ticket, slice, slice); });
    if (!over.ok()) Raise(over.status(), /*barrier=*/true);
    if (*over) return ticket.index;
    if (PyErr_CheckSignals() != 0) {
      (void)b.barrier.Interrupt(
          ticket, absl::StrCat("was interrupted by a signal (process ", getpid(), ")"));
      throw py::error_already_set();
    }
  }
}

py::object Receive(Channel& c, const std::optional<double>& timeout_s, int peer_pid,
                   bool as_bytes) {
  const absl::Duration timeout = Timeout(timeout_s);
  const absl::Duration deadline = common::shm_object::MonotonicNow() + timeout;
  common::ShmMessage message;
  std::string small;  // a message that travelled in its slot: no block to read or free
  for (;;) {
    const absl::Duration left = deadline - common::shm_object::MonotonicNow();
    absl::StatusOr<common::ShmMessage> got = WithoutGil([&] {
      return c.channel.ReceiveSmallInto(small, std::min(left, kSignalSlice), peer_pid);
    });
    if (got.ok()) {
      message = *got;
      break;
    }
    if (!absl::IsDeadlineExceeded(got.status()) || left <= kSignalSlice) {
      if (absl::IsDeadlineExceeded(got.status())) {
        Raise(absl::DeadlineExceededError(
            absl::StrCat("no message within ", absl::FormatDuration(timeout))));
      }
      Raise(got.status());
    }
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
  if (message.in_small) return py::bytes(small);
  // The block is ours now: copy it out, then free it, whatever happens.
  ShmPool& pool = *c.pool;
  absl::StatusOr<absl::Span<char>> span = pool.Resolve(message.block);
  if (!span.ok()) Raise(span.status());
  py::object result;
  try {
    if (message.size < kOwnedBufferAtLeast) {
      result = py::bytes(span->data(), message.size);
    } else if (as_bytes) {
      // One copy, straight into the bytes object, which nobody else sees yet:
      // no interpreter lock needed while copying.
      result = py::reinterpret_steal<py::object>(
          PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(message.size)));
      if (!result) throw py::error_already_set();
      char* to = PyBytes_AS_STRING(result.ptr());
      const char* from = span->data();
      WithoutGil([&] {
        std::memcpy(to, from, message.size);
        return true;  // WithoutGil returns a value
      });
    } else {
      py::object view = py::reinterpret_steal<py::object>(PyMemoryView_FromMemory(
          span->data(), static_cast<Py_ssize_t>(message.size), PyBUF_READ));
      if (!view) throw py::error_already_set();
      result = py::reinterpret_borrow<py::object>(g_copy_buffer)(view);
    }
  } catch (...) {
    (void)pool.Free(message.block);
    throw;
  }
  if (absl::Status freed = pool.Free(message.block); !freed.ok()) Raise(freed);
  return result;
}

}  // namespace

void RegisterChannels(py::module_& m) {
  static py::exception<std::runtime_error> timeout(m, "ChannelTimeout", PyExc_TimeoutError);
  static py::exception<std::runtime_error> closed(m, "ChannelClosed", PyExc_EOFError);
  static py::exception<std::runtime_error> peer_lost(m, "ChannelPeerLost", PyExc_ConnectionError);
  static py::exception<std::runtime_error> broken(m, "BarrierBroken", PyExc_RuntimeError);
  g_timeout = timeout.ptr();
  g_closed = closed.ptr();
  g_peer_lost = peer_lost.ptr();
  g_broken = broken.ptr();
  g_pool_error = m.attr("ShmPoolError").ptr();
  g_pool_full = m.attr("ShmPoolFull").ptr();
  g_copy_buffer = m.attr("copy_buffer").ptr();  // the module keeps these alive

  py::class_<Channel>(m, "ShmChannel")
      .def_static(
          "create",
          [](py::handle pool, uint32_t capacity) {
            std::shared_ptr<ShmPool> shared = SharedPool(pool);
            BlockRef ref = Value(ShmChannel::Create(*shared, capacity));
            return Channel{shared, Value(ShmChannel::Open(*shared, ref))};
          },
          py::arg("pool"), py::arg("capacity"),
          "A channel of CAPACITY messages in a block of POOL, owned by this process (its "
          "creator: the channel goes when it exits or calls destroy()).")
      .def_static(
          "open",
          [](py::handle pool, const py::bytes& ref) {
            std::shared_ptr<ShmPool> shared = SharedPool(pool);
            return Channel{shared, Value(ShmChannel::Open(*shared, Ref(ref)))};
          },
          py::arg("pool"), py::arg("ref"), "The channel REF (its .ref) names in POOL.")
      .def_property_readonly("ref",
                             [](const Channel& c) { return py::bytes(c.channel.ref().Encode()); })
      .def_property_readonly("creator_pid", [](const Channel& c) { return c.channel.creator_pid(); })
      .def(
          "send_bytes",
          [](Channel& c, const py::buffer& data, std::optional<double> timeout_s, int peer_pid) {
            py::buffer_info in = data.request();
            if (in.ndim > 1 && in.strides.back() != in.itemsize) {
              throw py::value_error("send_bytes needs a contiguous buffer");
            }
            const absl::Span<const char> bytes(static_cast<const char*>(in.ptr),
                                               static_cast<size_t>(in.size * in.itemsize));
            const absl::Duration timeout = Timeout(timeout_s);
            absl::Status sent =
                WithoutGil([&] { return c.channel.Send(bytes, timeout, peer_pid); });
            if (!sent.ok()) Raise(sent);
          },
          py::arg("data"), py::arg("timeout_s") = py::none(), py::arg("peer_pid") = 0,
          "Queues a copy of DATA (any contiguous buffer); waits up to TIMEOUT_S (None: for "
          "ever) for pool space and a free slot. ChannelTimeout, ChannelClosed, ShmPoolFull, "
          "ChannelPeerLost (PEER_PID or the creator exited).")
      .def("recv_bytes", &Receive, py::arg("timeout_s") = py::none(), py::arg("peer_pid") = 0,
           py::arg("as_bytes") = false,
           "The oldest message: bytes, or from 256 KiB on an OwnedBuffer (AS_BYTES: always "
           "bytes, still one copy). ChannelTimeout, ChannelClosed once closed and drained, "
           "ChannelPeerLost.")
      .def(
          "close", [](Channel& c) { Check(c.channel.Close()); },
          "No more sends; receivers drain the queue, then get ChannelClosed.")
      .def(
          "destroy", [](Channel& c) { Check(c.channel.Destroy()); },
          "Creator only: frees the queued messages and the channel.")
      .def("stats", [](Channel& c) {
        common::ShmChannelStats s = Value(c.channel.Stats());
        py::dict d;
        d["count"] = s.count;
        d["capacity"] = s.capacity;
        d["closed"] = s.closed;
        d["repairs"] = s.repairs;
        return d;
      });

  py::class_<Barrier>(m, "ShmBarrier")
      .def_static(
          "create",
          [](py::handle pool, uint32_t parties) {
            std::shared_ptr<ShmPool> shared = SharedPool(pool);
            BlockRef ref = Value(ShmBarrier::Create(*shared, parties));
            return Barrier{shared, Value(ShmBarrier::Open(*shared, ref))};
          },
          py::arg("pool"), py::arg("parties"))
      .def_static(
          "open",
          [](py::handle pool, const py::bytes& ref) {
            std::shared_ptr<ShmPool> shared = SharedPool(pool);
            return Barrier{shared, Value(ShmBarrier::Open(*shared, Ref(ref)))};
          },
          py::arg("pool"), py::arg("ref"))
      .def("wait", &WaitHere, py::arg("timeout_s") = py::none(),
           "Returns once all parties arrived: this party's arrival index (0 .. parties-1, as "
           "threading.Barrier.wait). ChannelTimeout after TIMEOUT_S (and the barrier is "
           "broken for everyone), BarrierBroken, ChannelPeerLost (its creator exited). Ctrl-C "
           "interrupts it and breaks the barrier for the others.")
      // The wait in steps, for a caller that checks for more than signals between slices
      // (dragon_parsl.comm.Barrier: asynchronous exceptions such as Parsl's walltime).
      .def(
          "arrive",
          [](Barrier& b, py::list& into, double wait_s) {
            const BarrierTicket t = Value(b.barrier.ArriveHere(), true);
            // Handed over before anything else can fail: an exception raised as this call
            // returns (a pending Ctrl-C) must still find the ticket, to break the barrier.
            into.append(TicketTuple(t));
            if (wait_s <= 0) return false;
            const absl::Duration wait = absl::Seconds(wait_s);
            return Value(WithoutGil([&] { return b.barrier.AwaitRound(t, wait, wait); }), true);
          },
          py::arg("into"), py::arg("wait_s") = 0.0,
          "Counts this party in the current round, appends its ticket (generation, breaks, "
          "index) to INTO, then waits up to WAIT_S for the round: True once it is over. "
          "BarrierBroken when broken.")
      .def(
          "await_round",
          [](Barrier& b, const py::tuple& ticket, double wait_s) {
            const BarrierTicket t = TicketOf(ticket);
            const absl::Duration wait = absl::Seconds(std::max(0.0, wait_s));
            // A party of this node has no lease: the last argument is not used.
            return Value(WithoutGil([&] { return b.barrier.AwaitRound(t, wait, wait); }), true);
          },
          py::arg("ticket"), py::arg("wait_s"),
          "Waits up to WAIT_S for the ticket's round: True once it is over, False while open. "
          "BarrierBroken, ChannelPeerLost as wait().")
      .def(
          "give_up",
          [](Barrier& b, const py::tuple& ticket, double timeout_s) {
            Check(b.barrier.GiveUp(TicketOf(ticket), absl::Seconds(std::max(0.0, timeout_s))),
                  true);
          },
          py::arg("ticket"), py::arg("timeout_s"),
          "The party's TIMEOUT_S passed: returns if its round ended after all, else breaks the "
          "barrier and raises ChannelTimeout.")
      .def(
          "interrupt",
          [](Barrier& b, const py::tuple& ticket, const std::string& why) {
            Check(b.barrier.Interrupt(TicketOf(ticket), why), true);
          },
          py::arg("ticket"), py::arg("why"),
          "The party stopped waiting before its round was over (WHY, e.g. 'was interrupted by "
          "KeyboardInterrupt (process 12)'): breaks the barrier for the others, unless the "
          "round is over or it broke meanwhile.")
      .def("abort", [](Barrier& b) { Check(b.barrier.Abort(), true); },
           "Breaks the barrier: waiters and later wait() calls raise BarrierBroken.")
      .def("reset", [](Barrier& b) { Check(b.barrier.Reset(), true); },
           "Back to the first state; waiters now raise BarrierBroken.")
      .def("destroy", [](Barrier& b) { Check(b.barrier.Destroy(), true); },
           "Creator only: frees the barrier's block.")
      .def_property_readonly("parties", [](const Barrier& b) { return b.barrier.parties(); })
      .def_property_readonly("n_waiting", [](Barrier& b) { return Value(b.barrier.n_waiting()); })
      .def_property_readonly("broken", [](Barrier& b) { return Value(b.barrier.broken()); })
      .def_property_readonly("ref",
                             [](const Barrier& b) { return py::bytes(b.barrier.ref().Encode()); });
}

}  // namespace dragon::client
