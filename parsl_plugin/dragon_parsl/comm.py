"""Communication objects for workflows and their apps on one node (issue 14): ``Pipe`` and its
``Connection`` ends, ``Queue`` and ``Barrier``, in the shared-memory pool of the node's
dragon-agent (common/shm_channel.h, common/shm_barrier.h; dragon_parsl._core).

Like multiprocessing's, but they are passed to Parsl apps (or DragonPoolExecutor tasks) as
arguments: they pickle to a reference (the pool's path and the object's block), and the app's
worker attaches the same memory. Any process of the node may use them, the workflow, apps, or
processes they start.

- Blocking calls release the interpreter lock and never hang on a dead process: a ``Connection``
  whose other end's process exited raises ``ConnectionError`` (``_core.ChannelPeerLost``) within
  about 100 ms, and every object fails the same way once the process that created it exits.
- An object lives until its creator calls ``close()`` or exits (the agent then frees its memory):
  create them in the workflow, for the run.
- Across nodes: a ``Connection`` or ``Queue`` passed to an app on another host works there through
  the agents (dragon_parsl.comm_remote): that node's agent forwards each operation over UCX to the
  agent of the object's home node (whose pool holds it), which does it there. Same API, same
  exceptions; both agents need a data plane. A Pipe end held on another node is watched by its
  agent: the other end's blocking call fails ``ConnectionError`` within a few seconds once that
  process exits or its node is lost. A ``Barrier`` too: a party on another node arrives once through
  the agents and then waits at home in slices (comm_remote.RemoteBarrier); its timeout breaks the
  barrier for every party, on every node, as a local one does, and a party on another node that is
  killed, or whose node or agent is lost, breaks it within a few seconds (its lease at home, 3 s,
  is no longer renewed): every party's ``wait`` then raises ``threading.BrokenBarrierError``
  saying which process of which node went silent. A party whose ``wait`` is interrupted, on any
  node (Ctrl-C, or an app's Parsl walltime), breaks the barrier at once for the others, whose
  ``wait`` names the party and what interrupted it (dragon_parsl.barrier_wait).
  ``Dictionary`` (dragon_parsl.comm_dict) is sharded across the nodes' agents.
"""
from __future__ import annotations

import os
import pickle
import queue
import struct
import threading
import time
from typing import Any, List, Optional, Tuple

from dragon_parsl import barrier_wait, comm_remote, shm, shm_pool_path
from dragon_parsl.errors import SharedMemoryError

__all__ = ["Pipe", "Connection", "Queue", "Barrier", "Dictionary", "DictionaryError", "default_pool"]

# Messages a Queue(maxsize=0) holds before put() waits (multiprocessing's is unbounded; a ring in
# shared memory is not). 16,384 slots are 512 KiB of the pool.
DEFAULT_QUEUE_CAPACITY = 16384
_PIDS = struct.Struct("=ii")  # the processes holding the two ends of a Pipe
# Then, per end, the NUL-padded node id of the process holding it ("" : the pool's own node); the
# home agent reads it too (PipeEnds, agent/agent_channels.h).
_END_NODE_BYTES = 64
_PIPE_ENDS_BYTES = _PIDS.size + 2 * _END_NODE_BYTES


def _core() -> Any:
    from dragon_parsl import _core
    return _core


def default_pool(wait_s: float = 10.0) -> str:
    """The pool new objects go to: ``$DRAGON_SHM_POOL``, else the pool of a dragon-agent of this
    user running on this host (the newest, when there are several), waiting up to ``wait_s`` for
    one (an executor just started: its agent creates its pool as it starts) and for its agent to
    finish starting, so that its data socket, if it has one, is there (ShmPool.creator_ready; an
    agent still starting at the deadline has its pool returned anyway)."""
    path = os.environ.get("DRAGON_SHM_POOL")
    if path:
        return path
    deadline = time.monotonic() + wait_s
    while True:
        found = _live_agent_pools()
        if found and (_creator_ready(found[-1]) or time.monotonic() >= deadline):
            return found[-1]
        if time.monotonic() >= deadline:
            raise SharedMemoryError(
                f"no shared-memory pool of a running dragon-agent of this user in {shm.DEFAULT_DIR} "
                f"(waited {wait_s:g} s): start the executor (or dragond) first, or name a pool with "
                f"pool= or $DRAGON_SHM_POOL")
        time.sleep(0.1)


