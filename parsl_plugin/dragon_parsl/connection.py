"""The client side of ``HeadService.Session``: one bidi stream per executor.

Submissions are queued by :meth:`Session.submit` (never blocks on the network)
and sent in ``SubmitBatch`` messages by the stream's request iterator, which
blocks on the queue when there is nothing to send and drains everything queued
(up to a count and a byte cap) when there is. When many tasks are already in
flight it first lingers a few milliseconds, so that a burst leaves in one
message rather than in one per wake-up of this thread. One receiver thread reads
``Accepted`` and ``ResultBatch`` messages and hands results to a callback.

If the stream breaks, every outstanding submission is reported through
``on_broken`` and later submits raise :class:`HeadConnectionLost` (or
:class:`AuthenticationFailed` when the head refused the token).

The channel comes from :mod:`dragon_parsl.transport` (token, TLS, keepalive, no
message limits). The handshake reads fields, never message text: a Welcome of
another protocol version is a :class:`ProtocolMismatch`; UNAUTHENTICATED is an
:class:`AuthenticationFailed`; any other refusal before a Welcome (an older head
refusing the version with FAILED_PRECONDITION, ...) is a :class:`HeadUnreachable`.
"""
from __future__ import annotations

import copy
import getpass
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

import grpc

from dragon_parsl import transport
from dragon_parsl.errors import (
    AuthenticationFailed,
    DragonError,
    HeadConnectionLost,
    HeadUnreachable,
    ProtocolMismatch,
)

try:
    from dragon_parsl._proto import common_pb2, head_pb2, head_pb2_grpc
except ImportError as e:  # pragma: no cover - depends on the build step
    raise ImportError(f"dragon_parsl's gRPC stubs are missing or broken ({e}): run 'make python' "
                      f"(or 'python parsl_plugin/generate_stubs.py') in the dragon checkout") from e

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = common_pb2.PROTOCOL_VERSION_CURRENT

_CLOSE = object()  # sentinel: end the request stream


@dataclass
class Submission:
    client_ref: int
    payload: bytes
    name: str
    # parsl_resource_specification as dragond's request (dragon_parsl.resources); None: none.
    resources: Optional["common_pb2.ResourceRequest"] = None
    # EXECUTABLE: payload is an ExecutableSpec (dragon_parsl.mpi's jobs).
    kind: int = common_pb2.PYTHON


