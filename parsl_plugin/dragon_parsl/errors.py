"""Exceptions raised by DragonExecutor or set on the futures it returns.

All of them derive from :class:`DragonError`. They are picklable (Parsl may
pickle task exceptions, e.g. for monitoring or checkpoint bookkeeping).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple


class DragonError(Exception):
    """Base class of every error of dragon_parsl."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type, state: dict) -> "DragonError":
    obj = cls.__new__(cls)
    Exception.__init__(obj, state.get("message", ""))
    obj.__dict__.update(state)
    return obj


class HeadNotFound(DragonError):
    """No address was given and none could be found (no $DRAGON_HEAD, no head.json)."""


class HeadUnreachable(DragonError):
    """The head's address does not answer (or refused the session)."""

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(f"cannot reach dragond at {address}: {detail}")
        self.address = address
        self.detail = detail


class ProtocolMismatch(DragonError):
    """The head speaks another protocol version than this client."""

    def __init__(self, address: str, client_version: int, head_version: Optional[int], detail: str = "") -> None:
        head = "an unknown version" if head_version is None else f"version {head_version}"
        msg = (f"dragond at {address} speaks protocol {head}, but dragon_parsl speaks protocol "
               f"version {client_version}: install matching versions of dragond and dragon_parsl")
        if detail:
            msg += f" (head said: {detail})"
        super().__init__(msg)
        self.address = address
        self.client_version = client_version
        self.head_version = head_version


class AuthenticationFailed(DragonError):
    """The head refused this client's token (gRPC UNAUTHENTICATED): none was sent, or a wrong one.

    ``detail`` is the head's message (it says where clients read the token from);
    ``token_source`` says where this client took its token from, or where it looked
    when it found none. The token itself is never part of the error."""

    def __init__(self, address: str, detail: str, token_source: str) -> None:
        super().__init__(f"dragond at {address} refused this client: {detail} "
                         f"(this client's token: {token_source})")
        self.address = address
        self.detail = detail
        self.token_source = token_source


class CredentialsError(DragonError):
    """A token or TLS file this client was pointed at cannot be used (other users may
    read the token file, it is empty or unreadable, ...); the message names the file."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class LocalHeadError(DragonError):
    """The embedded dragond could not be found or did not start."""


class HeadConnectionLost(DragonError):
    """The session stream to the head broke (head died, network failure)."""

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(f"lost connection to dragond at {address}: {detail}")
        self.address = address
        self.detail = detail


class SharedMemoryError(DragonError):
    """Task data in shared memory could not be read: its file is missing, or the
    worker is on another host than the client that wrote it (the message names
    the path and both hosts)."""


# ---------------------------------------------------------------- task failures
# A task that ended without a value or an app exception fails its future with one
# of the classes below, chosen from the structured failure kind of its result
# (TaskResult.failure, enum FailureKind in proto/common.proto), never from the text.


class TaskError(DragonError):
    """A task ended without a value or an app exception of its own.

    ``message`` is the head's (it names the task, the node and the cause);
    ``failure`` is the FailureKind name, e.g. ``"FAILURE_NODE_LOST"``
    (``"FAILURE_KIND_UNSPECIFIED"`` when the head gave none)."""

    def __init__(self, message: str, task_id: int = 0, node: str = "", worker_pid: int = 0,
                 failure: str = "FAILURE_KIND_UNSPECIFIED") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.node = node
        self.worker_pid = worker_pid
        self.failure = failure


class TaskFailed(TaskError):
    """The service could not run the task (outcome SYSTEM_ERROR); the message is the head's.
    Also the class of failure kinds without a class of their own (FAILURE_INTERNAL, none given)."""


class TaskCancelled(TaskError):
    """The task was cancelled before it finished (by a user, its session closed, or the
    executor shut down)."""


class WorkerLost(TaskFailed):
    """The worker process running the task died (FAILURE_WORKER_LOST)."""


class NodeLost(WorkerLost):
    """The task's node was lost while it ran, and its infrastructure retries
    (``DragonExecutor(infra_retries=...)``) are spent (FAILURE_NODE_LOST)."""


class TaskTimedOut(TaskFailed):
    """The task ran past its time limit and was killed (FAILURE_TIMED_OUT)."""


class TaskTooLarge(TaskFailed):
    """The task's arguments or result exceed the head's payload limit (FAILURE_TOO_LARGE)."""


class TaskRefused(TaskFailed):
    """The head refused the submission (FAILURE_REFUSED: bad kind, bad spec, ...)."""


class NoNodesAvailable(TaskFailed):
    """No node was left to run the task within the head's grace period (FAILURE_NO_NODES)."""


