"""dragon_parsl.client_data_plane without a head or agents: the client's own pool and UCX data
plane start in this process (UCX_TLS=tcp,self), the pool's file is gone from its directory at
once, the pool is what shm_pool_path.attach returns for its path, the publication carries what
agents need, and stop() leaves no thread; a start that fails warns once and is not tried again.
The agents' side (pulls from and pushes into this pool) is Catch2's
(client/client_data_plane_test) and, across hosts, tests/test_shm_cross_node.py's."""
from __future__ import annotations

import logging
import os
import time

import pytest

from dragon_parsl import client_data_plane, shm_pool_path
from dragon_parsl._proto import head_pb2


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture
def pool_dir(tmp_path, monkeypatch):
    d = tmp_path / "shm"
    d.mkdir()
    monkeypatch.setattr(client_data_plane.shm, "DEFAULT_DIR", str(d))
    monkeypatch.setenv("UCX_TLS", "tcp,self")
    return d


@pytest.mark.timeout(60)
def test_the_client_plane_starts_once_publishes_and_stops_without_a_trace(pool_dir):
    published = []

    def publish(request):
        published.append(request)
        return head_pb2.DataPeer(peer_id=f"client-{request.session_id}", session_id=request.session_id)

    threads_before = _threads()
    plane = client_data_plane.ClientDataPlane("test", 64, publish)
    # The head is never dialled by the directory until an agent pushes: any address will do.
    place = plane.place(7, "127.0.0.1:1", None, None)
    assert place is not None and place.node == "client-7" and place.own
    assert plane.place(7, "127.0.0.1:1", None, None) is place and len(published) == 1  # started once
    assert list(pool_dir.iterdir()) == []  # its file went as soon as it was mapped
    (request,) = published
    peer = request.peer
    assert request.session_id == 7 and peer.pid == os.getpid() and peer.ucx_address and peer.shm_pool_rkey
    assert peer.shm_pool_address and peer.shm_pool_bytes == 64 << 20
    pool = shm_pool_path.attach(place.path)  # the client's own pool, though its file is gone
    ref = pool.allocate(1 << 20)
    memoryview(pool.block(ref))[:5] = b"hello"
    assert bytes(memoryview(pool.block(ref))[:5]) == b"hello"
    pool.free(ref)
    assert plane.running
    plane.stop()
    assert not plane.running
    deadline = time.monotonic() + 5
    while _threads() > threads_before + 1 and time.monotonic() < deadline:  # UCX may keep one
        time.sleep(0.05)
    assert _threads() <= threads_before + 1
    assert list(pool_dir.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_client_plane_that_cannot_start_warns_once_and_sends_inline(pool_dir, caplog):
    def refuse(request):
        raise RuntimeError("head says no")

    plane = client_data_plane.ClientDataPlane("test", 16, refuse)
    with caplog.at_level(logging.WARNING, logger="dragon_parsl.executor"):
        assert plane.place(3, "127.0.0.1:1", None, None) is None
        assert plane.place(3, "127.0.0.1:1", None, None) is None
    warnings = [r for r in caplog.records if "could not start" in r.getMessage()]
    assert len(warnings) == 1 and "head says no" in warnings[0].getMessage()
    assert plane.failed and not plane.running
    assert list(pool_dir.iterdir()) == []  # the pool it made went with it
