"""EXECUTABLE tasks end to end: a Session opened from Python with the generated
stubs (dragon_parsl._proto) against the real dragond, dragon-agent and real
programs. The agent runs them without Python (docs/INTERFACES.md
"Executable tasks")."""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from conftest import processes_of_run, start_head, stop_head, wait_for, wait_for_workers
from dragon_parsl._proto import common_pb2, head_pb2, head_pb2_grpc

pytestmark = pytest.mark.timeout(120)


class Session:
    """A minimal HeadService.Session client: submissions in, results out."""

    def __init__(self, head, cwd: str = "/"):
        self.channel = head.channel()  # carries the run's token
        self.stub = head_pb2_grpc.HeadServiceStub(self.channel)
        self.outgoing: queue.Queue = queue.Queue()
        self.results: dict[int, head_pb2.ClientResult] = {}
        self.task_ids: dict[int, int] = {}
        self.cond = threading.Condition()
        hello = head_pb2.ClientMessage(hello=head_pb2.Hello(
            protocol_version=common_pb2.PROTOCOL_VERSION_CURRENT, client_name="test_executables",
            cwd=cwd, client_host="localhost", client_pid=os.getpid()))
        self.outgoing.put(hello)
        self.responses = self.stub.Session(self._requests(), timeout=110)
        first = next(self.responses)
        assert first.HasField("welcome"), first
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _requests(self):
        while True:
            msg = self.outgoing.get()
            if msg is None:
                return
            yield msg

    def _read(self):
        try:
            for msg in self.responses:
                with self.cond:
                    if msg.HasField("accepted"):
                        for ref, tid in zip(msg.accepted.client_refs, msg.accepted.task_ids):
                            self.task_ids[ref] = tid
                    elif msg.HasField("results"):
                        for r in msg.results.results:
                            self.results[r.client_ref] = r
                            self.task_ids.setdefault(r.client_ref, r.task_id)
                    self.cond.notify_all()
        except grpc.RpcError:
            pass

    def submit(self, ref: int, payload: bytes, kind=common_pb2.EXECUTABLE, name: str = "exe"):
        self.outgoing.put(head_pb2.ClientMessage(submit=head_pb2.SubmitBatch(tasks=[
            head_pb2.TaskSubmission(client_ref=ref, kind=kind, payload=payload, name=name)])))

    def wait_result(self, ref: int, timeout: float = 60) -> head_pb2.ClientResult:
        with self.cond:
            assert self.cond.wait_for(lambda: ref in self.results, timeout), \
                f"no result for client_ref {ref} within {timeout}s"
            return self.results[ref]

    def wait_task_id(self, ref: int, timeout: float = 30) -> int:
        with self.cond:
            assert self.cond.wait_for(lambda: ref in self.task_ids, timeout)
            return self.task_ids[ref]

    def close(self):
        self.outgoing.put(None)
        self.channel.close()


def spec(*argv: str, timeout_s: int = 0, cwd: str = "", env: dict | None = None) -> bytes:
    return common_pb2.ExecutableSpec(argv=list(argv), timeout_s=timeout_s, cwd=cwd,
                                     env=env or {}).SerializeToString()


def exe_result(r: head_pb2.ClientResult) -> common_pb2.ExecutableResult:
    out = common_pb2.ExecutableResult()
    out.ParseFromString(r.result.data)
    return out


@pytest.fixture
def session_head(tmp_path):
    h = start_head(tmp_path, "--workers", "2")
    s = None
    try:
        wait_for_workers(h, 2)
        s = Session(h, cwd=str(tmp_path))
        yield s, h
    finally:
        if s is not None:
            s.close()
        stop_head(h)


def test_true_is_ok_with_exit_0(session_head):
    s, h = session_head
    s.submit(1, spec("/bin/true"))
    r = s.wait_result(1)
    assert r.result.outcome == common_pb2.OK, r
    res = exe_result(r)
    assert res.exit_code == 0 and res.signal == 0
    assert r.result.node == "vm" or r.result.node  # the node that ran it
    assert r.result.worker_pid > 0  # the executable's own pid
    info = h.ctl_json("show", str(r.task_id))
    assert info["state"] == "DONE"


def test_nonzero_exit_is_app_exception_with_stdout_tail(session_head, tmp_path):
    s, h = session_head
    s.submit(2, spec("sh", "-c", "echo hi; echo $DRAGON_T; pwd; exit 3", env={"DRAGON_T": "v"}))
    r = s.wait_result(2)
    assert r.result.outcome == common_pb2.APP_EXCEPTION, r
    res = exe_result(r)
    assert res.exit_code == 3
    # The session's cwd is the default working directory.
    assert res.stdout_tail == f"hi\nv\n{tmp_path}\n".encode()
    assert "exited with code 3" in r.result.error
    shown = h.ctl("show", str(r.task_id)).stdout
    assert "app exception" in shown and "exited with code 3" in shown


def test_missing_binary_is_system_error_naming_it(session_head):
    s, h = session_head
    s.submit(3, spec("dragon-no-such-binary-xyz", "arg"))
    r = s.wait_result(3)
    assert r.result.outcome == common_pb2.SYSTEM_ERROR, r
    err = r.result.error
    assert "dragon-no-such-binary-xyz" in err and "No such file or directory" in err
    assert f"task {r.task_id} on node {r.result.node}" in err
    assert h.ctl_json("show", str(r.task_id))["state"] == "FAILED"