def _creator_ready(path: str) -> bool:
    try:
        return bool(shm_pool_path.attach(path).creator_ready)
    except SharedMemoryError:
        return False


def _live_agent_pools() -> List[str]:
    """Pools in /dev/shm of this user whose creating agent runs, oldest first."""
    prefix = f"dragon-pool-{os.geteuid()}-"
    candidates = []
    try:
        names = os.listdir(shm.DEFAULT_DIR)
    except OSError:
        names = []
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(shm.DEFAULT_DIR, name)
        try:
            os.kill(shm_pool_path.attach(path).creator_pid, 0)
            candidates.append((os.stat(path).st_mtime, path))
        except (OSError, SharedMemoryError):
            continue
    return [p for _, p in sorted(candidates)]


class _Shared:
    """What every object carries: the pool it lives in, the host that pool is on, and its home node
    (that pool's agent's node id, looked up when the object is first pickled; "" without a data
    plane). On another host, ``_socket`` is this node's agent's data socket (the agent path)."""

    def __init__(self, pool: Optional[str]) -> None:
        self._pool_path = pool or default_pool()
        self._host = shm.host_identity()
        self._pool = shm_pool_path.attach(self._pool_path)
        self._creator = os.getpid()
        self._home: Optional[str] = None
        self._socket: Optional[str] = None

    @property
    def _remote(self) -> bool:
        return self._socket is not None

    def _home_node(self) -> str:
        if not self._home:
            self._home = comm_remote.node_of_pool(self._pool_path)
        return self._home

    def _not_here(self, why: str) -> SharedMemoryError:
        return SharedMemoryError(
            f"{type(self).__name__} lives in shared memory on host {self._host} (node "
            f"{self._home or 'unknown'}), but this process runs on {shm.host_identity()}: {why}")

    def _reopen(self, pool: str, host: str, creator: int, home: str) -> None:
        self._pool_path, self._host, self._creator, self._home = pool, host, creator, home
        self._socket = None
        if host == shm.host_identity():
            self._pool = shm_pool_path.attach(pool)
            return
        self._pool = None
        if not home:
            raise self._not_here("the agent of its pool has no data plane, so it cannot be reached from "
                                 "another node (started with --noucx, or UCX failed: see its log)")
        socket = comm_remote.local_data_socket()
        if not socket:
            raise self._not_here("this host has no dragon-agent with a data plane to reach it through")
        self._socket = socket


def _timeout_s(block: bool, timeout: Optional[float]) -> Optional[float]:
    if not block:
        return 0.0
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return timeout


