"""One payload limit, and a task over it fails alone (issue 10, "One transport configuration").

The issue's scenario: a task whose inline argument is 300 MiB (shared memory off, dragond started
with a higher payload limit) broke the Python client's stream on its own 256 MiB gRPC limit, and
every outstanding future of that client failed with HeadConnectionLost. Now the head's limit
(`dragond --max-payload-mb`, told to clients and agents at connect time) is the only one:

- under a raised limit (512 MiB), a 300 MiB inline argument and a 300 MiB inline result go
  through, while 1,000 small tasks submitted around them all complete;
- under the default limit (256 MiB), the 300 MiB argument fails alone at submit with
  PayloadTooLarge, and the 300 MiB result fails alone with TaskTooLarge, each naming its size,
  the limit and the option; the worker that produced the result survives; the 1,000 other tasks
  complete and the session never breaks.

Real dragond, agent and workers through Parsl (DragonExecutor(shm_threshold=0), so everything
goes through gRPC). Each big buffer is built once and dropped as soon as it is handed over.
"""
from __future__ import annotations

import gc
import re
import time
from pathlib import Path

import pytest
from parsl import python_app

from conftest import head_and_dfk, wait_for_workers
from dragon_parsl.errors import (
    HeadConnectionLost,
    PayloadTooLarge,
    TaskTooLarge,
    WorkerLost,
)

MIB = 1 << 20
BIG = 300 * MIB
SMALL_TASKS = 1000


# --- apps (module level: the workers import this module, see worker_pythonpath)

@python_app
def noop(i):
    return i


@python_app
def length(blob):
    return len(blob)


@python_app
def zeros(n):
    """A result of n bytes, made on the worker."""
    return bytes(n)


@python_app
def pid_after(seconds):
    import os
    import time
    time.sleep(seconds)
    return os.getpid()


# --- helpers

def results_of(futures, timeout=120):
    """Every future's value; fails naming the first exception (a HeadConnectionLost among them
    would be the issue's bug)."""
    values = []
    for i, f in enumerate(futures):
        try:
            values.append(f.result(timeout=timeout))
        except HeadConnectionLost as e:
            raise AssertionError(f"the session broke and failed small task {i} with it: {e}") from e
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"small task {i} failed: {type(e).__name__}: {e}") from e
    return values


def assert_session_whole(executor):
    assert executor.session is not None and executor.session.broken is None, executor.session.broken
    assert executor._broken is None, executor._broken


def tasks_by_state(head) -> dict:
    """The head's task counts (dragonctl status --json), states with none left out."""
    counts = {k: int(v) for k, v in head.ctl_json("status")["tasks_by_state"].items()}
    return {k: v for k, v in counts.items() if v}


def worker_alive(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1][:1]
    except OSError:
        return False
    return b"dragon_parsl.worker" in cmd and state != "Z"


# --- tests

@pytest.mark.timeout(150)
def test_300_mib_argument_and_result_under_a_raised_limit(worker_pythonpath, tmp_path):
    with head_and_dfk(tmp_path, ["--workers", "2", "--max-payload-mb", "512"],
                      shm_threshold=0) as (dfk, executor, head):
        assert executor.shm is None  # everything goes through gRPC
        assert executor.max_payload_bytes == 512 * MIB  # told by the head at connect time
        wait_for_workers(head, 2)

        before = [noop(i) for i in range(SMALL_TASKS // 2)]
        blob = bytes(BIG)
        big_arg = length(blob)
        del blob
        big_res = zeros(BIG)
        after = [noop(i) for i in range(SMALL_TASKS // 2, SMALL_TASKS)]

        assert big_arg.result(timeout=120) == BIG
        value = big_res.result(timeout=120)
        assert type(value) is bytes and len(value) == BIG
        del value, big_res
        gc.collect()
        assert results_of(before + after) == list(range(SMALL_TASKS))
        assert_session_whole(executor)

        assert tasks_by_state(head) == {"DONE": SMALL_TASKS + 2}


@pytest.mark.timeout(150)
def test_300_mib_argument_and_result_over_the_default_limit_fail_alone(worker_pythonpath, tmp_path):
    limit = 256 * MIB
    with head_and_dfk(tmp_path, ["--workers", "2"], shm_threshold=0) as (dfk, executor, head):
        assert executor.shm is None
        assert executor.max_payload_bytes == limit  # dragond's default, told at connect time
        wait_for_workers(head, 2)

        before = [noop(i) for i in range(SMALL_TASKS // 2)]
        blob = bytes(BIG)
        t0 = time.monotonic()
        big_arg = length(blob)
        del blob
        big_res = zeros(BIG)
        after = [noop(i) for i in range(SMALL_TASKS // 2, SMALL_TASKS)]

        # The argument: refused by the client at submit, before anything is sent.
        with pytest.raises(PayloadTooLarge) as info:
            big_arg.result(timeout=60)
        assert time.monotonic() - t0 < 30
        e = info.value
        assert isinstance(e, TaskTooLarge) and e.failure == "FAILURE_TOO_LARGE"
        assert e.limit == limit and BIG < e.size < BIG + MIB, (e.size, e.limit)
        msg = str(e)
        assert f"({e.size} bytes)" in msg and f"{limit} bytes" in msg, msg
        assert "dragond --max-payload-mb" in msg, msg
        del big_arg, info, e
        gc.collect()

        # The result: the worker does not send it; the task fails alone with the head's limit.
        with pytest.raises(TaskTooLarge) as info:
            big_res.result(timeout=120)
        e = info.value
        assert not isinstance(e, (PayloadTooLarge, WorkerLost)), type(e)
        assert e.failure == "FAILURE_TOO_LARGE"
        m = re.search(rf"its result is (\d+) bytes, more than the {limit} bytes dragond accepts per "
                      rf"task \(dragond --max-payload-mb\)", str(e))
        assert m, str(e)
        assert BIG < int(m.group(1)) < BIG + MIB, m.group(1)
        assert e.task_id > 0 and e.worker_pid > 0, (e.task_id, e.worker_pid)
        too_large_task, producer = e.task_id, e.worker_pid
        del big_res, info, e
        gc.collect()

        # Every other task completed; the session never broke.
        assert results_of(before + after) == list(range(SMALL_TASKS))
        assert_session_whole(executor)

        # The worker that produced the result survived and runs later tasks (with 2 workers
        # and tasks of 0.1 s, both workers take some of the next 10).
        assert worker_alive(producer), f"worker {producer} is gone"
        pids = set(results_of([pid_after(0.1) for _ in range(10)]))
        assert producer in pids, (producer, pids)
        assert executor.connected_workers() == 2

        # The head's view: only the result task failed (the argument never reached it), as
        # FAILURE_TOO_LARGE on the worker that survived.
        assert tasks_by_state(head) == {"DONE": SMALL_TASKS + 10, "FAILED": 1}
        shown = head.ctl_json("show", str(too_large_task))
        assert shown["failure"] == "FAILURE_TOO_LARGE" and int(shown["worker_pid"]) == producer, shown
        assert_session_whole(executor)