def test_timeout_kills_it(session_head):
    s, _ = session_head
    start = time.monotonic()
    s.submit(4, spec("sleep", "60", timeout_s=1))
    r = s.wait_result(4, timeout=30)
    assert time.monotonic() - start < 15
    assert r.result.outcome == common_pb2.APP_EXCEPTION, r
    res = exe_result(r)
    assert res.timed_out and res.signal == 9 and res.exit_code == -1
    assert "timed out after 1 s" in r.result.error


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_cancel_of_running_sleep_kills_it(session_head):
    s, h = session_head
    marker = f"dragon-cancel-{os.getpid()}-{time.monotonic_ns()}"
    # The child sleep runs in the executable's process group: cancel must take both.
    s.submit(5, spec("sh", "-c", f"sleep 60 & exec sleep 61 # {marker}"))
    tid = s.wait_task_id(5)
    wait_for(lambda: h.ctl_json("show", str(tid))["state"] == "RUNNING", 30, "task running")
    pid = h.ctl_json("show", str(tid))["worker_pid"]
    assert _alive(pid)
    group = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
             and _pgid(int(p.name)) == pid]
    assert len(group) >= 2, group  # sleep 61 (the leader) and the background sleep 60
    cp = h.ctl("cancel", str(tid))
    assert "CANCELLED" in cp.stdout.upper()
    r = s.wait_result(5)
    assert r.result.outcome == common_pb2.CANCELED
    wait_for(lambda: not any(_alive(p) for p in group), 10, "the process group to be gone")


def _node_rss(h) -> int:
    """The node's NodeLoad.workers_rss_bytes (dragonctl top's WORKERS-RSS), as of its agent's
    last heartbeat."""
    (node,) = h.ctl_json("nodes")["nodes"]
    return int(node.get("load", {}).get("workers_rss_bytes", 0))


def test_the_nodes_memory_counts_a_running_executable_and_its_children(session_head):
    """WORKERS-RSS counts what the agent runs: while an executable runs, every process it
    started, here a shell whose child holds 256 MiB; once it ends, the workers alone again."""
    s, h = session_head
    mib = 2**20
    before = wait_for(lambda: _node_rss(h), 30, "the first heartbeat with the workers' memory")
    hold = "import sys, time; b = b'x' * (256 << 20); print('held', flush=True); time.sleep(120)"
    s.submit(8, spec("sh", "-c", f"{sys.executable} -c \"{hold}\" & wait"))
    tid = s.wait_task_id(8)
    during = wait_for(lambda: (lambda r: r if r >= before + 240 * mib else None)(_node_rss(h)), 30,
                      f"the node's memory to count the executable's child ({before} bytes before)")
    h.ctl("cancel", str(tid))
    assert s.wait_result(8).result.outcome == common_pb2.CANCELED
    # The 256 MiB leave the count with the executable (the workers' own may have grown meanwhile).
    wait_for(lambda: _node_rss(h) <= during - 240 * mib, 30,
             f"the node's memory to fall back once the executable is gone ({during} bytes during)")


def _pgid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return -1


@pytest.mark.parametrize("payload, text", [
    (b"\xff\xff\xff not a spec", "could not be parsed"),
    (common_pb2.ExecutableSpec().SerializeToString(), "empty argv"),
    (common_pb2.ExecutableSpec(argv=[""]).SerializeToString(), "empty argv[0]"),
])
def test_bad_spec_is_refused_by_the_head(session_head, payload, text):
    s, h = session_head
    s.submit(6, payload)
    r = s.wait_result(6)
    assert r.result.outcome == common_pb2.SYSTEM_ERROR
    assert f"task {r.task_id} refused" in r.result.error and text in r.result.error
    assert r.result.node == ""  # never left the head


def test_executables_and_python_share_the_slots(session_head, tmp_path):
    """Four 1 s sleeps on 2 slots take about 2 s, not 1 s: an executable occupies a slot."""
    s, h = session_head
    start = time.monotonic()
    for ref in range(10, 14):
        s.submit(ref, spec("sleep", "1"))
    results = [s.wait_result(ref) for ref in range(10, 14)]
    took = time.monotonic() - start
    assert all(r.result.outcome == common_pb2.OK for r in results)
    assert took >= 1.9, took
    nodes = h.ctl_json("nodes")["nodes"]
    assert nodes[0]["workers"] == 2


def test_no_leftover_processes_after_stop(tmp_path):
    h = start_head(tmp_path, "--workers", "1")
    s = None
    try:
        wait_for_workers(h, 1)
        s = Session(h, cwd=str(tmp_path))
        marker = f"dragon-leftover-{os.getpid()}-{time.monotonic_ns()}"
        s.submit(1, spec("sh", "-c", f"sleep 60 # {marker}"))
        tid = s.wait_task_id(1)
        wait_for(lambda: h.ctl_json("show", str(tid))["state"] == "RUNNING", 30, "task running")
    finally:
        if s is not None:
            s.close()
        stop_head(h)

    def leftovers():
        found = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or not _alive(int(p.name)):
                continue
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    found.append(p.name)
            except OSError:
                pass
        return found
    wait_for(lambda: not leftovers(), 10, "the executable to be gone after dragond stopped")
    assert not processes_of_run(h.run_dir)
