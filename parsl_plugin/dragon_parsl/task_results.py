"""DragonExecutor's results: each ClientResult of the session delivered to its future (value,
the app's exception, or the failure's class), and every future failed when the session breaks."""
from __future__ import annotations

import concurrent.futures as cf
import copy
import logging
from typing import Any, Optional

from parsl.app.errors import RemoteExceptionWrapper
from parsl.serialize import deserialize
from parsl.serialize.errors import DeserializationError

from dragon_parsl import shm
from dragon_parsl.errors import DragonError, TaskFailed, task_error
from dragon_parsl.worker import deserialize_view
from dragon_parsl._proto import common_pb2, head_pb2

# The executor's logger, as before the executor was split into modules: logging
# configurations and filters that name "dragon_parsl.executor" see every message.
logger = logging.getLogger("dragon_parsl.executor")


class TaskResultsMixin:
    """The session's callbacks: a task accepted (its id), its result, the session broken."""

    # A part of DragonExecutor: the attributes it uses are set by DragonExecutor.__init__.

    def _on_accepted(self, client_ref: int, task_id: int) -> None:
        fut = self._tasks.get(client_ref)
        if fut is not None:
            fut.dragon_task_id = task_id  # type: ignore[attr-defined]
            on_accepted = getattr(fut, "dragon_on_accepted", None)  # dragon_parsl.mpi
            if on_accepted is not None:
                on_accepted(task_id)

    def _on_result(self, client_ref: int, task_id: int, outcome: int, data: bytes, failure: int,
                   error: str, node: str, worker_pid: int, whole: Optional[bytes]) -> None:
        """One ClientResult, as the client core hands it over (dragon_parsl.connection)."""
        # No self._lock here: dict.pop is atomic under the GIL, and a contended lock on the
        # receiver thread would hand the GIL to the submitting thread once per result. A
        # future that shutdown() fails at the same moment is caught as InvalidStateError;
        # shutdown() swaps both dicts, so a file is discarded by one side only.
        fut = self._tasks.pop(client_ref, None)
        arg_file = self._arg_files.pop(client_ref, None)
        # The task is over (done, failed or cancelled): no worker reads its arguments any more.
        if arg_file is not None:
            self._discard_arg_file(arg_file)
        if fut is None:
            # In Parsl's bad state every future has failed already and the head cancels the rest;
            # after shutdown() the results of the tasks it failed may still come in.
            expected = self.bad_state_is_set or client_ref in self._ended_refs
            (logger.debug if expected else logger.warning)(
                "DragonExecutor %s: result for unknown client_ref %d (task %d)", self.label, client_ref,
                task_id)
            if self.shm is not None and outcome == common_pb2.OK:
                self.shm.discard_result(data)
            return
        fut.dragon_task_id = task_id  # type: ignore[attr-defined]
        if whole is not None:  # dragon_parsl.mpi decodes its own results
            try:
                fut.set_result(head_pb2.ClientResult.FromString(whole))
            except cf.InvalidStateError:
                pass
            return
        try:
            if outcome == common_pb2.OK:
                try:
                    value = self._result_value(data)
                except Exception as e:
                    fut.set_exception(DeserializationError(
                        f"result of task {task_id} (node {node}): {type(e).__name__}: {e}"))
                else:
                    fut.set_result(value)
            elif outcome == common_pb2.APP_EXCEPTION:
                fut.set_exception(self._app_exception(task_id, node, data))
            elif outcome == common_pb2.SYSTEM_ERROR or outcome == common_pb2.CANCELED:
                # The failure kind picks the class; the message is the head's, never parsed.
                fut.set_exception(task_error(_failure_name(failure), error, task_id, node, worker_pid,
                                             cancelled=outcome == common_pb2.CANCELED))
            else:
                fut.set_exception(TaskFailed(
                    f"task {task_id}: dragond reported unknown outcome {outcome} ({error})",
                    task_id=task_id, node=node, worker_pid=worker_pid))
        except cf.InvalidStateError:
            pass  # the user cancelled the future; nothing to deliver

    def _result_value(self, data: bytes) -> Any:
        if self.shm is None:
            return deserialize_view(data)
        if shm.is_envelope(data):
            return self.shm.load_result(data)
        self.shm.count_inline_result(len(data))
        return deserialize_view(data)

    def _app_exception(self, task_id: int, node: str, data: bytes) -> BaseException:
        try:
            s = deserialize(data)
        except Exception as e:
            return DeserializationError(f"exception of task {task_id} (node {node}) could not be "
                                        f"deserialized: {type(e).__name__}: {e}")
        if isinstance(s, RemoteExceptionWrapper):
            try:
                s.reraise()
            except BaseException as e:  # the app's own exception, with its remote traceback
                return e
            return DeserializationError(f"task {task_id}: RemoteExceptionWrapper did not raise")
        if isinstance(s, BaseException):
            return s
        return DeserializationError(f"task {task_id}: unknown exception-like type received: {type(s)}")

    def _on_broken(self, error: DragonError) -> None:
        with self._lock:
            self._broken = error
            tasks, self._tasks = self._tasks, {}
            arg_files, self._arg_files = self._arg_files, {}
        for path in list(arg_files.values()):  # list(): the receiver may still pop from it
            self._discard_arg_file(path)
        if tasks:
            logger.error("DragonExecutor %s: %s; failing %d outstanding tasks", self.label, error, len(tasks))
        else:
            logger.error("DragonExecutor %s: %s", self.label, error)
        for fut in list(tasks.values()):
            try:
                # HeadConnectionLost, or AuthenticationFailed when the head refused the token;
                # one copy per future (each gets its own traceback when raised).
                fut.set_exception(copy.copy(error))
            except cf.InvalidStateError:
                pass


def _failure_name(failure: int) -> str:
    """The FailureKind name of a result's failure field; a kind this client's stubs do not
    know (a newer head) gets a name no class maps, i.e. TaskFailed."""
    try:
        return common_pb2.FailureKind.Name(failure)
    except ValueError:
        return f"FAILURE_KIND_{failure}"

