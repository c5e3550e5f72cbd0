"""The node-local shared-memory data path for large task arguments and results.

A task whose arguments hold large buffers (a numpy array, a long bytes object)
does not send them through gRPC: the client writes them into a file of its own
directory on a node-local tmpfs (default ``/dev/shm/dragon-<user>-<pid>.<start>-<random>/``)
and sends only an *envelope* naming the file. The worker maps the file and
unpickles from the mapping, so a numpy argument is never copied on its way in;
a large result goes back the same way into the client's directory. The byte
format of envelopes is in docs/INTERFACES.md ("Shared-memory envelopes").

Serialization is Parsl's (its registered serializers, in their order), with
pickle protocol 5: buffers of at least ``threshold`` bytes are written
out-of-band into the file (one copy, by ``writev``) and handed back to the
unpickler as views of the mapping (no copy).

This module is imported by the worker: it must stay free of grpc and of the
executor.
"""
from __future__ import annotations

import errno
import getpass
import io
import json
import logging
import mmap
import os
import pickle
import re
import secrets
import shutil
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import dill
from parsl.serialize import facade as _facade

from dragon_parsl.errors import SharedMemoryError

logger = logging.getLogger(__name__)

MAGIC = b"\x00dragon-shm 1\n"
DEFAULT_DIR = "/dev/shm"
DEFAULT_THRESHOLD = 64 * 1024
# Out-of-band buffers start on this boundary in the file, so that a numpy
# array mapped from it is aligned for any dtype and for SIMD loads.
_ALIGN = 64
_PAD = bytes(_ALIGN)
# writev(2) takes at most IOV_MAX (1024 on Linux) pieces per call.
_IOV_CHUNK = 512
_PICKLE_ID = b"01"  # Parsl's serializer identifiers
_DILL_ID = b"02"
NEVER_OUT_OF_BAND = 1 << 62  # an oob_min no buffer reaches: everything in-band


# ---------------------------------------------------------------- identity
_host_identity: Optional[str] = None


def host_identity() -> str:
    """``<hostname>/<boot id>``: equal only for processes that see the same /dev/shm
    (the same machine since its last boot)."""
    global _host_identity
    if _host_identity is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot_id = f.read().strip()
        except OSError:
            boot_id = "unknown-boot"
        _host_identity = f"{socket.gethostname()}/{boot_id}"
    return _host_identity


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


# ---------------------------------------------------------------- serialization
@dataclass
class Part:
    """One object serialized the Parsl way: a serializer identifier, the in-band
    stream and the out-of-band buffers (flat byte views) it refers to, in order."""
    identifier: bytes
    body: bytes
    buffers: List[memoryview] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return len(self.body) + sum(b.nbytes for b in self.buffers)

    @classmethod
    def from_parsl(cls, pieces: Sequence[bytes]) -> "Part":
        """From ``[identifier + b"\\n", body]`` (dragon_parsl.worker.serialize_parts)."""
        head, body = pieces
        return cls(head[:-1], body)


class _OutOfBandDillPickler(dill.Pickler):
    """dill's pickler, except that a plain numpy array is pickled the standard
    way (``__reduce_ex__(5)``, which offers its memory as an out-of-band buffer)
    instead of through dill's ``__reduce__``-based special case, which always
    copies the data into the stream. Everything else is dill's."""

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        # numpy is looked up, not imported: a process holding an array has imported
        # it, and workers should not pay for importing it at start.
        numpy = sys.modules.get("numpy")
        if numpy is not None and type(obj) is numpy.ndarray and self.proto >= 5:
            memo = self.memo.get(id(obj))
            if memo is not None:
                self.write(self.get(memo[0]))
                return
            self.save_reduce(obj=obj, *obj.__reduce_ex__(self.proto))
            return
        super().save(obj, save_persistent_id)


class _PlainPickle:
    """The C pickler for :func:`is_plain_data` values, under Parsl's identifier of
    its (no longer registered) pickle serializer, b"01"; dragon_parsl's readers
    (deserialize_part, worker.deserialize_view) unpickle it with pickle.loads."""
    identifier = _PICKLE_ID


_PLAIN_PICKLE = _PlainPickle()


