"""A client that dies under a running workflow (kill -9, no goodbye): the head notices the broken
session stream, cancels what it had running or queued (the workers running its tasks are killed
and replaced), and serves the next client at once. Real binaries: dragond, its agent, workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import start_head, stop_head, wait_for

from dragon_parsl import DragonExecutor


def tasks_in(head, state: str) -> list:
    return [t for t in head.ctl_json("ps", "--state", state, "--limit", "0").get("tasks", [])]


@pytest.mark.timeout(120)
def test_killed_client_has_its_tasks_cancelled_and_the_next_client_is_served(tmp_path):
    head = start_head(tmp_path, "--workers", "2")
    try:
        script = tmp_path / "doomed_client.py"
        script.write_text(textwrap.dedent("""\
            import sys, time
            from dragon_parsl import DragonExecutor
            ex = DragonExecutor(address=sys.argv[1], token=sys.argv[2])
            ex.start()
            futs = [ex.submit(time.sleep, {}, 600) for _ in range(6)]  # 2 run, 4 wait
            print("submitted", flush=True)
            time.sleep(600)
            """))
        client = subprocess.Popen([sys.executable, str(script), head.address, head.token],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert client.stdout.readline().strip() == "submitted"
            wait_for(lambda: len(tasks_in(head, "running")) == 2, 30, "both workers to run the client's tasks")
            assert len(tasks_in(head, "pending")) + len(tasks_in(head, "scheduled")) == 4
            assert head.ctl_json("status")["sessions"] == 1
        finally:
            client.send_signal(signal.SIGKILL)
            client.wait(timeout=10)
            client.stdout.close()
        # Every task of the dead session ends cancelled: none left running or waiting.
        wait_for(lambda: len(tasks_in(head, "cancelled")) == 6, 30,
                 "the head to cancel the killed client's 6 tasks")
        assert not tasks_in(head, "running") and not tasks_in(head, "pending")
        wait_for(lambda: head.ctl_json("status")["sessions"] == 0, 10, "the dead session to be closed")
        # The workers it held were freed: a new client's task runs at once, not after 600 s.
        ex = DragonExecutor(address=head.address, token=head.token)
        ex.start()
        try:
            t0 = time.monotonic()
            assert ex.submit(sum, {}, [1, 2, 3]).result(timeout=30) == 6
            assert time.monotonic() - t0 < 20
        finally:
            ex.shutdown()
    finally:
        stop_head(head)
