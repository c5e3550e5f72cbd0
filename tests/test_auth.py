"""Authentication and TLS against the real dragond, dragon-agent, workers and dragonctl.

Issue 10, "Authentication, on by default": a Parsl client (DragonExecutor), dragonctl and an
agent without the run's token or with a wrong one are refused with UNAUTHENTICATED and a
message saying where the token is read from, while the head keeps serving everyone else and
logs the refusal with the peer's address; every RPC and stream checks the token; the token is
on no process's command line and in no worker's environment; the run directory is 0700 and
the token file 0600; `--auth none` turns it off; TLS with a CA made here (openssl).

No mocks: every test starts real binaries, and an autouse fixture checks that no process of
the test's directory is left running afterwards.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from conftest import binary, start_head, stop_head, wait_for, wait_for_workers
from dragon_parsl import DragonExecutor
from dragon_parsl._proto import agent_pb2, agent_pb2_grpc, common_pb2, head_pb2, head_pb2_grpc
from dragon_parsl.errors import AuthenticationFailed, HeadUnreachable

TOKEN_ENV_VARS = ("DRAGON_TOKEN", "DRAGON_HEAD", "DRAGON_TLS_CA")
WRONG_TOKEN = "0" * 64
REFUSAL_LOG = r"refused a request from ipv4:127\.0\.0\.1:\d+: it carried {}"


# ---------------------------------------------------------------- helpers


def live_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().split(") ", 1)[-1][:1]
        except OSError:
            continue
        if state != "Z":
            pids.append(int(entry.name))
    return pids


def read_proc(pid: int, what: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:
        return b""


def cmdline(pid: int) -> str:
    return read_proc(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def environ(pid: int) -> list[str]:
    return [e.decode(errors="replace") for e in read_proc(pid, "environ").split(b"\0") if e]


def processes_under(directory: Path) -> dict[int, str]:
    """Live processes (not this one) whose command line or environment mentions `directory`."""
    needle = str(directory).encode()
    found = {}
    for pid in live_pids():
        if pid == os.getpid():
            continue
        if needle in read_proc(pid, "cmdline") or needle in read_proc(pid, "environ"):
            found[pid] = cmdline(pid)
    return found


@pytest.fixture(autouse=True)
def nothing_left_running(tmp_path):
    """After each test: no process of the test's directory (heads, agents, workers) is left."""
    yield
    deadline = time.monotonic() + 15
    left = processes_under(tmp_path)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_under(tmp_path)
    for pid in left:  # started by this test (they name its directory): do not leak them
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes of the test still running 15 s after it ended: {left}"


@pytest.fixture
def no_credentials(tmp_path, monkeypatch) -> Path:
    """This process finds no token and no head by itself: $DRAGON_HOME is an empty directory,
    $DRAGON_TOKEN, $DRAGON_HEAD and $DRAGON_TLS_CA are unset. Returns that $DRAGON_HOME."""
    home = tmp_path / "empty-dragon-home"
    home.mkdir()
    monkeypatch.setenv("DRAGON_HOME", str(home))
    for name in TOKEN_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return home


def bare_env(tmp_path: Path, **extra: str) -> dict:
    """An environment for a subprocess that finds no token (nor head) unless `extra` gives one."""
    env = dict(os.environ, DRAGON_HOME=str(tmp_path / "empty-dragon-home"))
    for name in TOKEN_ENV_VARS:
        env.pop(name, None)
    env.update(extra)
    return env