def _dill_dumps(obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool]) -> bytes:
    out = io.BytesIO()
    _OutOfBandDillPickler(out, protocol=5, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


# Builtin values that plain pickle serializes exactly as dill does: for these,
# dill's Python-level pickler costs ~7 us per object against ~0.3 us for the C
# pickler, twice per task (arguments and keyword arguments) and once per
# result. Exact types only: a subclass (or anything else) may need dill.
_PLAIN_SCALARS = frozenset((int, float, complex, bool, str, bytes, type(None)))
_PLAIN_MAX_ITEMS = 64
_PLAIN_MAX_DEPTH = 3


def is_plain_data(obj: Any, depth: int = 0) -> bool:
    """True for builtin scalars, plain numpy arrays (no Python objects inside), and
    small tuples, lists and dicts of those (dict keys scalars): values whose
    pickle needs no dill. Bounded work: at most 64 items per level, 3 levels."""
    t = type(obj)
    if t in _PLAIN_SCALARS:
        return True
    if depth >= _PLAIN_MAX_DEPTH:
        return False
    if t is tuple or t is list:
        return len(obj) <= _PLAIN_MAX_ITEMS and all(is_plain_data(x, depth + 1) for x in obj)
    if t is dict:
        return len(obj) <= _PLAIN_MAX_ITEMS and all(
            type(k) in _PLAIN_SCALARS and is_plain_data(v, depth + 1) for k, v in obj.items())
    numpy = sys.modules.get("numpy")
    return numpy is not None and t is numpy.ndarray and not obj.dtype.hasobject


def serialize_data(obj: Any, oob_min: int) -> Part:
    """Serializes data (task arguments, a result) as ``parsl.serialize.serialize``
    would, trying Parsl's data serializers in order, with pickle protocol 5 for
    Parsl's pickle and dill serializers: buffers of at least ``oob_min`` bytes
    become out-of-band buffers of the part. Serializers registered by the user
    are used as they are (everything in-band)."""
    error: Optional[BaseException] = None
    methods = list(_facade.methods_for_data.values())
    if is_plain_data(obj):
        methods.insert(0, _PLAIN_PICKLE)
    for method in methods:
        buffers: List[memoryview] = []

        def keep_large_out_of_band(buf: pickle.PickleBuffer) -> bool:
            raw = buf.raw()
            if raw.nbytes < oob_min:
                return True  # in-band
            buffers.append(raw)
            return False

        try:
            if method.identifier == _DILL_ID:
                body = _dill_dumps(obj, keep_large_out_of_band)
            elif method.identifier == _PICKLE_ID:
                body = pickle.dumps(obj, protocol=5, buffer_callback=keep_large_out_of_band)
            else:
                body = method.serialize(obj)
        except Exception as e:  # noqa: BLE001  (as parsl.serialize: try the next method)
            error = e
            continue
        return Part(method.identifier, body, buffers)
    if error is None:
        raise TypeError(f"no Parsl serializer for {type(obj).__name__}")
    raise error


def deserialize_part(identifier: bytes, body: Any, buffers: Sequence[memoryview]) -> Any:
    """The inverse of :func:`serialize_data` (and of Parsl's code serialization)."""
    if identifier == _DILL_ID:
        return dill.loads(body, buffers=buffers)
    if identifier == _PICKLE_ID:
        return pickle.loads(body, buffers=buffers)
    if buffers:
        raise SharedMemoryError(f"serializer {identifier!r} has no out-of-band buffers, "
                                f"but the envelope lists {len(buffers)}")
    return _facade.deserialize(identifier + b"\n" + bytes(body))


# ---------------------------------------------------------------- envelopes
@dataclass
class Envelope:
    """A decoded envelope (see docs/INTERFACES.md). ``inline`` is what follows the
    header: a classic Parsl payload when ``file`` is empty, else nothing."""
    host: str
    reply_dir: str = ""
    threshold: int = 0
    file: str = ""
    size: int = 0
    parts: List[dict] = field(default_factory=list)
    inline: Any = b""
    # The pool data path (dragon_parsl.shm_pool_path): the agent's pool, the block
    # (hex of its 24-byte reference) and the client's pid, which owns what it allocated.
    pool: str = ""
    ref: str = ""
    client: int = 0


def is_envelope(buf: Any) -> bool:
    return len(buf) >= len(MAGIC) and bytes(buf[:len(MAGIC)]) == MAGIC


def encode_header(**fields: Any) -> bytes:
    """MAGIC, the JSON header on one line (empty fields left out), and a newline."""
    header = {k: v for k, v in fields.items() if v not in (None, "", [], 0)}
    return MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n"


# Headers without a file repeat for every small task of a client: parse them once.
_parsed_headers: Dict[bytes, dict] = {}
_MAX_PARSED_HEADERS = 64


def decode_envelope(buf: Any) -> Envelope:
    view = memoryview(buf)
    start = len(MAGIC)
    end = bytes(view[start:start + 65536]).find(b"\n")
    if end < 0:
        raise SharedMemoryError("malformed shared-memory envelope: no end of header within 64 KiB")
    raw = bytes(view[start:start + end])
    header = _parsed_headers.get(raw)
    if header is None:
        try:
            header = json.loads(raw)
        except ValueError as e:
            raise SharedMemoryError(f"malformed shared-memory envelope header: {e}") from None
        if "file" not in header and "ref" not in header and len(_parsed_headers) < _MAX_PARSED_HEADERS:
            _parsed_headers[raw] = header
    return Envelope(host=header.get("host", ""), reply_dir=header.get("dir", ""),
                    threshold=int(header.get("threshold", 0)), file=header.get("file", ""),
                    size=int(header.get("size", 0)), parts=header.get("parts", []),
                    inline=view[start + end + 1:], pool=header.get("pool", ""), ref=header.get("ref", ""),
                    client=int(header.get("client", 0)))


# ---------------------------------------------------------------- files
def layout(parts: Sequence[Part], inline_below: int = 0) -> Tuple[List[Any], List[dict], int]:
    """The pieces to write (with alignment padding), the parts' descriptors and the file size.
    With ``inline_below``, bodies shorter than that stay out of the pieces: their descriptor
    says ``"ibody": [offset, length]`` into the bytes that follow the envelope's header, which
    :func:`inline_bodies` makes (a pool block then holds just the large buffers: a 2 MiB array
    takes a 2 MiB block, not a 4 MiB one for 2 MiB and a few hundred bytes)."""
    pieces: List[Any] = []
    descriptors: List[dict] = []
    offset = 0
    inline_at = 0

    def place(data: Any) -> List[int]:
        nonlocal offset
        pad = -offset % _ALIGN
        if pad:
            pieces.append(_PAD[:pad])
            offset += pad
        if len(data):
            pieces.append(data)
        where = [offset, len(data)]
        offset += len(data)
        return where

    for part in parts:
        d: Dict[str, Any] = {"ser": part.identifier.decode("ascii")}
        if len(part.body) < inline_below:
            d["ibody"] = [inline_at, len(part.body)]
            inline_at += len(part.body)
        else:
            d["body"] = place(part.body)
        d["buffers"] = [place(b) for b in part.buffers]
        descriptors.append(d)
    return pieces, descriptors, offset


def inline_bodies(parts: Sequence[Part], inline_below: int) -> bytes:
    """The bodies :func:`layout` left inline, in order: what follows the envelope's header."""
    return b"".join(p.body for p in parts if len(p.body) < inline_below)


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


def load_parts(envelope: Envelope, view: memoryview, copy: Optional[Callable[[Any], Any]] = None) -> List[Any]:
    """Deserializes the parts of an envelope from the mapped file or block, buffers as views
    of it (or as ``copy(view)`` of each, copies that own their memory: nothing made from
    them refers to ``view`` afterwards)."""
    out = []
    for d in envelope.parts:
        if "ibody" in d:
            (bo, bl) = d["ibody"]
            body = envelope.inline[bo:bo + bl]
        else:
            (bo, bl) = d["body"]
            body = view[bo:bo + bl]
        if copy is not None:
            buffers = [copy(view[o:o + n]) for o, n in d["buffers"]]
        else:
            buffers = [view[o:o + n] for o, n in d["buffers"]]
        out.append(deserialize_part(d["ser"].encode("ascii"), body, buffers))
    return out


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def is_large(part: Part, threshold: int) -> bool:
    return bool(part.buffers) or len(part.body) >= threshold


# ---------------------------------------------------------------- worker side
def check_readable_here(envelope: Envelope) -> None:
    """A worker on another machine cannot see the client's tmpfs: fail clearly, never hang."""
    if envelope.host != host_identity():
        where = envelope.file or f"pool {envelope.pool}"
        raise SharedMemoryError(
            f"task data is in shared memory at {where} on host {envelope.host}, but this worker runs "
            f"on {host_identity()}: the shared-memory data path works only on the client's node (cross-node "
            f"transfer is not supported); use DragonExecutor(shm_threshold=0) with workers on other nodes")


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


@dataclass
class Counters:
    """What went through shared memory and what inline, for benchmarks and tests."""
    args_shm_tasks: int = 0
    args_shm_bytes: int = 0
    args_inline_tasks: int = 0
    args_inline_bytes: int = 0
    args_fallbacks: int = 0  # large arguments sent inline because the file could not be written
    results_shm: int = 0
    results_shm_bytes: int = 0
    results_inline: int = 0
    results_inline_bytes: int = 0


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
        if allow_file and any(is_large(p, self.threshold) for p in parts):
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
        payload = self._reply_header + b"".join(
            b"%d\n%s\n%s" % (len(p.identifier) + 1 + len(p.body), p.identifier, p.body) for p in parts)
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
