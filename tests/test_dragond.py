"""dragond itself: its command line, daemon start/stop, and bad input on its streams.

The head must refuse what is wrong with a message that names it, keep serving
everyone else, and leave no process behind when it stops, even when a worker
ignores SIGTERM.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from conftest import binary, processes_of_run, start_head, stop_head, wait_for
from dragon_parsl._proto import agent_pb2, agent_pb2_grpc, common_pb2, head_pb2, head_pb2_grpc

TESTS_DIR = Path(__file__).resolve().parent


def dragond(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([binary("dragond"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def home_env(tmp_path: Path) -> dict:
    env = dict(os.environ, DRAGON_HOME=str(tmp_path / "home"),
               PYTHONPATH=str(TESTS_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("DRAGON_HEAD", None)
    return env


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["start", "--port", "99999"], "--port 99999 is not in 0..65535"),
    (["start", "--workers", "-3"], "--workers -3 is not in 0..4096"),
    (["start", "--agents", "cloud"], "--agents 'cloud' is not supported"),
    (["start", "--keep-finished", "-2"], "--keep-finished -2 is not valid"),
    (["launch"], "unknown command 'launch'"),
    ([], "expected one command"),
])
def test_bad_command_lines_exit_2_with_a_reason(tmp_path, args, message):
    cp = dragond(*args, env=home_env(tmp_path))
    assert cp.returncode == 2, cp
    assert message in cp.stderr
    assert not (tmp_path / "home" / "current").exists()


@pytest.mark.timeout(60)
def test_help_lists_the_flags(tmp_path):
    cp = dragond("--help", env=home_env(tmp_path))
    text = cp.stdout + cp.stderr
    for flag in ("foreground", "port", "workers", "run_dir", "exit_with_parent", "head",
                 "keep_finished"):
        assert flag in text, flag


@pytest.mark.timeout(60)
def test_stop_without_a_head_says_so(tmp_path):
    cp = dragond("stop", env=home_env(tmp_path))
    assert cp.returncode == 1
    assert "no dragond is running" in cp.stderr


@pytest.mark.timeout(120)
def test_daemon_start_status_stop_leaves_nothing(tmp_path):
    env = home_env(tmp_path)
    cp = dragond("start", "--workers", "2", "--python", sys.executable, env=env)
    assert cp.returncode == 0, cp.stderr
    assert "dragond: head listening on 127.0.0.1:" in cp.stdout
    info = json.loads((tmp_path / "home" / "current" / "head.json").read_text())
    run_dir = Path(info["run_dir"])
    try:
        def workers_up():
            st = subprocess.run([binary("dragonctl"), "status", "--json"], env=env,
                                capture_output=True, text=True, timeout=30)
            return st.returncode == 0 and json.loads(st.stdout)["workers"] == 2
        wait_for(workers_up, 60, "2 workers through dragonctl status")
        # A second head cannot take over a run directory that is in use.
        again = dragond("start", "--run-dir", str(run_dir), env=env)
        assert again.returncode == 1
        assert f"already running in {run_dir}" in again.stderr
    finally:
        stop = dragond("stop", env=env)
    assert stop.returncode == 0, stop.stderr
    assert f"stopped head {info['run_id']}" in stop.stdout
    wait_for(lambda: not processes_of_run(run_dir), 15, "the run's processes to exit")
    assert not (run_dir / "head.json").exists()
    assert not (tmp_path / "home" / "current").exists()
    assert "dragond stopped" in (run_dir / "dragond.log").read_text()


@pytest.mark.timeout(120)
def test_a_second_start_leaves_the_first_head_reachable(tmp_path):
    """`dragond start` twice: the second takes $DRAGON_HOME/current and says that the first
    still runs and how to reach it; stopping the second points `current` back at the first, so
    dragonctl and `dragond stop` find it; with `current` gone, both name it instead of saying
    that no head runs."""
    env = home_env(tmp_path)
    home = tmp_path / "home"
    first = dragond("start", "--agents", "none", env=env)
    assert first.returncode == 0, first.stderr
    first_info = json.loads((home / "current" / "head.json").read_text())
    second_info = None
    try:
        second = dragond("start", "--agents", "none", env=env)
        assert second.returncode == 0, second.stderr
        second_info = json.loads((home / "current" / "head.json").read_text())
        assert second_info["run_id"] != first_info["run_id"]
        assert (f"the head of run {first_info['run_id']} at {first_info['address']} still runs"
                in second.stderr), second.stderr
        assert f"--run-dir {first_info['run_dir']}" in second.stderr

        stop = dragond("stop", env=env)
        assert stop.returncode == 0, stop.stderr
        assert f"stopped head {second_info['run_id']}" in stop.stdout
        assert os.readlink(home / "current") == first_info["run_dir"]
        st = subprocess.run([binary("dragonctl"), "--json", "status"], env=env, capture_output=True,
                            text=True, timeout=30)
        assert st.returncode == 0, st.stderr
        assert first_info["run_id"] in st.stdout

        (home / "current").unlink()  # gone by hand: the head is named, not denied
        for cmd in ([binary("dragonctl"), "status"], [binary("dragond"), "stop"]):
            cp = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
            assert cp.returncode == 1
            assert "no current dragond" in cp.stderr, cp.stderr
            assert (f"run {first_info['run_id']} at {first_info['address']} "
                    f"(--run-dir {first_info['run_dir']}" in cp.stderr), cp.stderr
    finally:
        for info in (first_info, second_info):
            if info is not None and (Path(info["run_dir"]) / "head.json").exists():
                dragond("stop", "--run-dir", info["run_dir"], env=env)
    wait_for(lambda: not processes_of_run(Path(first_info["run_dir"])), 15, "the first head to exit")
    assert not (home / "current").exists()


@pytest.mark.timeout(60)
def test_port_in_use_is_a_clear_error(tmp_path):
    h = start_head(tmp_path, "--agents", "none")
    try:
        port = h.address.rsplit(":", 1)[1]
        cp = dragond("start", "--foreground", "--agents", "none", "--port", port,
                     "--run-dir", str(tmp_path / "second"), env=h.env)
        assert cp.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in cp.stderr
    finally:
        stop_head(h)


# Protocol version 2 (proto/common.proto PROTOCOL_VERSION_CURRENT) since issue 10.
PROTOCOL = 2


def _session_stub(head) -> head_pb2_grpc.HeadServiceStub:
    """The head's client service over a channel carrying the run's token."""
    return head_pb2_grpc.HeadServiceStub(head.channel())


@pytest.mark.timeout(60)
def test_malformed_streams_are_refused_and_the_head_keeps_serving(tmp_path):
    h = start_head(tmp_path, "--agents", "none")
    try:
        stub = _session_stub(h)
        # A session that starts with a submission instead of Hello.
        first = head_pb2.ClientMessage(submit=head_pb2.SubmitBatch())
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Session(iter([first]), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "first message of a session must be Hello" in err.value.details()
        # A Hello, then a second Hello.
        hello = head_pb2.ClientMessage(hello=head_pb2.Hello(protocol_version=PROTOCOL, cwd="/"))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Session(iter([hello, hello]), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # An agent that registers with no workers, and one with no node id.
        agents = agent_pb2_grpc.AgentServiceStub(h.channel())
        for reg, text in [(agent_pb2.Register(protocol_version=PROTOCOL, node_id="x", workers=0), "0 workers"),
                          (agent_pb2.Register(protocol_version=PROTOCOL, workers=2), "without node_id"),
                          (agent_pb2.Register(protocol_version=7, node_id="y", workers=1), "protocol version 7")]:
            with pytest.raises(grpc.RpcError) as err:
                list(agents.Connect(iter([agent_pb2.AgentMessage(register=reg)]), timeout=10))
            assert text in err.value.details()
        # Unknown task ids and states over the control RPCs.
        with pytest.raises(grpc.RpcError) as err:
            stub.GetTask(head_pb2.GetTaskRequest(task_id=424242), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.ListTasks(head_pb2.ListTasksRequest(state=77), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The head is still fine.
        assert stub.Status(head_pb2.StatusRequest(), timeout=10).protocol_version == PROTOCOL
    finally:
        stop_head(h)


@pytest.mark.timeout(60)
def test_bad_submissions_fail_alone(tmp_path):
    """An empty payload and an unknown kind come back as failures; the session goes on."""
    h = start_head(tmp_path, "--agents", "none", "--max-payload-mb", "1")
    try:
        stub = _session_stub(h)
        msgs = [
            head_pb2.ClientMessage(hello=head_pb2.Hello(protocol_version=PROTOCOL, cwd="/")),
            head_pb2.ClientMessage(submit=head_pb2.SubmitBatch(tasks=[
                head_pb2.TaskSubmission(client_ref=1, kind=common_pb2.PYTHON, payload=b""),
                head_pb2.TaskSubmission(client_ref=2, kind=common_pb2.TaskKind.Value("TASK_KIND_UNSPECIFIED"),
                                        payload=b"x"),
                head_pb2.TaskSubmission(client_ref=3, kind=common_pb2.PYTHON, payload=b"y" * (2 << 20)),
                head_pb2.TaskSubmission(client_ref=4, kind=common_pb2.PYTHON, payload=b"ok"),
            ])),
        ]
        gate = iter(msgs)
        results = {}
        accepted = []
        call = stub.Session(gate, timeout=20)
        for reply in call:
            if reply.HasField("accepted"):
                accepted.extend(reply.accepted.client_refs)
            for r in reply.results.results:
                results[r.client_ref] = r.result
            if len(results) == 3 and accepted:
                call.cancel()
                break
        assert accepted == [4]  # queued: no agent to run it
        assert "empty payload" in results[1].error
        assert "not supported" in results[2].error
        # Since issue 10 the refusal names the size, the limit and the option, with its own kind.
        assert ("its payload is 2097152 bytes, more than the head's limit of 1048576 bytes per task "
                "(dragond --max-payload-mb)") in results[3].error
        assert all(r.outcome == common_pb2.SYSTEM_ERROR for r in results.values())
        assert [results[ref].failure for ref in (1, 2, 3)] == [
            common_pb2.FAILURE_REFUSED, common_pb2.FAILURE_REFUSED, common_pb2.FAILURE_TOO_LARGE]
        status = h.ctl_json("status")
        assert int(status["tasks_by_state"]["FAILED"]) == 3
    finally:
        stop_head(h)


def ignore_sigterm_and_sleep_task(marker):
    import os
    import signal
    import time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


@pytest.mark.timeout(120)
def test_a_worker_that_ignores_sigterm_does_not_hold_up_stop(tmp_path, worker_pythonpath):
    import parsl
    from parsl import python_app
    from parsl.config import Config
    from dragon_parsl import DragonExecutor

    h = start_head(tmp_path, "--workers", "1")
    marker = tmp_path / "pid"
    dfk = None
    try:
        # Inside the try: a DFK that fails to load (a refused token, ...) must not leave the head.
        dfk = parsl.load(Config(executors=[DragonExecutor(address=h.address, token=h.token)],
                                run_dir=str(tmp_path / "runinfo"), strategy="none"))
        fut = python_app(ignore_sigterm_and_sleep_task)(str(marker))
        wait_for(marker.exists, 60, "the stubborn task to start")
        worker_pid = int(marker.read_text())
        started = time.monotonic()
        stop_head(h, timeout=30)
        assert time.monotonic() - started < 20
        wait_for(lambda: not os.path.exists(f"/proc/{worker_pid}") or
                 open(f"/proc/{worker_pid}/stat").read().split(") ", 1)[1].startswith("Z"),
                 10, f"worker {worker_pid} to be killed")
        assert not processes_of_run(h.run_dir)
        with pytest.raises(Exception):
            fut.result(timeout=30)  # the head went away: the future fails, it does not hang
    finally:
        try:
            if dfk is not None:
                dfk.cleanup()
                parsl.clear()
        finally:
            stop_head(h)
