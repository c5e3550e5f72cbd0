"""Parsl workflows on DragonExecutor against the real dragond, dragon-agent and workers."""
from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path

import pytest
from parsl import bash_app, join_app, python_app
from parsl.app.errors import BashExitFailure

from conftest import head_and_dfk, load_parsl, processes_of_run, wait_for

from dragon_parsl import HeadConnectionLost, WorkerLost


@python_app
def identity(x):
    return x


@python_app
def add(a, b=0):
    return a + b


@python_app
def inc(x):
    return x + 1


@python_app
def pid_and_cwd():
    import os
    return os.getpid(), os.getcwd()


@python_app
def divide(a, b):
    return a / b


def _deep_helper_that_raises(key):
    return {"present": 1}[key]


@python_app
def raises_key_error(key):
    return _deep_helper_that_raises(key)


@python_app
def fail_until(counter_file, failures):
    """Fails the first ``failures`` times it runs (counted in a file), then returns the count."""
    from pathlib import Path
    p = Path(counter_file)
    n = int(p.read_text()) if p.exists() else 0
    n += 1
    p.write_text(str(n))
    if n <= failures:
        raise RuntimeError(f"planned failure {n} of {failures}")
    return n


@python_app
def sleep_for(seconds):
    import time
    time.sleep(seconds)
    return seconds


@python_app
def kill_own_worker(sig=9):
    import os
    os.kill(os.getpid(), sig)


@bash_app
def echo_words(word, count, stdout=None, stderr=None):
    return f'for i in $(seq {count}); do echo "{word} $i"; done; echo to-stderr >&2'


@bash_app
def exit_with(code):
    return f"exit {code}"


@join_app
def fan_in(n):
    # Returns a future (of futures): the join app's result is add() of all of them.
    parts = [identity(i) for i in range(n)]

    @python_app
    def total(*xs):
        return sum(xs)
    return total(*parts)


@join_app
def pair(a, b):
    return [inc(a), inc(b)]


# ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_python_app_results_and_task_ids(parsl_dfk):
    dfk, executor, head = parsl_dfk
    futs = [add(i, b=100) for i in range(50)]
    assert [f.result(timeout=60) for f in futs] == [i + 100 for i in range(50)]
    # The executor's futures carry the head's task ids.
    ids = [f.task_record["exec_fu"].dragon_task_id for f in futs]
    assert all(isinstance(i, int) and i > 0 for i in ids), ids
    assert len(set(ids)) == len(ids)
    # Tasks run in the client's working directory, on workers that are not this process.
    pid, cwd = pid_and_cwd().result(timeout=60)
    assert pid != os.getpid()
    assert cwd == os.getcwd()
    assert executor.outstanding() == 0
    assert executor.connected_workers() == 2


@python_app
def write_relative(name, text):
    import os
    with open(name, "w") as f:
        f.write(text)
    return os.getcwd()


@pytest.mark.timeout(120)
def test_tasks_follow_the_workflows_working_directory(parsl_dfk, tmp_path, monkeypatch):
    start_dir = os.getcwd()
    assert write_relative("dragon-cwd-test-a.txt", "a").result(timeout=60) == start_dir
    os.unlink(os.path.join(start_dir, "dragon-cwd-test-a.txt"))
    # The workflow changes directory after the session was opened: relative paths follow it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert write_relative("b.txt", "b").result(timeout=60) == str(elsewhere)
    assert (elsewhere / "b.txt").read_text() == "b"
    monkeypatch.undo()
    # And back: the next task on the same workers runs in the session's directory again.
    futs = [pid_and_cwd() for _ in range(4)]
    assert [f.result(timeout=60)[1] for f in futs] == [start_dir] * 4


@pytest.mark.timeout(120)
def test_bash_app_stdout_file(parsl_dfk, tmp_path):
    out = tmp_path / "words.out"
    err = tmp_path / "words.err"
    fut = echo_words("dragon", 3, stdout=str(out), stderr=str(err))
    assert fut.result(timeout=60) == 0
    assert out.read_text().splitlines() == ["dragon 1", "dragon 2", "dragon 3"]
    assert err.read_text().splitlines()[-1] == "to-stderr"
    with pytest.raises(BashExitFailure) as info:
        exit_with(7).result(timeout=60)
    assert info.value.exitcode == 7


