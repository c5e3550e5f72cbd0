"""The SC23 talk's ``@mpi_app`` on DragonExecutor: launch an MPI program and talk to its rank 0.

::

    from dragon_parsl import mpi_app, Policy

    @mpi_app
    def factorial(num_ranks, bias):
        # (exe, run_dir, policy, num_ranks, mpi_args)
        return "/path/to/factorial", "/scratch/run", Policy(ranks_per_node=2), num_ranks, [str(bias)]

    job = factorial(4, 7).result()     # resolves once the job's launcher runs
    job["in"].send("5\\n")               # rank 0's stdin
    job["in"].close()                  # end of input
    print(job["out"].recv())           # rank 0's next stdout line: "127"
    print(job.wait(60), job.returncode, job.stdout_paths[1])

How it runs
-----------
The decorated function runs **in the workflow process** (the client), once Parsl's
DataFlowKernel has resolved its arguments (futures of other apps work as usual), when the
DataFlowKernel hands the call to a DragonExecutor; it must be quick and must return
``(exe, run_dir, policy, num_ranks, mpi_args)``:

- ``exe``: the program (a path, or a name found in the leader node's PATH);
- ``run_dir``: its working directory on the nodes (None: the workflow's current directory);
- ``policy``: a :class:`Policy` or None (the scheduler's choice);
- ``num_ranks``: ranks in all, >= 1;
- ``mpi_args``: the program's arguments (a list; each item is passed through ``str``).

The service then places ``num_ranks`` ranks (the scheduler, as the policy says: on
``hosts`` if given, ``ranks_per_node`` per node if given), reserving one core per rank, and
the leader node's agent launches ``exe mpi_args...`` with the node's MPI launcher (MPICH's
``mpiexec.hydra`` by default; see docs/INTERFACES.md "MPI jobs"). More ranks than the
cores there are is refused at once (:class:`~dragon_parsl.errors.ResourcesUnsatisfiable`,
naming ``oversubscribe``) unless ``Policy(oversubscribe=True)``.

The app's future resolves, once the launcher has started (the ranks start within it; input
sent before rank 0 reads is buffered), to an :class:`MpiJob`: ``job["in"]`` is a connection
to rank 0's stdin, ``job["out"]`` to rank 0's stdout, both relayed by the head to the leader
agent while the job runs, wherever it runs (HeadService.TaskIO, with acknowledgements as
flow control, so neither side buffers more than 256 KiB); ``job.wait(timeout)`` and
``job.returncode`` give the job's exit code (the first failing rank's: one rank that fails
ends the others), ``job.cancel()`` ends every rank on every node, and
``job.stdout_paths`` / ``job.stderr_paths`` name every rank's output files on the leader's
host (``dragonctl logs TASK --rank R`` shows them). A job that cannot start (refused,
unsatisfiable, its program or launcher missing on the node) fails the app's future instead.

An @mpi_app is not retried by Parsl once its future resolved (the job is running); a job
whose leader node is lost while it runs is re-run like any task (``infra_retries``) and its
``in``/``out`` connections end with :class:`TaskIOError`.
"""
from __future__ import annotations

import concurrent.futures as cf
import copy
import functools
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import grpc
from parsl.app.app import AppBase
from parsl.dataflow.dflow import DataFlowKernel, DataFlowKernelLoader

from dragon_parsl import _cwd
from dragon_parsl.connection import Submission
from dragon_parsl.errors import DragonError, TaskCancelled, TaskError, TaskFailed, task_error
from dragon_parsl._proto import common_pb2, head_pb2, head_pb2_grpc

if TYPE_CHECKING:  # pragma: no cover
    from dragon_parsl.executor import DragonExecutor

logger = logging.getLogger(__name__)

# Data unacknowledged each way (the agent's and the head's window: agent/mpi_launcher.h).
WINDOW = 256 * 1024
# Largest stdin frame.
CHUNK = 64 * 1024


# ---------------------------------------------------------------- errors


