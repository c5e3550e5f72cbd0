"""dragond --keep-finished: a long-lived head forgets its oldest finished tasks.

A real dragond with a small retention runs floods of tasks on a simulated
agent (dragon-agent --simulate-workers, driven by bench's head_scale load
generator, so 240k tasks take seconds). Then: status counts what was
forgotten, `show` of a forgotten id says so (and differs from an id that never
existed), `ps` lists only what is kept, and the head's RSS stops growing.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import binary, start_head, stop_head, wait_for

CHUNK = 4096        # TaskTable chunk: tasks are forgotten a whole chunk at a time
KEEP = 5000
FLOOD = 40_000      # tasks per head_scale run
WARM_FLOODS = 3
MEASURED_FLOODS = 8


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def flood(head_scale_bin, head) -> None:
    # The head's environment: head_scale finds the run's token through the head.json under
    # $DRAGON_HOME that names --head.
    cp = subprocess.run([str(head_scale_bin), "run", "--head", head.address, "--tasks", str(FLOOD),
                         "--batch", "1000", "--wait-nodes", "1", "--timeout-s", "60"],
                        env=head.env, capture_output=True, text=True, timeout=90)
    assert cp.returncode == 0, cp.stderr[-2000:]
    result = json.loads(cp.stdout.strip().splitlines()[-1])
    assert result["ended"] == FLOOD and result["duplicates"] == 0, result


@pytest.mark.timeout(180)
def test_old_finished_tasks_are_forgotten_and_memory_stays_flat(tmp_path, head_scale_bin):
    head = start_head(tmp_path, "--agents", "none", "--keep-finished", str(KEEP),
                      "--log-level", "warn")
    agent = None
    try:
        # The run's token in the agent's environment ($DRAGON_TOKEN), not on its command line.
        agent = subprocess.Popen(
            [binary("dragon-agent"), "--head", head.address, "--node-id", "sim-0",
             "--run-dir", str(head.run_dir), "--simulate-workers", "8", "--log-level", "warn",
             "--connect-timeout", "60"],
            env=head.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: head.ctl_json("status")["workers"] == 8, 30, "the simulated agent")
        # Three floods warm up gRPC's buffers and the allocator; eight more would
        # add ~80 MB to a head that kept everything (~250 B per task). A head that
        # forgets grows 2-4 MiB here, but once in CI (a loaded machine: a backlog
        # held by gRPC and malloc arenas that are not given back) 15.5 MiB: the
        # bound sits between that and what keeping everything would cost.
        for _ in range(WARM_FLOODS):
            flood(head_scale_bin, head)
        rss_warm = vm_rss_kib(head.proc.pid)
        for _ in range(MEASURED_FLOODS):
            flood(head_scale_bin, head)
        rss_end = vm_rss_kib(head.proc.pid)
        total = (WARM_FLOODS + MEASURED_FLOODS) * FLOOD

        status = head.ctl_json("status")
        kept = int(status["tasks_by_state"]["DONE"])
        forgotten = int(status["forgotten_by_state"]["DONE"])
        assert kept + forgotten == total
        assert int(status["highest_task_id"]) == total
        assert int(status["keep_finished"]) == KEEP
        # At least KEEP are kept; beyond it, less than a chunk plus the
        # partly filled last chunk.
        assert KEEP <= kept < KEEP + 2 * CHUNK, status
        assert forgotten % CHUNK == 0
        text = " ".join(head.ctl("status").stdout.split())
        assert f"done: {kept} ({forgotten} more forgotten)" in text, text
        assert "keep finished: newest 5000 (--keep-finished)" in text, text

        cp = head.ctl("show", "1", check=False)
        assert cp.returncode == 1
        assert cp.stderr == ("dragonctl: task 1 finished and was forgotten: this head keeps only "
                             "the newest 5000 finished tasks (dragond --keep-finished, rounded up "
                             "to whole 4096-task chunks)\n")
        cp = head.ctl("show", str(total + 1), check=False)
        assert cp.returncode == 1
        assert cp.stderr == f"dragonctl: no task {total + 1} in this run\n"
        cp = head.ctl("cancel", "1", check=False)
        assert cp.returncode == 1 and "was forgotten" in cp.stderr
        newest = head.ctl_json("show", str(total))
        assert newest["state"] == "DONE"

        ps = head.ctl_json("ps", "--limit", "100000")
        assert int(ps["total_matching"]) == kept
        ids = [int(t["task_id"]) for t in ps["tasks"]]
        assert ids == list(range(total, total - kept, -1))

        growth_mib = (rss_end - rss_warm) / 1024
        assert growth_mib < 25, (f"head RSS grew {growth_mib:.1f} MiB over {MEASURED_FLOODS * FLOOD} tasks "
                                 f"({rss_warm} -> {rss_end} KiB)")
    finally:
        try:
            if agent is not None:
                agent.terminate()
                try:
                    agent.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
        finally:
            stop_head(head)
