"""dragon_parsl.comm.Dictionary on one node, end to end: a real dragond, its agent (the shard's
values in its pool, agent/dict_store.h), Parsl apps in real workers that read and write it, and
the workflow. Across nodes (four agents, 100,000 keys, a killed agent): test_comm_dict_cluster.py;
the agents' C++ underneath: agent/dict_store_test.cc, agent/agent_dictionary_test.cc."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time

import numpy as np
import pytest
from parsl import python_app

from conftest import head_and_dfk
from dragon_parsl import shm_pool_path
from dragon_parsl.comm import Dictionary, DictionaryError, default_pool

pytestmark = pytest.mark.timeout(240)


@python_app
def write_squares(d, lo, hi):
    d.update({i: i * i for i in range(lo, hi)})
    return hi - lo


@python_app
def read_and_tag(d, key):
    value = d[key]
    d[("seen", key)] = os.getpid()
    return value


@python_app
def array_sum(d, key):
    return float(d[key].sum())


@pytest.fixture(scope="module")
def dfk(worker_pythonpath_module, tmp_path_factory):
    with head_and_dfk(tmp_path_factory.mktemp("comm_dict")) as (dfk, executor, head):
        yield dfk

def agent_holds_values() -> bool:
    """Whether the pool has blocks owned by its agent: the Dictionary's values (nothing else of
    the agent's lives in its pool)."""
    pool = shm_pool_path.attach(default_pool())
    return pool.creator_pid in pool.owners()


def test_mapping_from_the_workflow(dfk):
    with Dictionary() as d:
        assert len(d.nodes) == 1
        d["a"] = 1
        d[("t", 2)] = {"nested": [1, 2, 3]}
        d[b"raw"] = None
        assert d["a"] == 1 and d[("t", 2)] == {"nested": [1, 2, 3]} and d[b"raw"] is None
        assert "a" in d and "zz" not in d and object() not in d
        assert len(d) == 3
        assert sorted(map(repr, d.keys())) == sorted(map(repr, ["a", ("t", 2), b"raw"]))
        d["a"] = "replaced"
        assert d["a"] == "replaced" and len(d) == 3
        del d["a"]
        with pytest.raises(KeyError):
            d["a"]
        with pytest.raises(KeyError):
            del d["a"]
        assert d.get("a", "default") == "default"
        with pytest.raises(TypeError, match="Dictionary keys are"):
            d[frozenset({1})] = 1
        assert agent_holds_values()
    assert not agent_holds_values()  # close() by the creator freed every value


def test_apps_read_and_write_it(dfk):
    d = Dictionary()
    try:
        counts = [write_squares(d, lo, lo + 2500) for lo in range(0, 20000, 2500)]
        assert sum(f.result(timeout=120) for f in counts) == 20000
        assert len(d) == 20000
        items = dict(d.items())
        assert len(items) == 20000 and all(items[i] == i * i for i in range(20000))
        got = [read_and_tag(d, k).result(timeout=60) for k in (3, 77, 19999)]
        assert got == [9, 77 * 77, 19999 * 19999]
        assert len(d) == 20003 and isinstance(d[("seen", 77)], int)
        # A value larger than many blocks: one block of its size, read by an app.
        big = np.arange(8 << 20, dtype=np.float64)  # 64 MiB
        d["big"] = big
        assert array_sum(d, "big").result(timeout=120) == float(big.sum())
        assert np.array_equal(d["big"], big)
    finally:
        d.close()
    assert not agent_holds_values()
    with pytest.raises(DictionaryError, match="closed"):
        d["x"] = 1


@python_app
def big_values_in_an_app(d, key):
    import os
    value = d[key]
    d[(key, "back")] = value[::-1]
    return len(value), os.getpid()


def test_large_values_of_this_nodes_shard_go_by_block(dfk):
    # BLOCK_VALUE_MIN and up: the writer's pool block is taken over by the agent (no copy through
    # the socket), a reader gets a copy in a block of its own that it frees once unpickled.
    from dragon_parsl import comm_dict
    pool = shm_pool_path.attach(default_pool())
    me = os.getpid()
    with Dictionary() as d:
        sizes = [comm_dict.BLOCK_VALUE_MIN - 100, comm_dict.BLOCK_VALUE_MIN, 3 << 20]
        values = {n: os.urandom(n) for n in sizes}
        for n, v in values.items():
            d[n] = v
        assert me not in pool.owners()  # every block it wrote is the agent's now
        for n, v in values.items():
            assert d[n] == v
        assert me not in pool.owners()  # each copy it read was freed
        blocks = pool.stats()["blocks_in_use"]
        assert 3 << 20 in d and "absent" not in d  # membership: no value sent, no block made
        assert pool.stats()["blocks_in_use"] == blocks
        d.update({("u", i): values[3 << 20] for i in range(3)})
        assert dict(d.items())[("u", 2)] == values[3 << 20]
        assert me not in pool.owners()
        length, app_pid = big_values_in_an_app(d, 3 << 20).result(timeout=60)
        assert length == 3 << 20 and app_pid != me
        assert d[(3 << 20, "back")] == values[3 << 20][::-1]
        assert app_pid not in pool.owners()

        # A put the agent refuses leaves no block behind.
        def refuse(*args, **fields):
            raise DictionaryError("refused by the test")
        d._call, call = refuse, d._call
        with pytest.raises(DictionaryError, match="refused by the test"):
            d["refused"] = values[3 << 20]
        d._call = call
        assert me not in pool.owners()
        assert "refused" not in d


def test_pickles_to_a_reference(dfk):
    with Dictionary() as d:
        d["k"] = "v"
        copy = pickle.loads(pickle.dumps(d))
        assert copy["k"] == "v" and copy.nodes == d.nodes
        copy.close()  # not the creator: only this handle closes
        assert d["k"] == "v"