class MpiJobFailed(TaskFailed):
    """The MPI job ended with a non-zero exit code: a rank failed (``rank``: which one; its
    exit code is the job's), it timed out, or the launcher failed. ``job.exception()`` gives
    it; ``job.wait()`` returns the code rather than raising it."""

    def __init__(self, message: str, task_id: int = 0, node: str = "", returncode: int = 1,
                 rank: Optional[int] = None) -> None:
        super().__init__(message, task_id=task_id, node=node, failure="FAILURE_KIND_UNSPECIFIED")
        self.returncode = returncode
        self.rank = rank

    def __reduce__(self):  # type: ignore[override]
        return (self.__class__, (self.args[0] if self.args else "", self.task_id, self.node,
                                 self.returncode, self.rank))


class TaskIOError(DragonError):
    """Rank 0's stdin or stdout cannot be used: the job ended (``send`` after its end), its
    node was lost, another client attached, or the head refused the stream."""


# ---------------------------------------------------------------- the API


@dataclass(frozen=True)
class Policy:
    """Where an @mpi_app's ranks go.

    ``hosts``: only these hosts (agents' host names or node ids, as ``dragonctl nodes``
    shows); ranks are spread over as many of them as needed, ``ranks_per_node`` each.
    ``ranks_per_node``: ranks on each node (default: as many as fit). ``oversubscribe``:
    allow more ranks than cores (placed anyway, on the cores there are)."""

    hosts: Optional[Sequence[str]] = None
    ranks_per_node: Optional[int] = None
    oversubscribe: bool = False

    def __post_init__(self) -> None:
        if self.hosts is not None:
            if isinstance(self.hosts, str):
                object.__setattr__(self, "hosts", tuple(h for h in self.hosts.split(",") if h))
            else:
                object.__setattr__(self, "hosts", tuple(self.hosts))
            if not self.hosts or not all(isinstance(h, str) and h for h in self.hosts):
                raise ValueError(f"Policy: hosts must be host names, not {self.hosts!r}")
        if self.ranks_per_node is not None and (isinstance(self.ranks_per_node, bool)
                                                or not isinstance(self.ranks_per_node, int)
                                                or self.ranks_per_node < 1):
            raise ValueError(f"Policy: ranks_per_node must be a whole number >= 1, not {self.ranks_per_node!r}")
        if not isinstance(self.oversubscribe, bool):
            raise ValueError(f"Policy: oversubscribe must be True or False, not {self.oversubscribe!r}")


class MpiLaunch:
    """What an @mpi_app gives Parsl's DataFlowKernel in place of the user's function. A
    DragonExecutor recognizes it (``dragon_mpi_launch``), runs the function in the client and
    launches what it returns; any other executor would run it as a plain function, which
    fails saying so."""

    dragon_mpi_launch = True

    def __init__(self, func: Callable) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"@mpi_app {getattr(self.func, '__name__', '?')!r} was sent to an executor that is "
                        f"not a DragonExecutor: give the app executors=[<a DragonExecutor's label>]")


class MpiApp(AppBase):
    """The app an ``@mpi_app`` decorator makes (see the module's documentation)."""

    def __init__(self, func: Callable, data_flow_kernel: Optional[DataFlowKernel] = None,
                 executors: Union[List[str], str] = "all", cache: bool = False,
                 ignore_for_cache: Optional[Sequence[str]] = None) -> None:
        super().__init__(MpiLaunch(func), data_flow_kernel=data_flow_kernel, executors=executors,
                         cache=cache, ignore_for_cache=ignore_for_cache)

    def __call__(self, *args: Any, **kwargs: Any):
        invocation_kwargs = dict(self.kwargs)
        invocation_kwargs.update(kwargs)
        dfk = self.data_flow_kernel if self.data_flow_kernel is not None else DataFlowKernelLoader.dfk()
        return dfk.submit(self.func, app_args=args, executors=self.executors, cache=self.cache,
                          ignore_for_cache=self.ignore_for_cache, app_kwargs=invocation_kwargs, join=False)


