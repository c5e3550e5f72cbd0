"""The worker's side of the pool data path (dragon_parsl.shm_pool_path, whose docstring
describes the whole path and who frees which block): reading a task's arguments in place from
a pool block (``load_task``), pulling them first when the block is in another node's pool,
writing a large result into the client's pool or pushing it there across nodes
(``write_result``), and, once a task is over, taking over the argument blocks its app still
keeps (``after_task``).

It is apart from shm_pool_path, which keeps the pools this process attaches and the client's
side (PoolDataPath), because only a worker runs this code (worker.py imports it when a task's
envelope names a pool): a client that only submits never loads it.

Everything shared with the client's side is looked up through shm_pool_path when it is used,
never copied here at import: the pools (``attach``), the block helpers, the binding (``_core``),
``TRANSFER_TIMEOUT_S``, and ``worker_counters``, which apps and tests read (or replace) as
``shm_pool_path.worker_counters``. Log records keep shm_pool_path's logger, as before the split.
"""
from __future__ import annotations

import gc
import os
import weakref
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from dragon_parsl import shm, shm_pool_path
from dragon_parsl.errors import SharedMemoryError

logger = shm_pool_path.logger


@dataclass
class _TaskBlock:
    """An argument block the running task reads: the client's until the task is over."""
    block: "weakref.ref[Any]"
    pool: Any
    ref: bytes
    client: int


# The argument blocks of the task running in this worker.
_task_blocks: List[_TaskBlock] = []


# Copies of argument blocks pulled from other nodes for the running task: this worker's own,
# freed when the last view goes (after_task collects cycles that would keep them).
_pulled_blocks: List["weakref.ref[Any]"] = []


def load_task(envelope: shm.Envelope) -> List[Any]:
    """[func, args, kwargs] of a task whose arguments are in a pool block, read in place. The
    block stays the client's, which frees it when the task is over: a task run again (its
    worker or agent died) finds its arguments where they were. A block in another node's pool
    is pulled into this node's first (:func:`_load_pulled`)."""
    if shm.needs_pull(envelope):
        return _load_pulled(envelope)
    pool = shm_pool_path.attach(envelope.pool)
    ref = bytes.fromhex(envelope.ref)
    block, view = shm_pool_path._block_view(pool, ref, envelope.size, "task arguments (was the task cancelled, or "
                                            "is its client gone?)", free_on_release=False)
    _task_blocks.append(_TaskBlock(weakref.ref(block), pool, ref, envelope.client))
    return shm.load_parts(envelope, view)


def _load_pulled(envelope: shm.Envelope) -> List[Any]:
    """[func, args, kwargs] from a copy of the task's argument block pulled by this node's agent
    from the client's node into this node's pool. The copy is this worker's: freed once nothing
    refers to it (the app may keep its arguments: they stay valid), or by the agent's janitor
    if the worker dies."""
    pool_path, _ = shm.local_data_plane()
    pool = shm_pool_path.attach(pool_path)
    ref = _pull(envelope)
    try:
        block, view = shm_pool_path._block_view(pool, ref, envelope.size,
                                                f"task arguments pulled from node {envelope.node}",
                                                free_on_release=False)
    except BaseException:
        pool.free(ref)
        raise
    block.free_on_release = True
    _pulled_blocks.append(weakref.ref(block))
    shm_pool_path.worker_counters.args_pulled += 1
    shm_pool_path.worker_counters.args_pulled_bytes += envelope.size
    return shm.load_parts(envelope, view)


def _is_not_found(error: BaseException) -> bool:
    """A data plane error that means "no such node, or it has no data plane" (the AgentData
    service's NotFound: _core.DataPlaneError.code, also in its message)."""
    code = getattr(error, "code", None)
    if isinstance(code, str):
        return code == "NOT_FOUND"
    return "NOT_FOUND" in str(error)


def _pull(envelope: shm.Envelope) -> bytes:
    """The task's argument block copied from node ``envelope.node`` into this node's pool
    (owner: this worker); SharedMemoryError naming the node and the cause if it cannot be."""
    core = shm_pool_path._core()
    _, data_socket = shm.local_data_plane()
    if not hasattr(core, "agent_pull"):
        raise shm.no_data_plane_error(envelope, "this dragon_parsl._core has no data plane binding "
                                                "(rebuild it: make python)")
    try:
        return core.agent_pull(data_socket, envelope.node, bytes.fromhex(envelope.ref), envelope.size,
                               os.getpid(), shm_pool_path.TRANSFER_TIMEOUT_S)
    except RuntimeError as e:  # _core.DataPlaneError
        if _is_not_found(e):
            raise shm.no_data_plane_error(envelope, f"node {envelope.node} has no data plane ({e})") from None
        raise SharedMemoryError(f"task arguments ({envelope.size} bytes in pool {envelope.pool} of node "
                                f"{envelope.node}) could not be pulled into this node's pool: {e}") from None