def run_ctl(env: dict, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([binary("dragonctl"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def node_ids(head) -> dict[str, str]:
    """node id -> state, from `dragonctl nodes`."""
    return {n["node_id"]: n["state"] for n in head.ctl_json("nodes")["nodes"]}


def shut_down(*executors) -> None:
    for ex in executors:
        if ex is None:
            continue
        try:
            ex.shutdown()
        except Exception:  # noqa: BLE001 (a refused executor has nothing to shut down)
            pass


def dragond_log(head) -> str:
    return (head.run_dir / "dragond.log").read_text(errors="replace")


def make_certs(directory: Path, names: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate it signed, for IP:127.0.0.1, DNS:localhost and
    this host's name: (ca.pem, head.pem, head.key)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=dragon test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "head.key", "-out", "head.csr",
            "-subj", "/CN=localhost")
    sans = ["IP:127.0.0.1", "DNS:localhost"] + [f"DNS:{n}" for n in names]
    (directory / "san.ext").write_text(f"subjectAltName={','.join(sans)}\n")
    openssl("x509", "-req", "-in", "head.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "head.pem", "-days", "1", "-extfile", "san.ext")
    (directory / "head.key").chmod(0o600)
    return directory / "ca.pem", directory / "head.pem", directory / "head.key"


# ---------------------------------------------------------------- the Parsl client


@pytest.mark.timeout(120)
def test_parsl_client_without_or_with_wrong_token_is_refused(tmp_path, no_credentials, monkeypatch):
    head = start_head(tmp_path, "--workers", "2")
    token_path = str(head.run_dir / "token")
    good = no_token = wrong = env_wrong = None
    try:
        wait_for_workers(head, 2)
        good = DragonExecutor(address=head.address, token=head.token, label="good")
        good.start()
        assert good.credentials.token_source == "DragonExecutor(token=...)"
        # A task of the good client is running while the others are refused.
        running = good.submit(time.sleep, {}, 2)
        wait_for(lambda: head.ctl_json("ps", "--state", "running")["tasks"], 30, "the task to run")

        # No token anywhere: not given, no $DRAGON_TOKEN, no head.json under $DRAGON_HOME.
        no_token = DragonExecutor(address=head.address, token=None, label="no-token", connect_timeout=10)
        t0 = time.monotonic()
        with pytest.raises(AuthenticationFailed) as info:
            no_token.start()
        assert time.monotonic() - t0 < 10
        e = info.value
        assert f"dragond at {head.address} refused this client: dragond refused the request: " \
               f"it carried no token" in str(e), str(e)
        # where tokens are read from (the head's words) ...
        assert "$DRAGON_TOKEN" in e.detail and token_path in e.detail, e.detail
        # ... and where this client looked (its own)
        assert e.token_source.startswith("no token found"), e.token_source
        assert str(no_credentials) in e.token_source and "DragonExecutor(token=...)" in e.token_source
        assert no_token.session is None

        # A wrong token given to the executor.
        wrong = DragonExecutor(address=head.address, token=WRONG_TOKEN, label="wrong-token")
        with pytest.raises(AuthenticationFailed) as info:
            wrong.start()
        e = info.value
        assert "it carried a wrong token" in str(e) and token_path in str(e), str(e)
        assert e.token_source == "DragonExecutor(token=...)"
        assert WRONG_TOKEN not in str(e) and head.token not in str(e)  # never in an error

        # A wrong token in $DRAGON_TOKEN: the error says that is where it came from.
        monkeypatch.setenv("DRAGON_TOKEN", "f" * 64)
        env_wrong = DragonExecutor(address=head.address, label="env-wrong-token")
        with pytest.raises(AuthenticationFailed) as info:
            env_wrong.start()
        assert "it carried a wrong token" in str(info.value)
        assert info.value.token_source == "$DRAGON_TOKEN"
        monkeypatch.delenv("DRAGON_TOKEN")

        # The good client was not touched: its task finishes, its session is whole, it runs more.
        assert running.result(timeout=30) is None
        futures = [good.submit(abs, {}, -i) for i in range(200)]
        assert [f.result(timeout=60) for f in futures] == list(range(200))
        assert good.session.broken is None
        assert head.proc.poll() is None

        # The head logged each refusal with the peer's address, and never a token.
        log = dragond_log(head)
        assert re.search(REFUSAL_LOG.format("no token"), log), log
        assert len(re.findall(REFUSAL_LOG.format("a wrong token"), log)) >= 2, log
        assert head.token not in log and WRONG_TOKEN not in log and "f" * 64 not in log
    finally:
        shut_down(good, no_token, wrong, env_wrong)
        stop_head(head)


@pytest.mark.timeout(120)
def test_every_rpc_and_stream_checks_the_token(head):
    """Raw gRPC, no dragon_parsl transport: every HeadService method and the agents' stream,
    without a token, with a wrong one and with a malformed header, is UNAUTHENTICATED; a refused
    Shutdown does not stop the head."""
    wait_for_workers(head, 2)
    unary = {
        "Status": head_pb2.StatusRequest(),
        "ListNodes": head_pb2.ListNodesRequest(),
        "ListTasks": head_pb2.ListTasksRequest(),
        "GetTask": head_pb2.GetTaskRequest(task_id=1),
        "Cancel": head_pb2.CancelRequest(task_id=1),
        "DrainNode": head_pb2.DrainNodeRequest(node_id="x"),
        "Shutdown": head_pb2.ShutdownRequest(),
    }
    metadata_cases = [
        ("carried no token", None),
        ("carried a wrong token", [("authorization", "Bearer " + WRONG_TOKEN)]),
        # the right secret without the "Bearer " scheme is not accepted either
        ("carried a wrong token", [("authorization", head.token)]),
    ]
    with grpc.insecure_channel(head.address) as channel:
        stub = head_pb2_grpc.HeadServiceStub(channel)
        for problem, metadata in metadata_cases:
            for method, request in unary.items():
                with pytest.raises(grpc.RpcError) as info:
                    getattr(stub, method)(request, metadata=metadata, timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, info.value)
                assert info.value.details().startswith(f"dragond refused the request: it {problem};")
                assert str(head.run_dir / "token") in info.value.details()
            # The streams: a client's session and an agent's connection.
            hello = head_pb2.ClientMessage(hello=head_pb2.Hello(
                protocol_version=common_pb2.PROTOCOL_VERSION_CURRENT, client_name="raw"))
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Session(iter([hello]), metadata=metadata, timeout=10))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value
            register = agent_pb2.AgentMessage()
            register.register.node_id = "intruder"
            register.register.protocol_version = common_pb2.PROTOCOL_VERSION_CURRENT
            with pytest.raises(grpc.RpcError) as info:
                list(agent_pb2_grpc.AgentServiceStub(channel).Connect(iter([register]), metadata=metadata,
                                                                      timeout=10))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value
        # With the token, the same channel works.
        ok = [("authorization", "Bearer " + head.token)]
        assert stub.Status(head_pb2.StatusRequest(), metadata=ok, timeout=10).auth is True
    assert head.proc.poll() is None, "a Shutdown without the token stopped the head"
    assert "intruder" not in node_ids(head)


# ---------------------------------------------------------------- dragonctl


@pytest.mark.timeout(60)
def test_dragonctl_without_or_with_wrong_token(head, tmp_path):
    token_path = str(head.run_dir / "token")
    cp = run_ctl(bare_env(tmp_path), "--head", head.address, "status")
    assert (cp.returncode, cp.stdout) == (1, ""), cp
    assert cp.stderr.startswith("dragonctl: dragond refused the request: it carried no token; "), cp.stderr
    assert "$DRAGON_TOKEN" in cp.stderr and token_path in cp.stderr, cp.stderr

    cp = run_ctl(dict(head.env, DRAGON_TOKEN=WRONG_TOKEN), "status")
    assert (cp.returncode, cp.stdout) == (1, ""), cp
    assert cp.stderr.startswith("dragonctl: dragond refused the request: it carried a wrong token; "), cp.stderr
    assert token_path in cp.stderr and "came from $DRAGON_TOKEN" in cp.stderr, cp.stderr
    assert WRONG_TOKEN not in cp.stderr

    assert run_ctl(head.env, "status").returncode == 0  # the run's own token: found, accepted


# ---------------------------------------------------------------- agents


def agent_command(head, node_id: str, *extra: str) -> list[str]:
    return [binary("dragon-agent"), "--head", head.address, "--node-id", node_id, "--run-dir",
            str(head.run_dir), "--workers", "1", "--python", sys.executable, "--connect-timeout", "10",
            *extra]


def agent_log(head, node_id: str) -> str:
    path = head.run_dir / f"agent-{node_id}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def refused_agent(head, tmp_path, node_id: str, *extra: str, **env: str) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    cp = subprocess.run(agent_command(head, node_id, *extra), env=bare_env(tmp_path, **env),
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode != 0, cp
    assert time.monotonic() - t0 < 5, "a refused agent must exit at once, not retry"
    assert node_id not in node_ids(head)
    return cp


def stop_agent(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("dragon-agent did not exit within 20 s of SIGTERM")


@pytest.mark.timeout(120)
def test_agent_without_or_with_wrong_token_is_refused(tmp_path):
    head = start_head(tmp_path, "--agents", "none")
    agents: list[subprocess.Popen] = []
    try:
        # No token: none in $DRAGON_TOKEN, no --token-file.
        cp = refused_agent(head, tmp_path, "no-token")
        log = agent_log(head, "no-token")
        for text in (log, cp.stderr):
            assert "refused this agent: dragond refused the request: it carried no token" in text, text
            assert "this agent had no token: none in $DRAGON_TOKEN or --token-file" in text, text
        assert "token none" in log  # the agent's first line says it has none

        # A wrong token in $DRAGON_TOKEN.
        cp = refused_agent(head, tmp_path, "wrong-token", DRAGON_TOKEN=WRONG_TOKEN)
        log = agent_log(head, "wrong-token")
        for text in (log, cp.stderr):
            assert "refused this agent: dragond refused the request: it carried a wrong token" in text, text
            assert "this agent sent the token it was given" in text, text
        assert WRONG_TOKEN not in log

        # A --token-file other users may read: refused before connecting, naming the file.
        token_file = tmp_path / "agent-token"
        token_file.write_text(head.token + "\n")
        token_file.chmod(0o644)
        cp = refused_agent(head, tmp_path, "loose-file", "--token-file", str(token_file))
        for text in (agent_log(head, "loose-file"), cp.stderr):
            assert f"the token file {token_file} is accessible to other users (mode 0644)" in text, text
            assert f"chmod 600 {token_file}" in text, text

        log = dragond_log(head)
        assert re.search(REFUSAL_LOG.format("no token"), log), log
        assert re.search(REFUSAL_LOG.format("a wrong token"), log), log
        assert node_ids(head) == {}

        # The right token in $DRAGON_TOKEN: the agent registers and its node becomes ready.
        agents.append(subprocess.Popen(agent_command(head, "env-token"),
                                       env=bare_env(tmp_path, DRAGON_TOKEN=head.token),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # ... and from a 0600 --token-file.
        token_file.chmod(0o600)
        agents.append(subprocess.Popen(agent_command(head, "file-token", "--token-file", str(token_file)),
                                       env=bare_env(tmp_path),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: node_ids(head) == {"env-token": "ready", "file-token": "ready"}, 60,
                 f"both agents to be ready (nodes: {node_ids(head)})")
        # (the log is flushed every second)
        wait_for(lambda: "token given" in agent_log(head, "env-token"), 10, "the agent's log")
        for proc in agents:
            assert proc.poll() is None
    finally:
        for proc in agents:
            stop_agent(proc)
        stop_head(head)


# ---------------------------------------------------------------- where the token is (not)


@pytest.mark.timeout(120)
def test_token_is_on_no_command_line_and_not_in_workers_environment(head, tmp_path):
    wait_for_workers(head, 2)
    token = head.token.encode()
    run = {pid: cmdline(pid) for pid in live_pids()
           if str(head.run_dir).encode() in read_proc(pid, "cmdline")
           or f"DRAGON_RUN_DIR={head.run_dir}".encode() in read_proc(pid, "environ").split(b"\0")}
    workers = [pid for pid, cmd in run.items() if "dragon_parsl.worker" in cmd]
    agents = [pid for pid, cmd in run.items() if "dragon-agent" in cmd]
    assert len(workers) == 2 and len(agents) == 1 and head.proc.pid in run, run

    # No process at all (of this run or any other) has the token on its command line.
    on_cmdline = [(pid, cmdline(pid)) for pid in live_pids() if token in read_proc(pid, "cmdline")]
    assert on_cmdline == []

    # Workers (and what their tasks start) never see it: the agent took it out of its environment.
    for pid in workers:
        env = environ(pid)
        assert f"DRAGON_RUN_DIR={head.run_dir}" in env
        assert not [e for e in env if e.startswith("DRAGON_TOKEN=")], (pid, env)
        assert token not in read_proc(pid, "environ")
    # Nor does the agent's own environment keep it: it scrubs the value it was handed, so
    # /proc/PID/environ of no process shows the token.
    in_environ = [pid for pid in live_pids() if token in read_proc(pid, "environ")]
    assert in_environ == [], {pid: cmdline(pid) for pid in in_environ}


@pytest.mark.timeout(120)
def test_a_task_does_not_see_the_token(no_credentials, head):
    executor = DragonExecutor(address=head.address, token=head.token)
    executor.start()
    try:
        futures = [executor.submit(os.getenv, {}, "DRAGON_TOKEN") for _ in range(4)]
        assert [f.result(timeout=60) for f in futures] == [None] * 4
    finally:
        executor.shutdown()


# ---------------------------------------------------------------- files


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.timeout(120)
def test_run_dir_and_token_file_modes(tmp_path):
    head = start_head(tmp_path, "--workers", "1")
    try:
        token_path = head.run_dir / "token"
        assert mode(head.run_dir) == 0o700
        assert mode(token_path) == 0o600
        assert token_path.stat().st_uid == os.getuid()
        assert re.fullmatch(r"[0-9a-f]{64}\n", token_path.read_text())
        info = json.loads((head.run_dir / "head.json").read_text())
        assert info["token_file"] == str(token_path)
        assert info.get("tls_ca", "") == ""
        assert head.token not in (head.run_dir / "head.json").read_text()
        old_token = head.token
        wait_for_workers(head, 1)

        # `dragond stop`: the head exits 0 and removes head.json and its token.
        cp = subprocess.run([binary("dragond"), "stop", "--run-dir", str(head.run_dir)], env=head.env,
                            capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, cp
        assert head.proc.wait(timeout=30) == 0
        assert not (head.run_dir / "head.json").exists()
        # A stopped head's token opens nothing and is not left lying around; a later head of
        # the same run dir makes a new one and refuses the old.
        assert not token_path.exists()
    finally:
        stop_head(head)

    again = start_head(tmp_path, "--workers", "1")
    try:
        assert mode(again.run_dir) == 0o700 and mode(token_path) == 0o600
        assert again.token != old_token
        cp = run_ctl(dict(again.env, DRAGON_TOKEN=old_token), "status")
        assert cp.returncode == 1 and "carried a wrong token" in cp.stderr, cp
        assert run_ctl(again.env, "status").returncode == 0
    finally:
        stop_head(again)
    assert again.proc.returncode == 0


@pytest.mark.timeout(120)
def test_auth_none(tmp_path, no_credentials):
    head = start_head(tmp_path, "--workers", "1", "--auth", "none")
    executor = None
    try:
        assert not (head.run_dir / "token").exists()
        assert json.loads((head.run_dir / "head.json").read_text()).get("token_file", "") == ""
        assert "authentication is off (--auth none)" in dragond_log(head)
        cp = run_ctl(bare_env(tmp_path), "--head", head.address, "status")
        assert cp.returncode == 0, cp
        assert re.search(r"^auth: +off \(dragond --auth none", cp.stdout, re.M), cp.stdout
        # A client without any token works.
        executor = DragonExecutor(address=head.address, token=None)
        executor.start()
        assert executor.credentials.token is None
        assert executor.submit(sum, {}, [1, 2, 3]).result(timeout=60) == 6
        assert executor.head_status().auth is False
    finally:
        shut_down(executor)
        stop_head(head)


# ---------------------------------------------------------------- TLS


@pytest.mark.timeout(180)
def test_tls_round_trip(tmp_path, no_credentials, monkeypatch):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (deploy/install-deps.sh installs it)")
    ca, cert, key = make_certs(tmp_path / "certs", (socket.gethostname(),))
    other_ca, _, _ = make_certs(tmp_path / "other-certs")
    head = start_head(tmp_path, "--workers", "2", "--tls-cert", str(cert), "--tls-key", str(key),
                      "--tls-ca", str(ca))
    executors = []
    try:
        assert json.loads((head.run_dir / "head.json").read_text())["tls_ca"] == str(ca)
        # The local agent connects over TLS (it was given --tls-ca): its workers register.
        wait_for_workers(head, 2)
        assert re.search(r"^tls: +on$", head.ctl("status").stdout, re.M)
        assert head.ctl_json("status")["tls"] is True

        # A Parsl client with the token finds the CA in the head.json naming this address.
        monkeypatch.setenv("DRAGON_HOME", str(head.home))
        executor = DragonExecutor(address=head.address, token=head.token, label="tls")
        executors.append(executor)
        executor.start()
        assert executor.credentials.tls_ca == str(ca)
        futures = [executor.submit(abs, {}, -i) for i in range(100)]
        assert [f.result(timeout=60) for f in futures] == list(range(100))
        assert executor.connected_workers() == 2

        # TLS does not replace the token: over TLS, a wrong token is still refused.
        wrong = DragonExecutor(address=head.address, token=WRONG_TOKEN, label="tls-wrong")
        executors.append(wrong)
        with pytest.raises(AuthenticationFailed, match="carried a wrong token"):
            wrong.start()

        # A client trusting another CA does not talk to this head.
        untrusting = DragonExecutor(address=head.address, token=head.token, tls_ca=str(other_ca),
                                    connect_timeout=3, label="other-ca")
        executors.append(untrusting)
        with pytest.raises(HeadUnreachable):
            untrusting.start()

        # Plaintext to the TLS port: no answer, with or without the token.
        with grpc.insecure_channel(head.address) as channel:
            with pytest.raises(grpc.RpcError) as info:
                head_pb2_grpc.HeadServiceStub(channel).Status(
                    head_pb2.StatusRequest(), metadata=[("authorization", "Bearer " + head.token)], timeout=5)
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        monkeypatch.setenv("DRAGON_HOME", str(no_credentials))
        plaintext = DragonExecutor(address=head.address, token=head.token, connect_timeout=3, label="plain")
        executors.append(plaintext)
        with pytest.raises(HeadUnreachable):
            plaintext.start()

        # The good client kept working all along.
        assert executor.submit(sum, {}, [4, 5]).result(timeout=60) == 9
        assert executor.session.broken is None
    finally:
        shut_down(*executors)
        stop_head(head)


@pytest.mark.timeout(180)
def test_tls_on_all_interfaces_with_a_certificate_for_the_host_name(tmp_path, no_credentials, monkeypatch):
    """`--host 0.0.0.0` with a certificate naming only this host (the usual certificate of a
    cluster node): the head advertises HOST:PORT, and its local agent, too, must dial a name the
    certificate names (it used to dial 127.0.0.1, fail verification and never register)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (deploy/install-deps.sh installs it)")
    host = socket.gethostname()
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        pytest.skip(f"this host's name {host!r} does not resolve")
    certs = tmp_path / "certs"
    certs.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=certs, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=dragon test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "head.key", "-out", "head.csr",
            "-subj", f"/CN={host}")
    (certs / "san.ext").write_text(f"subjectAltName=DNS:{host}\n")
    openssl("x509", "-req", "-in", "head.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "head.pem", "-days", "1", "-extfile", "san.ext")
    head = start_head(tmp_path, "--workers", "1", "--host", "0.0.0.0", "--tls-cert", str(certs / "head.pem"),
                      "--tls-key", str(certs / "head.key"), "--tls-ca", str(certs / "ca.pem"))
    executor = None
    try:
        assert head.address.rsplit(":", 1)[0] == host
        wait_for_workers(head, 1, timeout=30)
        monkeypatch.setenv("DRAGON_HOME", str(head.home))
        executor = DragonExecutor(address=head.address, token=head.token)
        executor.start()
        assert executor.submit(sum, {}, [1, 2]).result(timeout=60) == 3
    finally:
        shut_down(executor)
        stop_head(head)
