"""Rank 0's stdin and stdout of an @mpi_app job: one HeadService.TaskIO stream with its flow
control (``_TaskIO``), and the ``job["in"]`` / ``job["out"]`` ends users hold."""
from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import grpc

from dragon_parsl.mpi_errors import TaskIOError
from dragon_parsl._proto import common_pb2, head_pb2_grpc

if TYPE_CHECKING:  # pragma: no cover
    from dragon_parsl.mpi_job import MpiJob

# The logger of dragon_parsl.mpi, as before the module was split: logging configurations
# and filters that name "dragon_parsl.mpi" see every message.
logger = logging.getLogger("dragon_parsl.mpi")

# Data unacknowledged each way (the agent's and the head's window: agent/mpi_launcher.h).
WINDOW = 256 * 1024
# Largest stdin frame.
CHUNK = 64 * 1024


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
