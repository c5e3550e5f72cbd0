"""Task data through the agent's shared-memory pool (issue 14, "Managed memory").

Each dragon-agent owns one pool on its node (``dragon-agent --shm-pool-mb``), a
file in /dev/shm holding a buddy allocator that every process on the node may
attach (dragon_parsl._core.ShmPool, common/shm_pool.h). Large task arguments and
results are written once into a block of it, and the task message carries a
small envelope naming the pool and the block (docs/INTERFACES.md,
"Shared-memory envelopes"); the reader maps the block and unpickles from it, so
a numpy argument or result is never copied on its way in.

Who frees a block is decided by its owner pid, changed atomically in the pool:

- arguments: the client allocates the block (owner: the client) and frees it
  when the task is over (done, failed or cancelled). The worker reads it in
  place without owning it, so a task run again after its worker or agent died
  finds its arguments where they were. An app that keeps a reference to its
  argument after the task makes its worker take the block over
  (``transfer(client -> worker)``) before the result goes back; the worker
  then frees it when the app lets go, and the client's ``free_if_owner``
  leaves it alone.
- results: the worker allocates, writes, and hands the block to the client
  (``transfer(worker -> client)``) before sending the envelope; the client copies
  the result out and frees the block as it reads it (from 32 MiB on, it reads the
  result in place and the block goes with the value, within a budget).
- a process that dies owning blocks (a killed client or worker) loses them to
  the agent's janitor, which frees the blocks of dead owners every second.

Across nodes (the client's node and the worker's are different hosts; each agent
with a pool runs a UCX data plane, agent/data_plane.h): the worker asks its agent
(``_core.agent_pull``, over the agent's Unix socket) to copy the argument block
from the client's node into a new block of its own pool, owned by the worker,
which reads it in place there and frees it when the task lets go of it; the
client's block stays the client's, as above. A large result is written into a
block of the worker's pool and pushed (``_core.agent_push``) into a new block of
the client's pool, owned by the client, which reads it as any local result; the
worker frees its local block at once. A push that fails sends the result inline.

On a host without an agent (a login node) the client's own pool and data plane stand in for
the agent's (dragon_parsl.client_data_plane): the envelopes name the client's peer id as their
node, every worker pulls its arguments from there and pushes its large results there, and the
client frees and reads them as above. Nothing of it is in /dev/shm: the pool's file is removed
once mapped, and its memory goes with the client's process.

A full pool makes the submit wait (``wait_s``) and then fail the task with
ShmPoolFull naming the pool's size and ``--shm-pool-mb``; a result that finds
no room goes inline through gRPC instead (never lost).

The worker imports this module lazily, only for a task that uses a pool. Its side of the path
(``load_task``, ``write_result``, ``after_task``: reading arguments in place or pulling them,
writing or pushing results) is in dragon_parsl.shm_pool_worker, which this module loads on the
first use of those names; this one keeps the pools a process attaches, the block helpers both
sides use, and the client's side (PoolDataPath).
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from dragon_parsl import shm
from dragon_parsl.errors import SharedMemoryError

logger = logging.getLogger(__name__)

# How long a submit waits for space in a full pool before the task fails.
DEFAULT_WAIT_S = 10.0

# The worker's two below stay here, where apps and tests find them (and may replace them, a
# test's monkeypatch): shm_pool_worker reads them through this module each time it uses them.

# How long a worker waits for its agent to pull arguments from, or push a result to, another
# node (the agent's own deadline; a dead peer fails much sooner, UCX peer error handling).
TRANSFER_TIMEOUT_S = 60.0

# What this worker moved across nodes (args_pulled, results_pushed, results_push_fallbacks):
# read by apps or tests running in the worker; the client has its own Counters.
worker_counters = shm.Counters()

_pools: Dict[str, Any] = {}
_pools_lock = threading.Lock()


def _core() -> Any:
    from dragon_parsl import _core  # the C++ extension: imported only once a pool is used
    return _core


def attach(path: str) -> Any:
    """The pool at ``path``, attached once per process."""
    pool = _pools.get(path)
    if pool is not None:
        return pool
    with _pools_lock:
        pool = _pools.get(path)
        if pool is None:
            try:
                pool = _core().ShmPool.attach(path)
            except RuntimeError as e:  # ShmPoolError and subclasses
                raise SharedMemoryError(f"cannot attach the shared-memory pool {path}: {e} (its agent "
                                        f"stopped or restarted?)") from None
            _pools[path] = pool
    return pool


def adopt(path: str, pool: Any) -> None:
    """Makes ``pool`` (this process's own, e.g. the client's private pool, whose file is removed
    once mapped: dragon_parsl.client_data_plane) the one :func:`attach` returns for ``path``."""
    with _pools_lock:
        _pools[path] = pool


def forget(path: str) -> None:
    """Drops this process's handle of a pool (blocks still viewed keep the mapping alive)."""
    with _pools_lock:
        pool = _pools.pop(path, None)
    if pool is not None:
        pool.close()