class Session:
    """One Session stream to dragond.

    ``on_accepted(client_ref, task_id)`` and ``on_result(ClientResult)`` are
    called from the receiver thread. ``on_broken(exc)`` is called once, from the
    receiver thread, when the stream ends in any way other than :meth:`close`.
    ``credentials`` (token, TLS CA) go to :func:`transport.make_channel`;
    ``infra_retries`` goes in the Hello (None: the head's default).
    """

    def __init__(self, address: str, client_name: str,
                 on_accepted: Callable[[int, int], None],
                 on_result: Callable[["head_pb2.ClientResult"], None],
                 on_broken: Callable[[DragonError], None],
                 max_batch_tasks: int = 1000, max_batch_bytes: int = 4 * 1024 * 1024,
                 cwd: Optional[str] = None, in_flight: Optional[Callable[[], int]] = None,
                 linger_s: float = 0.0, linger_in_flight: int = 64,
                 credentials: Optional[transport.Credentials] = None,
                 infra_retries: Optional[int] = None) -> None:
        self.address = address
        self.credentials = credentials or transport.Credentials()
        self.infra_retries = infra_retries
        self.client_name = client_name
        self.cwd = cwd or os.getcwd()
        self.max_batch_tasks = max(1, int(max_batch_tasks))
        self.max_batch_bytes = max(1, int(max_batch_bytes))
        self._on_accepted = on_accepted
        self._on_result = on_result
        self._on_broken = on_broken
        self._in_flight = in_flight
        self.linger_s = max(0.0, float(linger_s))
        self.linger_in_flight = max(1, int(linger_in_flight))
        self._queue: "queue.SimpleQueue[object]" = queue.SimpleQueue()
        self._channel: Optional[grpc.Channel] = None
        self._call = None
        self._receiver: Optional[threading.Thread] = None
        self._welcome_event = threading.Event()
        self.welcome: Optional["head_pb2.Welcome"] = None
        self._handshake_error: Optional[DragonError] = None
        self._closing = False
        self.broken: Optional[DragonError] = None
        self._lock = threading.Lock()
        # Counters, for benchmarks and tests: messages each way, and sends that lingered.
        self.batches_sent = 0
        self.lingers = 0
        self.result_batches_received = 0

    # ---------------------------------------------------------------- start
    def connect(self, timeout: float) -> "head_pb2.Welcome":
        """Opens the channel and the stream, sends Hello, waits for Welcome."""
        self._channel = transport.make_channel(self.address, self.credentials)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise HeadUnreachable(self.address, f"no answer within {timeout:g}s (is dragond running there?)")
        stub = head_pb2_grpc.HeadServiceStub(self._channel)
        self._call = stub.Session(self._requests())
        self._receiver = threading.Thread(target=self._receive, name=f"dragon-session-{self.address}",
                                          daemon=True)
        self._receiver.start()
        if not self._welcome_event.wait(timeout):
            self._abandon()
            raise HeadUnreachable(self.address, f"no Welcome within {timeout:g}s after Hello")
        if self._handshake_error is not None:
            self._abandon()
            raise self._handshake_error
        assert self.welcome is not None
        return self.welcome

    def _abandon(self) -> None:
        """A failed handshake: end the call, the request iterator and the channel."""
        self._closing = True
        self._queue.put(_CLOSE)  # gRPC's thread consuming the request iterator may wait on it
        self._call.cancel()
        self._channel.close()

    def _hello(self) -> "head_pb2.ClientMessage":
        hello = head_pb2.Hello(protocol_version=PROTOCOL_VERSION, client_name=self.client_name, cwd=self.cwd,
                               client_host=socket.gethostname(), client_pid=os.getpid())
        if self.infra_retries is not None:  # unset: the head's default
            hello.infra_retries = int(self.infra_retries)
        return head_pb2.ClientMessage(hello=hello)

    # ---------------------------------------------------------------- send
    def submit(self, sub: Submission) -> None:
        if self.broken is not None:
            raise copy.copy(self.broken)
        if self._closing:
            raise DragonError(f"the session to dragond at {self.address} is closed")
        self._queue.put(sub)

    def _requests(self) -> Iterator["head_pb2.ClientMessage"]:
        """The request stream, consumed by gRPC's own thread: Hello, then batches."""
        yield self._hello()
        q = self._queue
        max_tasks, max_bytes = self.max_batch_tasks, self.max_batch_bytes
        carry: Optional[Submission] = None
        while True:
            item = carry if carry is not None else q.get()  # blocks while idle
            carry = None
            if item is _CLOSE:
                return
            assert isinstance(item, Submission)
            if self._should_linger():
                # Enough tasks are in flight to keep the workers busy for a while: let the
                # burst gather into one message instead of waking this thread, the head and
                # the agent for every few tasks.
                self.lingers += 1
                time.sleep(self.linger_s)
            tasks: List[head_pb2.TaskSubmission] = []
            size = 0
            closing = False
            while True:
                tasks.append(head_pb2.TaskSubmission(client_ref=item.client_ref, kind=item.kind,
                                                     payload=item.payload, name=item.name))
                if item.resources is not None:
                    tasks[-1].resources.CopyFrom(item.resources)
                size += len(item.payload) + 64
                if len(tasks) >= max_tasks:
                    break
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _CLOSE:
                    closing = True
                    break
                assert isinstance(nxt, Submission)
                if size + len(nxt.payload) + 64 > max_bytes:
                    carry = nxt
                    break
                item = nxt
            self.batches_sent += 1
            yield head_pb2.ClientMessage(submit=head_pb2.SubmitBatch(tasks=tasks))
            if closing:
                return

    def _should_linger(self) -> bool:
        if self.linger_s <= 0 or self._in_flight is None or self._closing:
            return False
        if self._queue.qsize() >= self.max_batch_tasks:
            return False  # a full message is already waiting: nothing to gather
        try:
            return self._in_flight() >= self.linger_in_flight
        except Exception:  # a heuristic: it must never break the stream
            return False

    # ---------------------------------------------------------------- receive
    def _receive(self) -> None:
        call = self._call
        code: Optional[grpc.StatusCode] = None
        detail = details = "dragond ended the session stream"
        try:
            for msg in call:
                which = msg.WhichOneof("body")
                if which == "results":
                    self.result_batches_received += 1
                    for r in msg.results.results:
                        self._on_result(r)
                elif which == "accepted":
                    acc = msg.accepted
                    for ref, tid in zip(acc.client_refs, acc.task_ids):
                        self._on_accepted(ref, tid)
                elif which == "welcome":
                    if self.welcome is not None:
                        logger.warning("dragond at %s sent a second Welcome; ignored", self.address)
                        continue
                    self._handle_welcome(msg.welcome)
                    if self._handshake_error is not None:
                        call.cancel()
                        return
                else:
                    logger.warning("unknown message from dragond at %s: %s", self.address, which)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = (e.details() if hasattr(e, "details") else None) or str(e)
            detail = f"{code.name if code else 'error'}: {details}"
        except Exception as e:  # a bug in a callback must not leave futures hanging
            logger.exception("DragonExecutor receiver failed")
            detail = f"receiver failed: {type(e).__name__}: {e}"
            try:
                call.cancel()
            except Exception:
                pass
        if self.welcome is None:  # the handshake failed
            if self._handshake_error is None:  # not already a ProtocolMismatch from the Welcome
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    self._handshake_error = self._auth_error(details)
                else:
                    self._handshake_error = HeadUnreachable(self.address, f"session refused: {detail}")
            self._welcome_event.set()
            return
        if self._closing:
            return  # whatever ends the stream after close() is the normal end
        error: DragonError
        if code == grpc.StatusCode.UNAUTHENTICATED:
            error = self._auth_error(details)
        else:
            error = HeadConnectionLost(self.address, detail)
        self.broken = error
        # Wake the request iterator so that gRPC's consumer thread ends.
        self._queue.put(_CLOSE)
        self._on_broken(error)

    def _auth_error(self, details: str) -> AuthenticationFailed:
        return AuthenticationFailed(self.address, details, self.credentials.token_source)

    def _handle_welcome(self, w: "head_pb2.Welcome") -> None:
        # A head of another version sends a Welcome carrying its own version, then ends
        # the stream (FAILED_PRECONDITION): the field says it, not the message text.
        if w.protocol_version != PROTOCOL_VERSION:
            self._handshake_error = ProtocolMismatch(self.address, PROTOCOL_VERSION, w.protocol_version)
        else:
            self.welcome = w
        self._welcome_event.set()

    # ---------------------------------------------------------------- close
    def close(self, timeout: float = 10.0) -> None:
        """Half-closes the stream, waits for the head to end it, then closes the channel."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._queue.put(_CLOSE)
        if self._receiver is not None and self._receiver.is_alive():
            self._receiver.join(timeout)
            if self._receiver.is_alive():
                logger.warning("dragond at %s did not end the session within %.0fs: cancelling it",
                               self.address, timeout)
                if self._call is not None:
                    self._call.cancel()
                self._receiver.join(5.0)
        if self._channel is not None:
            self._channel.close()


def default_client_name(version: str) -> str:
    try:
        import parsl
        parsl_version = parsl.__version__
    except Exception:  # pragma: no cover
        parsl_version = "?"
    try:
        user = getpass.getuser()
    except Exception:  # pragma: no cover
        user = "?"
    return f"dragon_parsl {version} (parsl {parsl_version}, user {user})"


__all__ = ["Session", "Submission", "PROTOCOL_VERSION", "default_client_name"]