class Connection(_Shared):
    """One end of a :func:`Pipe`: ``send``/``recv`` of picklable objects, ``send_bytes``/
    ``recv_bytes``, ``poll``; as ``multiprocessing.connection.Connection``."""

    def __init__(self, *_: Any) -> None:
        raise TypeError("Connection objects are made by dragon_parsl.comm.Pipe()")

    @classmethod
    def _make(cls, shared: _Shared, send: Any, recv: Any, pids: bytes, end: int) -> "Connection":
        c = cls.__new__(cls)
        c.__dict__.update(shared.__dict__)
        c._send_ch, c._recv_ch, c._pids_ref, c._end = send, recv, pids, end
        c._lookahead: List[Any] = []
        c._closed = False
        c._peer_pid: Optional[Tuple[int, str]] = None
        return c

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_open_connection, (self._pool_path, self._host, self._creator,
                                   self._send_ch.ref if self._send_ch else None,
                                   self._recv_ch.ref if self._recv_ch else None, self._pids_ref, self._end,
                                   self._home_node()))

    def _peer(self, fresh: bool = False) -> Tuple[int, str]:
        """The other end's process (0: this one, or not known here) and its node ("": this pool's
        node). Read from the pool at most every wait slice: the end may move to an app while this
        one waits, and the next slice then watches it. On another node than the pool's, the home
        agent watches the other end: (0, "")."""
        if self._remote:
            return 0, ""
        if fresh or self._peer_pid is None:
            block = memoryview(self._pool.block(self._pids_ref))
            peer = _PIDS.unpack(block[:_PIDS.size])[1 - self._end]
            node = b""
            if block.nbytes >= _PIPE_ENDS_BYTES:
                at = _PIDS.size + (1 - self._end) * _END_NODE_BYTES
                node = bytes(block[at:at + _END_NODE_BYTES]).rstrip(b"\0")
            node_s = node.decode(errors="replace")
            self._peer_pid = (0 if peer == os.getpid() and not node_s else peer, node_s)
        return self._peer_pid

    def _claim_end(self) -> None:
        if self._remote:
            comm_remote.claim_end(self._socket, self._home, self._pids_ref, self._end)
            return
        block = memoryview(self._pool.block(self._pids_ref))
        struct.pack_into("=i", block, 4 * self._end, os.getpid())
        if block.nbytes >= _PIPE_ENDS_BYTES:  # this process is on the pool's node
            at = _PIDS.size + self._end * _END_NODE_BYTES
            block[at:at + _END_NODE_BYTES] = bytes(_END_NODE_BYTES)

    def _check_open(self, need: str) -> Any:
        if self._closed:
            raise OSError("handle is closed")
        ch = self._send_ch if need == "send" else self._recv_ch
        if ch is None:
            raise OSError(f"connection is {'read' if need == 'send' else 'write'}-only")
        return ch

    def send_bytes(self, buf: Any, offset: int = 0, size: Optional[int] = None) -> None:
        ch = self._check_open("send")
        view = memoryview(buf).cast("B")
        if offset < 0 or offset > view.nbytes:
            raise ValueError("offset is negative or too large")
        end = view.nbytes if size is None else offset + size
        if size is not None and (size < 0 or end > view.nbytes):
            raise ValueError("size is negative or too large")
        self._with_peer(lambda wait, peer: ch.send_bytes(view[offset:end], wait, peer), None)

    def send(self, obj: Any) -> None:
        self.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def _next(self, timeout: Optional[float], as_bytes: bool = False) -> Any:
        if self._lookahead:
            item = self._lookahead.pop()
            if isinstance(item, BaseException):
                raise item
            return item
        ch = self._check_open("recv")
        return self._with_peer(lambda wait, peer: ch.recv_bytes(wait, peer, as_bytes), timeout)

    # How long a wait goes before the other end's process is looked up again: the end may be
    # passed to an app after this wait began, and that app's process is then the one to watch.
    _PEER_RECHECK_S = 0.5

    def _with_peer(self, call: Any, timeout: Optional[float]) -> Any:
        """call(wait_s, peer_pid) in slices, the peer read again before each, until ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        core = _core()
        fresh = False
        while True:
            left = self._PEER_RECHECK_S if deadline is None else max(0.0, deadline - time.monotonic())
            peer, node = self._peer(fresh)
            if node and fresh and not self._remote_peer_alive(node, peer):
                # The other end is a process of another node, which its agent no longer sees (or
                # that node is lost): the one on record now, if it changed, is watched instead.
                if self._peer(True) == (peer, node):
                    raise core.ChannelPeerLost(f"the other end of the Pipe, process {peer} of node {node}, "
                                               f"exited (or its node's agent is lost)")
                continue
            try:
                return call(min(left, self._PEER_RECHECK_S), 0 if node else peer)
            except core.ChannelTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            except core.ChannelPeerLost:
                # The process remembered may no longer hold the other end (it went to another
                # app): an error only if the one on record now is the one that exited.
                if fresh or self._peer(True) == (peer, node):
                    raise
            fresh = True

    def _remote_peer_alive(self, node: str, pid: int) -> bool:
        # This process is on the pool's node (only there is a peer's node read): its agent's socket.
        return comm_remote.peer_alive(self._pool_path + ".sock", node, pid)

    def recv_bytes(self, maxlength: Optional[int] = None) -> bytes:
        data = self._next(None, as_bytes=True)
        if maxlength is not None and len(data) > maxlength:
            raise OSError(f"bad message length: {len(data)} bytes, maxlength {maxlength}")
        return data if type(data) is bytes else bytes(data)  # one poll()ed ahead may be a buffer

    def recv(self) -> Any:
        return pickle.loads(self._next(None))

    def poll(self, timeout: Optional[float] = 0.0) -> bool:
        """Whether there is data to receive, waiting up to ``timeout`` seconds (None: forever)."""
        if self._lookahead:
            return True
        core = _core()
        ch = self._check_open("recv")
        try:
            self._lookahead.append(self._with_peer(lambda wait, peer: ch.recv_bytes(wait, peer), timeout))
        except core.ChannelTimeout:
            return False
        except (core.ChannelClosed, core.ChannelPeerLost) as e:  # recv() raises it: "readable"
            self._lookahead.append(e)
        return True

    def close(self) -> None:
        """No more sends from this end: the other end's recv() raises EOFError once it has read
        what was sent. The creating process's close() of both ends frees the pipe."""
        if self._closed:
            return
        self._closed = True
        if self._send_ch is not None:
            self._send_ch.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _open_connection(pool: str, host: str, creator: int, send_ref: Optional[bytes],
                     recv_ref: Optional[bytes], pids: bytes, end: int, home: str = "") -> Connection:
    shared = _Shared.__new__(_Shared)
    shared._reopen(pool, host, creator, home)
    if shared._remote:
        def open_channel(ref: bytes) -> Any:
            return comm_remote.RemoteChannel(shared._socket, home, ref, pids, end)
    else:
        def open_channel(ref: bytes) -> Any:
            return _core().ShmChannel.open(shared._pool, ref)
    send = open_channel(send_ref) if send_ref is not None else None
    recv = open_channel(recv_ref) if recv_ref is not None else None
    c = Connection._make(shared, send, recv, pids, end)
    c._claim_end()
    return c


