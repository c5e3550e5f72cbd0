"""``Dictionary``: a key-value store sharded across the dragon-agents' shared-memory pools
(issue 14), used as a mapping from the workflow and from apps on any node.

    d = Dictionary()            # shards on every node with a data plane
    d["x"] = big_array          # pickled; the value lives in a block of its shard's pool
    total = use.remote(d)       # passed to apps: it pickles to a reference
    d.update({k: v for ...})    # batched: one request per shard and per few MiB
    d.close()                   # the creator frees every shard (else they go with the agents)

How it works: each key belongs to one node (a CRC-32 of its pickle, modulo the Dictionary's
nodes, fixed at creation). A call goes to the agent of the caller's node over its Unix socket
(``AgentData.Dict``, one framed request and reply on a connection the calling thread keeps:
common/data_socket_client.h); that agent applies it to its own shard (agent/dict_store.h: the
value in its pool, a small one in a slot of a block shared with other small values) or forwards
it over UCX to the agent of the key's node, which does; a large value of the caller's own node's
shard goes as a block of that node's pool instead of through the socket (BLOCK_VALUE_MIN). So a
process needs an agent with a data
plane on its node (not a login node); a node whose agent is lost makes the calls for its keys
fail with ``DictionaryError`` naming it, never hang.

Keys must pickle to the same bytes wherever they are made: str, bytes, int, float, bool, None
and tuples of them do; objects whose pickle depends on the process (sets of str, most classes)
do not and are refused.
"""
from __future__ import annotations

import itertools
import os
import pickle
import uuid
import zlib
from collections.abc import MutableMapping
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from dragon_parsl import shm
from dragon_parsl.errors import SharedMemoryError

__all__ = ["Dictionary", "DictionaryError"]

# A batch (update, items) is cut into requests of at most this many bytes or items, so that no
# request holds up an agent (or its shard's lock) for long.
BATCH_BYTES = 4 << 20
BATCH_ITEMS = 4096
DEFAULT_TIMEOUT_S = 30.0
# A value whose pickle is at least this large goes between a process and its own node's agent in
# a block of that node's pool, not through the socket: the writer's block is taken over by the
# agent, a reader gets a copy in a block it owns (agent/dict_store.h, kBlockValueMin).
BLOCK_VALUE_MIN = 64 << 10

_KEY_TYPES = (str, bytes, int, float, bool, type(None))


class DictionaryError(RuntimeError):
    """A Dictionary operation the agents could not do: the message names the node and why (a lost
    node, a full pool naming --shm-pool-mb, no data plane on this node)."""


def _core() -> Any:
    from dragon_parsl import _core
    return _core


def _pb() -> Any:
    from dragon_parsl._proto import agent_pb2
    return agent_pb2


def _check_key(key: Any) -> None:
    if isinstance(key, tuple):
        for part in key:
            _check_key(part)
    elif not isinstance(key, _KEY_TYPES):
        raise TypeError(f"Dictionary keys are str, bytes, numbers, None or tuples of them (they must pickle "
                        f"the same in every process), not {type(key).__name__}")


_PLAIN_KEY_TYPES = frozenset(_KEY_TYPES)


def _key_bytes(key: Any) -> bytes:
    if type(key) not in _PLAIN_KEY_TYPES:  # the common keys skip the walk (update() of many items)
        _check_key(key)
    return pickle.dumps(key, protocol=5)


def data_socket(wait_s: float = 10.0) -> str:
    """The AgentData socket of this node's agent: ``$DRAGON_AGENT_DATA_SOCKET`` (set for workers),
    else the one beside the pool of a dragon-agent running on this host."""
    path = os.environ.get("DRAGON_AGENT_DATA_SOCKET")
    if path:
        return path
    from dragon_parsl import comm  # the pool lookup of the other communication objects
    pool = comm.default_pool(wait_s)
    path = pool + ".sock"
    if not os.path.exists(path) and not comm._creator_ready(pool):
        raise SharedMemoryError(f"the dragon-agent of pool {pool} did not finish starting within {wait_s:g} s "
                                f"(no socket {path} yet); see its log")
    if not os.path.exists(path):
        raise SharedMemoryError(f"the dragon-agent of pool {pool} has no data plane (no socket {path}): it was "
                                f"started with --noucx or UCX failed to start (see its log); a Dictionary needs it")
    return path


