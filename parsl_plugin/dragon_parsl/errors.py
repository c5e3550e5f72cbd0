"""Exceptions raised by DragonExecutor or set on the futures it returns.

All of them derive from :class:`DragonError`. They are picklable (Parsl may
pickle task exceptions, e.g. for monitoring or checkpoint bookkeeping).
"""
from __future__ import annotations

import re
from typing import Any, Optional, Tuple


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


class LocalHeadError(DragonError):
    """The embedded dragond could not be found or did not start."""


class HeadConnectionLost(DragonError):
    """The session stream to the head broke (head died, network failure)."""

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(f"lost connection to dragond at {address}: {detail}")
        self.address = address
        self.detail = detail


class PayloadTooLarge(DragonError):
    """A task's packed payload exceeds the head's max_payload_bytes."""

    def __init__(self, name: str, size: int, limit: int) -> None:
        super().__init__(f"task {name!r}: packed payload is {size} bytes, larger than the "
                         f"{limit} bytes dragond accepts per task (dragond --max-payload-mb); "
                         f"pass large data through files instead of arguments")
        self.name = name
        self.size = size
        self.limit = limit


class TaskFailed(DragonError):
    """The service could not run the task (outcome SYSTEM_ERROR); the message is the head's."""

    def __init__(self, message: str, task_id: int = 0, node: str = "", worker_pid: int = 0) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.node = node
        self.worker_pid = worker_pid


class WorkerLost(TaskFailed):
    """The worker (or its node) running the task died."""


class SharedMemoryError(DragonError):
    """Task data in shared memory could not be read: its file is missing, or the
    worker is on another host than the client that wrote it (the message names
    the path and both hosts)."""


class TaskCancelled(DragonError):
    """The task was cancelled before it finished (outcome CANCELED, or executor shutdown)."""

    def __init__(self, message: str, task_id: int = 0) -> None:
        super().__init__(message)
        self.task_id = task_id


_LOST_RE = re.compile(r"\b(worker pid \d+ died|died|killed by signal|node .* lost|lost)\b", re.IGNORECASE)


def system_error(message: str, task_id: int, node: str, worker_pid: int) -> TaskFailed:
    """The exception for a SYSTEM_ERROR result: WorkerLost when a worker or node died."""
    if not message:
        message = f"task {task_id} failed in the service (no detail given by dragond)"
    cls = WorkerLost if _LOST_RE.search(message) else TaskFailed
    return cls(message, task_id=task_id, node=node, worker_pid=worker_pid)
