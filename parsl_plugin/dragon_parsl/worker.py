"""Python worker run by dragon-agent: ``python -m dragon_parsl.worker``.

Reads RUN frames from fd 3, runs the Parsl payload the way Parsl's own
process worker pool does (``execute_task``), and writes RESULT or
APP_EXCEPTION frames to fd 4. The frame format is in docs/INTERFACES.md
("Worker pipe protocol"); the C++ side is common/framing.h.

This module deliberately imports nothing else from dragon_parsl: the agent
starts it with whatever interpreter it was given, and importing the
executor (grpc, stubs) would only add start-up time to every worker.
"""
from __future__ import annotations

import os
import struct
import sys

# Imported once, before READY, so that no task pays for them.
import parsl  # noqa: F401  (loads parsl's serializers and their registrations)
from parsl.app.errors import RemoteExceptionWrapper
from parsl.executors.execute_task import execute_task
from parsl.serialize import serialize

IN_FD = 3
OUT_FD = 4

READY = 1
RUN = 2
RESULT = 3
APP_EXCEPTION = 4

_HEADER = struct.Struct("<IBQ")  # length, type, task_id
_HEADER_SIZE = _HEADER.size  # 13
_U32 = struct.Struct("<I")
_READ_CHUNK = 1 << 20


class FrameReader:
    """Buffered frame reader over a raw fd: one read() syscall usually
    returns a whole RUN frame, so small tasks cost one syscall each."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def _fill(self, need: int) -> bool:
        """Reads until the buffer holds at least ``need`` bytes; False on EOF."""
        while len(self._buf) < need:
            chunk = os.read(self._fd, max(_READ_CHUNK, need - len(self._buf)))
            if not chunk:
                return False
            self._buf += chunk
        return True

    def read_frame(self) -> tuple[int, int, bytes] | None:
        """Returns (type, task_id, body), or None at a clean EOF."""
        if not self._fill(4):
            if self._buf:
                raise EOFError(f"agent closed the pipe inside a frame header ({len(self._buf)} bytes)")
            return None
        (length,) = _U32.unpack_from(self._buf, 0)
        if length < 9:
            raise ValueError(f"frame length {length} is below the minimum of 9")
        total = 4 + length
        if not self._fill(total):
            raise EOFError(f"agent closed the pipe inside a frame of {length} bytes")
        _, ftype, task_id = _HEADER.unpack_from(self._buf, 0)
        body = bytes(self._buf[_HEADER_SIZE:total])
        del self._buf[:total]
        return ftype, task_id, body


def write_frame(ftype: int, task_id: int, body: bytes) -> None:
    data = _HEADER.pack(9 + len(body), ftype, task_id) + body
    view = memoryview(data)
    while view:
        n = os.write(OUT_FD, view)
        view = view[n:]


def _wrap_current_exception() -> bytes:
    """Serialized RemoteExceptionWrapper of the exception being handled; if
    that cannot be serialized (an unpicklable exception), a wrapper of a
    RuntimeError that says so, so the client still gets a readable failure."""
    e_type, e_value, tb = sys.exc_info()
    try:
        return serialize(RemoteExceptionWrapper(e_type, e_value, tb))
    except Exception as ser_err:  # noqa: BLE001  (anything from pickling user objects)
        text = (f"task raised {e_type.__name__ if e_type else 'an exception'}: {e_value!r}, "
                f"which could not be serialized: {type(ser_err).__name__}: {ser_err}")
        try:
            raise RuntimeError(text) from None
        except RuntimeError:
            return serialize(RemoteExceptionWrapper(*sys.exc_info()))


def _run_one(body: bytes) -> tuple[int, bytes]:
    """Runs the task in a RUN body; returns (frame type, frame body)."""
    try:
        (cwd_len,) = _U32.unpack_from(body, 0)
        cwd = body[4:4 + cwd_len].decode("utf-8")
        payload = body[4 + cwd_len:]
        if cwd and cwd != os.getcwd():
            try:
                os.chdir(cwd)
            except OSError as e:
                raise FileNotFoundError(
                    f"cannot change to the task's working directory {cwd!r}: {e.strerror}") from None
        result = execute_task(payload)
        if isinstance(result, RemoteExceptionWrapper):
            # Parsl's python_app wraps apps (parsl.app.errors.wrap_error) so
            # that what they raise is *returned* as a wrapper: that is still
            # the app's exception, and the head must record APP_EXCEPTION.
            return APP_EXCEPTION, serialize(result)
        return RESULT, serialize(result)
    except BaseException:  # noqa: BLE001  (SystemExit/KeyboardInterrupt from a task are its failure too)
        return APP_EXCEPTION, _wrap_current_exception()


def main() -> int:
    # Keep the pipes out of processes a task starts; otherwise a leftover
    # child holding fd 4 would hide this worker's death from the agent.
    os.set_inheritable(IN_FD, False)
    os.set_inheritable(OUT_FD, False)
    reader = FrameReader(IN_FD)
    write_frame(READY, 0, f"pid {os.getpid()} python {sys.version.split()[0]}".encode())
    while True:
        frame = reader.read_frame()
        if frame is None:
            return 0  # the agent closed fd 3: it is done with us
        ftype, task_id, body = frame
        if ftype != RUN:
            print(f"dragon worker {os.getpid()}: unexpected frame type {ftype} for task {task_id}",
                  file=sys.stderr, flush=True)
            return 2
        rtype, rbody = _run_one(body)
        del body, frame  # let a large payload go before the next read
        write_frame(rtype, task_id, rbody)


if __name__ == "__main__":
    sys.exit(main())
