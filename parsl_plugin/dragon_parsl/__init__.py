"""dragon_parsl: Parsl executor for the Dragon task service.

``from dragon_parsl import DragonExecutor`` (Parsl), or ``DragonPoolExecutor`` (a
``concurrent.futures.Executor`` without Parsl's DataFlowKernel). The executors (and gRPC) are
imported lazily so that ``python -m dragon_parsl.worker`` stays light.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# gRPC's fork handlers are of no use here (no process this package forks uses gRPC), and with
# them gRPC logs "Other threads are currently calling into gRPC, skipping fork() handlers" on
# stderr at every fork made while a stream is open: with a provider, at every status poll of
# the batch system (Parsl runs its commands with preexec_fn, which forks). Read by gRPC when it
# is first imported; a value the user set is kept.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from dragon_parsl.errors import (
    AuthenticationFailed,
    CredentialsError,
    DragonError,
    HeadConnectionLost,
    HeadNotFound,
    HeadShutDown,
    HeadUnreachable,
    LocalHeadError,
    NoNodesAvailable,
    NodeLost,
    PayloadTooLarge,
    ProtocolMismatch,
    ResourcesUnsatisfiable,
    SharedMemoryError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskOutOfMemory,
    TaskRefused,
    TaskTimedOut,
    TaskTooLarge,
    WorkerLost,
    WorkerStartFailed,
)

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from dragon_parsl.executor import DragonExecutor
    from dragon_parsl.pool_executor import DragonPoolExecutor, DragonPoolFuture
    from dragon_parsl.mpi import MpiJob, MpiJobFailed, Policy, TaskIOError, mpi_app

__all__ = [
    "DragonExecutor",
    "DragonPoolExecutor",
    "DragonPoolFuture",
    "mpi_app",
    "Policy",
    "MpiJob",
    "MpiJobFailed",
    "TaskIOError",
    "AuthenticationFailed",
    "CredentialsError",
    "DragonError",
    "HeadConnectionLost",
    "HeadNotFound",
    "HeadShutDown",
    "HeadUnreachable",
    "LocalHeadError",
    "NoNodesAvailable",
    "NodeLost",
    "PayloadTooLarge",
    "ProtocolMismatch",
    "ResourcesUnsatisfiable",
    "SharedMemoryError",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskOutOfMemory",
    "TaskRefused",
    "TaskTimedOut",
    "TaskTooLarge",
    "WorkerLost",
    "WorkerStartFailed",
    "__version__",
]


# The talk's MPI apps (dragon_parsl.mpi), also imported lazily.
_MPI_NAMES = ("mpi_app", "Policy", "MpiJob", "MpiJobFailed", "TaskIOError")


def __getattr__(name: str) -> Any:
    if name == "DragonExecutor":
        from dragon_parsl.executor import DragonExecutor
        return DragonExecutor
    if name in ("DragonPoolExecutor", "DragonPoolFuture"):
        from dragon_parsl import pool_executor
        return getattr(pool_executor, name)
    if name in _MPI_NAMES:
        from dragon_parsl import mpi
        return getattr(mpi, name)
    raise AttributeError(f"module 'dragon_parsl' has no attribute {name!r}")