@pytest.mark.timeout(120)
def test_join_app(parsl_dfk):
    assert fan_in(20).result(timeout=60) == sum(range(20))
    assert pair(1, 10).result(timeout=60) == [2, 11]


@pytest.mark.timeout(120)
def test_dependency_chain(parsl_dfk):
    fut = identity(0)
    for _ in range(30):
        fut = inc(fut)
    assert fut.result(timeout=60) == 30
    # A diamond: two branches from one root, joined.
    root = identity(5)
    assert add(inc(root), b=inc(inc(root))).result(timeout=60) == 6 + 7


@pytest.mark.timeout(120)
def test_exceptions_keep_type_and_remote_traceback(parsl_dfk):
    with pytest.raises(ZeroDivisionError) as info:
        divide(1, 0).result(timeout=60)
    assert "division by zero" in str(info.value)

    with pytest.raises(KeyError) as info:
        raises_key_error("absent").result(timeout=60)
    assert info.value.args == ("absent",)
    text = "".join(traceback.format_exception(info.value))
    # The remote frames come back: the app and the helper it called.
    assert "raises_key_error" in text, text
    assert "_deep_helper_that_raises" in text, text
    # A failed app does not harm the workers.
    assert inc(1).result(timeout=60) == 2


@pytest.mark.timeout(180)
def test_parsl_retries(worker_pythonpath, tmp_path):
    with head_and_dfk(tmp_path, retries=3):
        counter = tmp_path / "counter"
        assert fail_until(str(counter), 2).result(timeout=60) == 3
        assert counter.read_text() == "3"
        # More failures than retries: the last failure is what the future gets.
        counter2 = tmp_path / "counter2"
        with pytest.raises(RuntimeError, match="planned failure 4 of 10"):
            fail_until(str(counter2), 10).result(timeout=60)
        assert counter2.read_text() == "4"


@pytest.mark.timeout(300)
def test_ten_thousand_noop_tasks(parsl_dfk):
    dfk, executor, head = parsl_dfk
    n = 10_000
    start = time.monotonic()
    futs = [identity(i) for i in range(n)]
    results = [f.result(timeout=240) for f in futs]
    elapsed = time.monotonic() - start
    assert results == list(range(n))
    assert executor.outstanding() == 0
    print(f"{n} no-op tasks in {elapsed:.1f}s ({n / elapsed:.0f} tasks/s), "
          f"{executor.session.batches_sent} batches")


@pytest.mark.timeout(300)
def test_burst_of_direct_submits_is_batched(parsl_dfk):
    # Without the DFK in front, submissions arrive faster than one stream message
    # each could be sent: the queue is drained into batches.
    dfk, executor, head = parsl_dfk
    n = 10_000
    before = executor.session.batches_sent
    futs = [executor.submit(abs, {}, -i) for i in range(n)]
    assert [f.result(timeout=240) for f in futs] == list(range(n))
    batches = executor.session.batches_sent - before
    assert batches < n / 2, batches
    print(f"{n} direct submissions in {batches} batches")


@pytest.mark.timeout(120)
def test_worker_killed_fails_only_its_task(parsl_dfk):
    with pytest.raises(WorkerLost) as info:
        kill_own_worker().result(timeout=60)
    msg = str(info.value)
    assert "SIGKILL" in msg or "signal 9" in msg, msg
    assert info.value.worker_pid > 0
    # The worker was replaced: more work runs.
    assert [f.result(timeout=60) for f in [inc(i) for i in range(10)]] == list(range(1, 11))


@pytest.mark.timeout(120)
def test_worker_killed_by_sigterm_fails_after_the_hold_when_the_agent_goes_on(parsl_dfk):
    # A SIGTERM the agent did not send may be the whole job's end (scancel), which stops the agent
    # too; the agent holds the report 2 s (agent/held_reports.h). It goes on here, so the task fails
    # with WorkerLost once the hold is over. (The job's end: test_provider_data_path.py.)
    t0 = time.monotonic()
    with pytest.raises(WorkerLost) as info:
        kill_own_worker(int(signal.SIGTERM)).result(timeout=60)
    waited = time.monotonic() - t0
    assert "SIGTERM" in str(info.value), str(info.value)
    assert waited >= 1.9, f"reported after {waited:.2f} s: the 2 s hold did not apply"
    assert [f.result(timeout=60) for f in [inc(i) for i in range(10)]] == list(range(1, 11))


