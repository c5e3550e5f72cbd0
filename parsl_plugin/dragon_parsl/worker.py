"""Python worker run by dragon-agent: ``python -m dragon_parsl.worker``.

Reads RUN frames from fd 3, runs the Parsl payload the way Parsl's own
process worker pool does (``execute_task``), and writes RESULT or
APP_EXCEPTION frames to fd 4. The frame format is in docs/INTERFACES.md
("Worker pipe protocol"); the C++ side is common/framing.h.

A payload may be a shared-memory envelope (dragon_parsl.shm): the task's
large arguments are then read from the agent's pool (dragon_parsl.shm_pool_path)
or mapped from the client's file (dragon_parsl.shm_files), and a large result
goes back the same way instead of through the pipe.

This module imports only the light parts of dragon_parsl (shm, shm_files, errors): the
agent starts it with whatever interpreter it was given, and importing the
executor (grpc, stubs) would only add start-up time to every worker.
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
from typing import Any, List

# Imported once, before READY, so that no task pays for them.
import parsl  # noqa: F401  (loads parsl's serializers and their registrations)
from parsl.app.errors import RemoteExceptionWrapper
from parsl.serialize import deserialize, serialize
from parsl.serialize import facade as _facade

from dragon_parsl import shm, shm_files

IN_FD = 3
OUT_FD = 4

READY = 1
RUN = 2
RESULT = 3
APP_EXCEPTION = 4
RESULT_TOO_LARGE = 5  # body: the size of what was not sent, in decimal
RUN_ENV = 6  # a RUN with environment variables for the task: u32 env_len, "NAME=VALUE\0"..., RUN body

_HEADER = struct.Struct("<IBQ")  # length, type, task_id
_HEADER_SIZE = _HEADER.size  # 13
_U32 = struct.Struct("<I")
_READ_CHUNK = 1 << 20
# Parts at least this large are handled through memoryviews instead of copied
# (each copy of a fresh multi-MiB buffer costs page faults as well as memcpy).
_ZERO_COPY_MIN = 64 * 1024


# ---------------------------------------------------------------- payloads
# The byte format is Parsl's own (parsl.serialize.pack_apply_message /
# serialize): "<len>\n<part>" three times, each part "<identifier>\n<body>".
# These helpers produce and read exactly that format with one copy of a large
# argument or result instead of Parsl's five to eight; the executor uses
# them on the client side too.

# Builtin values and plain numpy arrays (shm.is_plain_data) are pickled by the C
# pickler under Parsl's old pickle identifier instead of by dill: the same bytes
# for those types, 20x less CPU. Read back by deserialize_view and shm.deserialize_part.
_PLAIN_HEADER = b"01\n"


def serialize_parts(obj: Any) -> List[bytes]:
    """``parsl.serialize.serialize(obj)`` as a list of parts whose concatenation is
    that serialization (or, for plain data, the C pickler's), without concatenating
    (no copy of a large pickle)."""
    if shm.is_plain_data(obj):  # never callable: builtin values and plain arrays only
        return [_PLAIN_HEADER, pickle.dumps(obj, protocol=5)]
    methods = _facade.methods_for_code if callable(obj) else _facade.methods_for_data
    error: BaseException | None = None
    for method in methods.values():
        try:
            return [method.identifier + b"\n", method.serialize(obj)]
        except Exception as e:  # noqa: BLE001  (as parsl.serialize: try the next method)
            error = e
    if error is None:
        raise TypeError(f"no Parsl serializer for {type(obj).__name__}")
    raise error


def pack_apply_parts(func: Any, args: Any, kwargs: Any) -> List[bytes]:
    """The parts of ``parsl.serialize.pack_apply_message(func, args, kwargs)``: joined,
    they are byte for byte what it returns."""
    out: List[bytes] = []
    for obj in (func, args, kwargs):
        parts = serialize_parts(obj)
        out.append(b"%d\n" % sum(len(p) for p in parts))
        out.extend(parts)
    return out


def pack_apply(func: Any, args: Any, kwargs: Any) -> bytes:
    """``parsl.serialize.pack_apply_message`` with a single copy of the arguments."""
    return b"".join(pack_apply_parts(func, args, kwargs))


def deserialize_view(buf: Any) -> Any:
    """``parsl.serialize.deserialize`` of a bytes-like object, plus the plain-pickle
    parts of :func:`serialize_parts`; a large data part is unpickled straight from a
    memoryview of ``buf`` instead of from copies."""
    view = memoryview(buf)
    if view[:3] == _PLAIN_HEADER:
        return pickle.loads(view[3:])
    if len(buf) < _ZERO_COPY_MIN:
        return deserialize(bytes(buf))
    nl = bytes(view[:256]).find(b"\n")
    header = bytes(view[:nl]) if nl > 0 else b""
    method = _facade.methods_for_data.get(header)
    if method is None:  # code (cached by body: needs bytes), plugins, or malformed: Parsl's own path
        return deserialize(bytes(view))
    return method.deserialize(view[nl + 1:])


def unpack_apply_view(buf: Any) -> List[Any]:
    """``parsl.serialize.unpack_apply_message`` without copying the packed buffer."""
    view = memoryview(buf)
    out = []
    pos, end = 0, len(view)
    while pos < end:
        nl = bytes(view[pos:pos + 32]).find(b"\n")
        if nl < 0:
            raise ValueError(f"malformed Parsl payload: no length at byte {pos}")
        length = int(bytes(view[pos:pos + nl]))
        start = pos + nl + 1
        out.append(deserialize_view(view[start:start + length]))
        pos = start + length
    return out


def tune_malloc() -> None:
    """Keeps freed multi-MiB buffers in the heap instead of returning them to the
    kernel, so that every large task argument and result does not pay page faults
    on fresh memory again (about 1.6 ms per 2 MiB on a VM). glibc only; a no-op
    elsewhere or when the user set MALLOC_MMAP_THRESHOLD_ themselves."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):
        pass


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

    def read_frame(self) -> tuple[int, int, Any] | None:
        """Returns (type, task_id, body), or None at a clean EOF. A large body is a
        bytearray read straight into place (no copy); a small one is bytes."""
        if not self._fill(4):
            if self._buf:
                raise EOFError(f"agent closed the pipe inside a frame header ({len(self._buf)} bytes)")
            return None
        (length,) = _U32.unpack_from(self._buf, 0)
        if length < 9:
            raise ValueError(f"frame length {length} is below the minimum of 9")
        total = 4 + length
        if total > _READ_CHUNK and self._fill(_HEADER_SIZE):
            return self._read_large(length)
        if not self._fill(total):
            raise EOFError(f"agent closed the pipe inside a frame of {length} bytes")
        _, ftype, task_id = _HEADER.unpack_from(self._buf, 0)
        body = bytes(self._buf[_HEADER_SIZE:total])
        del self._buf[:total]
        return ftype, task_id, body

    def _read_large(self, length: int) -> tuple[int, int, Any]:
        _, ftype, task_id = _HEADER.unpack_from(self._buf, 0)
        body = bytearray(length - 9)
        have = min(len(self._buf) - _HEADER_SIZE, len(body))
        body[:have] = memoryview(self._buf)[_HEADER_SIZE:_HEADER_SIZE + have]
        del self._buf[:_HEADER_SIZE + have]
        view = memoryview(body)
        while have < len(body):
            n = os.readv(self._fd, [view[have:]])
            if n == 0:
                raise EOFError(f"agent closed the pipe inside a frame of {length} bytes")
            have += n
        return ftype, task_id, body


def write_frame(ftype: int, task_id: int, body: Any) -> None:
    """Writes one frame; body is bytes or a list of parts (sent with writev, not joined)."""
    parts = body if isinstance(body, list) else [body]
    size = sum(len(p) for p in parts)
    views = [memoryview(_HEADER.pack(9 + size, ftype, task_id))] + [memoryview(p) for p in parts if len(p)]
    while views:
        n = os.writev(OUT_FD, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


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


def _drop_tracebacks(error: Any) -> None:
    """Cuts the tracebacks of a task's exception (and of its causes) once it is serialized.
    A wrapper returned by Parsl's wrap_error keeps the exception, whose traceback keeps the
    app's frames, whose f_back keeps _run_one's frame, which keeps the wrapper: a cycle that
    would hold the task's arguments (a shared-memory pool block) until the next GC."""
    seen = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


def _load_task(payload: Any) -> tuple[List[Any], "shm.Envelope | None"]:
    """([func, args, kwargs], the envelope if the payload is one)."""
    if not shm.is_envelope(payload):
        return unpack_apply_view(payload), None
    envelope = shm.decode_envelope(payload)
    if envelope.file:
        return shm_files.load_task(envelope), envelope
    if envelope.ref:
        from dragon_parsl import shm_pool_worker  # only workers that see a pool import its binding
        return shm_pool_worker.load_task(envelope), envelope
    return unpack_apply_view(envelope.inline), envelope


def _result_body(result: Any, envelope: "shm.Envelope | None", task_id: int) -> Any:
    """The RESULT body: through the client's pool or shm directory when the envelope allows, else inline."""
    if envelope is not None:
        if envelope.pool:
            from dragon_parsl import shm_pool_worker
            body = shm_pool_worker.write_result(envelope, result, task_id)
        else:
            body = shm_files.write_result(envelope, result, task_id)
        if body is not None:
            return body
    return serialize_parts(result)


def _run_one(body: Any, task_id: int = 0) -> tuple[int, Any]:
    """Runs the task in a RUN body; returns (frame type, frame body or its parts)."""
    try:
        return _run_task(body, task_id)
    finally:
        if "dragon_parsl.shm_pool_worker" in sys.modules:  # some task came through a pool
            sys.modules["dragon_parsl.shm_pool_worker"].after_task()


def _run_task(body: Any, task_id: int = 0) -> tuple[int, Any]:
    """Runs the task in a RUN body; returns (frame type, frame body or its parts)."""
    try:
        (cwd_len,) = _U32.unpack_from(body, 0)
        cwd = bytes(body[4:4 + cwd_len]).decode("utf-8")
        payload = memoryview(body)[4 + cwd_len:]
        if cwd and cwd != os.getcwd():
            try:
                os.chdir(cwd)
            except OSError as e:
                raise FileNotFoundError(
                    f"cannot change to the task's working directory {cwd!r}: {e.strerror}") from None
        (f, args, kwargs), envelope = _load_task(payload)
        del payload
        result = f(*args, **kwargs)  # as parsl.executors.execute_task.execute_task does
        del f, args, kwargs  # a mapped argument file is unmapped once nothing refers to it
        if isinstance(result, RemoteExceptionWrapper):
            # Parsl's python_app wraps apps (parsl.app.errors.wrap_error) so
            # that what they raise is *returned* as a wrapper: that is still
            # the app's exception, and the head must record APP_EXCEPTION.
            body = serialize(result)
            _drop_tracebacks(result.e_value)
            return APP_EXCEPTION, body
        return RESULT, _result_body(result, envelope, task_id)
    except BaseException:  # noqa: BLE001  (SystemExit/KeyboardInterrupt from a task are its failure too)
        return APP_EXCEPTION, _wrap_current_exception()


def split_run_env(body: Any) -> tuple[dict, Any]:
    """(the variables, the RUN body) of a RUN_ENV body."""
    (env_len,) = _U32.unpack_from(body, 0)
    env: dict = {}
    for entry in bytes(body[4:4 + env_len]).split(b"\0"):
        if entry:
            name, _, value = entry.partition(b"=")
            env[name.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return env, memoryview(body)[4 + env_len:]


class TaskEnvironment:
    """Sets a task's variables (its grant: GPUs, MPI placement) in ``os.environ`` for
    the task's duration; on exit every variable is as it was before (set again, or
    removed when it was not set)."""

    def __init__(self, env: dict) -> None:
        self.env = env
        self.saved: dict = {}

    def __enter__(self) -> "TaskEnvironment":
        for name, value in self.env.items():
            self.saved[name] = os.environ.get(name)
            os.environ[name] = value
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, old in self.saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def max_result_bytes() -> int:
    """The head's per-task limit, told by the agent ($DRAGON_MAX_RESULT_BYTES); 0 = none."""
    try:
        return max(0, int(os.environ.get("DRAGON_MAX_RESULT_BYTES", "0")))
    except ValueError:
        return 0


def body_size(body: Any) -> int:
    return sum(len(p) for p in body) if isinstance(body, list) else len(body)


def main() -> int:
    # Keep the pipes out of processes a task starts; otherwise a leftover
    # child holding fd 4 would hide this worker's death from the agent.
    os.set_inheritable(IN_FD, False)
    os.set_inheritable(OUT_FD, False)
    tune_malloc()
    limit = max_result_bytes()
    reader = FrameReader(IN_FD)
    write_frame(READY, 0, f"pid {os.getpid()} python {sys.version.split()[0]}".encode())
    while True:
        frame = reader.read_frame()
        if frame is None:
            return 0  # the agent closed fd 3: it is done with us
        ftype, task_id, body = frame
        if ftype == RUN:
            rtype, rbody = _run_one(body, task_id)
        elif ftype == RUN_ENV:
            env, run_body = split_run_env(body)
            with TaskEnvironment(env):
                rtype, rbody = _run_one(run_body, task_id)
            del run_body
        else:
            print(f"dragon worker {os.getpid()}: unexpected frame type {ftype} for task {task_id}",
                  file=sys.stderr, flush=True)
            return 2
        del body, frame  # let a large payload go before the next read
        size = body_size(rbody)
        if limit and size > limit:
            # Not sent: it would only be refused. The task fails alone, saying its size.
            del rbody
            write_frame(RESULT_TOO_LARGE, task_id, str(size).encode())
            continue
        write_frame(rtype, task_id, rbody)


if __name__ == "__main__":
    sys.exit(main())
