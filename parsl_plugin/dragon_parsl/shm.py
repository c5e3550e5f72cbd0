"""Serialization and envelopes of the shared-memory data paths for large task data.

A task whose arguments hold large buffers (a numpy array, a long bytes object)
does not send them through gRPC: they go into node-local shared memory, either a
block of the agent's pool (dragon_parsl.shm_pool_path, ``shm_path="pool"``) or a
file of the client's directory (dragon_parsl.shm_files, ``shm_path="files"``),
and the task carries only an *envelope* naming where they are. This module holds
what both paths share: serialization, envelopes, the layout of parts in a file
or block, reading parts back, the host identity, and the counters. The byte
format of envelopes is in docs/INTERFACES.md ("Shared-memory envelopes").

Serialization is Parsl's (its registered serializers, in their order), with
pickle protocol 5: buffers of at least ``threshold`` bytes go out-of-band into
shared memory and are handed back to the unpickler as views of the mapping (no copy).

This module is imported by the worker: it must stay free of grpc and of the
executor.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import dill
from parsl.serialize import facade as _facade

from dragon_parsl.errors import SharedMemoryError

MAGIC = b"\x00dragon-shm 1\n"
DEFAULT_DIR = "/dev/shm"  # node-local tmpfs: the agents' pools, the files path's directories
DEFAULT_THRESHOLD = 64 * 1024
# Out-of-band buffers start on this boundary in the file, so that a numpy
# array mapped from it is aligned for any dtype and for SIMD loads.
_ALIGN = 64
_PAD = bytes(_ALIGN)
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
# serialize_data's shortcut for a tuple of scalars (a task's positional arguments).
_SCALAR_TUPLE_MAX = 8


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


# The parts of the empty tuple and the empty dict, the arguments and keyword arguments of most
# small tasks: plain data, so always the plain pickle's bytes (made once, on first use).
_EMPTY_PARTS: Dict[type, Part] = {}


def serialize_data(obj: Any, oob_min: int) -> Part:
    """Serializes data (task arguments, a result) as ``parsl.serialize.serialize``
    would, trying Parsl's data serializers in order, with pickle protocol 5 for
    Parsl's pickle and dill serializers: buffers of at least ``oob_min`` bytes
    become out-of-band buffers of the part. Serializers registered by the user
    are used as they are (everything in-band)."""
    t = type(obj)
    if (t is tuple or t is dict) and not obj:
        empty = _EMPTY_PARTS.get(t)
        if empty is None:
            empty = _EMPTY_PARTS[t] = _serialize_data(obj, oob_min)
        return Part(empty.identifier, empty.body)  # its own (empty) buffer list
    if t is tuple and len(obj) <= _SCALAR_TUPLE_MAX:
        # The arguments of most small tasks: a few builtin scalars. The C pickler, as
        # _serialize_data would pick, without its general machinery (about 1 us of the
        # submitting thread's interpreter lock per task); scalars have no buffer to put
        # out of band.
        for x in obj:
            if type(x) not in _PLAIN_SCALARS:
                break
        else:
            return Part(_PICKLE_ID, pickle.dumps(obj, protocol=5))
    return _serialize_data(obj, oob_min)


def _serialize_data(obj: Any, oob_min: int) -> Part:
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
    # The node id of the agent whose pool is ``pool``: where a block named by ``ref`` is
    # (a worker on another host pulls it from there), and in the reply fields of a task the
    # client's node (a worker on another host pushes a large result there).
    node: str = ""
    # A result pushed from another node's pool: that node (the client counts these).
    from_node: str = ""


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
                    client=int(header.get("client", 0)), node=header.get("node", ""),
                    from_node=header.get("from_node", ""))


# ---------------------------------------------------------------- layout of parts in a file or block
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


def is_large(part: Part, threshold: int) -> bool:
    return bool(part.buffers) or len(part.body) >= threshold


def any_large(parts: List[Part], threshold: int) -> bool:
    """Whether some part is_large: a loop rather than any() over a generator, since the
    submitting thread runs it for every task."""
    for p in parts:
        if p.buffers or len(p.body) >= threshold:
            return True
    return False


def inline_segment(part: Part) -> bytes:
    """A part inline, as parsl.serialize.pack_apply_message lays it out: length, identifier, body."""
    return b"%d\n%s\n%s" % (len(part.identifier) + 1 + len(part.body), part.identifier, part.body)


def check_readable_here(envelope: Envelope) -> None:
    """A process on another machine cannot see the client's tmpfs: fail clearly, never hang.
    (A worker reaches a pool block of another node through its agent: :func:`needs_pull`.)"""
    if envelope.host != host_identity():
        where = envelope.file or f"pool {envelope.pool}"
        raise SharedMemoryError(
            f"task data is in shared memory at {where} on host {envelope.host}, but this process runs "
            f"on {host_identity()}: files of shm_path=\"files\" are read only on the client's node (pool "
            f"blocks cross nodes through the agents' data plane); use DragonExecutor(shm_threshold=0) with "
            f"workers on other nodes")


# What an agent gives its workers (dragon-agent; docs/INTERFACES.md): its node id, the path of
# its pool, and the Unix socket of its AgentData service (empty or unset: no data plane).
NODE_ENV = "DRAGON_NODE_ID"
POOL_ENV = "DRAGON_SHM_POOL"
DATA_SOCKET_ENV = "DRAGON_AGENT_DATA_SOCKET"


def local_data_plane() -> Optional[Tuple[str, str]]:
    """(the local pool's path, the agent's data socket) when this process runs under an
    agent with a pool and a data plane; None otherwise."""
    pool, sock = os.environ.get(POOL_ENV, ""), os.environ.get(DATA_SOCKET_ENV, "")
    return (pool, sock) if pool and sock else None


def no_data_plane_error(envelope: Envelope, why: str) -> SharedMemoryError:
    """The error of a task whose arguments are in another node's pool, which this worker
    cannot fetch: says where the data is, where the worker is, why, and what to do."""
    here = os.environ.get(NODE_ENV, "") or "?"
    return SharedMemoryError(
        f"task data is in shared-memory pool {envelope.pool} of node {envelope.node or '?'} on host "
        f"{envelope.host}, but this worker runs on node {here}, host {host_identity()}, and cannot fetch "
        f"it: {why}. Start every agent with a pool and its UCX data plane (no --noucx, --shm-pool-mb "
        f"not 0), or use DragonExecutor(shm_threshold=0) when workers run on nodes without one")


def needs_pull(envelope: Envelope) -> bool:
    """For a worker reading a task's pool block: False when the block is in a pool of this host
    (read it in place), True when it is in another node's pool and this worker's agent can pull
    it (a data plane here and a node named by the envelope); raises SharedMemoryError saying why
    not otherwise (the node itself having no data plane shows when the pull is refused)."""
    if envelope.host == host_identity():
        return False
    if not envelope.ref:
        check_readable_here(envelope)  # files: never across nodes
    if not envelope.node:
        raise no_data_plane_error(envelope, "the envelope names no node to pull the block from (a client "
                                            "older than the cross-node data path)")
    if local_data_plane() is None:
        raise no_data_plane_error(envelope, f"this worker's agent has no data plane ({DATA_SOCKET_ENV} or "
                                            f"{POOL_ENV} unset: no pool, --noucx, or UCX failed to start)")
    return True


# ---------------------------------------------------------------- counters
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
    # Across nodes (the pool path with a data plane). A worker counts what it pulled and
    # pushed (and pushes that failed, their results sent inline); the client counts the
    # results it received pushed from another node (results_pushed, results_pushed_bytes).
    args_pulled: int = 0
    args_pulled_bytes: int = 0
    results_pushed: int = 0
    results_pushed_bytes: int = 0
    results_push_fallbacks: int = 0
    # A client on a host without an agent: tasks submitted while its own data plane could not
    # be used (it did not start, or an agent elsewhere has no data plane), their data, large or
    # small, inline.
    client_plane_fallbacks: int = 0
