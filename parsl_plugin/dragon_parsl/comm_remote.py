"""The agent path of dragon_parsl.comm's Pipe, Queue and Barrier (issue 14): a channel or barrier used
on a node other than its home (the node whose pool holds it) is operated through the agents. Each call goes to this
node's agent over its Unix socket (AgentData.Channel, ``_core.agent_channel``), which forwards it
over UCX to the home node's agent, which does it on its pool (agent/agent_channels.h).

The home agent waits at most ``WAIT_SLICE_S`` per call and answers "would block"; the loops here
wait until the caller's own timeout, so blocking, timeouts and errors are those of a channel used
within its node: ``ChannelTimeout``, ``ChannelClosed`` (EOF), ``ChannelPeerLost``
(ConnectionError: the creator or the Pipe's other end exited, the home node or this node's agent
was lost), ``ShmPoolFull``.

A message of ``BLOCK_THRESHOLD`` bytes or more does not travel inside the call (agent/agent_channels.h): a
sender writes it into a block of this node's pool (the one beside the agent's socket) and names the
block in its SEND, the home agent pulls it over UCX and queues it, and the sender frees its block
when the call returns, whatever the outcome; a receiver asks for a block (``accept_block``), the
home agent pushes the message into a new block of this node's pool owned by the receiving process,
and the receiver copies it out and frees it. When that push fails the message stays first in the
channel and the receive fails (ConnectionError, or ShmPoolFull when this node's pool had no room).
A sender whose own pool is full, or without a pool beside the socket, sends the message inline.

A Barrier party waits the same way (``RemoteBarrier``, agent/agent_barriers.h): it arrives once
(BARRIER_ARRIVE, which gives its ticket) and then waits in slices with the ticket (BARRIER_AWAIT),
so a slice retried never counts it twice; at its own timeout it gives up (BARRIER_GIVE_UP), which
breaks the barrier for everyone as a local timeout does, and a wait interrupted by anything else
(Ctrl-C, a Parsl walltime) tells the home agent so (BARRIER_INTERRUPT), which breaks it at once
(dragon_parsl.barrier_wait). Each slice renews the party's lease at home: a party that stops
calling (killed, its agent or node lost) breaks the barrier there within
``AgentBarriers::kLease`` (3 s). Every failure of a wait is ``threading.BrokenBarrierError``.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from dragon_parsl import barrier_wait

__all__ = ["RemoteChannel", "RemoteBarrier", "node_of_pool", "local_data_socket", "local_node", "peer_alive", "claim_end",
           "WAIT_SLICE_S"]

# The home agent's longest wait per call (AgentChannels::kMaxWait): liveness is looked at there
# after 100 ms of waiting, so a slice is longer than that.
WAIT_SLICE_S = barrier_wait.WAIT_SLICE_S
# A BARRIER_INTERRUPT's whole call: the party is on its way out and does not wait long for it.
INTERRUPT_CALL_S = 5.0
# A call's deadline beyond its wait: the forwarding both ways, and a large message at a
# conservative 20 MB/s through the copies and the link (a 1 GiB message took 25 s on a loaded
# 2-core test bed; its deadline is about 80 s).
_CALL_MARGIN_S = 30.0
_LINK_BYTES_PER_S = 20e6

# From this size on a message moves pool to pool by the data plane, not in the call: the
# agents' AgentChannels::kBlockThreshold (a Pull or Push costs a round trip more than inline).
BLOCK_THRESHOLD = 64 << 10
# A block's deadline at a conservative 200 MB/s (UCX Get between pools: ~1.9 GB/s on the test bed).
_BLOCK_BYTES_PER_S = 200e6

_node_of_pool: Dict[str, str] = {}
_node_of_socket: Dict[str, str] = {}


def _core() -> Any:
    from dragon_parsl import _core
    return _core


def _pb() -> Any:
    from dragon_parsl._proto import agent_pb2
    return agent_pb2


def _ask_node_id(socket: str) -> str:
    """The node id of the agent serving ``socket`` (NODE_ID), "" when it cannot be asked."""
    if socket in _node_of_socket:
        return _node_of_socket[socket]
    if not os.path.exists(socket):
        return ""
    request = _pb().ChannelRequest(op=_pb().ChannelRequest.NODE_ID)
    try:
        raw = _core().agent_channel(socket, request.SerializeToString(), 5.0)
    except _core().DataPlaneError:
        return ""
    reply = _pb().ChannelReply()
    reply.ParseFromString(raw)
    if reply.node_id:
        _node_of_socket[socket] = reply.node_id
    return reply.node_id


def node_of_pool(pool_path: str) -> str:
    """The node whose agent owns ``pool_path`` (the objects' home): ``$DRAGON_NODE_ID`` in a worker of
    that pool, else asked of the agent at ``<pool>.sock``; "" when that agent has no data plane (the
    objects then work within their node only)."""
    if pool_path in _node_of_pool:
        return _node_of_pool[pool_path]
    node = ""
    if os.environ.get("DRAGON_SHM_POOL") == pool_path:
        node = os.environ.get("DRAGON_NODE_ID", "")
    if not node:
        node = _ask_node_id(pool_path + ".sock")
    if node:
        _node_of_pool[pool_path] = node
    return node


def local_data_socket() -> str:
    """This node's agent's AgentData socket ("" when there is none): ``$DRAGON_AGENT_DATA_SOCKET``
    (set for workers), else the one beside the newest pool of a running agent of this host."""
    path = os.environ.get("DRAGON_AGENT_DATA_SOCKET")
    if path:
        return path
    from dragon_parsl import comm
    pools = comm._live_agent_pools()
    if pools and os.path.exists(pools[-1] + ".sock"):
        return pools[-1] + ".sock"
    return ""


def local_node(socket: str) -> str:
    node = os.environ.get("DRAGON_NODE_ID", "")
    return node or _ask_node_id(socket)


def _raise(error: Exception, what: str) -> None:
    """DataPlaneError (.code: the gRPC code's name) as the exception a local channel raises."""
    core = _core()
    code = getattr(error, "code", "")
    message = f"{what}: {error}"
    if code == "OUT_OF_RANGE" or code == "FAILED_PRECONDITION":
        raise core.ChannelClosed(message) from None
    if code == "RESOURCE_EXHAUSTED":
        raise core.ShmPoolFull(message) from None
    if code in ("UNAVAILABLE", "NOT_FOUND", "DEADLINE_EXCEEDED", "CANCELLED"):
        # The creator or the other end exited, the channel is gone, the home node or this node's
        # agent is lost, or it did not answer in time: the peer is lost for this caller.
        raise core.ChannelPeerLost(message) from None
    raise core.ShmPoolError(message) from None


def _call(socket: str, request: Any, what: str, nbytes: int = 0, by_block: bool = False,
          timeout_s: Optional[float] = None) -> Any:
    """One request to this node's agent; ``timeout_s`` (None: from the wait and the size) bounds it."""
    if timeout_s is None:
        rate = _BLOCK_BYTES_PER_S if by_block else _LINK_BYTES_PER_S
        timeout_s = request.wait_ms / 1000.0 + _CALL_MARGIN_S + nbytes / rate
    request.timeout_ms = int(timeout_s * 1000)
    core = _core()
    try:
        raw = core.agent_channel(socket, request.SerializeToString(), timeout_s + 5.0)
    except core.DataPlaneError as e:
        _raise(e, what)
    reply = _pb().ChannelReply()
    reply.ParseFromString(raw)
    return reply


def peer_alive(socket: str, node: str, pid: int) -> bool:
    """Whether process ``pid`` of ``node`` runs (asked of its node's agent; a node that cannot be
    asked: no)."""
    pb = _pb()
    request = pb.ChannelRequest(op=pb.ChannelRequest.PEER_ALIVE, node_id=node, caller_pid=pid)
    try:
        return bool(_call(socket, request, f"process {pid} of node {node}").alive)
    except _core().ChannelPeerLost:
        return False


def claim_end(socket: str, home: str, pids_ref: bytes, end: int) -> None:
    """Records at home that this process (of this node) holds end ``end`` of a Pipe."""
    pb = _pb()
    request = pb.ChannelRequest(op=pb.ChannelRequest.CLAIM_END, node_id=home, pids_ref=pids_ref, end=end,
                                caller_pid=os.getpid(), caller_node=local_node(socket))
    _call(socket, request, f"Pipe end of node {home}")


class RemoteChannel:
    """A channel of node ``home``'s pool, through the agents; the methods of ``_core.ShmChannel``
    that comm.py uses. For a Pipe, ``pids_ref`` and ``end`` let the home agent watch the other end
    (the ``peer_pid`` arguments are not used: the home agent knows the other end)."""

    def __init__(self, socket: str, home: str, ref: bytes, pids_ref: bytes = b"", end: int = 0) -> None:
        self.socket, self.home, self.ref = socket, home, ref
        self._pids_ref, self._end = pids_ref, end

    def _request(self, op: int, **fields: Any) -> Any:
        return _pb().ChannelRequest(op=op, node_id=self.home, ref=self.ref, pids_ref=self._pids_ref,
                                    end=self._end, **fields)

    def _what(self) -> str:
        return f"channel of node {self.home}"

    def _local_pool(self) -> Any:
        """This node's pool (beside the agent's socket), None when there is none to attach."""
        if not self.socket.endswith(".sock"):
            return None
        from dragon_parsl import shm_pool_path
        try:
            return shm_pool_path.attach(self.socket[:-len(".sock")])
        except Exception:  # SharedMemoryError: no pool here; messages go inline
            return None

    def _until(self, op: int, timeout_s: Optional[float], message: Any = b"", nbytes: int = 0,
               **fields: Any) -> Any:
        """SEND/RECV in slices until done or ``timeout_s`` (None: for ever) has passed."""
        deadline = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
        by_block = bool(fields.get("block_ref")) or bool(fields.get("accept_block"))
        while True:
            left = WAIT_SLICE_S if deadline is None else max(0.0, deadline - time.monotonic())
            request = self._request(op, message=message, wait_ms=int(min(left, WAIT_SLICE_S) * 1000),
                                    **fields)
            reply = _call(self.socket, request, self._what(), nbytes or len(message), by_block)
            if not reply.would_block:
                return reply
            if deadline is not None and time.monotonic() >= deadline:
                core = _core()
                raise core.ChannelTimeout(
                    f"{'no room in' if op == _pb().ChannelRequest.SEND else 'no message from'} the "
                    f"{self._what()} within {timeout_s:g} s")

    def send_bytes(self, data: Any, timeout_s: Optional[float] = None, peer_pid: int = 0) -> None:
        view = memoryview(data).cast("B")
        pool = self._local_pool() if view.nbytes >= BLOCK_THRESHOLD else None
        ref = None
        if pool is not None:
            core = _core()
            try:
                ref = pool.allocate(view.nbytes, 0.0)
            except core.ShmPoolFull:
                ref = None  # this node's pool is full: the message goes inline
        if ref is None:
            payload = data if type(data) is bytes else bytes(view)
            self._until(_pb().ChannelRequest.SEND, timeout_s, payload)
            return
        try:
            _core().copy_into(pool.block(ref), 0, view)
            self._until(_pb().ChannelRequest.SEND, timeout_s, nbytes=view.nbytes,
                        block_node=local_node(self.socket), block_ref=ref, block_size=view.nbytes)
        finally:
            pool.free(ref)  # pulled by the home agent or not: the copy here is ours to free

    def recv_bytes(self, timeout_s: Optional[float] = None, peer_pid: int = 0, as_bytes: bool = False) -> Any:
        pool = self._local_pool()
        if pool is None:
            return self._until(_pb().ChannelRequest.RECV, timeout_s).message
        reply = self._until(_pb().ChannelRequest.RECV, timeout_s, accept_block=True, caller_pid=os.getpid(),
                            caller_node=local_node(self.socket))
        if not reply.block_ref:
            return reply.message
        # A block of this node's pool, ours: copied out, then freed whatever happens.
        try:
            view = memoryview(pool.block(reply.block_ref))[:reply.block_size]
            try:
                return bytes(view) if as_bytes else _core().copy_buffer(view)
            finally:
                view.release()
        finally:
            pool.free(reply.block_ref)

    def close(self) -> None:
        _call(self.socket, self._request(_pb().ChannelRequest.CLOSE), self._what())

    def stats(self) -> Dict[str, Any]:
        reply = _call(self.socket, self._request(_pb().ChannelRequest.STATS), self._what())
        return {"count": reply.count, "capacity": reply.capacity, "closed": reply.closed, "repairs": 0}

    def destroy(self) -> None:
        raise OSError(f"a {self._what()} is destroyed by its creator, on that node")


class RemoteBarrier:
    """A Barrier of node ``home``'s pool, through the agents; what comm.Barrier uses of
    ``_core.ShmBarrier``, and ``wait`` gives the arrival index (0 .. parties-1)."""

    def __init__(self, socket: str, home: str, ref: bytes) -> None:
        self.socket, self.home, self.ref = socket, home, ref
        self._failures: Optional[Tuple[type, ...]] = None

    def _what(self) -> str:
        return f"Barrier of node {self.home}"

    def _call(self, op: int, call_timeout_s: Optional[float] = None, **fields: Any) -> Any:
        pb = _pb()
        request = pb.ChannelRequest(op=op, node_id=self.home, ref=self.ref, caller_pid=os.getpid(),
                                    caller_node=local_node(self.socket), **fields)
        return _call(self.socket, request, self._what(), timeout_s=call_timeout_s)

    def wait(self, timeout_s: Optional[float] = None) -> int:
        try:
            return barrier_wait.wait_in_slices(self, timeout_s)
        except self.failures as e:
            # Broken at home (a timeout, abort(), a party lost or interrupted), its creator exited,
            # or the home node or this node's agent cannot be reached: this party's wait failed, as
            # a local one that the barrier breaks under.
            raise threading.BrokenBarrierError(str(e)) from None

    # The steps of barrier_wait.wait_in_slices.
    @property
    def failures(self) -> Tuple[type, ...]:
        if self._failures is None:
            core = _core()
            self._failures = (core.ChannelClosed, core.ChannelPeerLost, core.ShmPoolError)
        return self._failures

    def arrive(self, wait_s: float, into: List[Any]) -> bool:
        reply = self._call(_pb().ChannelRequest.BARRIER_ARRIVE, wait_ms=int(wait_s * 1000))
        into.append(reply.ticket)
        return not reply.would_block

    def await_round(self, ticket: Any, wait_s: float) -> bool:
        reply = self._call(_pb().ChannelRequest.BARRIER_AWAIT, ticket=ticket, wait_ms=int(wait_s * 1000))
        return not reply.would_block

    def give_up(self, ticket: Any, timeout_s: float) -> None:
        # Returns when the round ended just now; else it breaks the barrier (raises).
        self._call(_pb().ChannelRequest.BARRIER_GIVE_UP, ticket=ticket, party_timeout_ms=int(timeout_s * 1000))

    def interrupt(self, ticket: Any, why: str) -> None:
        # Short: the party is on its way out (a second Ctrl-C, or the lease, covers a slow agent).
        self._call(_pb().ChannelRequest.BARRIER_INTERRUPT, ticket=ticket, why=why,
                   call_timeout_s=INTERRUPT_CALL_S)

    @staticmethod
    def index(ticket: Any) -> int:
        return int(ticket.index)

    def abort(self) -> None:
        self._call(_pb().ChannelRequest.BARRIER_ABORT)

    def reset(self) -> None:
        self._call(_pb().ChannelRequest.BARRIER_RESET)

    def _stats(self) -> Any:
        return self._call(_pb().ChannelRequest.BARRIER_STATS)

    @property
    def parties(self) -> int:
        return int(self._stats().parties)

    @property
    def n_waiting(self) -> int:
        return int(self._stats().n_waiting)

    @property
    def broken(self) -> bool:
        return bool(self._stats().broken)