def _write_and_check(d, tag, n=300):
    for i in range(n):
        d[(tag, i)] = (tag, i * i)
    return all(d[(tag, i)] == (tag, i * i) for i in range(n))


def _child(d, tag):
    os._exit(0 if _write_and_check(d, tag) else 3)


def test_threads_and_forked_children_each_use_their_own_connection(dfk):
    """The calls of a thread go on a connection it keeps (common/data_socket_client.h): threads at
    once, and children forked after the parent used it, must never share one (their replies would
    cross)."""
    with Dictionary() as d:
        d["parent"] = 1  # the parent's thread now holds a connection the children inherit
        ctx = multiprocessing.get_context("fork")
        children = [ctx.Process(target=_child, args=(d, f"child{i}")) for i in range(3)]
        for c in children:
            c.start()
        results = {}
        threads = [threading.Thread(target=lambda t=t: results.__setitem__(t, _write_and_check(d, t)))
                   for t in ("thread0", "thread1", "thread2")]
        for t in threads:
            t.start()
        assert _write_and_check(d, "main")
        for t in threads:
            t.join(timeout=120)
        for c in children:
            c.join(timeout=120)
        assert results == {"thread0": True, "thread1": True, "thread2": True}
        assert [c.exitcode for c in children] == [0, 0, 0]
        assert len(d) == 1 + 7 * 300 and d["parent"] == 1


def test_an_unknown_node_is_an_error_naming_it(dfk):
    d = Dictionary(nodes=["no-such-node"])
    with pytest.raises(DictionaryError, match="no-such-node"):
        d["x"] = 1


def test_a_pool_is_used_once_its_agent_has_finished_starting(tmp_path, monkeypatch):
    """An agent creates its pool before its data socket (<pool>.sock): a Dictionary made in
    between must wait for the agent's start-up (ShmPool.creator_ready), not call it "no data
    plane" (seen in CI right after an executor started). Here this process plays the agent."""
    from dragon_parsl import _core, comm_dict, shm
    from dragon_parsl.errors import SharedMemoryError
    for name in ("DRAGON_SHM_POOL", "DRAGON_AGENT_DATA_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(shm, "DEFAULT_DIR", str(tmp_path))
    pool = _core.ShmPool.create(str(tmp_path), f"dragon-pool-{os.geteuid()}-starting", 1 << 20)
    socket = pool.path + ".sock"
    try:
        assert not pool.creator_ready
        t0 = time.monotonic()
        with pytest.raises(SharedMemoryError, match=r"did not finish starting within 0.5 s.*see its log"):
            comm_dict.data_socket(wait_s=0.5)
        assert time.monotonic() - t0 >= 0.45

        def start_services():  # the socket first, then the mark, as agent/main.cc does
            time.sleep(0.3)
            open(socket, "w").close()
            pool.mark_creator_ready()

        starter = threading.Thread(target=start_services)
        t0 = time.monotonic()
        starter.start()
        assert comm_dict.data_socket(wait_s=10) == socket
        assert 0.25 <= time.monotonic() - t0 < 5
        starter.join()

        os.unlink(socket)  # started, and no data plane (--noucx): said at once, not after wait_s
        t0 = time.monotonic()
        with pytest.raises(SharedMemoryError, match="has no data plane.*--noucx"):
            comm_dict.data_socket(wait_s=10)
        assert time.monotonic() - t0 < 2
    finally:
        shm_pool_path.forget(pool.path)
        pool.close()


def _recording_dictionary(nodes):
    """A Dictionary whose requests are recorded instead of sent (the routing and batching of
    update() alone; no agent)."""
    from dragon_parsl import comm_dict
    d = comm_dict.Dictionary.__new__(comm_dict.Dictionary)
    d._nodes, d._closed, d._id, d._timeout, d._local_plane = tuple(nodes), False, "t", 1.0, ("", None)
    sent = []
    d._put = lambda node, pairs: sent.append((node, list(pairs)))
    return d, sent


def test_update_routes_each_key_to_its_shard_and_splits_large_requests(monkeypatch):
    from dragon_parsl import comm_dict
    monkeypatch.setattr(comm_dict, "BATCH_ITEMS", 7)
    monkeypatch.setattr(comm_dict, "BATCH_BYTES", 400)
    d, sent = _recording_dictionary(["n0", "n1", "n2"])
    items = {f"k{i}": i for i in range(40)}
    d.update(items, extra=b"x" * 300, more=b"y" * 300)
    got = {}
    for node, pairs in sent:
        assert 1 <= len(pairs) <= 7, (node, len(pairs))
        # Over the byte limit only as a single item that is itself larger.
        assert sum(len(k) + len(v) for k, v in pairs) <= 400 or len(pairs) == 1
        for kb, vb in pairs:
            assert d._node_of(kb) == node  # the same shard a get of that key asks
            got[pickle.loads(kb)] = pickle.loads(vb)
    assert got == {**items, "extra": b"x" * 300, "more": b"y" * 300}
    # One node: everything to it, in order.
    d, sent = _recording_dictionary(["only"])
    d.update((i, -i) for i in range(10))
    assert [pickle.loads(k) for _, pairs in sent for k, _ in pairs] == list(range(10))
    assert {node for node, _ in sent} == {"only"}


def test_update_with_a_bad_key_sends_nothing():
    d, sent = _recording_dictionary(["n0", "n1"])
    with pytest.raises(TypeError, match="Dictionary keys are str, bytes"):
        d.update([("fine", 1), (("ok", object()), 2)])
    assert sent == []