def _write_into(pool: Any, ref: bytes, pieces: Sequence[Any]) -> None:
    """Copies the laid-out pieces (shm.layout) into the block, one after another."""
    block = pool.block(ref)
    copy_into = _core().copy_into  # no interpreter lock while copying a large piece
    at = 0
    for piece in pieces:
        at += copy_into(block, at, memoryview(piece).cast("B"))


def _allocate_and_write(pool: Any, pieces: Sequence[Any], size: int, wait_s: float) -> bytes:
    ref = pool.allocate(max(size, 1), wait_s)
    try:
        _write_into(pool, ref, pieces)
    except BaseException:
        pool.free(ref)
        raise
    return ref


def _block_view(pool: Any, ref: bytes, size: int, what: str, free_on_release: bool = True) -> Any:
    """(the block object, a view of its first ``size`` bytes). With ``free_on_release``
    (a block this process owns) the block is freed once the view and everything made from
    it are gone."""
    try:
        block = pool.block(ref, free_on_release=free_on_release)
    except RuntimeError as e:
        raise SharedMemoryError(f"{what} in shared-memory pool {pool.path}: {e}") from None
    view = memoryview(block)
    if view.nbytes < size:
        raise SharedMemoryError(f"{what}: block of {view.nbytes} bytes in {pool.path}, the envelope says {size}")
    return block, view[:size]


# The worker's side is in dragon_parsl.shm_pool_worker (load_task, write_result, after_task).


# ---------------------------------------------------------------- client side
_COPY_IN_C_AT_LEAST = 256 << 10
# Results this large are read in place, not copied out (PoolDataPath.load_result).
_READ_IN_PLACE_AT = 32 << 20


def _copy_out(view: memoryview) -> Any:
    """A copy of a result's buffer that owns its memory: bytearray for small ones,
    _core.copy_buffer (no interpreter lock while copying; huge pages, populated at once,
    for the largest) from 256 KiB on."""
    if view.nbytes < _COPY_IN_C_AT_LEAST:
        return bytearray(view)
    return _core().copy_buffer(view)



class PoolPlace(NamedTuple):
    """Where a client puts large task data: the pool of an agent on its host, and that agent's
    node id (named in envelopes: workers on other nodes pull from it and push results to it;
    and the submission's data_node, which the scheduler prefers). On a host without an agent:
    the client's own pool and data-plane peer id (``client-<session id>``,
    dragon_parsl.client_data_plane), which no worker reads in place: every one pulls."""
    path: str
    node: str
    # The client's own data-plane peer: not a node the scheduler could prefer.
    own: bool = False


