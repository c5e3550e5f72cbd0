"""The sender's linger (DragonExecutor batch_linger_ms / batch_linger_in_flight).

The client core's sender does the lingering (client/session_client.cc); its unit tests
(client/session_client_test.cc) drive it message by message against a test head. Here: the
options are checked, and a real dragond shows that lingering loses nothing and leaves a lone
task alone.
"""
from __future__ import annotations

import time

import pytest

from conftest import start_head, stop_head


@pytest.mark.timeout(30)
@pytest.mark.parametrize("option, bad", [("batch_linger_ms", -1), ("batch_linger_ms", 5000),
                                         ("batch_linger_ms", "10"), ("batch_linger_ms", True),
                                         ("batch_linger_in_flight", 0), ("batch_linger_in_flight", 2.5)])
def test_bad_linger_options_are_refused_naming_the_option(option, bad):
    from dragon_parsl import DragonExecutor

    with pytest.raises(ValueError, match=rf"DragonExecutor: {option} must be"):
        DragonExecutor(**{option: bad})


@pytest.mark.timeout(120)
def test_a_real_burst_lingers_loses_nothing_and_a_lone_task_goes_at_once(tmp_path):
    from dragon_parsl import DragonExecutor

    head = start_head(tmp_path, "--workers", "2")
    ex = None
    try:
        ex = DragonExecutor(address=head.address, token=head.token, batch_linger_ms=20,
                            batch_linger_in_flight=16, shm_threshold=0)
        ex.start()
        # A burst far deeper than the threshold: every result comes back, in order of refs.
        futures = [ex.submit(abs, {}, -i) for i in range(3000)]
        assert [f.result(timeout=60) for f in futures] == list(range(3000))
        lingered = ex.session.lingers
        assert lingered > 0, "3000 tasks with 16 in flight should have lingered at least once"
        assert ex.session.batches_sent < 3000
        # One task at a time never has 16 in flight: no linger, and no 20 ms wait per call.
        started = time.monotonic()
        for i in range(20):
            assert ex.submit(abs, {}, -i).result(timeout=30) == i
        per_call = (time.monotonic() - started) / 20
        assert ex.session.lingers == lingered
        assert per_call < 1.0, f"a lone task took {per_call:.3f}s"  # generous: a loaded CI machine
    finally:
        try:
            if ex is not None:
                ex.shutdown()
        finally:
            stop_head(head)
