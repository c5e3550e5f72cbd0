"""How a dragon_parsl.comm.Barrier party waits, on the barrier's own node or on another: in slices.

A party arrives once (which gives its ticket) and then waits for its round in slices of at most
``WAIT_SLICE_S``. Between slices Python runs, so the wait reacts to what should end it:
- its own timeout: it gives up, which breaks the barrier for everyone (as threading.Barrier);
- anything else raised while it waits: Ctrl-C's KeyboardInterrupt, and asynchronous exceptions
  such as Parsl's ``AppTimeout`` when an app's walltime passes. The party then tells the barrier
  it was interrupted, which breaks it at once for the other parties (their ``wait`` raises
  ``threading.BrokenBarrierError`` naming the party and what stopped it), and the exception goes
  on. Without this the others would wait for a party whose process has moved on: until their own
  timeout (for ever without one) on the barrier's node, or until the lost party's lease ran out
  (3 s) on another.

An interruption that comes while a remote party's arrival call is under way (before its ticket
is known) cannot be told; its lease at home, no longer renewed, breaks the barrier 3 s later.

The same loop serves both kinds of party: ``LocalParty`` (the node's pool, through
``_core.ShmBarrier``) and comm_remote.RemoteBarrier (through the agents). A party's steps:
``arrive(wait_s, into) -> over`` (appends its ticket to ``into``, then waits), ``await_round(ticket, wait_s) -> over``,
``give_up(ticket, timeout_s)``, ``interrupt(ticket, why)``, ``index(ticket)``, and ``failures``:
the exceptions that mean the barrier itself failed (broken, gone, its node lost), which need no
interruption.
"""
from __future__ import annotations

import os
import time
from typing import Any, List, Optional, Tuple

__all__ = ["WAIT_SLICE_S", "LocalParty", "wait_in_slices"]

# Longest single wait: how soon a signal or an asynchronous exception is seen. The agents answer
# a remote slice within the same time (comm_remote.WAIT_SLICE_S).
WAIT_SLICE_S = 0.2


def wait_in_slices(party: Any, timeout_s: Optional[float]) -> int:
    """Waits until every party has arrived (the arrival index), or raises: ``party.failures``
    when the barrier failed or timed out (the caller turns them into BrokenBarrierError), anything
    else after the barrier has been told that this party was interrupted."""
    deadline = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
    # The ticket goes into this list inside the arrival call, so that an exception raised the
    # moment that call returns (Python raises a pending signal's or an asynchronous exception
    # right after a call into C) still finds it.
    arrived: List[Any] = []
    try:
        over = party.arrive(_slice(deadline), arrived)
        ticket = arrived[0]
        while not over:
            if deadline is not None and time.monotonic() >= deadline:
                party.give_up(ticket, timeout_s)  # returns when the round ended just now; else raises
                break
            over = party.await_round(ticket, _slice(deadline))
    except BaseException as e:
        if arrived and not isinstance(e, party.failures):
            _tell_interrupted(party, arrived[0], e)
        raise
    return party.index(ticket)


def _slice(deadline: Optional[float]) -> float:
    if deadline is None:
        return WAIT_SLICE_S
    return min(max(0.0, deadline - time.monotonic()), WAIT_SLICE_S)


def _tell_interrupted(party: Any, ticket: Any, error: BaseException) -> None:
    """Breaks the barrier for the others; never hides ``error`` (a barrier that cannot be told is
    broken already, or its node is lost, which the others learn anyway)."""
    try:
        party.interrupt(ticket, f"was interrupted by {type(error).__name__}")
    except Exception:  # noqa: BLE001  (best effort, see above)
        pass


class LocalParty:
    """A party on the barrier's own node: the steps of ``_core.ShmBarrier``."""

    def __init__(self, barrier: Any, core: Any) -> None:
        self._b = barrier
        self.failures: Tuple[type, ...] = (core.BarrierBroken, core.ChannelTimeout, core.ChannelPeerLost,
                                           core.ShmPoolError)

    def arrive(self, wait_s: float, into: List[Any]) -> bool:
        return self._b.arrive(into, wait_s)  # the ticket is in `into` before it waits

    def await_round(self, ticket: Any, wait_s: float) -> bool:
        return self._b.await_round(ticket, wait_s)

    def give_up(self, ticket: Any, timeout_s: float) -> None:
        self._b.give_up(ticket, timeout_s)

    def interrupt(self, ticket: Any, why: str) -> None:
        self._b.interrupt(ticket, f"{why} (process {os.getpid()})")

    @staticmethod
    def index(ticket: Any) -> int:
        return int(ticket[2])
