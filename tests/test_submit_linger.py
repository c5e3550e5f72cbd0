"""The sender's linger (DragonExecutor batch_linger_ms / batch_linger_in_flight).

The first tests drive Session's request iterator directly, with no head: they
check which messages it yields while submissions trickle in. The last one runs
a real dragond and checks that lingering loses nothing and leaves a lone task
alone.
"""
from __future__ import annotations

import threading
import time

import pytest

from conftest import start_head, stop_head
from dragon_parsl.connection import Session, Submission

TRICKLE = 40           # submissions, one every TRICKLE_GAP_S
TRICKLE_GAP_S = 0.002  # 40 submissions over ~80 ms
LINGER_S = 0.5         # far longer than the trickle, so that timing noise cannot split it


def session(in_flight: int, linger_s: float, linger_in_flight: int = 64) -> Session:
    return Session("127.0.0.1:1", "test", on_accepted=lambda *a: None, on_result=lambda r: None,
                   on_broken=lambda e: None, cwd="/", in_flight=lambda: in_flight, linger_s=linger_s,
                   linger_in_flight=linger_in_flight)


def trickle(s: Session) -> threading.Thread:
    def run():
        for i in range(TRICKLE):
            s.submit(Submission(i + 1, b"x" * 10, "noop"))
            time.sleep(TRICKLE_GAP_S)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def first_batch(s: Session) -> list[int]:
    """The client refs of the first SubmitBatch the iterator yields."""
    requests = s._requests()
    assert next(requests).WhichOneof("body") == "hello"
    msg = next(requests)
    assert msg.WhichOneof("body") == "submit"
    return [t.client_ref for t in msg.submit.tasks]


@pytest.mark.timeout(30)
def test_a_deep_backlog_gathers_a_trickle_into_one_message():
    s = session(in_flight=1000, linger_s=LINGER_S)
    t = trickle(s)
    refs = first_batch(s)
    t.join(10)
    assert refs == list(range(1, TRICKLE + 1)), f"the linger should have gathered all {TRICKLE}, got {refs}"
    assert s.lingers == 1


@pytest.mark.timeout(30)
def test_a_shallow_backlog_sends_at_once():
    s = session(in_flight=3, linger_s=LINGER_S)
    t = trickle(s)
    started = time.monotonic()
    refs = first_batch(s)
    waited = time.monotonic() - started
    t.join(10)
    assert s.lingers == 0
    assert refs[0] == 1 and len(refs) < TRICKLE, f"no linger expected, got one batch of {len(refs)}"
    assert waited < LINGER_S / 2, f"the first task waited {waited:.3f}s with 3 in flight"


@pytest.mark.timeout(30)
def test_a_full_message_already_queued_goes_without_lingering():
    s = Session("127.0.0.1:1", "test", on_accepted=lambda *a: None, on_result=lambda r: None,
                on_broken=lambda e: None, cwd="/", in_flight=lambda: 10**6, linger_s=LINGER_S,
                linger_in_flight=64, max_batch_tasks=100)
    for i in range(150):
        s.submit(Submission(i + 1, b"x", "noop"))
    started = time.monotonic()
    refs = first_batch(s)
    assert refs == list(range(1, 101))
    assert s.lingers == 0 and time.monotonic() - started < LINGER_S / 2


@pytest.mark.timeout(30)
def test_linger_zero_is_off_whatever_the_backlog():
    s = session(in_flight=10**6, linger_s=0.0)
    t = trickle(s)
    refs = first_batch(s)
    t.join(10)
    assert s.lingers == 0 and len(refs) < TRICKLE


@pytest.mark.timeout(30)
def test_a_failing_in_flight_count_does_not_break_the_stream():
    def broken() -> int:
        raise RuntimeError("boom")
    s = Session("127.0.0.1:1", "test", on_accepted=lambda *a: None, on_result=lambda r: None,
                on_broken=lambda e: None, cwd="/", in_flight=broken, linger_s=LINGER_S)
    s.submit(Submission(7, b"x", "noop"))
    assert first_batch(s) == [7]
    assert s.lingers == 0


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