def Pipe(duplex: bool = True, *, pool: Optional[str] = None) -> Tuple[Connection, Connection]:
    """Two connected ends, as ``multiprocessing.Pipe``: duplex, or (receive-only, send-only)."""
    shared = _Shared(pool)
    core = _core()
    forward = core.ShmChannel.create(shared._pool, DEFAULT_QUEUE_CAPACITY)
    backward = core.ShmChannel.create(shared._pool, DEFAULT_QUEUE_CAPACITY) if duplex else None
    pids = shared._pool.allocate(_PIPE_ENDS_BYTES)
    ends = memoryview(shared._pool.block(pids))
    ends[:_PIPE_ENDS_BYTES] = _PIDS.pack(os.getpid(), os.getpid()) + bytes(2 * _END_NODE_BYTES)
    if duplex:
        return (Connection._make(shared, forward, backward, pids, 0),
                Connection._make(shared, backward, forward, pids, 1))
    return (Connection._make(shared, None, forward, pids, 0), Connection._make(shared, forward, None, pids, 1))


class Queue(_Shared):
    """A bounded queue of picklable objects for many producers and consumers, as
    ``multiprocessing.Queue``: ``put``/``get`` with ``block`` and ``timeout`` (``queue.Full`` /
    ``queue.Empty``), ``put_nowait``/``get_nowait``, ``qsize``, ``empty``, ``full``."""

    def __init__(self, maxsize: int = 0, *, pool: Optional[str] = None) -> None:
        super().__init__(pool)
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        self._maxsize = maxsize if maxsize > 0 else DEFAULT_QUEUE_CAPACITY
        self._ch = _core().ShmChannel.create(self._pool, self._maxsize)
        self._lock = threading.Lock()

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_open_queue, (self._pool_path, self._host, self._creator, self._ch.ref, self._maxsize,
                              self._home_node()))

    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._ch.send_bytes(data, _timeout_s(block, timeout), 0)
        except _core().ChannelTimeout:
            raise queue.Full from None

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        try:
            data = self._ch.recv_bytes(_timeout_s(block, timeout), 0)
        except _core().ChannelTimeout:
            raise queue.Empty from None
        return pickle.loads(data)

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, block=False)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def qsize(self) -> int:
        return int(self._ch.stats()["count"])

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self.qsize() >= self._maxsize

    def close(self) -> None:
        """In the creating process: frees the queue (others' calls then fail). Elsewhere: nothing
        (as multiprocessing's, this process is done with it)."""
        if not self._remote and os.getpid() == self._creator and self._ch is not None:
            self._ch.destroy()

    def join_thread(self) -> None:
        """multiprocessing's feeder thread does not exist here: nothing to join."""


