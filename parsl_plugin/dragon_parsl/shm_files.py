"""The ``shm_path="files"`` data path: task data in files of the client's directory.

The client writes a task's large arguments into a file of its own directory on a
node-local tmpfs (default ``/dev/shm/dragon-<user>-<pid>.<start>-<random>/``)
and sends only an envelope naming the file (dragon_parsl.shm). The worker maps
the file and unpickles from the mapping, so a numpy argument is never copied on
its way in; a large result goes back the same way into the client's directory.
Out-of-band buffers are written into the file with one copy, by ``writev``.

This module is imported by the worker: it must stay free of grpc and of the
executor.
"""
from __future__ import annotations

import errno
import getpass
import logging
import mmap
import os
import re
import secrets
import shutil
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

from dragon_parsl.errors import SharedMemoryError
from dragon_parsl.shm import (NEVER_OUT_OF_BAND, Counters, Envelope, Part, any_large, check_readable_here,
                              decode_envelope, encode_header, host_identity, inline_segment, is_envelope,
                              is_large, layout, load_parts, serialize_data)

logger = logging.getLogger(__name__)

# writev(2) takes at most IOV_MAX (1024 on Linux) pieces per call.
_IOV_CHUNK = 512


def process_start_time(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22), or None
    if there is no such process. Together with the pid it names a process uniquely
    (a pid alone may have been reused)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[-1].split()
    return int(fields[19])  # fields[0] is field 3 (state)


# ---------------------------------------------------------------- files
def write_pieces(path: str, pieces: Sequence[Any]) -> None:
    """Creates ``path`` (it must not exist) holding the pieces; on any error the
    file is removed and the OSError raised (ENOSPC on a full tmpfs, EDQUOT, ...)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for i in range(0, len(pieces), _IOV_CHUNK):
            _writev_all(fd, [memoryview(p).cast("B") for p in pieces[i:i + _IOV_CHUNK]])
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)


def _writev_all(fd: int, views: List[memoryview]) -> None:
    while views:
        n = os.writev(fd, views)
        if n == 0:  # a regular file only does this when it cannot grow
            raise OSError(errno.ENOSPC, "writev wrote nothing")
        while views and n >= views[0].nbytes:
            n -= views[0].nbytes
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def write_parts(path: str, parts: Sequence[Part], writer: Callable[[str, Sequence[Any]], None] = write_pieces
                ) -> Tuple[int, List[dict]]:
    """Writes the parts into a new file; returns its size and the parts' descriptors."""
    pieces, descriptors, size = layout(parts)
    writer(path, pieces)
    return size, descriptors