def mpi_app(function: Optional[Callable] = None, data_flow_kernel: Optional[DataFlowKernel] = None,
            cache: bool = False, executors: Union[List[str], str] = "all",
            ignore_for_cache: Optional[Sequence[str]] = None) -> Any:
    """Decorator of the talk's MPI apps: ``@mpi_app`` or ``@mpi_app(executors=["dragon"])``.
    The function returns ``(exe, run_dir, policy, num_ranks, mpi_args)``; the app's future
    resolves to an :class:`MpiJob` once the job runs. With several executors in the Config,
    name the DragonExecutor in ``executors``."""
    def decorator(func: Callable) -> MpiApp:
        return MpiApp(func, data_flow_kernel=data_flow_kernel, executors=executors, cache=cache,
                      ignore_for_cache=ignore_for_cache)
    if function is not None:
        return decorator(function)
    return decorator


def launch_of(func: Any) -> Optional[MpiLaunch]:
    """The MpiLaunch behind ``func`` (also through wrappers such as Parsl monitoring's)."""
    seen = 0
    while func is not None and seen < 10:
        if isinstance(func, MpiLaunch):
            return func
        func = getattr(func, "__wrapped__", None)
        seen += 1
    return None


@dataclass
class JobSpec:
    exe: str
    run_dir: str
    policy: Optional[Policy]
    num_ranks: int
    mpi_args: List[str]


def job_spec(value: Any, name: str) -> JobSpec:
    """Checks what an @mpi_app returned; errors name the field."""
    if not isinstance(value, (tuple, list)) or len(value) != 5:
        raise TypeError(f"@mpi_app {name!r} must return (exe, run_dir, policy, num_ranks, mpi_args), "
                        f"not {value!r}")
    exe, run_dir, policy, num_ranks, mpi_args = value
    if not isinstance(exe, (str, os.PathLike)) or not os.fspath(exe):
        raise TypeError(f"@mpi_app {name!r}: exe must be a program path or name, not {exe!r}")
    if run_dir is None:
        run_dir = _cwd.current_dir()
    if not isinstance(run_dir, (str, os.PathLike)) or not os.fspath(run_dir):
        raise TypeError(f"@mpi_app {name!r}: run_dir must be a directory path or None, not {run_dir!r}")
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"@mpi_app {name!r}: policy must be a dragon_parsl.Policy or None, not {policy!r}")
    if isinstance(num_ranks, bool) or not isinstance(num_ranks, int) or num_ranks < 1:
        raise ValueError(f"@mpi_app {name!r}: num_ranks must be a whole number >= 1, not {num_ranks!r}")
    if mpi_args is None:
        mpi_args = []
    if isinstance(mpi_args, (str, bytes)) or not isinstance(mpi_args, (list, tuple)):
        raise TypeError(f"@mpi_app {name!r}: mpi_args must be a list of arguments, not {mpi_args!r}")
    return JobSpec(os.fspath(exe), os.path.abspath(os.fspath(run_dir)), policy, num_ranks,
                   [str(a) for a in mpi_args])


def request_of(spec: JobSpec, launcher_options: str = "") -> "common_pb2.ResourceRequest":
    req = common_pb2.ResourceRequest(ranks=spec.num_ranks, launcher_options=launcher_options)
    p = spec.policy
    if p is not None:
        if p.ranks_per_node:
            req.ranks_per_node = p.ranks_per_node
        if p.hosts:
            req.hosts.extend(p.hosts)
        req.oversubscribe = p.oversubscribe
    return req


def submit_job(executor: "DragonExecutor", func: Any, resource_specification: Any, args: Tuple,
               kwargs: dict) -> cf.Future:
    """DragonExecutor.submit for an @mpi_app: runs the function here, submits the job, returns
    a future resolving to its MpiJob once it runs."""
    launch = launch_of(func)
    assert launch is not None
    name = getattr(launch.func, "__name__", "mpi_app")
    app_future: cf.Future = cf.Future()
    try:
        spec = job_spec(launch.func(*args, **kwargs), name)
        options = ""
        if resource_specification:
            # Only launcher_options make sense next to what the function returned.
            extra = set(resource_specification) - {"launcher_options"}
            if extra:
                raise ValueError(f"@mpi_app {name!r}: parsl_resource_specification may only hold "
                                 f"'launcher_options' (ranks and placement come from what the app "
                                 f"returns), not {sorted(extra)}")
            options = str(resource_specification.get("launcher_options") or "")
        request = request_of(spec, options)
    except Exception as e:  # noqa: BLE001  (the app's own error, as for any app)
        app_future.set_exception(e)
        return app_future
    payload = common_pb2.ExecutableSpec(argv=[spec.exe, *spec.mpi_args], cwd=spec.run_dir).SerializeToString()
    job = MpiJob(executor, spec, name, app_future)
    job._submit(payload, request)
    return app_future


