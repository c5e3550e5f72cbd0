"""The errors of @mpi_app jobs (dragon_parsl.mpi re-exports them)."""
from __future__ import annotations

from typing import Optional

from dragon_parsl.errors import DragonError, TaskFailed


class MpiJobFailed(TaskFailed):
    """The MPI job ended with a non-zero exit code: a rank failed (``rank``: which one; its
    exit code is the job's), it timed out, or the launcher failed. ``job.exception()`` gives
    it; ``job.wait()`` returns the code rather than raising it."""

    # Shown (tracebacks, repr, pickles) as dragon_parsl.mpi's, where users import it from.
    __module__ = "dragon_parsl.mpi"

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

    # Shown (tracebacks, repr, pickles) as dragon_parsl.mpi's, where users import it from.
    __module__ = "dragon_parsl.mpi"