def _open_queue(pool: str, host: str, creator: int, ref: bytes, maxsize: int, home: str = "") -> Queue:
    q = Queue.__new__(Queue)
    q._reopen(pool, host, creator, home)
    if q._remote:
        q._ch = comm_remote.RemoteChannel(q._socket, home, ref)
    else:
        q._ch = _core().ShmChannel.open(q._pool, ref)
    q._maxsize = maxsize
    q._lock = threading.Lock()
    return q


class Barrier(_Shared):
    """``parties`` processes wait until all have arrived, as ``threading.Barrier`` (reusable;
    a timeout or ``abort()`` breaks it: waiters and later ``wait`` calls raise
    ``threading.BrokenBarrierError`` until ``reset()``). Parties may be on several nodes: on
    another node than the one it was created on, it works through the agents (see the module's
    docstring), and ``wait`` returns the party's arrival index there."""

    def __init__(self, parties: int, timeout: Optional[float] = None, *, pool: Optional[str] = None) -> None:
        super().__init__(pool)
        if not isinstance(parties, int) or isinstance(parties, bool) or parties < 1:
            raise ValueError(f"parties must be an int >= 1, not {parties!r}")
        self._b = _core().ShmBarrier.create(self._pool, parties)
        self._party = barrier_wait.LocalParty(self._b, _core())
        self._timeout = timeout

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_open_barrier, (self._pool_path, self._host, self._creator, self._b.ref, self._timeout,
                                self._home_node()))

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        if timeout is None:
            timeout = self._timeout
        if self._remote:
            return self._b.wait(timeout)  # raises BrokenBarrierError itself
        # In slices, in Python: Ctrl-C and a Parsl walltime (an asynchronous exception) end the
        # wait, and break the barrier for the others (barrier_wait).
        party = self._party
        try:
            return barrier_wait.wait_in_slices(party, timeout)
        except party.failures as e:
            raise threading.BrokenBarrierError(str(e)) from None

    def abort(self) -> None:
        self._b.abort()

    def reset(self) -> None:
        self._b.reset()

    @property
    def parties(self) -> int:
        return int(self._b.parties)

    @property
    def n_waiting(self) -> int:
        return int(self._b.n_waiting)

    @property
    def broken(self) -> bool:
        return bool(self._b.broken)


def _open_barrier(pool: str, host: str, creator: int, ref: bytes, timeout: Optional[float],
                  home: str = "") -> Barrier:
    b = Barrier.__new__(Barrier)
    b._reopen(pool, host, creator, home)
    if b._remote:
        b._b = comm_remote.RemoteBarrier(b._socket, home, ref)
    else:
        b._b = _core().ShmBarrier.open(b._pool, ref)
        b._party = barrier_wait.LocalParty(b._b, _core())
    b._timeout = timeout
    return b


# The Dictionary lives in its own module (agents' shards, not one node's pool); it is one of the
# communication objects, so it is importable from here too.
from dragon_parsl.comm_dict import Dictionary, DictionaryError  # noqa: E402