class WorkerStartFailed(TaskFailed):
    """Workers of the task's node cannot start, e.g. a broken Python (FAILURE_WORKER_START)."""


class HeadShutDown(TaskFailed):
    """The head shut down before the task finished (FAILURE_SHUTDOWN)."""


class TaskOutOfMemory(TaskFailed):
    """The task's processes went over the memory it asked for (parsl_resource_specification
    'memory') and were killed (FAILURE_OUT_OF_MEMORY); the message names the limit."""


class ResourcesUnsatisfiable(TaskRefused):
    """No node or set of nodes of the head could ever hold what the task asks for
    (FAILURE_UNSATISFIABLE); the message names the request and the largest node."""


class PayloadTooLarge(TaskTooLarge):
    """Refused by this client before sending: the task's packed payload exceeds the
    head's max_payload_bytes (the head would refuse it with FAILURE_TOO_LARGE)."""

    def __init__(self, name: str, size: int, limit: int) -> None:
        super().__init__(
            f"task {name!r}: its packed arguments are {_mib(size)} ({size} bytes), larger than the "
            f"{limit} bytes ({_mib(limit)}) dragond accepts per task; raise the head's limit "
            f"(dragond --max-payload-mb), let large buffers such as numpy arrays go through shared "
            f"memory instead of gRPC (DragonExecutor(shm_threshold=BYTES), used when every agent runs "
            f"on this host), or pass large data through files",
            failure="FAILURE_TOO_LARGE")
        self.name = name
        self.size = size
        self.limit = limit


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# FailureKind name -> exception class. Kinds a newer head may add fall back to TaskFailed.
FAILURE_CLASSES: Dict[str, type] = {
    "FAILURE_WORKER_LOST": WorkerLost,
    "FAILURE_NODE_LOST": NodeLost,
    "FAILURE_CANCELLED": TaskCancelled,
    "FAILURE_TIMED_OUT": TaskTimedOut,
    "FAILURE_TOO_LARGE": TaskTooLarge,
    "FAILURE_REFUSED": TaskRefused,
    "FAILURE_NO_NODES": NoNodesAvailable,
    "FAILURE_WORKER_START": WorkerStartFailed,
    "FAILURE_SHUTDOWN": HeadShutDown,
    "FAILURE_INTERNAL": TaskFailed,
    "FAILURE_OUT_OF_MEMORY": TaskOutOfMemory,
    "FAILURE_UNSATISFIABLE": ResourcesUnsatisfiable,
}


def task_error(failure: str, message: str, task_id: int, node: str = "", worker_pid: int = 0,
               cancelled: bool = False) -> TaskError:
    """The exception of a result that is neither a value nor an app exception.

    ``failure`` is the FailureKind name of the result (``"FAILURE_KIND_UNSPECIFIED"``
    or a name this client does not know: TaskFailed); ``cancelled`` says the outcome
    was CANCELED, which without a failure kind means TaskCancelled."""
    cls = FAILURE_CLASSES.get(failure)
    if cls is None:
        cls = TaskCancelled if cancelled else TaskFailed
    if not message:
        what = "was cancelled" if cls is TaskCancelled else "failed in the service"
        message = f"task {task_id} {what} (no detail given by dragond)"
    return cls(message, task_id=task_id, node=node, worker_pid=worker_pid, failure=failure)