def map_file(path: str, expected_size: int, host: str) -> memoryview:
    """A private copy-on-write mapping of the file: readable, and writable by the
    task without touching the file (an app that mutates its argument in place
    still works). Not MAP_POPULATE: on a writable private mapping that copies
    every page up front (measured 2x slower than faulting pages in on use)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SharedMemoryError(f"task data file {path} (written on {host}) does not exist: it was removed "
                                f"before it was read (executor shut down, or its directory swept?)") from None
    except OSError as e:
        raise SharedMemoryError(f"cannot open task data file {path} (written on {host}): {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size != expected_size:
            raise SharedMemoryError(f"task data file {path} has {size} bytes, the envelope says {expected_size}")
        if size == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE))
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- worker side
def load_task(envelope: Envelope) -> List[Any]:
    """[func, args, kwargs] of a task envelope with a file."""
    check_readable_here(envelope)
    return load_parts(envelope, map_file(envelope.file, envelope.size, envelope.host))


_result_names = 0


def write_result(envelope: Envelope, result: Any, task_id: int) -> Optional[Any]:
    """The RESULT body for ``result`` of a task that came with ``envelope``: an
    envelope naming a new file in the client's directory when the result is
    large and the client is on this host; otherwise None (send the result inline,
    the classic way). A file that cannot be written is reported on stderr (the
    worker's log) and the result goes inline: never lose a result."""
    global _result_names
    if not envelope.reply_dir or envelope.threshold <= 0 or envelope.host != host_identity():
        return None
    part = serialize_data(result, envelope.threshold)
    if not is_large(part, envelope.threshold):
        return [part.identifier + b"\n", part.body]
    _result_names += 1
    path = os.path.join(envelope.reply_dir, f"r{task_id}-{os.getpid()}-{_result_names}")
    try:
        size, descriptors = write_parts(path, [part])
    except OSError as e:
        logger.warning("task %d: cannot write its %d-byte result to %s (%s); sending it inline",
                       task_id, part.nbytes, path, e)
        return None
    return encode_header(host=host_identity(), file=path, size=size, parts=descriptors)


# ---------------------------------------------------------------- client side
def _safe_user() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = str(os.getuid())
    return re.sub(r"[^A-Za-z0-9_.-]", "_", user) or str(os.getuid())


_DIR_RE = re.compile(r"^dragon-(?P<user>.+)-(?P<pid>\d+)\.(?P<start>\d+)-[0-9a-f]+$")


def sweep_stale_directories(base: str, user: Optional[str] = None) -> List[str]:
    """Removes ``base/dragon-<user>-<pid>.<start>-*`` directories of this user whose
    client process is gone (no such pid, or the pid now belongs to a process that
    started at another time). Returns the removed paths."""
    user = user or _safe_user()
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        m = _DIR_RE.match(name)
        if m is None or m.group("user") != user:
            continue
        path = os.path.join(base, name)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if process_start_time(int(m.group("pid"))) == int(m.group("start")):
            continue  # its client is alive
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class ClientDirectory:
    """The client's directory of task data files: argument files it writes, result
    files the workers write. Created at start, removed at shutdown; a directory of
    a client that died is removed by the next client that starts (same base)."""

    def __init__(self, base: str, threshold: int,
                 writer: Callable[[str, Sequence[Any]], None] = write_pieces) -> None:
        self.base = base
        self.threshold = threshold
        self._writer = writer
        self._names = 0
        self._lock = threading.Lock()
        self.counters = Counters()
        self.swept = sweep_stale_directories(base)
        pid = os.getpid()
        name = f"dragon-{_safe_user()}-{pid}.{process_start_time(pid) or 0}-{secrets.token_hex(4)}"
        self.path = os.path.join(base, name)
        os.mkdir(self.path, 0o700)
        # Small tasks carry this header (the same bytes every time) so that the
        # worker knows where a large result may go.
        self._reply_header = encode_header(host=host_identity(), dir=self.path, threshold=threshold)

    # ------------------------------------------------------------ arguments
    def pack_task(self, func_part: Part, args: Any, kwargs: Any, allow_file: bool) -> Tuple[bytes, Optional[str]]:
        """The payload of a task, and the argument file to delete when its result
        arrives (None if all inline). ``allow_file`` is False when some worker may
        be on another host: then everything is inline (still with the header, so
        that a worker on this host can return a large result through shm)."""
        oob_min = self.threshold if allow_file else NEVER_OUT_OF_BAND
        parts = [func_part, serialize_data(args, oob_min), serialize_data(kwargs, oob_min)]
        if allow_file and any_large(parts, self.threshold):
            path = self._next_path("a")
            try:
                size, descriptors = write_parts(path, parts, self._writer)
            except OSError as e:
                logger.warning("cannot write %d bytes of task arguments to %s (%s): sending them inline",
                               sum(p.nbytes for p in parts), path, e)
                with self._lock:
                    self.counters.args_fallbacks += 1
                # Pickled again, in-band: the out-of-band buffers have nowhere to go.
                parts = [func_part, serialize_data(args, NEVER_OUT_OF_BAND),
                         serialize_data(kwargs, NEVER_OUT_OF_BAND)]
            else:
                with self._lock:
                    self.counters.args_shm_tasks += 1
                    self.counters.args_shm_bytes += size
                header = encode_header(host=host_identity(), dir=self.path, threshold=self.threshold,
                                       file=path, size=size, parts=descriptors)
                return header, path
        func, args_part, kwargs_part = parts
        payload = b"".join((self._reply_header, inline_segment(func), inline_segment(args_part),
                            inline_segment(kwargs_part)))
        with self._lock:
            self.counters.args_inline_tasks += 1
            self.counters.args_inline_bytes += len(payload)
        return payload, None

    def _next_path(self, kind: str) -> str:
        with self._lock:
            self._names += 1
            n = self._names
        return os.path.join(self.path, f"{kind}{n}")

    # ------------------------------------------------------------ results
    def load_result(self, data: Any) -> Any:
        """The value of a RESULT envelope: its file is mapped, then unlinked (the
        mapping keeps the data for as long as the value needs it)."""
        envelope = decode_envelope(data)
        if os.path.dirname(envelope.file) != self.path:
            raise SharedMemoryError(f"result file {envelope.file!r} is not in this executor's directory {self.path}")
        try:
            view = map_file(envelope.file, envelope.size, envelope.host)
        finally:
            _unlink_quietly(envelope.file)
        with self._lock:
            self.counters.results_shm += 1
            self.counters.results_shm_bytes += envelope.size
        (value,) = load_parts(envelope, view)
        return value

    def count_inline_result(self, nbytes: int) -> None:
        with self._lock:
            self.counters.results_inline += 1
            self.counters.results_inline_bytes += nbytes

    def discard(self, path: Optional[str]) -> None:
        """Deletes an argument file once its task is over (the worker may read it until then)."""
        if path:
            _unlink_quietly(path)

    def data_files(self) -> List[str]:
        try:
            return sorted(os.listdir(self.path))
        except FileNotFoundError:
            return []

    def discard_result(self, data: Any) -> None:
        """Deletes the file of a result envelope nobody will read (its task is unknown)."""
        if not is_envelope(data):
            return
        try:
            envelope = decode_envelope(data)
        except SharedMemoryError as e:
            logger.warning("ignoring a result envelope that cannot be decoded: %s", e)
            return
        if os.path.dirname(envelope.file) == self.path:
            _unlink_quietly(envelope.file)

    def remove(self) -> None:
        """Removes the directory. A worker of a head that outlives this client may
        still be creating a result file in it while it goes: try again then."""
        for _ in range(3):
            shutil.rmtree(self.path, ignore_errors=True)
            if not os.path.exists(self.path):
                return
        logger.warning("could not remove %s; the next executor to start will", self.path)