class Dictionary(MutableMapping):
    """A mapping whose items live in the agents' pools, shared by every process of the run that
    holds it (see the module's documentation)."""

    def __init__(self, nodes: Optional[Sequence[str]] = None, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._socket: Optional[str] = data_socket()
        self._timeout = float(timeout)
        if nodes is None:
            nodes = self._ask_nodes()
        self._nodes: Tuple[str, ...] = tuple(nodes)
        if not self._nodes:
            raise DictionaryError("no node has a data plane to hold a Dictionary (every agent runs with --noucx, "
                                  "or UCX failed to start on each: see their logs)")
        self._id = f"{shm.host_identity()}-{os.getpid()}-{uuid.uuid4().hex[:16]}"
        self._creator = (shm.host_identity(), os.getpid())
        # Only the object made here frees the shards: an unpickled reference (an app's, or a
        # copy in this very process) closes just itself.
        self._owner = True
        self._closed = False
        self._local_plane: Optional[Tuple[str, Any]] = None

    # ------------------------------------------------------------ pickling (a reference)
    def __reduce__(self) -> Tuple[Any, ...]:
        return (_reopen, (self._id, self._nodes, self._creator, self._timeout))

    # ------------------------------------------------------------ requests
    def _call(self, node: str, op: int, keys: Sequence[bytes] = (), values: Sequence[bytes] = (),
              **fields: Any) -> Any:
        if self._closed:
            raise DictionaryError(f"Dictionary {self._id} is closed")
        pb = _pb()
        request = pb.DictRequest(node_id=node, dict_id=self._id, op=op, keys=keys, values=values,
                                 timeout_ms=int(self._timeout * 1000), **fields)
        try:
            raw = _core().agent_dict(self._data_socket(), request.SerializeToString(), self._timeout)
        except RuntimeError as e:  # _core.DataPlaneError: the code and the agent's message
            raise DictionaryError(f"Dictionary {self._id} on node {node}: {e}") from None
        reply = pb.DictReply()
        reply.ParseFromString(raw)
        return reply

    def _data_socket(self) -> str:
        # Found where the Dictionary is first used, not where it is unpickled.
        if self._socket is None:
            self._socket = data_socket()
        return self._socket

    def _ask_nodes(self) -> List[str]:
        pb = _pb()
        request = pb.DictRequest(dict_id="-", op=pb.DictRequest.NODES)
        try:
            raw = _core().agent_dict(self._socket, request.SerializeToString(), self._timeout)
        except RuntimeError as e:
            raise DictionaryError(f"cannot list the nodes for a Dictionary: {e}") from None
        reply = pb.DictReply()
        reply.ParseFromString(raw)
        return sorted(k.decode() for k in reply.keys)

    def _node_of(self, kb: bytes) -> str:
        return self._nodes[zlib.crc32(kb) % len(self._nodes)]

    # ------------------------------------------------------------ large values by block
    def _local_pool(self, node: str) -> Any:
        """This node's agent's pool when ``node`` is this node (its shard's large values then go
        by block), else None."""
        if self._local_plane is None:
            self._local_plane = ("", None)
            socket = self._data_socket()
            if socket.endswith(".sock"):
                from dragon_parsl import comm_remote, shm_pool_path
                try:
                    self._local_plane = (comm_remote.local_node(socket),
                                         shm_pool_path.attach(socket[:-len(".sock")]))
                except (SharedMemoryError, RuntimeError):
                    pass  # no block path: every value through the socket, as for another node
        return self._local_plane[1] if node == self._local_plane[0] else None

    def _get(self, node: str, op: int, kbs: Sequence[bytes]) -> Any:
        reader = os.getpid() if self._local_pool(node) is not None else 0
        return self._call(node, op, kbs, reader_pid=reader)

    def _value(self, node: str, reply: Any, i: int) -> Any:
        """The i-th value found in a GET/GET_MANY reply: from its block (freed once read) or inline."""
        if i < len(reply.value_refs) and reply.value_refs[i]:
            block = self._local_pool(node).block(reply.value_refs[i], free_on_release=True)
            return pickle.loads(memoryview(block)[:reply.value_sizes[i]])
        return pickle.loads(reply.values[i])

    def _put(self, node: str, pairs: Sequence[Tuple[bytes, bytes]]) -> Any:
        pool = self._local_pool(node)
        keys = [kb for kb, _ in pairs]
        if pool is None or all(len(vb) < BLOCK_VALUE_MIN for _, vb in pairs):
            return self._call(node, _pb().DictRequest.PUT, keys, [vb for _, vb in pairs])
        pid = os.getpid()
        refs: List[bytes] = []
        try:
            values, sizes = [], []
            for _, vb in pairs:
                ref = b""
                if len(vb) >= BLOCK_VALUE_MIN:
                    try:
                        ref = pool.allocate(len(vb), 0.0, 0)
                    except _core().ShmPoolFull:
                        pass  # no room at once: this one through the socket
                refs.append(ref)  # before writing it: the finally below frees it if anything fails
                if ref:
                    memoryview(pool.block(ref))[:len(vb)] = vb
                values.append(b"" if ref else vb)
                sizes.append(len(vb) if ref else 0)
            return self._call(node, _pb().DictRequest.PUT, keys, values, value_refs=refs,
                              value_sizes=sizes, writer_pid=pid)
        finally:
            for ref in refs:  # those the agent did not take over (the request failed)
                if ref:
                    pool.free_if_owner(ref, pid)

    # ------------------------------------------------------------ the mapping
    def __setitem__(self, key: Any, value: Any) -> None:
        kb = _key_bytes(key)
        self._put(self._node_of(kb), [(kb, pickle.dumps(value, protocol=5))])

    def __getitem__(self, key: Any) -> Any:
        kb = _key_bytes(key)
        node = self._node_of(kb)
        reply = self._get(node, _pb().DictRequest.GET, [kb])
        if not reply.found[0]:
            raise KeyError(key)
        return self._value(node, reply, 0)

    def __delitem__(self, key: Any) -> None:
        kb = _key_bytes(key)
        reply = self._call(self._node_of(kb), _pb().DictRequest.DELETE, [kb])
        if not reply.found[0]:
            raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        try:
            kb = _key_bytes(key)
        except TypeError:
            return False
        return bool(self._call(self._node_of(kb), _pb().DictRequest.GET_MANY, [kb], found_only=True).found[0])

    def __len__(self) -> int:
        return sum(self.shard_lengths().values())

    def shard_lengths(self) -> Dict[str, int]:
        """{node: how many keys its shard holds}, in the order of ``nodes`` (how evenly the keys
        spread; a lost node makes it fail naming that node, as every call for its shard does)."""
        length = _pb().DictRequest.LENGTH
        return {node: self._call(node, length).count for node in self._nodes}

    def node_of(self, key: Any) -> str:
        """The node whose shard holds (or would hold) `key`."""
        return self._node_of(_key_bytes(key))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def keys(self) -> List[Any]:  # type: ignore[override]
        """Every key, shard by shard (a snapshot: a list, not a view)."""
        out: List[Any] = []
        for node in self._nodes:
            out.extend(pickle.loads(k) for k in self._call(node, _pb().DictRequest.KEYS).keys)
        return out

    def items(self) -> List[Tuple[Any, Any]]:  # type: ignore[override]
        """Every (key, value), fetched in batches per shard (a snapshot list). A key deleted
        between the listing and the fetch is left out."""
        out: List[Tuple[Any, Any]] = []
        pb = _pb()
        for node in self._nodes:
            kbs = list(self._call(node, pb.DictRequest.KEYS).keys)
            for chunk in _chunks(kbs, BATCH_ITEMS):
                reply = self._get(node, pb.DictRequest.GET_MANY, chunk)
                found = [kb for kb, there in zip(chunk, reply.found) if there]
                out.extend((pickle.loads(kb), self._value(node, reply, i)) for i, kb in enumerate(found))
        return out

    def values(self) -> List[Any]:  # type: ignore[override]
        return [v for _, v in self.items()]

    def update(self, other: Any = (), **kwargs: Any) -> None:  # type: ignore[override]
        """Stores many items in one request per shard (and per BATCH_BYTES/BATCH_ITEMS)."""
        items: Iterable[Tuple[Any, Any]] = other.items() if hasattr(other, "items") else other
        # Every key is checked and every item pickled before anything is sent. The loop is the
        # cost of a large update (about 1.4 us an item before it was tightened): no per-item
        # method calls, the shard by index (_node_of's rule), no crc32 for one shard.
        nodes = self._nodes
        count = len(nodes)
        dumps, crc32, key_bytes = pickle.dumps, zlib.crc32, _key_bytes
        by_node: List[List[Tuple[bytes, bytes]]] = [[] for _ in nodes]
        only = by_node[0] if count else None  # (a Dictionary always has a node)
        for key, value in itertools.chain(items, kwargs.items()):
            kb = key_bytes(key)
            (by_node[crc32(kb) % count] if count > 1 else only).append((kb, dumps(value, protocol=5)))
        for node, pairs in zip(nodes, by_node):
            start, size = 0, 0
            for i, (kb, vb) in enumerate(pairs):
                n = len(kb) + len(vb)
                if i > start and (size + n > BATCH_BYTES or i - start >= BATCH_ITEMS):
                    self._put(node, pairs[start:i])
                    start, size = i, 0
                size += n
            if start < len(pairs):
                self._put(node, pairs[start:])

    def clear(self) -> None:
        """Removes every item: each shard is freed even when another's node cannot be reached
        (its values went with its agent, or stay until it answers); then DictionaryError names
        the shards that were not freed and why."""
        failed: List[str] = []
        for node in self._nodes:
            try:
                self._call(node, _pb().DictRequest.DESTROY)
            except DictionaryError as e:
                failed.append(str(e))
        if failed:
            raise DictionaryError(f"{len(failed)} of {len(self._nodes)} shard(s) not freed: " + "; ".join(failed))

    # ------------------------------------------------------------ lifetime
    @property
    def nodes(self) -> Tuple[str, ...]:
        return self._nodes

    def close(self) -> None:
        """The Dictionary's creator (the object Dictionary() returned) frees every shard; a reference
        unpickled anywhere closes only itself. A shard whose node is lost is not freed (its values
        went with its agent): the others are, and DictionaryError names it."""
        if self._closed:
            return
        try:
            if self._owner:
                self.clear()  # frees every shard it can reach, then names those it could not
        finally:
            # Closed whatever happened: a lost node's shard cannot be freed by a retry, and the
            # others are already gone.
            self._closed = True

    def __enter__(self) -> "Dictionary":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Dictionary {self._id} over {len(self._nodes)} node(s)>"


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _reopen(dict_id: str, nodes: Tuple[str, ...], creator: Tuple[str, int], timeout: float) -> Dictionary:
    d = Dictionary.__new__(Dictionary)
    d._socket = None
    d._timeout = timeout
    d._nodes = tuple(nodes)
    d._id = dict_id
    d._creator = tuple(creator)
    d._owner = False
    d._closed = False
    d._local_plane = None
    return d
