"""How DragonExecutor fails: bad address, protocol mismatch, resource specs, payload limits,
payloads the worker cannot unpickle. Integration tests use the real binaries; the handshake
against a tiny in-test gRPC server is in test_transport_unit.py."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from parsl import python_app
from parsl.executors.errors import InvalidResourceSpecification

from conftest import head_and_dfk, start_head, stop_head, wait_for

from dragon_parsl import DragonExecutor, HeadNotFound, HeadUnreachable, PayloadTooLarge, ProtocolMismatch
from dragon_parsl import TaskTooLarge, connection
from dragon_parsl._proto import common_pb2


@python_app
def echo(x, parsl_resource_specification={}):
    return x


@python_app
def length(blob):
    return len(blob)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ addresses


@pytest.mark.timeout(60)
def test_unreachable_address_is_a_clear_error_at_start():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    ex = DragonExecutor(address=address, connect_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(HeadUnreachable) as info:
        ex.start()
    assert time.monotonic() - t0 < 15
    assert str(info.value).startswith(f"cannot reach dragond at {address}: ")


@pytest.mark.timeout(60)
def test_dragon_head_env_is_used(monkeypatch):
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("DRAGON_HEAD", address)
    ex = DragonExecutor(connect_timeout=1)
    with pytest.raises(HeadUnreachable, match=f"cannot reach dragond at {address}"):
        ex.start()
    assert ex.local_head is None  # $DRAGON_HEAD given: no embedded head


@pytest.mark.timeout(60)
def test_address_current_without_a_running_head(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAGON_HOME", str(tmp_path))
    with pytest.raises(HeadNotFound) as info:
        DragonExecutor(address="current").start()
    assert "no dragond is running" in str(info.value)
    assert str(tmp_path / "current" / "head.json") in str(info.value)


@pytest.mark.timeout(60)
def test_missing_dragond_binary(monkeypatch, tmp_path):
    monkeypatch.delenv("DRAGON_HEAD", raising=False)
    monkeypatch.setenv("DRAGON_BIN_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    from dragon_parsl import LocalHeadError
    with pytest.raises(LocalHeadError, match="cannot find dragond"):
        DragonExecutor(head_run_dir=str(tmp_path / "run")).start()


@pytest.mark.timeout(60)
def test_embedded_dragond_that_fails_to_start_reports_its_output(monkeypatch, tmp_path):
    fake = tmp_path / "dragond"
    fake.write_text("#!/bin/sh\necho 'dragond: cannot bind: it is a test' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.delenv("DRAGON_HEAD", raising=False)
    from dragon_parsl import LocalHeadError
    with pytest.raises(LocalHeadError) as info:
        DragonExecutor(dragond_path=str(fake), head_run_dir=str(tmp_path / "run")).start()
    assert "exited with code 3" in str(info.value)
    assert "cannot bind: it is a test" in str(info.value)


# ------------------------------------------------------------------ protocol version


# The handshake against an in-test gRPC head (a Welcome of another version, a refusal
# before any Welcome, UNAUTHENTICATED) is tested in test_transport_unit.py.


@pytest.mark.timeout(120)
def test_real_head_refuses_other_protocol_version(tmp_path, monkeypatch):
    head = start_head(tmp_path, "--workers", "1")
    try:
        monkeypatch.setattr(connection, "PROTOCOL_VERSION", 99)
        with pytest.raises(ProtocolMismatch) as info:
            DragonExecutor(address=head.address, token=head.token, connect_timeout=10).start()
        # The head answers with a Welcome carrying its own version: read from the field.
        assert info.value.head_version == common_pb2.PROTOCOL_VERSION_CURRENT
        msg = str(info.value)
        assert "version 99" in msg and f"version {common_pb2.PROTOCOL_VERSION_CURRENT}" in msg, msg
        assert head.address in msg, msg
        monkeypatch.undo()
        # The head is fine and serves a matching client afterwards.
        ex = DragonExecutor(address=head.address, token=head.token, connect_timeout=10)
        ex.start()
        ex.shutdown()
        assert head.proc.poll() is None
    finally:
        stop_head(head)


# ------------------------------------------------------------------ resource specification


@pytest.mark.timeout(120)
def test_unsupported_resource_specification(parsl_dfk):
    dfk, executor, head = parsl_dfk
    # Keys DragonExecutor does not know are refused, naming them and the keys it takes.
    with pytest.raises(InvalidResourceSpecification) as info:
        echo(1, parsl_resource_specification={"colour": 2, "flavour": 1}).result(timeout=30)
    assert info.value.invalid_keys == {"colour", "flavour"}
    assert "colour" in str(info.value) and "it takes: cores" in str(info.value)
    # A known key with a bad value is refused too, naming the key and the value.
    with pytest.raises(InvalidResourceSpecification) as info:
        echo(1, parsl_resource_specification={"cores": -1}).result(timeout=30)
    assert info.value.invalid_keys == {"cores"} and "not -1" in str(info.value)
    # Direct submit raises at once.
    with pytest.raises(InvalidResourceSpecification):
        executor.submit(len, {"walltime": "soon"}, "abc")
    # An empty specification is accepted, and so is a valid one.
    assert echo(5, parsl_resource_specification={}).result(timeout=30) == 5
    assert echo(6, parsl_resource_specification={"cores": 1, "walltime": 60}).result(timeout=30) == 6


# ------------------------------------------------------------------ payload size


@pytest.mark.timeout(120)
def test_payload_over_the_limit(worker_pythonpath, tmp_path):
    with head_and_dfk(tmp_path, ["--workers", "2", "--max-payload-mb", "1"],
                      shm_threshold=0) as (dfk, executor, head):
        # The limit is on bytes sent through gRPC: with the shared-memory path on, large
        # arguments would not go there at all (test_shm_data_path.py checks that).
        assert executor.max_payload_bytes == 1 << 20
        t0 = time.monotonic()
        with pytest.raises(PayloadTooLarge) as info:
            length(b"x" * (2 << 20)).result(timeout=30)
        assert time.monotonic() - t0 < 10
        assert info.value.limit == 1 << 20 and info.value.size > 2 << 20
        assert "larger than the 1048576 bytes" in str(info.value)
        assert "dragond --max-payload-mb" in str(info.value) and "shm_threshold" in str(info.value)
        assert isinstance(info.value, TaskTooLarge)
        # Just under the limit works.
        assert length(b"y" * 500_000).result(timeout=60) == 500_000
        # Without the client-side check the head refuses it itself (FAILURE_TOO_LARGE); the future
        # still fails, alone.
        executor.max_payload_bytes = 0
        executor.session._core.set_size_check(False)  # nor the client core's
        with pytest.raises(TaskTooLarge) as info2:
            length(b"z" * (2 << 20)).result(timeout=30)
        assert not isinstance(info2.value, PayloadTooLarge)  # the head's refusal, not the client's
        assert info2.value.failure == "FAILURE_TOO_LARGE"
        assert "exceeds" in str(info2.value) or "limit" in str(info2.value), str(info2.value)
        assert length(b"w" * 10).result(timeout=60) == 10


# ------------------------------------------------------------------ payload the worker cannot load


@pytest.mark.timeout(120)
def test_payload_the_worker_cannot_unpickle(parsl_dfk, tmp_path, monkeypatch):
    dfk, executor, head = parsl_dfk
    # A module only this client can import: the worker cannot unpickle a reference to it.
    private = tmp_path / "client_only"
    private.mkdir()
    (private / "client_only_mod.py").write_text(textwrap.dedent("""
        def triple(x):
            return 3 * x
    """))
    monkeypatch.syspath_prepend(str(private))
    import client_only_mod
    assert client_only_mod.triple(2) == 6
    fut = executor.submit(client_only_mod.triple, {}, 2)
    with pytest.raises(ModuleNotFoundError) as info:
        fut.result(timeout=60)
    assert "client_only_mod" in str(info.value)
    # An argument of a class the worker cannot import fails the same way.
    (private / "client_only_types.py").write_text("class Point:\n    x = 1\n")
    import client_only_types
    fut2 = executor.submit(repr, {}, client_only_types.Point())
    with pytest.raises(ModuleNotFoundError):
        fut2.result(timeout=60)
    # Head and workers survive: the next tasks work, on both workers.
    assert [f.result(timeout=60) for f in [echo(i) for i in range(10)]] == list(range(10))
    assert head.proc.poll() is None
    assert executor.connected_workers() == 2
    del sys.modules["client_only_mod"], sys.modules["client_only_types"]


@pytest.mark.timeout(60)
def test_submit_after_shutdown_raises(tmp_path):
    head = start_head(tmp_path, "--workers", "1")
    try:
        ex = DragonExecutor(address=head.address, token=head.token)
        ex.start()
        fut = ex.submit(sum, {}, [1, 2, 3])
        assert fut.result(timeout=30) == 6
        assert fut.dragon_task_id > 0
        ex.shutdown()
        assert not ex.session._receiver.is_alive()
        with pytest.raises(Exception, match="shut down|not started"):
            ex.submit(sum, {}, [1])
    finally:
        stop_head(head)


@pytest.mark.timeout(60)
def test_shutdown_with_outstanding_tasks_does_not_hang(tmp_path):
    head = start_head(tmp_path, "--workers", "1")
    try:
        ex = DragonExecutor(address=head.address, token=head.token)
        ex.start()
        futs = [ex.submit(time.sleep, {}, 30) for _ in range(3)]
        t0 = time.monotonic()
        ex.shutdown()
        assert time.monotonic() - t0 < 15
        for f in futs:
            assert f.done()
            assert f.exception() is not None
    finally:
        stop_head(head)



@pytest.mark.timeout(120)
def test_shutdown_in_a_flood_warns_of_no_unknown_results(tmp_path, caplog):
    """shutdown() fails the outstanding futures at once; the results of those tasks that the
    client core still hands over while the session closes are expected, not "unknown" (a
    warning per task: thousands of lines at the end of an interrupted flood). Logged at debug."""
    head = start_head(tmp_path, "--workers", "2")
    try:
        ex = DragonExecutor(address=head.address, token=head.token)
        ex.start()
        assert ex.submit(sum, {}, [1]).result(timeout=30) == 1
        futs = [ex.submit(sum, {}, [i]) for i in range(5000)]
        wait_for(lambda: sum(f.done() for f in futs) >= 500, 60, "the first 500 results")
        with caplog.at_level("DEBUG", logger="dragon_parsl"):
            ex.shutdown()
        assert all(f.done() for f in futs)
        ended = [f for f in futs if f.exception() is not None]
        assert ended, "shutdown came after every result: the test needs a longer flood"
        assert all("was shut down before task" in str(f.exception()) for f in ended)
        unknown = [r for r in caplog.records if "unknown client_ref" in r.getMessage()]
        assert not [r for r in unknown if r.levelname != "DEBUG"], unknown[:3]
    finally:
        stop_head(head)


@pytest.mark.timeout(120)
def test_workflow_that_exits_without_shutdown_exits_with_its_own_error(tmp_path):
    """A script whose first failed result ends it, with the executor never shut down and tasks
    still in flight, exits as Python does (its traceback, status 1): the receiver thread waiting
    in the client core at interpreter exit must not abort the process ("terminate called ...",
    status 134), and the embedded head it started goes away with it."""
    script = tmp_path / "no_shutdown.py"
    script.write_text(textwrap.dedent("""\
        import os
        from dragon_parsl import DragonExecutor
        ex = DragonExecutor(label="no_shutdown", workers_per_node=2, head_run_dir=os.environ["RUN_DIR"])
        ex.run_id = None; ex.run_dir = os.getcwd(); ex.log_config = None; ex.monitoring_messages = None
        ex.start()
        print("head pid", ex.local_head.proc.pid, flush=True)
        assert [f.result() for f in [ex.submit(abs, {}, -i) for i in range(50)]] == list(range(50))
        [f.result() for f in [ex.submit(abs, {}, "not a number") for _ in range(200)]]
        """))
    for attempt in range(3):  # the abort came at every exit; three tries make a pass meaningful
        run_dir = tmp_path / f"run{attempt}"
        p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=90, env={**os.environ, "RUN_DIR": str(run_dir)})
        assert p.returncode == 1, f"exit status {p.returncode}; stderr:\n{p.stderr[-3000:]}"
        assert "terminate called" not in p.stderr
        assert p.stderr.rstrip().endswith("TypeError: bad operand type for abs(): 'str'"), p.stderr[-3000:]
        head_pid = int(p.stdout.split("head pid", 1)[1].split()[0])
        wait_for(lambda: not pid_alive(head_pid), 30, f"the embedded head (pid {head_pid}) to exit")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
