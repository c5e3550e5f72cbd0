"""An @mpi_app's running job (``MpiJob``): its submission as an EXECUTABLE task, its start
(the app's future resolves), its end (returncode, exception) and every rank's files."""
from __future__ import annotations

import concurrent.futures as cf
import copy
import signal
import threading
import time
from typing import TYPE_CHECKING, List, Optional, Union

import grpc

from dragon_parsl.connection import Submission
from dragon_parsl.errors import DragonError, TaskCancelled, TaskFailed, task_error
from dragon_parsl.mpi_errors import MpiJobFailed, TaskIOError
from dragon_parsl.mpi_taskio import MpiStdin, MpiStdout, _TaskIO
from dragon_parsl.task_results import _failure_name
from dragon_parsl._proto import common_pb2, head_pb2

if TYPE_CHECKING:  # pragma: no cover
    from dragon_parsl.executor import DragonExecutor
    from dragon_parsl.mpi import JobSpec


class MpiJob:
    """A running (or ended) MPI job of an @mpi_app. ``job["in"]`` / ``job["out"]``: rank 0's
    stdin and stdout; ``wait()``, ``returncode``, ``cancel()``; every rank's files."""

    def __init__(self, executor: "DragonExecutor", spec: JobSpec, name: str, app_future: cf.Future) -> None:
        self.executor = executor
        self.spec = spec
        self.name = name
        self.task_id = 0
        self._app_future = app_future
        self._raw: cf.Future = cf.Future()
        self._lock = threading.Lock()
        self._started: Optional["common_pb2.TaskIOStarted"] = None
        self._result: Optional["common_pb2.MpiJobResult"] = None
        self._returncode: Optional[int] = None
        self._exception: Optional[BaseException] = None
        self._done = threading.Event()
        self._io: Optional[_TaskIO] = None
        self._io_opens = 0
        self._closing = False
        self.stdin = MpiStdin(self)
        self.stdout = MpiStdout(self)
        self.submitted_at = time.monotonic()
        self.started_at: Optional[float] = None

    # ------------------------------------------------------------ public
    def __getitem__(self, key: str) -> Union[MpiStdin, MpiStdout]:
        if key == "in":
            return self.stdin
        if key == "out":
            return self.stdout
        raise KeyError(f"an MpiJob has 'in' (rank 0's stdin) and 'out' (rank 0's stdout), not {key!r}")

    def __repr__(self) -> str:
        state = "running" if not self.done() else f"returncode={self._returncode}"
        return f"<MpiJob task {self.task_id} {self.name} ranks={self.spec.num_ranks} {state}>"

    @property
    def num_ranks(self) -> int:
        return self.spec.num_ranks

    @property
    def returncode(self) -> Optional[int]:
        """None while it runs; then the job's exit code (the first failing rank's), or minus
        the signal (-15: cancelled, -9: timed out)."""
        return self._returncode

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> int:
        """Waits for the end of the job and returns its returncode. TimeoutError after
        ``timeout`` seconds; a TaskFailed (NodeLost, ...) when the service could not run it to
        its end."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"task {self.task_id}: MPI job {self.name!r} still runs after {timeout:g} s")
        if self._returncode is None:
            assert self._exception is not None
            raise copy.copy(self._exception)
        return self._returncode

    def exception(self) -> Optional[BaseException]:
        """None if the job ended with 0 (or still runs); else why not: MpiJobFailed (a rank
        failed, naming it; timeout; launcher), TaskCancelled, NodeLost, ..."""
        return self._exception

    def cancel(self, timeout: float = 10.0) -> None:
        """Ends every rank of the job on every node (no-op once it has ended)."""
        if self.done():
            return
        if not self.task_id:
            raise DragonError(f"MPI job {self.name!r} has no task id yet")
        self.executor._unary("Cancel", head_pb2.CancelRequest(task_id=self.task_id), timeout=timeout)

    @property
    def ranks(self) -> List["common_pb2.MpiRankInfo"]:
        """Every rank: host, state, exit code, files (the end result once the job ended)."""
        if self._result is not None and self._result.ranks:
            return list(self._result.ranks)
        return list(self._started.ranks) if self._started is not None else []

    @property
    def stdout_paths(self) -> List[str]:
        """Each rank's stdout file, by rank, on the leader's host (``leader_host``)."""
        return [r.stdout_path for r in self.ranks]

    @property
    def stderr_paths(self) -> List[str]:
        return [r.stderr_path for r in self.ranks]

    @property
    def output_dir(self) -> str:
        if self._result is not None and self._result.output_dir:
            return self._result.output_dir
        return self._started.output_dir if self._started is not None else ""

    @property
    def leader_host(self) -> str:
        return self._started.leader_host if self._started is not None else ""

    @property
    def hosts(self) -> List[str]:
        """The host of each rank."""
        return [r.host for r in self.ranks]

    @property
    def result(self) -> Optional["common_pb2.MpiJobResult"]:
        """The agent's account of the ended job (per-rank states, launcher output), if any."""
        return self._result

    # ------------------------------------------------------------ submission
    def _submit(self, payload: bytes, request: "common_pb2.ResourceRequest") -> None:
        ex = self.executor
        raw = self._raw
        raw.dragon_on_accepted = self._on_accepted  # type: ignore[attr-defined]
        raw.add_done_callback(self._on_raw_done)
        session = ex.session
        if session is None:
            self._app_future.set_exception(DragonError(f"DragonExecutor {ex.label!r} is not started"))
            return
        with ex._lock:
            if ex._broken is not None:
                self._app_future.set_exception(copy.copy(ex._broken))
                return
            ref = next(ex._refs)
            raw.parsl_executor_task_id = ref  # type: ignore[attr-defined]
            self._app_future.parsl_executor_task_id = ref  # type: ignore[attr-defined]
            ex._tasks[ref] = raw
            session.submit(Submission(ref, payload, self.name, resources=request, kind=common_pb2.EXECUTABLE,
                                      whole_result=True))  # the ClientResult, for the ranks' reports

    def _on_accepted(self, task_id: int) -> None:
        self.task_id = task_id
        self._app_future.dragon_task_id = task_id  # type: ignore[attr-defined]
        self._open_io()

    def _open_io(self) -> None:
        ex = self.executor
        try:
            stub = ex._stub()
        except DragonError as e:
            self._fail_start(e)
            return
        with self._lock:
            if self._closing:
                return
            self._io_opens += 1
            self._io = _TaskIO(self, stub, self.task_id)

    def _io_stream(self) -> _TaskIO:
        io = self._io
        if io is None:
            raise TaskIOError(f"MPI job {self.name!r}: rank 0's stdin/stdout are not connected (the job has "
                              f"not started)")
        return io

    def _on_started(self, started: "common_pb2.TaskIOStarted") -> None:
        with self._lock:
            self._started = started
            if self.started_at is None:
                self.started_at = time.monotonic()
        if not self._app_future.done():
            try:
                self._app_future.set_result(self)
            except cf.InvalidStateError:
                pass

    def _on_taskio_end(self, io: _TaskIO, error: Optional[BaseException]) -> None:
        code = getattr(error, "code", None) if error is not None else None
        # Not started yet and its node went (the job may run again elsewhere), or another
        # client took it over meanwhile: attach again while the job is not over.
        if (error is not None and self._started is None and not self.done() and not self._closing
                and code in (grpc.StatusCode.UNAVAILABLE,) and self._io_opens < 20):
            threading.Timer(0.5, self._reopen_if_running).start()

    def _reopen_if_running(self) -> None:
        if not self.done() and self._started is None and not self._closing:
            self._open_io()

    # ------------------------------------------------------------ the end
    def _on_raw_done(self, raw: cf.Future) -> None:
        exc = raw.exception()
        if exc is not None:  # the session broke, or the executor shut down
            self._finish(None, exc)
            return
        r: "head_pb2.ClientResult" = raw.result()
        res = r.result
        self.task_id = r.task_id
        if res.outcome in (common_pb2.OK, common_pb2.APP_EXCEPTION):
            job_result = common_pb2.MpiJobResult()
            try:
                job_result.ParseFromString(res.data)
            except Exception:  # noqa: BLE001
                job_result = common_pb2.MpiJobResult(exit_code=0 if res.outcome == common_pb2.OK else 1,
                                                     error=res.error)
            self._result = job_result
            code = job_result.exit_code if job_result.exit_code >= 0 else -(job_result.signal or 9)
            if res.outcome == common_pb2.OK:
                self._finish(0, None)
            else:
                self._finish(code if code != 0 else 1, MpiJobFailed(
                    job_result.error or res.error or f"task {r.task_id}: MPI job failed", task_id=r.task_id,
                    node=res.node, returncode=code if code != 0 else 1,
                    rank=job_result.failed_rank if job_result.failed_rank >= 0 else None))
            return
        failure = _failure_name(res.failure)
        err = task_error(failure, res.error, r.task_id, res.node, res.worker_pid,
                         cancelled=res.outcome == common_pb2.CANCELED)
        if res.outcome == common_pb2.CANCELED or isinstance(err, TaskCancelled):
            self._finish(-signal.SIGTERM, err)
        else:
            self._finish(None, err)

    def _finish(self, returncode: Optional[int], exc: Optional[BaseException]) -> None:
        with self._lock:
            self._returncode = returncode
            self._exception = exc
        self._done.set()
        if not self._app_future.done():
            # It ended before we heard it start: a job that ran (it has a result) is still
            # the app's value; one that could not start fails the app.
            try:
                if self._result is not None and returncode is not None:
                    self._app_future.set_result(self)
                else:
                    self._app_future.set_exception(exc if exc is not None else TaskFailed(
                        f"task {self.task_id}: MPI job ended without a result", task_id=self.task_id))
            except cf.InvalidStateError:
                pass
        io = self._io
        if io is not None and self._started is None:
            # It never started: nothing to read.
            self._closing = True
            io.cancel()
        elif io is not None and self._result is None:
            # It did not end on its own (node lost, session broken): the stream is of no use.
            threading.Timer(2.0, self._close_io).start()

    def _close_io(self) -> None:
        io = self._io
        if io is not None and not io.ended:
            self._closing = True
            io.cancel()

    def _fail_start(self, exc: BaseException) -> None:
        if not self._app_future.done():
            try:
                self._app_future.set_exception(exc)
            except cf.InvalidStateError:
                pass
