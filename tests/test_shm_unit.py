"""Unit tests of the shared-memory data path (dragon_parsl.shm; its files path,
dragon_parsl.shm_files) without any binary: envelope encoding, files, the worker's
handling of envelopes, fallbacks and errors. The end-to-end behaviour with real dragond, agents and workers is in
test_shm_data_path.py."""
from __future__ import annotations

import errno
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from parsl.app.errors import RemoteExceptionWrapper
from parsl.serialize import deserialize

from dragon_parsl import SharedMemoryError, shm, shm_files, worker
from dragon_parsl.worker import APP_EXCEPTION, RESULT, serialize_parts

THRESHOLD = 64 * 1024


@pytest.fixture
def client_dir(tmp_path):
    d = shm_files.ClientDirectory(str(tmp_path), THRESHOLD)
    yield d
    d.remove()


def add_one(a):
    return a + 1


def func_part(func=add_one) -> shm.Part:
    return shm.Part.from_parsl(serialize_parts(func))


def run_body(payload: bytes) -> bytes:
    """A worker RUN body (empty cwd) around a payload."""
    return (0).to_bytes(4, "little") + payload


def frame_body_bytes(body) -> bytes:
    return b"".join(bytes(p) for p in body) if isinstance(body, list) else bytes(body)


def raised_by(body) -> BaseException:
    wrapper = deserialize(frame_body_bytes(body))
    assert isinstance(wrapper, RemoteExceptionWrapper)
    with pytest.raises(BaseException) as info:
        wrapper.reraise()
    return info.value


# ---------------------------------------------------------------- envelopes
def test_envelope_header_round_trip():
    header = shm.encode_header(host="h/b", dir="/dev/shm/x", threshold=10, file="/dev/shm/x/a1", size=99,
                               parts=[{"ser": "02", "body": [0, 5], "buffers": [[64, 30]]}])
    assert header.startswith(shm.MAGIC) and header.endswith(b"\n") and header.count(b"\n") == 2
    env = shm.decode_envelope(header)
    assert (env.host, env.reply_dir, env.threshold, env.file, env.size) == ("h/b", "/dev/shm/x", 10,
                                                                          "/dev/shm/x/a1", 99)
    assert env.parts == [{"ser": "02", "body": [0, 5], "buffers": [[64, 30]]}]
    assert bytes(env.inline) == b""


def test_envelope_without_file_carries_a_classic_payload():
    payload = shm.encode_header(host="h/b", dir="/d", threshold=10) + b"3\nabc"
    env = shm.decode_envelope(payload)
    assert env.file == "" and env.parts == [] and bytes(env.inline) == b"3\nabc"
    assert shm.is_envelope(payload) and not shm.is_envelope(b"12\n02\n...")  # Parsl payloads start with a digit


def test_malformed_envelope_is_a_clear_error():
    with pytest.raises(SharedMemoryError, match="malformed"):
        shm.decode_envelope(shm.MAGIC + b"{not json\n")


