"""DragonPoolExecutor: the Dragon task service as a ``concurrent.futures.Executor``, without
Parsl's DataFlowKernel.

It is a thin layer over one :class:`~dragon_parsl.executor.DragonExecutor`, started here as a
DataFlowKernel would start it: the same head (embedded, or ``address``), authentication,
failure kinds (:mod:`dragon_parsl.errors`), shared-memory data path and serialization (Parsl's,
so lambdas and closures work). What it adds is the standard library's interface: futures that
``as_completed``/``wait`` take, ``map``, ``shutdown(wait, cancel_futures)``, and a
``Future.cancel()`` that also ends the task on the head, whether it is queued or running.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import queue
import threading
from typing import Any, Callable, List, Optional, Set

from dragon_parsl.executor import DragonExecutor
from dragon_parsl._proto import common_pb2, head_pb2

__all__ = ["DragonPoolExecutor", "DragonPoolFuture"]

logger = logging.getLogger(__name__)

# Seconds one Cancel call to the head may take (it is made on a thread of its own).
CANCEL_TIMEOUT_S = 5.0
# Seconds shutdown() waits for the cancel calls still queued before the session closes (the head
# cancels whatever the session leaves unfinished anyway).
CANCEL_DRAIN_S = 10.0


class DragonPoolFuture(cf.Future):
    """The future of one task, completed by the session's receiver thread itself (no second
    future chained behind it). It never enters the RUNNING state of ``concurrent.futures``:
    until its result arrives ``cancel()`` succeeds, for a queued task as for a running one, and
    the head is asked to cancel the task (a running task's worker is killed and replaced)."""

    def __init__(self, pool: "DragonPoolExecutor") -> None:
        super().__init__()
        self._pool = pool
        # The head's id of the task once it accepted it (None before); set by DragonExecutor.
        self.dragon_task_id: Optional[int] = None

    def cancel(self) -> bool:
        if not super().cancel():
            return False  # done already
        with self._condition:
            # What a stdlib executor does when it reaches a cancelled work item: the future is
            # then done for wait() and as_completed(), which only count CANCELLED_AND_NOTIFIED.
            notify = self._state == cf._base.CANCELLED
        if notify:
            try:
                self.set_running_or_notify_cancel()
            except RuntimeError:
                pass  # another thread's cancel() notified it first
        self._pool._cancel_on_head(self)
        return True


class DragonPoolExecutor(cf.Executor):
    """A ``concurrent.futures.Executor`` that runs calls on dragond's workers.

    Parameters
    ----------
    max_workers : int, optional
        Workers of the embedded head (DragonExecutor's ``workers_per_node``); default one per
        core. Ignored, as by DragonExecutor, with a head given by ``address``.
    address, token :
        As for DragonExecutor: no address (and no ``$DRAGON_HEAD``) starts a private dragond on
        this node, stopped by ``shutdown()``; ``address="HOST:PORT"`` (or ``"current"``) uses a
        head started by hand, with the same authentication.
    **options :
        Any other keyword argument of DragonExecutor (``shm_threshold``, ``shm_dir``,
        ``batch_linger_ms``, ``infra_retries``, ``head_run_dir``, ...). ``provider`` is refused:
        blocks are scaled by Parsl's DataFlowKernel, which this executor runs without.

    Calls are serialized as Parsl does (dill: lambdas and closures work; functions of a module are
    pickled by reference, so the workers must be able to import that module). ``result()``
    re-raises a function's exception with its own type and the remote traceback; a task the
    service could not run fails with a :mod:`dragon_parsl.errors` class (``WorkerLost``,
    ``TaskTooLarge``, ...). ``map``'s ``chunksize`` is accepted and ignored (as by
    ThreadPoolExecutor): every call is a task of its own.
    """

    def __init__(self, max_workers: Optional[int] = None, *, address: Optional[str] = None,
                 token: Optional[str] = None, **options: Any) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                        or max_workers <= 0):
            raise ValueError(f"max_workers must be a whole number greater than 0, not {max_workers!r}")
        if options.get("provider") is not None:
            raise ValueError("DragonPoolExecutor takes no provider: Parsl's DataFlowKernel scales a provider's "
                             "blocks; use DragonExecutor(provider=...) in a parsl Config for that")
        options.setdefault("label", "dragon-pool")
        self._executor = DragonExecutor(address=address, token=token, workers_per_node=max_workers, **options)
        # What DataFlowKernel.add_executors sets before it calls start(). No run id: the embedded
        # head's run directory is then head_run_dir, else a temporary one (removed at shutdown).
        # No monitoring: remote_monitoring_radio stays unused without monitoring_messages.
        self._executor.run_id = None
        self._executor.run_dir = os.getcwd()
        self._executor.log_config = None
        self._executor.monitoring_messages = None
        self._lock = threading.Lock()
        self._shutdown = False
        self._closed = False
        self._closer: Optional[threading.Thread] = None
        self._close_error: Optional[Exception] = None
        self._cancels: "queue.Queue[Optional[cf.Future]]" = queue.Queue()
        self._cancel_thread: Optional[threading.Thread] = None
        self._executor.start()

    @property
    def executor(self) -> DragonExecutor:
        """The DragonExecutor underneath (its head RPCs, ``shm_counters()``, ``run_info_dir``, ...)."""
        return self._executor

    def __repr__(self) -> str:
        return (f"DragonPoolExecutor(head={self._executor.head_address!r}, "
                f"{'shut down' if self._shutdown else 'running'}, {len(self._outstanding())} outstanding)")

    # ------------------------------------------------------------------ submit
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> DragonPoolFuture:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            # The executor completes this very future from its receiver thread: one future and
            # no done-callback per task.
            return self._executor._submit_call(fn, {}, args, kwargs, DragonPoolFuture(self))

    def _outstanding(self) -> List[DragonPoolFuture]:
        """Futures whose result has not arrived (cancelled ones included: their task may still
        be on the head). The executor's table of tasks in flight is the one record of them."""
        return [f for f in list(self._executor._tasks.values()) if isinstance(f, DragonPoolFuture)]

    # ------------------------------------------------------------------ cancel
    def _cancel_on_head(self, fut: DragonPoolFuture) -> None:
        """Asks the head, once, to cancel fut's task: now if its id is known, else when the head
        tells it (task_results calls ``dragon_on_accepted``; dragond sends a Python task's id
        with its next message to the session, within its 0.1 s tick). Never blocks: the call is
        made on the cancel thread."""
        asked = threading.Lock()  # taken by whichever of the two paths comes first

        def ask(_task_id: int = 0) -> None:
            if asked.acquire(blocking=False):
                self._queue_cancel(fut)

        fut.dragon_on_accepted = ask  # type: ignore[attr-defined]
        if fut.dragon_task_id:  # accepted already (set before the hook is read)
            ask()

    def _queue_cancel(self, fut: DragonPoolFuture) -> None:
        ref = getattr(fut, "parsl_executor_task_id", None)
        if ref is None or self._executor._tasks.get(ref) is not fut:
            return  # its result came meanwhile (or it never reached the session): nothing to cancel
        with self._lock:
            if self._closed:
                return  # the session is closed: the head cancelled what it left unfinished
            if self._cancel_thread is None:
                self._cancel_thread = threading.Thread(target=self._cancel_loop, daemon=True,
                                                       name=f"dragon-pool-cancel-{self._executor.label}")
                self._cancel_thread.start()
            self._cancels.put(fut)

    def _cancel_loop(self) -> None:
        while True:
            fut = self._cancels.get()
            if fut is None:
                return
            task_id = fut.dragon_task_id
            try:
                reply = self._executor.cancel_task(fut, timeout=CANCEL_TIMEOUT_S)
                logger.debug("DragonPoolExecutor: task %s cancelled (was %s)", task_id,
                             common_pb2.TaskState.Name(reply.previous_state))
            except Exception as e:  # noqa: BLE001  (the future is cancelled already; say why the head was not told)
                logger.warning("DragonPoolExecutor: could not ask the head to cancel task %s: %s: %s", task_id,
                               type(e).__name__, e)

    def _running(self, futures: List[DragonPoolFuture]) -> Set[DragonPoolFuture]:
        """Those of ``futures`` whose task a worker is running now (asked of the head); on a head
        error, none (every one is then cancelled)."""
        ex = self._executor
        try:
            reply = ex._unary("ListTasks", head_pb2.ListTasksRequest(state=common_pb2.RUNNING, limit=100000),
                              timeout=CANCEL_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001
            logger.warning("DragonPoolExecutor: cannot list the running tasks (%s: %s): cancelling every "
                           "unfinished one", type(e).__name__, e)
            return set()
        session = ex.welcome.session_id if ex.welcome is not None else None
        ids = {t.task_id for t in reply.tasks if t.session_id == session}
        return {f for f in futures if f.dragon_task_id in ids}

    # ------------------------------------------------------------------ shutdown
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ``concurrent.futures.Executor.shutdown``. ``cancel_futures``: every task not running
        yet (queued on the head or an agent) is cancelled; running ones end as usual. Then, once
        every future is done (at once with ``wait=True``, else on a thread), the session is closed
        and an embedded head stopped."""
        with self._lock:
            self._shutdown = True
        outstanding = self._outstanding()  # no submit can add to it now
        if cancel_futures and outstanding:
            running = self._running(outstanding)
            for fut in outstanding:
                if fut not in running:
                    fut.cancel()
        with self._lock:
            closer = self._closer
            if closer is None:
                closer = self._closer = threading.Thread(target=self._close, args=(outstanding,),
                                                         name=f"dragon-pool-shutdown-{self._executor.label}")
                closer.start()
        if wait:
            closer.join()
            if self._close_error is not None:
                raise self._close_error

    def _close(self, outstanding: List[DragonPoolFuture]) -> None:
        cf.wait(outstanding)
        with self._lock:
            self._closed = True
            cancel_thread = self._cancel_thread
        if cancel_thread is not None:
            self._cancels.put(None)
            cancel_thread.join(CANCEL_DRAIN_S)
        try:
            self._executor.shutdown()
        except Exception as e:  # noqa: BLE001  (raised by shutdown(wait=True); logged for wait=False)
            logger.error("DragonPoolExecutor: shutting down its DragonExecutor failed: %s: %s", type(e).__name__, e)
            self._close_error = e