# ---------------------------------------------------------------- rank 0's stdin and stdout


class _TaskIO:
    """One HeadService.TaskIO stream: the open, stdin and stdout acks out; started, stdout
    and stdin acks in. Threads: gRPC's (consuming the request iterator) and a receiver."""

    def __init__(self, job: "MpiJob", stub: head_pb2_grpc.HeadServiceStub, task_id: int) -> None:
        self.job = job
        self.task_id = task_id
        self._out: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._cond = threading.Condition()
        self.stdin_sent = 0
        self.stdin_acked = 0
        self.stdin_closed = False
        self.stdout = bytearray()      # received, not yet taken by recv/read
        self.stdout_received = 0       # offset of the end of `stdout`
        self.stdout_eof = False
        self.error: Optional[BaseException] = None
        self.ended = False             # the stream is over (OK or not)
        self.call = stub.TaskIO(self._requests())
        self._receiver = threading.Thread(target=self._receive, name=f"dragon-taskio-{task_id}", daemon=True)
        self._receiver.start()

    def _requests(self) -> Iterator["common_pb2.TaskIOFrame"]:
        yield common_pb2.TaskIOFrame(task_id=self.task_id, open=True, stdout_offset=0)
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def _receive(self) -> None:
        error: Optional[BaseException] = None
        try:
            for frame in self.call:
                if frame.HasField("started"):
                    # Outside the lock: resolving the app's future runs the workflow's callbacks.
                    self.job._on_started(frame.started)
                with self._cond:
                    if frame.data:
                        self.stdout += frame.data
                        self.stdout_received += len(frame.data)
                    if frame.ack > self.stdin_acked:
                        self.stdin_acked = frame.ack
                    if frame.eof:
                        self.stdout_eof = True
                    self._cond.notify_all()
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code != grpc.StatusCode.CANCELLED or not self.job._closing:
                details = (e.details() if hasattr(e, "details") else None) or str(e)
                error = TaskIOError(f"task {self.task_id}: rank 0's stdin/stdout: "
                                    f"{code.name if code else 'error'}: {details}")
                error.code = code  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001
            logger.exception("dragon_parsl: TaskIO receiver of task %d failed", self.task_id)
            error = TaskIOError(f"task {self.task_id}: TaskIO receiver failed: {type(e).__name__}: {e}")
        with self._cond:
            self.ended = True
            if error is not None and not self.stdout_eof:
                self.error = error
            self._cond.notify_all()
        self._out.put(None)
        self.job._on_taskio_end(self, error)

    # stdin
    def send(self, data: bytes, timeout: Optional[float]) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        view = memoryview(data)
        while view:
            piece = view[:CHUNK]
            with self._cond:
                while True:
                    self._check_stdin()
                    if self.stdin_sent - self.stdin_acked + len(piece) <= WINDOW:
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"task {self.task_id}: rank 0 did not take its input within "
                                           f"{timeout:g} s ({self.stdin_sent - self.stdin_acked} bytes waiting)")
                    self._cond.wait(left if left is not None else 1.0)
                self.stdin_sent += len(piece)
                self._out.put(common_pb2.TaskIOFrame(data=bytes(piece)))
            view = view[len(piece):]

    def close_stdin(self) -> None:
        with self._cond:
            if self.stdin_closed or self.ended:
                self.stdin_closed = True
                return
            self.stdin_closed = True
        self._out.put(common_pb2.TaskIOFrame(eof=True))

    def _check_stdin(self) -> None:
        if self.error is not None:
            raise copy.copy(self.error)
        if self.ended or self.job.done():
            raise TaskIOError(f"task {self.task_id}: the job has ended"
                              f"{'' if self.job._returncode is None else f' (exit code {self.job._returncode})'}"
                              f"; rank 0's stdin is closed")
        if self.stdin_closed:
            raise TaskIOError(f"task {self.task_id}: rank 0's stdin is closed (job['in'].close())")

    # stdout
    def take(self, want_line: bool, timeout: Optional[float]) -> Optional[bytes]:
        """The next line (want_line) or everything to EOF; None at EOF with nothing left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        taken = bytearray()  # read(): what was taken (and acknowledged) while waiting for the end
        with self._cond:
            while True:
                if want_line:
                    nl = self.stdout.find(b"\n")
                    if nl >= 0:
                        return self._consume(nl + 1)
                elif self.stdout:
                    taken += self._consume(len(self.stdout))
                if self.stdout_eof or self.ended:
                    if self.error is not None and not self.stdout_eof:
                        raise copy.copy(self.error)
                    if not want_line:
                        return bytes(taken) if taken else None
                    return self._consume(len(self.stdout)) if self.stdout else None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    # What read() took is not lost: it goes back in front of the buffer.
                    self.stdout[:0] = taken
                    raise TimeoutError(f"task {self.task_id}: no {'line' if want_line else 'end'} of rank 0's "
                                       f"output within {timeout:g} s")
                self._cond.wait(left if left is not None else 1.0)

    def _consume(self, n: int) -> bytes:
        data = bytes(self.stdout[:n])
        del self.stdout[:n]
        # Acknowledged once taken, so that the agent sends more.
        if not self.stdout_eof and not self.ended:
            self._out.put(common_pb2.TaskIOFrame(ack=self.stdout_received - len(self.stdout)))
        return data

    def cancel(self) -> None:
        self._out.put(None)
        try:
            self.call.cancel()
        except Exception:  # noqa: BLE001
            pass


class MpiStdin:
    """``job["in"]``: rank 0's standard input."""

    def __init__(self, job: "MpiJob") -> None:
        self._job = job

    def send(self, data: Union[str, bytes], timeout: Optional[float] = None) -> None:
        """Writes ``data`` (str: UTF-8) to rank 0's stdin as it is (add your own newlines).
        Blocks while 256 KiB are on their way and rank 0 has not read them (``timeout``:
        TimeoutError). TaskIOError once the job ended, stdin was closed or the stream broke."""
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"job['in'].send takes str or bytes, not {type(data).__name__}")
        self._job._io_stream().send(bytes(data), timeout)

    def close(self) -> None:
        """End of input: rank 0 reads EOF once it has read what was sent."""
        self._job._io_stream().close_stdin()