@pytest.mark.timeout(180)
def test_embedded_default_starts_and_stops_its_own_head(worker_pythonpath, tmp_path, monkeypatch):
    # No address, no $DRAGON_HEAD, and a DRAGON_HOME with a stale "current" that must not be used.
    home = tmp_path / "home"
    (home / "runs" / "old").mkdir(parents=True)
    (home / "runs" / "old" / "head.json").write_text('{"address": "127.0.0.1:1"}')
    (home / "current").symlink_to(home / "runs" / "old")
    monkeypatch.setenv("DRAGON_HOME", str(home))
    dfk = None
    try:
        dfk, executor = load_parsl(tmp_path, workers_per_node=2)
        assert executor.local_head is not None
        run_dir = executor.local_head.run_dir
        assert run_dir == Path(dfk.run_dir) / "dragon"
        assert (run_dir / "head.json").exists()
        assert executor.head_address != "127.0.0.1:1"
        proc = executor.local_head.proc
        assert proc.poll() is None
        assert [f.result(timeout=60) for f in [inc(i) for i in range(20)]] == list(range(1, 21))
        assert processes_of_run(run_dir), "no process of the embedded run found"
    finally:
        if dfk is not None:
            dfk.cleanup()
    assert proc.poll() is not None, "embedded dragond still running after shutdown"
    assert proc.returncode == 0, f"embedded dragond exited {proc.returncode}\n" + \
        (run_dir / "dragond-console.log").read_text(errors="replace")
    wait_for(lambda: not processes_of_run(run_dir), 15, "the embedded run's processes to exit")
    assert not (run_dir / "head.json").exists()
    # The stale "current" was left alone.
    assert os.readlink(home / "current") == str(home / "runs" / "old")


@pytest.mark.timeout(120)
def test_head_killed_fails_outstanding_futures(parsl_dfk):
    dfk, executor, head = parsl_dfk
    assert inc(1).result(timeout=60) == 2
    futs = [sleep_for(60) for _ in range(20)]
    wait_for(lambda: executor.outstanding() == 20 and all(
        f.task_record["exec_fu"] is not None and
        getattr(f.task_record["exec_fu"], "dragon_task_id", None) for f in futs),
        30, "the head to accept 20 tasks")
    killed_at = time.monotonic()
    os.kill(head.proc.pid, signal.SIGKILL)
    for f in futs:
        with pytest.raises(HeadConnectionLost) as info:
            f.result(timeout=20)
        assert head.address in str(info.value)
    assert time.monotonic() - killed_at < 20
    assert executor.outstanding() == 0
    # Later submissions fail at once too instead of hanging.
    with pytest.raises(HeadConnectionLost):
        inc(2).result(timeout=10)
    head.proc.wait(timeout=10)
    # Agents and workers follow their head (they must not linger); clean up if they do.
    try:
        wait_for(lambda: not processes_of_run(head.run_dir), 30, "the run's agents and workers to exit")
    finally:
        for line in processes_of_run(head.run_dir):
            try:
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass



@pytest.mark.timeout(120)
def test_embedded_head_goes_away_when_the_workflow_is_killed(worker_pythonpath, tmp_path):
    # A workflow process killed with SIGKILL cannot shut its executor down: the embedded
    # dragond (--exit-with-parent) and its agents and workers must still go away.
    import subprocess
    import sys
    run_dir = tmp_path / "head"
    script = tmp_path / "wf.py"
    script.write_text(
        "import sys, time\n"
        "from dragon_parsl import DragonExecutor\n"
        f"ex = DragonExecutor(head_run_dir={str(run_dir)!r}, workers_per_node=2)\n"
        "ex.start()\n"
        "fut = ex.submit(time.sleep, {}, 60)\n"
        "print('started', ex.local_head.proc.pid, flush=True)\n"
        "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("started "), line
        head_pid = int(line.split()[1])
        wait_for(lambda: len(processes_of_run(run_dir)) >= 3, 30, "the head, agent and workers")
        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: not processes_of_run(run_dir), 30, "the embedded run's processes to exit")
        assert not Path(f"/proc/{head_pid}").exists() or \
            Path(f"/proc/{head_pid}/stat").read_text().split(") ", 1)[-1].startswith("Z")
    finally:
        if proc.poll() is None:
            proc.kill()
        for line in processes_of_run(run_dir):
            try:
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