class PoolDataPath:
    """The client's side: large arguments into the pool of an agent on this host, large
    results read from it. Same interface as shm_files.ClientDirectory (DragonExecutor's
    ``self.shm``), with ``place`` a PoolPlace (or None: everything inline)."""

    def __init__(self, threshold: int, wait_s: float = DEFAULT_WAIT_S) -> None:
        self.threshold = threshold
        self.wait_s = wait_s
        self.path: Optional[str] = None  # the pool last used
        self.swept: List[str] = []
        self.counters = shm.Counters()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._reply_headers: Dict[Optional[str], bytes] = {}
        self._held_bytes = 0  # of results read in place whose values are alive

    @staticmethod
    def place_for(nodes: Optional[Sequence[Any]]) -> Optional[PoolPlace]:
        """The pool to use when ``nodes`` (live NodeInfos on this host whose pools every worker
        can reach; None when there are none) are the local agents: the first one's that has a pool."""
        for node in sorted(nodes or [], key=lambda n: n.node_id):
            if node.shm_pool_path:
                return PoolPlace(node.shm_pool_path, node.node_id)
        return None

    def _reply_header(self, place: Optional[PoolPlace]) -> bytes:
        header = self._reply_headers.get(place)
        if header is None:
            fields: Dict[str, Any] = {"host": shm.host_identity()}
            if place is not None:  # a worker may return a large result through it (pushed, from another node)
                fields.update(pool=place.path, node=place.node, client=self._pid, threshold=self.threshold)
            header = shm.encode_header(**fields)
            self._reply_headers[place] = header
        return header

    # ------------------------------------------------------------ arguments
    def pack_task(self, func_part: shm.Part, args: Any, kwargs: Any, place: Optional[PoolPlace]
                  ) -> Tuple[bytes, Optional[Tuple[str, bytes]]]:
        """The payload of a task, and the argument block to free when its result arrives (None:
        the arguments went inline; else they are in ``place``'s pool, on node ``place.node``)."""
        oob_min = self.threshold if place else shm.NEVER_OUT_OF_BAND
        parts = [func_part, shm.serialize_data(args, oob_min), shm.serialize_data(kwargs, oob_min)]
        if place and shm.any_large(parts, self.threshold):
            pieces, descriptors, size = shm.layout(parts, self.threshold)
            pool = attach(place.path)
            self.path = place.path
            # ShmPoolFull (naming the pool's size and --shm-pool-mb) after wait_s fails this task.
            try:
                ref = _allocate_and_write(pool, pieces, size, self.wait_s)
            except _core().ShmPoolFull as e:
                if not place.own:
                    raise
                raise _core().ShmPoolFull(f"{e} (this is the client's own pool, on a host without an agent: "
                                          f"its size is DragonExecutor(client_pool_mb=...))") from None
            with self._lock:
                self.counters.args_shm_tasks += 1
                self.counters.args_shm_bytes += size
            header = shm.encode_header(host=shm.host_identity(), pool=place.path, node=place.node,
                                       client=self._pid, threshold=self.threshold, ref=ref.hex(), size=size,
                                       parts=descriptors)
            return header + shm.inline_bodies(parts, self.threshold), (place.path, ref)
        func, args_part, kwargs_part = parts  # unrolled: this runs for every small task
        payload = b"".join((self._reply_header(place), shm.inline_segment(func), shm.inline_segment(args_part),
                            shm.inline_segment(kwargs_part)))
        with self._lock:
            self.counters.args_inline_tasks += 1
            self.counters.args_inline_bytes += len(payload)
        return payload, None

    def discard(self, block: Optional[Tuple[str, bytes]]) -> None:
        """The task is over: frees its argument block unless a worker took it over."""
        if block is None:
            return
        path, ref = block
        try:
            attach(path).free_if_owner(ref, self._pid)
        except (RuntimeError, SharedMemoryError) as e:
            logger.debug("argument block in %s not freed: %s", path, e)

    # ------------------------------------------------------------ results
    def load_result(self, data: Any) -> Any:
        """The value of a result in a pool block. Up to 32 MiB its buffers are copied out and the
        block is freed at once: a value's lifetime is the workflow's (Parsl's futures and task
        records form reference cycles that only a full GC collects), and blocks held that long
        would fill the pool; the copy costs about what mapping a file and faulting its pages in
        did on the files path. A larger result is read in place (its copy would cost more than
        the rest of its trip), within a budget of a quarter of the pool: past it, a collection
        frees values that are garbage, and if that is not enough the result is copied too."""
        envelope = shm.decode_envelope(data)
        if not envelope.pool or not envelope.ref:
            raise SharedMemoryError(f"result envelope names no pool block (file {envelope.file!r}): this "
                                    f"executor reads results from its agent's pool")
        shm.check_readable_here(envelope)
        pool = attach(envelope.pool)
        ref = bytes.fromhex(envelope.ref)
        if envelope.size >= _READ_IN_PLACE_AT and self._may_hold(pool, envelope.size):
            block, view = _block_view(pool, ref, envelope.size, "task result")  # freed with the value
            with self._lock:
                self._held_bytes += envelope.size
            weakref.finalize(block, self._released, envelope.size)
            (value,) = shm.load_parts(envelope, view)
        else:
            try:
                _, view = _block_view(pool, ref, envelope.size, "task result", free_on_release=False)
                (value,) = shm.load_parts(envelope, view, copy=_copy_out)
                del view
            finally:
                pool.free_if_owner(ref, self._pid)
        with self._lock:
            self.counters.results_shm += 1
            self.counters.results_shm_bytes += envelope.size
            if envelope.from_node:  # written on another node, pushed here by the agents
                self.counters.results_pushed += 1
                self.counters.results_pushed_bytes += envelope.size
        return value

    def _may_hold(self, pool: Any, size: int) -> bool:
        budget = pool.capacity_bytes // 4
        if self._held_bytes + size <= budget:
            return True
        gc.collect()  # results dropped, but kept by reference cycles, let their blocks go
        return self._held_bytes + size <= budget

    def _released(self, size: int) -> None:
        with self._lock:
            self._held_bytes -= size

    def count_client_plane_fallback(self) -> None:
        """A task from a host without an agent whose data could not use the client's own data
        plane (it could not start, or an agent elsewhere has none): inline, as before."""
        with self._lock:
            self.counters.client_plane_fallbacks += 1

    def count_inline_result(self, nbytes: int) -> None:
        with self._lock:
            self.counters.results_inline += 1
            self.counters.results_inline_bytes += nbytes

    def discard_result(self, data: Any) -> None:
        """Frees the block of a result nobody will read (its task is unknown)."""
        if not shm.is_envelope(data):
            return
        try:
            envelope = shm.decode_envelope(data)
            if envelope.pool and envelope.ref:
                attach(envelope.pool).free_if_owner(bytes.fromhex(envelope.ref), self._pid)
        except (RuntimeError, SharedMemoryError, ValueError) as e:
            logger.warning("could not free the block of an unread result: %s", e)

    def data_files(self) -> List[str]:
        return []

    def remove(self) -> None:
        """Nothing of the client's stays in the pool: argument blocks were discarded with
        their tasks, result blocks go with their values (or the agent's janitor frees
        them once this process is gone)."""
