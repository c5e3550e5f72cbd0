"""The client core's binding keeps nothing per task: 200,000 tasks through DragonExecutor
(dragon_parsl._core underneath) and this process's resident memory stays flat.

Two waves warm up (gRPC's buffers, the allocator's arenas, Python's free lists); the
resident size after them is the baseline, and after eight more waves it must be within
10% of it. A client that kept each result tuple, future or protobuf message (~200 B or
more per task) would grow by 30 MB or more over the measured 160,000 tasks.
"""
from __future__ import annotations

import gc
from pathlib import Path

import pytest

from conftest import start_head, stop_head

WAVE = 20_000
WARM_WAVES = 2
MEASURED_WAVES = 8


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def wave(ex) -> None:
    futures = [ex.submit(abs, {}, -i) for i in range(WAVE)]
    assert [f.result(timeout=120) for f in futures] == list(range(WAVE))
    del futures
    gc.collect()


@pytest.mark.timeout(280)
def test_200k_tasks_through_the_binding_leave_the_client_flat(tmp_path):
    from dragon_parsl import DragonExecutor

    head = start_head(tmp_path, "--workers", "2", "--log-level", "warn")
    ex = None
    try:
        ex = DragonExecutor(address=head.address, token=head.token, shm_threshold=0)
        ex.start()
        for _ in range(WARM_WAVES):
            wave(ex)
        warm = rss_kib()
        for _ in range(MEASURED_WAVES):
            wave(ex)
        end = rss_kib()
        total = (WARM_WAVES + MEASURED_WAVES) * WAVE
        growth = (end - warm) / warm
        print(f"\n{total} tasks: client RSS {warm / 1024:.1f} MiB after warm-up, {end / 1024:.1f} MiB "
              f"at the end ({growth:+.1%}); {ex.session.batches_sent} batches sent, "
              f"{ex.session.result_batches_received} result takes")
        assert ex.outstanding() == 0
        assert growth <= 0.10, f"the client grew {growth:.1%} over {MEASURED_WAVES * WAVE} tasks " \
                               f"({warm} -> {end} KiB)"
    finally:
        try:
            if ex is not None:
                ex.shutdown()
        finally:
            stop_head(head)