# ---------------------------------------------------------------- serialization and files
def test_large_numpy_buffers_go_out_of_band_small_ones_stay_in_band():
    class Box:  # not plain data: pickled by dill, still with out-of-band buffers
        def __init__(self, a):
            self.a = a

    big = np.arange(THRESHOLD // 8 + 1, dtype=np.float64)
    part = shm.serialize_data(Box(big), THRESHOLD)
    assert part.identifier == b"02" and len(part.buffers) == 1 and part.buffers[0].nbytes == big.nbytes

    big, small = np.arange(THRESHOLD // 8 + 1, dtype=np.float64), np.arange(10.0)
    part = shm.serialize_data((big, small, "text"), THRESHOLD)
    assert part.identifier == b"01" and len(part.buffers) == 1  # plain data: the C pickler
    assert part.buffers[0].nbytes == big.nbytes and len(part.body) < 1000
    assert not shm.serialize_data((small,), THRESHOLD).buffers


def test_file_round_trip_is_aligned_zero_copy_and_copy_on_write(tmp_path):
    a = np.random.default_rng(0).random((300, 300))
    parts = [shm.serialize_data((a, {"k": a[:2]}), THRESHOLD), shm.serialize_data({"x": 1}, THRESHOLD)]
    path = str(tmp_path / "f")
    size, descriptors = shm_files.write_parts(path, parts)
    assert os.path.getsize(path) == size
    assert all(off % 64 == 0 for d in descriptors for off, _ in d["buffers"])
    env = shm.Envelope(host=shm.host_identity(), file=path, size=size, parts=descriptors)
    (got, extra), kwargs = shm.load_parts(env, shm_files.map_file(path, size, env.host))
    assert np.array_equal(got, a) and np.array_equal(extra["k"], a[:2]) and kwargs == {"x": 1}
    assert got.flags.writeable
    got += 1  # the mapping is private: the file keeps the original
    (again, _), _ = shm.load_parts(env, shm_files.map_file(path, size, env.host))
    assert np.array_equal(again, a)


def test_missing_file_names_the_path(tmp_path):
    path = str(tmp_path / "gone")
    with pytest.raises(SharedMemoryError, match="does not exist") as info:
        shm_files.map_file(path, 10, "h/b")
    assert path in str(info.value)


# ---------------------------------------------------------------- client -> worker -> client
def test_task_round_trip_through_the_worker(client_dir):
    a = np.ones(THRESHOLD)  # 512 KiB
    payload, arg_file = client_dir.pack_task(func_part(), (a,), {}, allow_file=True)
    assert arg_file is not None and os.path.dirname(arg_file) == client_dir.path
    assert len(payload) < 2000  # an envelope, not the data
    rtype, body = worker._run_one(run_body(payload), task_id=7)
    assert rtype == RESULT
    assert shm.is_envelope(body)  # the large result came back through the client's directory
    value = client_dir.load_result(body)
    assert np.array_equal(value, a + 1)
    client_dir.discard(arg_file)
    assert client_dir.data_files() == []  # result file unlinked once mapped, argument file discarded
    c = client_dir.counters
    assert (c.args_shm_tasks, c.results_shm, c.args_inline_tasks, c.args_fallbacks) == (1, 1, 0, 0)


def test_small_task_is_inline_with_a_reply_header(client_dir):
    payload, arg_file = client_dir.pack_task(func_part(), (41,), {}, allow_file=True)
    assert arg_file is None and shm.is_envelope(payload)
    assert shm.decode_envelope(payload).reply_dir == client_dir.path
    rtype, body = worker._run_one(run_body(payload))
    assert rtype == RESULT and worker.deserialize_view(frame_body_bytes(body)) == 42
    assert client_dir.counters.args_inline_tasks == 1


def test_arguments_inline_when_agents_may_be_elsewhere(client_dir):
    a = np.ones(THRESHOLD)
    payload, arg_file = client_dir.pack_task(func_part(), (a,), {}, allow_file=False)
    assert arg_file is None and len(payload) > a.nbytes and client_dir.data_files() == []
    rtype, body = worker._run_one(run_body(payload), task_id=3)
    assert rtype == RESULT and np.array_equal(client_dir.load_result(body), a + 1)


def test_write_failure_falls_back_to_inline_with_one_warning(tmp_path, caplog):
    def full_tmpfs(path, pieces):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    d = shm_files.ClientDirectory(str(tmp_path), THRESHOLD, writer=full_tmpfs)
    a = np.arange(THRESHOLD, dtype=np.float64)
    with caplog.at_level(logging.WARNING, logger="dragon_parsl.shm_files"):
        payload, arg_file = d.pack_task(func_part(), (a,), {"b": a[:10]}, allow_file=True)
    assert arg_file is None and d.counters.args_fallbacks == 1 and d.counters.args_inline_tasks == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No space left" in warnings[0].getMessage()
    (f, args, kwargs), _ = worker._load_task(memoryview(payload))
    assert np.array_equal(args[0], a) and np.array_equal(kwargs["b"], a[:10])
    d.remove()


def test_result_that_cannot_be_written_goes_inline(tmp_path):
    env = shm.Envelope(host=shm.host_identity(), reply_dir=str(tmp_path / "no-such-dir"), threshold=THRESHOLD)
    assert shm_files.write_result(env, np.ones(THRESHOLD), task_id=1) is None  # worker.py then sends it inline


def test_result_goes_inline_when_the_client_is_on_another_host(tmp_path):
    env = shm.Envelope(host="elsewhere/other-boot", reply_dir=str(tmp_path), threshold=THRESHOLD)
    assert shm_files.write_result(env, np.ones(THRESHOLD), task_id=1) is None and os.listdir(tmp_path) == []


def test_worker_on_another_host_fails_the_task_naming_host_and_path(client_dir, monkeypatch):
    payload, arg_file = client_dir.pack_task(func_part(), (np.ones(THRESHOLD),), {}, allow_file=True)
    monkeypatch.setattr(shm, "_host_identity", "elsewhere/other-boot")
    rtype, body = worker._run_one(run_body(payload))
    assert rtype == APP_EXCEPTION
    error = raised_by(body)
    assert isinstance(error, SharedMemoryError)
    assert arg_file in str(error) and "elsewhere/other-boot" in str(error) and "shm_threshold=0" in str(error)


def test_worker_reports_a_missing_argument_file(client_dir):
    payload, arg_file = client_dir.pack_task(func_part(), (np.ones(THRESHOLD),), {}, allow_file=True)
    os.unlink(arg_file)
    rtype, body = worker._run_one(run_body(payload))
    error = raised_by(body)
    assert rtype == APP_EXCEPTION and isinstance(error, SharedMemoryError) and arg_file in str(error)


def test_result_file_outside_the_directory_is_refused(client_dir, tmp_path):
    envelope = shm.encode_header(host=shm.host_identity(), file="/etc/passwd", size=1,
                                 parts=[{"ser": "02", "body": [0, 1], "buffers": []}])
    with pytest.raises(SharedMemoryError, match="not in this executor's directory"):
        client_dir.load_result(envelope)
    assert os.path.exists("/etc/passwd")


# ---------------------------------------------------------------- directories
def test_directories_of_dead_clients_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    user = shm_files._safe_user()
    stale = tmp_path / f"dragon-{user}-{dead.pid}.12345-abcd"
    reused_pid = tmp_path / f"dragon-{user}-{os.getpid()}.1-abcd"  # our pid, but another start time
    other_user = tmp_path / f"dragon-someoneelse-{dead.pid}.12345-abcd"
    for d in (stale, reused_pid, other_user):
        d.mkdir()
        (d / "a1").write_bytes(b"x")
    live = shm_files.ClientDirectory(str(tmp_path), THRESHOLD)
    assert sorted(live.swept) == sorted([str(stale), str(reused_pid)])
    assert not stale.exists() and not reused_pid.exists() and other_user.exists()
    assert shm_files.sweep_stale_directories(str(tmp_path)) == []  # the live client's directory stays
    assert os.path.isdir(live.path)
    live.remove()
    assert not os.path.exists(live.path)


# ---------------------------------------------------------------- which agents may read argument files
class _FakeHeadStub:
    """Stands in for the head's ListNodes (unit test of the executor's policy only)."""

    def __init__(self, nodes=None, error=None):
        self.nodes, self.error, self.calls = nodes or [], error, 0

    def ListNodes(self, request, timeout):
        from dragon_parsl._proto import head_pb2
        self.calls += 1
        if self.error is not None:
            raise self.error
        return head_pb2.ListNodesReply(nodes=self.nodes)


def _node(host, pid, state="ready"):
    from dragon_parsl._proto import head_pb2
    return head_pb2.NodeInfo(node_id=host, host=host, agent_pid=pid, state=state)


@pytest.mark.parametrize("nodes, error, expected", [
    ([("self", "me")], None, True),
    ([("self", "me"), ("self", "me")], None, True),
    ([("self", "me"), ("other-host", "me")], None, False),  # one agent elsewhere: every argument inline
    ([("self", "me"), ("other-host", "me", "lost")], None, True),  # a lost agent runs nothing
    ([("self", "me"), ("other-host", "me", "gone")], None, True),  # nor one that left
    ([("self", "me"), ("other-host", "me", "draining")], None, False),  # it still runs tasks
    ([("self", "me", "joining"), ("other-host", "me", "joining")], None, False),
    ([("self", "no-such-pid")], None, False),  # same name, but its agent is not a process here
    ([], None, False),  # no agent yet: nothing is known
    ([("self", "me")], RuntimeError("head busy"), False),
])
def test_arguments_use_shm_only_when_every_agent_is_on_this_host(nodes, error, expected, monkeypatch):
    import socket

    from dragon_parsl import DragonExecutor
    hostname = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pids = {"me": os.getpid(), "no-such-pid": dead.pid}
    stub = _FakeHeadStub([_node(hostname if h == "self" else h, pids[p], *rest) for h, p, *rest in nodes], error)
    ex = DragonExecutor(address="127.0.0.1:1")
    monkeypatch.setattr(ex, "_stub", lambda: stub)
    assert (ex._local_agents() is not None) is expected
    assert (ex._local_agents() is not None) is expected and stub.calls == 1  # the answer is kept for a while


def test_result_of_an_unknown_task_is_deleted_unread(client_dir):
    rtype, body = worker._run_one(run_body(client_dir.pack_task(func_part(), (np.ones(THRESHOLD),), {},
                                                                allow_file=True)[0]), task_id=9)
    assert any(name.startswith("r9-") for name in client_dir.data_files())
    client_dir.discard_result(body)
    assert not any(name.startswith("r9-") for name in client_dir.data_files())


# ---------------------------------------------------------------- plain data
class IntSubclass(int):
    pass


@pytest.mark.timeout(30)
@pytest.mark.parametrize("value, plain", [
    (1, True), (2.5, True), ("s", True), (b"b", True), (None, True), (True, True),
    ((1, "a", [2.0, None]), True), ({"k": (1, 2), 3: b"x"}, True),
    (np.arange(10), True), (np.array([object()], dtype=object), False),
    (IntSubclass(3), False), ({(1, 2): 3}, False), (add_one, False),
    (list(range(65)), False), ([[[[1]]]], False), ({1, 2}, False),
])
def test_plain_data_is_exactly_the_builtin_values(value, plain):
    assert shm.is_plain_data(value) is plain


@pytest.mark.timeout(30)
@pytest.mark.parametrize("value", [7, (1, "a", None), {"x": [1.5, b"y"]}, np.arange(12.0).reshape(3, 4),
                                   IntSubclass(3), {1, 2}, add_one])
def test_plain_and_dill_parts_read_back_the_same_value(value):
    parts = serialize_parts(value)
    expect_plain = shm.is_plain_data(value)
    assert (parts[0] == b"01\n") is expect_plain
    back = worker.deserialize_view(b"".join(parts))
    if isinstance(value, np.ndarray):
        assert np.array_equal(back, value)
    elif callable(value):
        assert back(1) == 2
    else:
        assert back == value and type(back) is type(value)
    part = shm.serialize_data(value, 1 << 62) if not callable(value) else None
    if part is not None:
        assert (part.identifier == b"01") is expect_plain
        assert shm.deserialize_part(part.identifier, part.body, part.buffers) == value \
            if not isinstance(value, np.ndarray) else True


@pytest.mark.timeout(30)
def test_the_empty_arguments_are_made_once_and_read_back_as_before():
    # No arguments and no keyword arguments, most small tasks: parts made once, each call its own.
    for empty in ((), {}):
        first, again = shm.serialize_data(empty, THRESHOLD), shm.serialize_data(type(empty)(), THRESHOLD)
        assert first is not again and first.buffers is not again.buffers and not again.buffers
        assert (first.identifier, first.body) == (again.identifier, again.body) == (b"01", pickle.dumps(empty, 5))
        assert shm.deserialize_part(again.identifier, again.body, again.buffers) == empty
        assert type(shm.deserialize_part(again.identifier, again.body, again.buffers)) is type(empty)
    # Not empty, or a subclass: serialized each time, as before.
    assert shm.deserialize_part(*_fields(shm.serialize_data((1,), THRESHOLD))) == (1,)
    assert type(shm.deserialize_part(*_fields(shm.serialize_data(IntTuple(), THRESHOLD)))) is IntTuple


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [
    (1,), (1, "a", 2.5, None, b"x", True, 3j), tuple(range(8)),  # the shortcut: up to 8 scalars
    tuple(range(9)), (IntSubclass(3),), ((1, 2),), (np.arange(3),), (add_one,),  # the general path
])
def test_a_tuple_of_scalars_gives_the_general_paths_bytes(args):
    # serialize_data's shortcut for the arguments of small tasks must be byte for byte what the
    # general path makes, and read back the same (subclasses and nested values take the general path).
    fast, general = shm.serialize_data(args, THRESHOLD), shm._serialize_data(args, THRESHOLD)
    assert (fast.identifier, fast.body) == (general.identifier, general.body)
    assert [bytes(b) for b in fast.buffers] == [bytes(b) for b in general.buffers]
    back = shm.deserialize_part(*_fields(fast))
    assert len(back) == len(args) and [type(x) for x in back] == [type(x) for x in args]


@pytest.mark.timeout(30)
def test_a_large_scalar_argument_still_counts_as_large():
    # The shortcut puts nothing out of band (a scalar has no buffer), so a large bytes argument
    # shows by its body's size and still goes to shared memory.
    part = shm.serialize_data((b"x" * THRESHOLD, 1), THRESHOLD)
    assert part.identifier == b"01" and not part.buffers and shm.is_large(part, THRESHOLD)


def _fields(part):
    return part.identifier, part.body, part.buffers


class IntTuple(tuple):
    pass


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", [-1, "64k", 1.5, True])
def test_a_bad_shm_threshold_is_refused_naming_the_option(bad):
    from dragon_parsl import DragonExecutor

    with pytest.raises(ValueError, match=r"shm_threshold must be a byte count >= 0"):
        DragonExecutor(shm_threshold=bad)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("option, bad, message", [
    ("shm_path", "shm", r"shm_path must be \"pool\" .* or \"files\""),
    ("shm_path", None, r"shm_path must be"),
    ("shm_pool_wait_s", -1, r"shm_pool_wait_s must be a number of seconds in \[0, 3600\]"),
    ("shm_pool_wait_s", "10", r"shm_pool_wait_s must be"),
    ("shm_pool_wait_s", True, r"shm_pool_wait_s must be"),
])
def test_bad_pool_options_are_refused_naming_the_option(option, bad, message):
    from dragon_parsl import DragonExecutor

    with pytest.raises(ValueError, match=message):
        DragonExecutor(**{option: bad})


def test_layout_keeps_small_bodies_inline_so_a_power_of_two_array_fills_its_block_exactly():
    a = np.ones(1 << 18)  # 2 MiB
    parts = [func_part(), shm.serialize_data((a,), THRESHOLD), shm.serialize_data({}, THRESHOLD)]
    pieces, descriptors, size = shm.layout(parts, THRESHOLD)
    assert size == a.nbytes  # only the array's buffer is in the block
    assert all("ibody" in d and "body" not in d for d in descriptors)
    inline = shm.inline_bodies(parts, THRESHOLD)
    assert len(inline) == sum(len(p.body) for p in parts)
    block = memoryview(bytearray(b"".join(bytes(p) for p in pieces)))
    envelope = shm.Envelope(host="h", parts=descriptors, inline=memoryview(inline))
    f, args, kwargs = shm.load_parts(envelope, block)
    assert np.array_equal(args[0], a) and kwargs == {}
    big_body = shm.Part(b"01", b"x" * THRESHOLD)  # a body this large goes into the block
    _, descriptors, size = shm.layout([big_body], THRESHOLD)
    assert "body" in descriptors[0] and size == THRESHOLD


# ---------------------------------------------------------------- across nodes (issue 14): a fake data plane
# Two real pools in a temporary directory stand for the client's node ("n1") and the worker's
# ("n2"); _core.agent_pull/agent_push are replaced by copies between them (the agents' UCX
# transfer is tested by test_shm_cross_node.py on the test bed). The worker is made to see
# another host by its host identity.
CLIENT_HOST, WORKER_HOST = shm.host_identity(), "n2-host/other-boot"


def data_plane_error(code: str, message: str) -> RuntimeError:
    """Like _core.DataPlaneError: a RuntimeError with the gRPC code as .code and in its message."""
    error = RuntimeError(f"agent pull from node n1 failed: {code}: {message}")
    error.code = code
    return error


class _FakeDataPlane:
    def __init__(self, pools: dict, here: str):
        self.pools, self.here, self.calls = pools, here, []
        self.fail_with = None

    def _copy(self, src: str, dst: str, ref: bytes, size: int, owner: int) -> bytes:
        from dragon_parsl import shm_pool_path
        if self.fail_with is not None:
            raise self.fail_with
        source, dest = shm_pool_path.attach(self.pools[src]), shm_pool_path.attach(self.pools[dst])
        new = dest.allocate(size, 0.0, owner)
        memoryview(dest.block(new))[:size] = memoryview(source.block(ref))[:size]
        return new

    def agent_pull(self, sock, node, ref, size, owner, timeout_s):
        self.calls.append(("pull", node, size, owner))
        return self._copy(node, self.here, ref, size, owner)

    def agent_push(self, sock, node, ref, size, owner, timeout_s):
        self.calls.append(("push", node, size, owner))
        return self._copy(self.here, node, ref, size, owner)


@pytest.fixture
def two_nodes(tmp_path, monkeypatch):
    """(client PoolDataPath with its PoolPlace on n1, the fake data plane, {node: pool}); the
    worker's environment is n2's (DRAGON_SHM_POOL, DRAGON_AGENT_DATA_SOCKET, DRAGON_NODE_ID)."""
    from dragon_parsl import _core, shm_pool_path
    pools = {n: _core.ShmPool.create(str(tmp_path), f"pool-{n}", 64 << 20) for n in ("n1", "n2")}
    paths = {n: p.path for n, p in pools.items()}
    plane = _FakeDataPlane(paths, "n2")
    monkeypatch.setattr(_core, "agent_pull", plane.agent_pull, raising=False)
    monkeypatch.setattr(_core, "agent_push", plane.agent_push, raising=False)
    monkeypatch.setenv(shm.NODE_ENV, "n2")
    monkeypatch.setenv(shm.POOL_ENV, paths["n2"])
    monkeypatch.setenv(shm.DATA_SOCKET_ENV, str(tmp_path / "data.sock"))
    monkeypatch.setattr(shm_pool_path, "worker_counters", shm.Counters())
    client = shm_pool_path.PoolDataPath(THRESHOLD)
    yield client, shm_pool_path.PoolPlace(paths["n1"], "n1"), plane, pools
    for p in pools.values():
        shm_pool_path.forget(p.path)
        p.close()


def run_as_worker_on_n2(payload: bytes, monkeypatch):
    monkeypatch.setattr(shm, "_host_identity", WORKER_HOST)
    try:
        return worker._run_one(run_body(payload), task_id=5)
    finally:
        monkeypatch.setattr(shm, "_host_identity", CLIENT_HOST)


def ones(n):
    return np.ones(n)


def test_envelopes_name_their_node_and_old_ones_still_decode():
    env = shm.decode_envelope(shm.encode_header(host="h/b", pool="/dev/shm/p", ref="ab", node="n1", from_node="n2"))
    assert (env.node, env.from_node, env.pool, env.ref) == ("n1", "n2", "/dev/shm/p", "ab")
    old = shm.decode_envelope(shm.encode_header(host="h/b", pool="/dev/shm/p", ref="ab", client=7))
    assert (old.node, old.from_node, old.client) == ("", "", 7)


@pytest.mark.timeout(60)
def test_arguments_are_pulled_and_a_large_result_pushed_across_nodes(two_nodes, monkeypatch):
    client, place, plane, pools = two_nodes
    a = np.random.default_rng(1).random(THRESHOLD)
    payload, block = client.pack_task(func_part(), (a,), {}, place)
    assert block == (place.path, block[1]) and shm.decode_envelope(payload).node == "n1"
    rtype, body = run_as_worker_on_n2(payload, monkeypatch)
    assert rtype == RESULT, raised_by(body)
    me = os.getpid()
    assert plane.calls == [("pull", "n1", a.nbytes, me), ("push", "n1", a.nbytes, me)]
    # The pulled copy and the local result block are gone; the pushed block is the client's.
    assert pools["n2"].stats()["blocks_in_use"] == 0
    envelope = shm.decode_envelope(frame_body_bytes(body))
    assert (envelope.host, envelope.pool, envelope.node, envelope.from_node) == (CLIENT_HOST, place.path, "n1", "n2")
    client.discard(block)
    assert np.array_equal(client.load_result(frame_body_bytes(body)), a + 1)
    assert pools["n1"].stats()["blocks_in_use"] == 0
    from dragon_parsl import shm_pool_path
    w, c = shm_pool_path.worker_counters, client.counters
    assert (w.args_pulled, w.results_pushed, w.results_push_fallbacks) == (1, 1, 0)
    assert (c.args_shm_tasks, c.results_shm, c.results_pushed) == (1, 1, 1)


@pytest.mark.timeout(60)
def test_a_failed_push_sends_the_result_inline_and_frees_the_local_block(two_nodes, monkeypatch, caplog):
    client, place, plane, pools = two_nodes
    payload, block = client.pack_task(func_part(ones), (THRESHOLD,), {}, place)  # small arguments: inline
    assert block is None
    plane.fail_with = data_plane_error("UNAVAILABLE", "node n1 is lost")
    with caplog.at_level(logging.WARNING, logger="dragon_parsl.shm_pool_path"):
        rtype, body = run_as_worker_on_n2(payload, monkeypatch)
    assert rtype == RESULT and not shm.is_envelope(frame_body_bytes(body))  # inline: never lost
    assert np.array_equal(worker.deserialize_view(frame_body_bytes(body)), np.ones(THRESHOLD))
    assert plane.calls == [("push", "n1", THRESHOLD * 8, os.getpid())]
    assert "could not be pushed to node n1" in caplog.text and "UNAVAILABLE" in caplog.text
    from dragon_parsl import shm_pool_path
    assert shm_pool_path.worker_counters.results_push_fallbacks == 1
    assert pools["n2"].stats()["blocks_in_use"] == 0 and pools["n1"].stats()["blocks_in_use"] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["no socket", "source has none", "pull fails"])