class MpiStdout:
    """``job["out"]``: rank 0's standard output, line by line."""

    def __init__(self, job: "MpiJob") -> None:
        self._job = job

    def recv(self, timeout: Optional[float] = None) -> str:
        """The next line of rank 0's stdout, without its line break (the last line may lack
        one). EOFError once the output has ended and everything was read; TimeoutError after
        ``timeout`` seconds; TaskIOError when the stream broke (its node was lost)."""
        line = self.recv_bytes(timeout)
        return line.decode(errors="replace")

    def recv_bytes(self, timeout: Optional[float] = None) -> bytes:
        data = self._job._io_stream().take(True, timeout)
        if data is None:
            raise EOFError(f"task {self._job.task_id}: rank 0's output has ended")
        return data[:-1] if data.endswith(b"\n") else data

    def readline(self, timeout: Optional[float] = None) -> str:
        """Like a file's: the next line with its line break, "" at the end."""
        data = self._job._io_stream().take(True, timeout)
        return data.decode(errors="replace") if data else ""

    def read(self, timeout: Optional[float] = None) -> str:
        """Everything rank 0 writes from here until its output ends (the job ends)."""
        data = self._job._io_stream().take(False, timeout)
        return data.decode(errors="replace") if data else ""


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
        raw.dragon_raw_result = True  # type: ignore[attr-defined]  (executor: hand over the ClientResult)
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
            session.submit(Submission(ref, payload, self.name, resources=request, kind=common_pb2.EXECUTABLE))

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


def _failure_name(failure: int) -> str:
    try:
        return common_pb2.FailureKind.Name(failure)
    except ValueError:
        return f"FAILURE_KIND_{failure}"


__all__ = ["mpi_app", "Policy", "MpiApp", "MpiJob", "MpiJobFailed", "TaskIOError", "MpiStdin", "MpiStdout"]
