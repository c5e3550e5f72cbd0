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
import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple, Union

from parsl.app.app import AppBase
from parsl.dataflow.dflow import DataFlowKernel, DataFlowKernelLoader

from dragon_parsl import _cwd
from dragon_parsl._proto import common_pb2
# The parts of @mpi_app, and the names this module held before it was split: re-exported here.
from dragon_parsl.mpi_errors import MpiJobFailed, TaskIOError
from dragon_parsl.mpi_job import MpiJob
from dragon_parsl.mpi_taskio import CHUNK, WINDOW, MpiStdin, MpiStdout, _TaskIO  # noqa: F401
from dragon_parsl.task_results import _failure_name  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from dragon_parsl.executor import DragonExecutor


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


__all__ = ["mpi_app", "Policy", "MpiApp", "MpiJob", "MpiJobFailed", "TaskIOError", "MpiStdin", "MpiStdout"]