def after_task() -> None:
    """Called by the worker once a task is over and its arguments dropped, before its result
    goes back (after which the client frees the argument block). A block still referred to is
    held by a reference cycle (a traceback, an object graph of the app's): a collection frees
    it. One the app really keeps (a global) is taken over from the client, so that the client
    does not free it under the app: it is freed when the app lets it go, or when this worker
    exits (the agent's janitor)."""
    global _task_blocks, _pulled_blocks
    if not _task_blocks and not _pulled_blocks:
        return
    blocks, _task_blocks = _task_blocks, []
    pulled, _pulled_blocks = _pulled_blocks, []
    if all(b.block() is None for b in blocks) and all(p() is None for p in pulled):
        return
    gc.collect()
    kept = [block for block in (p() for p in pulled) if block is not None]
    if kept:  # this worker's own copies: they go when the app lets go of them
        logger.warning("the task's app keeps a reference to its %d-byte argument (pulled from another "
                       "node) after the task: its copy stays in this node's pool until the app drops it",
                       sum(len(block) for block in kept))
    for b in blocks:
        block = b.block()
        if block is None:
            continue
        try:
            b.pool.transfer(b.ref, b.client, os.getpid())
        except RuntimeError as e:  # the client freed it already (cancelled): nothing to keep
            logger.warning("the task keeps a reference to its argument block, which is no longer its "
                           "client's: %s", e)
            continue
        block.free_on_release = True
        logger.warning("the task's app keeps a reference to its %d-byte argument after the task: its "
                       "shared-memory block stays with this worker until the app drops it", len(block))


def write_result(envelope: shm.Envelope, result: Any, task_id: int) -> Optional[Any]:
    """The RESULT body for a task whose client offered a pool: an envelope naming a block of the
    client's pool when the result is large, its parts inline when it is small, None when it
    cannot go through the pool (send it inline the classic way). A client on another host gets
    its large result pushed into its node's pool (:func:`_push_result`)."""
    if envelope.threshold <= 0:
        return None
    remote = envelope.host != shm.host_identity()
    if remote and not _can_push(envelope):
        return None
    part = shm.serialize_data(result, envelope.threshold)
    if not shm.is_large(part, envelope.threshold):
        return [part.identifier + b"\n", part.body]
    pieces, descriptors, size = shm.layout([part], envelope.threshold)
    if remote:
        ref = _push_result(envelope, pieces, size, part.nbytes, task_id)
        if ref is None:
            return None
        header = shm.encode_header(host=envelope.host, node=envelope.node, pool=envelope.pool, ref=ref.hex(),
                                   size=size, parts=descriptors, from_node=os.environ.get(shm.NODE_ENV) or "?")
        return [header, shm.inline_bodies([part], envelope.threshold)]
    try:
        pool = shm_pool_path.attach(envelope.pool)
        ref = shm_pool_path._allocate_and_write(pool, pieces, size, 0.0)
        pool.transfer(ref, os.getpid(), envelope.client)
    except (RuntimeError, SharedMemoryError) as e:
        logger.warning("task %d: its %d-byte result does not go through shared-memory pool %s (%s); "
                       "sending it inline", task_id, part.nbytes, envelope.pool, e)
        return None
    header = shm.encode_header(host=shm.host_identity(), node=envelope.node, pool=envelope.pool, ref=ref.hex(),
                               size=size, parts=descriptors)
    return [header, shm.inline_bodies([part], envelope.threshold)]


def _can_push(envelope: shm.Envelope) -> bool:
    """A result for a client on another host may be pushed to its node: the client named its
    node, pool and pid, and this worker's agent has a data plane (and the binding has it)."""
    return bool(envelope.node and envelope.pool and envelope.client and shm.local_data_plane()
                and hasattr(shm_pool_path._core(), "agent_push"))


def _push_result(envelope: shm.Envelope, pieces: Sequence[Any], size: int, nbytes: int,
                 task_id: int) -> Optional[bytes]:
    """Writes the result into a block of this node's pool and has this node's agent push it into
    a new block of the client's pool (owner: the client); frees the local block either way.
    Returns the new block's reference, or None (logged) when it cannot: the result goes inline."""
    pool_path, data_socket = shm.local_data_plane()
    try:
        pool = shm_pool_path.attach(pool_path)
        local_ref = shm_pool_path._allocate_and_write(pool, pieces, size, 0.0)
        try:
            ref = shm_pool_path._core().agent_push(data_socket, envelope.node, local_ref, size, envelope.client,
                                                   shm_pool_path.TRANSFER_TIMEOUT_S)
        finally:
            pool.free(local_ref)
    except (RuntimeError, SharedMemoryError) as e:  # full pool here or there, peer lost, ...
        shm_pool_path.worker_counters.results_push_fallbacks += 1
        logger.warning("task %d: its %d-byte result could not be pushed to node %s (pool %s, client pid %d): "
                       "%s; sending it inline", task_id, nbytes, envelope.node, envelope.pool, envelope.client, e)
        return None
    shm_pool_path.worker_counters.results_pushed += 1
    shm_pool_path.worker_counters.results_pushed_bytes += size
    return ref