def test_worker_that_cannot_fetch_arguments_fails_the_task_saying_why(two_nodes, monkeypatch, case):
    client, place, plane, pools = two_nodes
    payload, block = client.pack_task(func_part(), (np.ones(THRESHOLD),), {}, place)
    if case == "no socket":
        monkeypatch.delenv(shm.DATA_SOCKET_ENV)
    elif case == "source has none":
        plane.fail_with = data_plane_error("NOT_FOUND", "node n1 has no data plane (no pool, or --noucx)")
    else:
        plane.fail_with = data_plane_error("RESOURCE_EXHAUSTED", "pool full (--shm-pool-mb)")
    rtype, body = run_as_worker_on_n2(payload, monkeypatch)
    error = raised_by(body)
    assert rtype == APP_EXCEPTION and isinstance(error, SharedMemoryError), error
    text = str(error)
    assert place.path in text and "node n1" in text, text
    if case == "pull fails":
        assert "could not be pulled" in text and "RESOURCE_EXHAUSTED" in text
    else:
        assert "node n2" in text and "no data plane" in text and "shm_threshold=0" in text and "--noucx" in text
        assert (shm.DATA_SOCKET_ENV in text) is (case == "no socket")
    assert pools["n2"].stats()["blocks_in_use"] == 0
    client.discard(block)
    assert pools["n1"].stats()["blocks_in_use"] == 0


