"""Shared fixtures for the integration tests: they start the real binaries.

Binaries are taken from $DRAGON_BIN_DIR, else build-out/bin of this checkout
(``make build`` puts them there). Every test gets its own DRAGON_HOME so that
runs never see each other or the user's ~/.dragon.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN_DIR = Path(os.environ.get("DRAGON_BIN_DIR", REPO / "build-out" / "bin"))


def binary(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} not found: run 'make build' first (or set DRAGON_BIN_DIR)")
    return str(path)


@dataclass
class Head:
    address: str
    run_dir: Path
    home: Path
    proc: subprocess.Popen
    env: dict

    def ctl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Runs dragonctl against this head (found through DRAGON_HOME, like a user would)."""
        cp = subprocess.run([binary("dragonctl"), *args], env=self.env, capture_output=True,
                            text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError(f"dragonctl {' '.join(args)} exited {cp.returncode}:\n"
                                 f"stdout: {cp.stdout}\nstderr: {cp.stderr}")
        return cp

    def ctl_json(self, *args: str):
        return json.loads(self.ctl(*args, "--json").stdout)

    @property
    def token(self) -> str:
        """The run's token (dragond writes it 0600 in the run dir), for clients in this process."""
        return (self.run_dir / "token").read_text().strip()

    def channel(self):
        """A gRPC channel to this head with the credentials its own head.json names (its token,
        its TLS CA; none for ``--auth none``), built by dragon_parsl.transport like any client's.
        A $DRAGON_TOKEN of the test's environment is not used: it belongs to no head of the test."""
        from dragon_parsl import transport
        head_json = self.run_dir / "head.json"
        return transport.make_channel(self.address, transport.run_credentials(
            transport.read_run_info(head_json), str(head_json)))

    def agent_env(self, **extra: str) -> dict:
        """The environment for a dragon-agent (or sim_agents) started by a test against this
        head: the head's, with the run's token in $DRAGON_TOKEN (never on a command line)."""
        return dict(self.env, DRAGON_TOKEN=self.token, **extra)

    def log(self) -> str:
        parts = []
        for p in sorted(self.run_dir.glob("*.log")):
            parts.append(f"==== {p.name}\n{p.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


# Every dragond start_head started, so that none outlives its test (see _no_head_left_running).
_started_heads: list[subprocess.Popen] = []


def start_head(tmp_path: Path, *extra: str, timeout: float = 60) -> Head:
    """A foreground dragond with its run dir under `tmp_path` (and DRAGON_HOME next to it).

    It runs with --exit-with-parent: should pytest itself die (a timeout that kills the process,
    a crash) the head, its agents and workers go too instead of living on with ppid 1. A head its
    test did not stop is stopped after the test (_no_head_left_running)."""
    home = tmp_path / "dragon-home"
    run_dir = home / "runs" / "test"
    # The test's own token or address must not leak into the head (its agents read DRAGON_TOKEN).
    env = dict(os.environ, DRAGON_HOME=str(home), DRAGON_BIN_DIR=str(BIN_DIR),
               PYTHON=sys.executable)
    env.pop("DRAGON_HEAD", None)
    env.pop("DRAGON_TOKEN", None)
    proc = subprocess.Popen(
        [binary("dragond"), "start", "--foreground", "--exit-with-parent", "--port", "0",
         "--run-dir", str(run_dir), "--python", sys.executable, *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.dragon_run_dir = run_dir  # for _terminate's last resort
    _started_heads.append(proc)
    head_json = run_dir / "head.json"
    deadline = time.monotonic() + timeout
    try:
        while not head_json.exists():
            if proc.poll() is not None:
                raise AssertionError(f"dragond exited {proc.returncode} before listening:\n{proc.stdout.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"dragond did not write {head_json} within {timeout}s")
            time.sleep(0.05)
        info = json.loads(head_json.read_text())
    except BaseException:  # also a pytest-timeout or Ctrl-C while waiting
        _terminate(proc)
        raise
    return Head(address=info["address"], run_dir=run_dir, home=home, proc=proc, env=env)


def _terminate(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (dragond then stops its agents and workers), SIGKILL after `timeout`; reaps it.
    A head that had to be killed cannot stop its agents: they and their workers are killed too."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            run_dir = getattr(proc, "dragon_run_dir", None)
            for line in processes_of_run(run_dir) if run_dir is not None else []:
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_dragon_rep_{report.when}", report)


@pytest.fixture(autouse=True)
def _no_head_left_running(request):
    """The safety net: after each test (and after its other fixtures' teardown), stops every
    dragond started during the test that is still running, whether the test passed, failed or
    timed out, so that no head, agent or worker outlives it. A test that passed and still left a
    head running gets a warning naming it (its own cleanup is missing)."""
    first = len(_started_heads)
    yield
    left = [p for p in _started_heads[first:] if p.poll() is None]
    for proc in left:
        _terminate(proc)
    del _started_heads[first:]
    call = getattr(request.node, "_dragon_rep_call", None)
    if left and call is not None and call.passed:
        import warnings
        warnings.warn(pytest.PytestWarning(
            f"{request.node.nodeid} left {len(left)} dragond running (stopped now): "
            + "; ".join(" ".join(map(str, p.args)) for p in left)))


def pytest_sessionfinish(session, exitstatus):
    """Heads of fixtures of a wider scope, or of an interrupted run: none outlives pytest."""
    for proc in _started_heads:
        _terminate(proc, timeout=10)
    _started_heads.clear()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_workers(head: Head, count: int, timeout: float = 60):
    def ready():
        nodes = head.ctl_json("nodes")["nodes"]
        return sum(n.get("workers", 0) for n in nodes) >= count
    wait_for(ready, timeout, f"{count} workers to register")


def stop_head(head: Head, timeout: float = 30) -> None:
    if head.proc.poll() is None:
        head.proc.send_signal(signal.SIGTERM)
        try:
            head.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            head.proc.kill()
            head.proc.wait()
            raise AssertionError(f"dragond did not stop within {timeout}s of SIGTERM\n{head.log()}")


def processes_of_run(run_dir: Path) -> list[str]:
    """Command lines of live processes that belong to this run (by run dir on the command line or env)."""
    found = []
    needle = str(run_dir)
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmd = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc_dir / "environ").read_bytes().decode(errors="replace")
            stat = (proc_dir / "stat").read_text()
        except OSError:
            continue
        if stat.split(") ", 1)[-1].startswith("Z"):
            continue
        if needle in cmd or f"DRAGON_RUN_DIR={needle}" in env:
            found.append(f"{proc_dir.name}: {cmd}")
    return found


@pytest.fixture
def head(tmp_path):
    h = start_head(tmp_path, "--workers", "2")
    try:
        yield h
    finally:
        stop_head(h)


# ---------------------------------------------------------------- Parsl (dragon_parsl)
# Tests of the Parsl executor load a DataFlowKernel against a head; the app
# functions of a test module must be importable by the workers (dill pickles
# functions of importable modules by reference), so tests/ is put on the
# workers' PYTHONPATH through the environment the head inherits.

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture
def worker_pythonpath(monkeypatch):
    """Makes modules in tests/ importable by workers of heads started afterwards."""
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR) + (os.pathsep + old if old else ""))
    monkeypatch.setenv("DRAGON_BIN_DIR", str(BIN_DIR))
    monkeypatch.delenv("DRAGON_HEAD", raising=False)


@pytest.fixture(scope="module")
def worker_pythonpath_module():
    """worker_pythonpath for a module-scoped head (one head shared by a module's tests)."""
    mp = pytest.MonkeyPatch()
    old = os.environ.get("PYTHONPATH")
    mp.setenv("PYTHONPATH", str(TESTS_DIR) + (os.pathsep + old if old else ""))
    mp.setenv("DRAGON_BIN_DIR", str(BIN_DIR))
    mp.delenv("DRAGON_HEAD", raising=False)
    yield
    mp.undo()


def load_parsl(tmp_path: Path, *, retries: int = 0, **executor_kwargs):
    """Loads a DFK with one DragonExecutor; returns (dfk, executor). Call dfk.cleanup()."""
    import parsl
    from parsl.config import Config
    from dragon_parsl import DragonExecutor

    executor = DragonExecutor(label="dragon", **executor_kwargs)
    config = Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), retries=retries,
                    strategy="none")
    return parsl.load(config), executor


@contextlib.contextmanager
def head_and_dfk(tmp_path: Path, head_args=("--workers", "2"), *, retries: int = 0,
                 wait_for_agent: bool = False, **executor_kwargs):
    """A head started with `head_args` and a DFK whose DragonExecutor (`executor_kwargs`)
    is connected to it: yields (dfk, executor, head); cleans up both, whatever happened
    (a test may also have cleaned up the DFK itself). `wait_for_agent`: yields only once an
    agent has registered (a client's first task that races the registration finds no agent on
    its host yet and sends its data inline, by design: tests that count what went through
    shared memory need the agent first)."""
    import parsl

    head = start_head(tmp_path, *head_args)
    dfk = None
    try:
        if wait_for_agent:
            wait_for(lambda: any(n.get("state") in ("joining", "ready")
                                 for n in head.ctl_json("nodes").get("nodes", [])),
                     30, "the agent to register")
        if (head.run_dir / "token").exists():  # none with --auth none
            executor_kwargs.setdefault("token", head.token)
        dfk, executor = load_parsl(tmp_path, retries=retries, address=head.address, **executor_kwargs)
        yield dfk, executor, head
    finally:
        try:
            if dfk is not None and not dfk.cleanup_called:
                dfk.cleanup()
                parsl.clear()
        finally:
            stop_head(head)


@pytest.fixture
def parsl_dfk(worker_pythonpath, tmp_path):
    """A head (2 workers) and a DFK connected to it: yields (dfk, executor, head)."""
    with head_and_dfk(tmp_path) as triple:
        yield triple


@contextlib.contextmanager
def parsl_on(head: Head, tmp_path: Path):
    """A Parsl DataFlowKernel with one DragonExecutor connected to `head`."""
    import parsl
    from parsl.config import Config
    from dragon_parsl import DragonExecutor

    dfk = parsl.load(Config(executors=[DragonExecutor(address=head.address, token=head.token)],
                            run_dir=str(tmp_path / "runinfo"), strategy="none"))
    try:
        yield dfk
    finally:
        dfk.cleanup()
        parsl.clear()


def task_id_of(app_future) -> int:
    """The head's id of a Parsl task (set by DragonExecutor on its future)."""
    # Parsl hands the task to the executor on its launch thread: exec_fu may not exist yet.
    return wait_for(lambda: getattr(app_future.task_record.get("exec_fu"), "dragon_task_id", None),
                    30, "the head to accept the task")


# ---------------------------------------------------------------- bench's C++ load generator
HEAD_SCALE_BIN = REPO / "bazel-bin" / "bench" / "head_scale"


@pytest.fixture(scope="module")
def head_scale_bin():
    """bench/head_scale.cc's binary (a SessionClient that floods a head with tasks).
    `bazel test //...` (make test) builds it; it is built here when a test runs alone."""
    if not HEAD_SCALE_BIN.exists() and shutil.which("bazel"):
        subprocess.run(["bazel", "build", "//bench:head_scale"], cwd=REPO, check=False,
                       capture_output=True, timeout=600)
    if not HEAD_SCALE_BIN.exists():
        pytest.fail(f"{HEAD_SCALE_BIN} not found: run 'bazel build //bench:head_scale'")
    return HEAD_SCALE_BIN