def _pool_node(host, pid, data_socket="", state="ready"):
    from dragon_parsl._proto import head_pb2
    return head_pb2.NodeInfo(node_id=f"node-{host}-{data_socket or 'x'}", host=host, agent_pid=pid, state=state,
                             shm_pool_path=f"/dev/shm/pool-{host}", data_socket=data_socket)


@pytest.mark.parametrize("nodes, pool, files", [
    ([("self", "")], "/dev/shm/pool-self", True),                                     # all local
    ([("self", ""), ("other-host", "/s")], None, False),                     # no data plane here: inline
    ([("self", "/s"), ("other-host", "/s")], "/dev/shm/pool-self", False),   # the local pool, pulled elsewhere
    ([("other-host", "/s")], None, False),                                   # a login node: inline
    ([("self", "/s"), ("other-host", "/s"), ("third-host", "")], None, False),  # one node could not pull
])
def test_client_uses_its_local_pool_with_agents_elsewhere_only_with_a_data_plane(nodes, pool, files, monkeypatch):
    import socket

    from dragon_parsl import DragonExecutor, shm_pool_path
    hostname = socket.gethostname()
    stub = _FakeHeadStub([_pool_node(hostname if h == "self" else h, os.getpid(), s) for h, s in nodes])
    ex = DragonExecutor(address="127.0.0.1:1")
    monkeypatch.setattr(ex, "_stub", lambda: stub)
    ex.shm = shm_pool_path.PoolDataPath(THRESHOLD)
    place = ex._task_data_place()
    assert (place.path if place else None) == (pool and pool.replace("self", hostname))
    assert place is None or place.node.startswith(f"node-{hostname}")
    ex.shm = shm_files.ClientDirectory.__new__(shm_files.ClientDirectory)  # the files path's policy
    assert ex._task_data_place() is files and stub.calls == 1
