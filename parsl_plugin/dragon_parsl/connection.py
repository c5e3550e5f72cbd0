"""The client side of ``HeadService.Session``: one bidi stream per executor, run by the C++
client core (client/session_client, bound as :mod:`dragon_parsl._core`).

The core sends, batches, encodes and decodes on its own threads, outside the interpreter
lock. :meth:`Session.submit` queues a task there and returns at once. One Python thread
waits in the core (lock released) and takes everything that has arrived at once: every
``Accepted`` pair and every result gathered meanwhile, so that many futures cost one
acquisition of the interpreter lock. With many tasks in flight the core's sender lingers a
few milliseconds so that a burst leaves in one message (``linger_s``/``linger_in_flight``).

If the stream breaks, ``on_broken`` is called once and later submits raise
:class:`HeadConnectionLost` (or :class:`AuthenticationFailed` when the head refused the
token). Errors are built here from the core's fields (status code, detail, the head's
protocol version), never from message text: a Welcome of another protocol version is a
:class:`ProtocolMismatch`; UNAUTHENTICATED is an :class:`AuthenticationFailed`; any other
failure before a Welcome is a :class:`HeadUnreachable`.

Unary calls (status, cancel, nodes) use a grpcio channel made on first use (:meth:`channel`).
"""
from __future__ import annotations

import copy
import getpass
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import grpc

from dragon_parsl import transport
from dragon_parsl.errors import (
    AuthenticationFailed,
    DragonError,
    HeadConnectionLost,
    HeadUnreachable,
    PayloadTooLarge,
    ProtocolMismatch,
)

try:
    from dragon_parsl._proto import common_pb2, head_pb2
except ImportError as e:  # pragma: no cover - depends on the build step
    raise ImportError(f"dragon_parsl's gRPC stubs are missing or broken ({e}): run 'make python' "
                      f"(or 'python parsl_plugin/generate_stubs.py') in the dragon checkout") from e
try:
    from dragon_parsl import _core
except ImportError as e:  # pragma: no cover - depends on the build step
    raise ImportError(f"dragon_parsl's client core (dragon_parsl._core) is missing or broken ({e}): run "
                      f"'make python' in the dragon checkout, with the Python that runs the workflow "
                      f"(make python PYTHON=/path/to/python)") from e

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = common_pb2.PROTOCOL_VERSION_CURRENT
if _core.PROTOCOL_VERSION != PROTOCOL_VERSION:  # pragma: no cover - a stale build
    raise ImportError(f"dragon_parsl._core speaks protocol version {_core.PROTOCOL_VERSION} but the stubs "
                      f"{PROTOCOL_VERSION}: run 'make python' in the dragon checkout")

# How long the receiver thread waits in the core before looking whether it should stop.
_TAKE_TIMEOUT_S = 1.0

# The core's error: (status code name, message, detail, from a gRPC status, head protocol version).
CoreError = Tuple[str, str, Optional[str], bool, Optional[int]]


@dataclass
class Submission:
    client_ref: int
    payload: bytes
    name: str
    # parsl_resource_specification as dragond's request (dragon_parsl.resources); None: none.
    resources: Optional["common_pb2.ResourceRequest"] = None
    # EXECUTABLE: payload is an ExecutableSpec (dragon_parsl.mpi's jobs).
    kind: int = common_pb2.PYTHON
    # The result is handed over as a whole ClientResult (dragon_parsl.mpi reads its ranks' reports).
    whole_result: bool = False
    # The node whose shared-memory pool holds the arguments (a NodeInfo node_id): the head's
    # scheduler prefers it, so the data need not cross the network. "": no preference.
    data_node: str = ""


class Session:
    """One Session stream to dragond.

    ``on_accepted(client_ref, task_id)`` and ``on_result(client_ref, task_id, outcome, data,
    failure, error, node, worker_pid, whole)`` are called from the receiver thread (``whole``
    is the serialized ClientResult for a submission with ``whole_result``, else None).
    ``on_broken(exc)`` is called once, from the receiver thread, when the stream ends in any
    way other than :meth:`close`. ``credentials`` (token, TLS CA) as for
    :func:`transport.make_channel`; ``infra_retries`` goes in the Hello (None: the head's default).
    """

    def __init__(self, address: str, client_name: str,
                 on_accepted: Callable[[int, int], None],
                 on_result: Callable[..., None],
                 on_broken: Callable[[DragonError], None],
                 max_batch_tasks: int = 1000, max_batch_bytes: int = 4 * 1024 * 1024,
                 cwd: Optional[str] = None, linger_s: float = 0.0, linger_in_flight: int = 64,
                 credentials: Optional[transport.Credentials] = None,
                 infra_retries: Optional[int] = None) -> None:
        self.address = address
        self.credentials = credentials or transport.Credentials()
        self.infra_retries = infra_retries
        self.client_name = client_name
        self.cwd = cwd or os.getcwd()
        self._on_accepted = on_accepted
        self._on_result = on_result
        self._on_broken = on_broken
        self._core = _core.CoreSession(
            address=address, token=self.credentials.token or "", tls_ca=self.credentials.tls_ca or "",
            client_name=client_name, cwd=self.cwd,
            infra_retries=None if infra_retries is None else int(infra_retries),
            max_batch_tasks=max(1, int(max_batch_tasks)), max_batch_bytes=max(1, int(max_batch_bytes)),
            linger_s=max(0.0, float(linger_s)), linger_in_flight=max(1, int(linger_in_flight)),
            protocol_version=PROTOCOL_VERSION)
        self._core_protocol = PROTOCOL_VERSION  # (module global: tests speak another version)
        self._receiver: Optional[threading.Thread] = None
        self.welcome: Optional["head_pb2.Welcome"] = None
        self._closing = False
        self._closed = threading.Event()  # the receiver has seen the end
        self.broken: Optional[DragonError] = None
        self._lock = threading.Lock()
        self._channel: Optional[grpc.Channel] = None
        self.result_batches_received = 0  # takes that brought results (for tests and benchmarks)

    # ---------------------------------------------------------------- start
    def connect(self, timeout: float) -> "head_pb2.Welcome":
        """Connects, sends Hello, waits for Welcome (all within ``timeout``)."""
        if self.credentials.tls_ca:
            transport.read_tls_ca(self.credentials.tls_ca)  # CredentialsError naming the file
        kind, value = self._core.connect(float(timeout))
        if kind != "welcome":
            raise self._handshake_error(value)
        self.welcome = head_pb2.Welcome.FromString(value)
        self._receiver = threading.Thread(target=self._receive, name=f"dragon-session-{self.address}",
                                          daemon=True)
        self._receiver.start()
        return self.welcome

    def _handshake_error(self, err: CoreError) -> DragonError:
        code, message, detail, from_grpc, head_version = err
        if head_version is not None:
            return ProtocolMismatch(self.address, self._core_protocol, head_version)
        if code == "UNAUTHENTICATED":
            return self._auth_error(detail or message)
        if from_grpc:
            return HeadUnreachable(self.address, f"session refused: {code}: {detail}")
        return HeadUnreachable(self.address, detail or message)

    def _stream_error(self, err: CoreError) -> DragonError:
        code, message, detail, from_grpc, _ = err
        if code == "UNAUTHENTICATED":
            return self._auth_error(detail or message)
        return HeadConnectionLost(self.address, f"{code}: {detail}" if from_grpc else (detail or message))

    def _auth_error(self, details: str) -> AuthenticationFailed:
        return AuthenticationFailed(self.address, details, self.credentials.token_source)

    # ---------------------------------------------------------------- send
    def submit(self, sub: Submission) -> None:
        if self.broken is not None:
            raise copy.copy(self.broken)
        if self._closing:
            raise DragonError(f"the session to dragond at {self.address} is closed")
        resources = sub.resources.SerializeToString() if sub.resources is not None else None
        if sub.data_node:
            err = self._core.submit(sub.client_ref, sub.kind, sub.payload, sub.name, resources,
                                    sub.whole_result, data_node=sub.data_node)
        else:  # the flood of small tasks: the call as it always was
            err = self._core.submit(sub.client_ref, sub.kind, sub.payload, sub.name, resources,
                                    sub.whole_result)
        if err is not None:
            if self.broken is not None:
                raise copy.copy(self.broken)
            code, message, _, _, _ = err
            if code == "INVALID_ARGUMENT":  # larger than the head accepts (DragonExecutor checks first)
                limit = int(self.welcome.max_payload_bytes) if self.welcome is not None else 0
                raise PayloadTooLarge(sub.name, len(sub.payload), limit)
            raise DragonError(message)

    # ---------------------------------------------------------------- receive
    def _receive(self) -> None:
        take = self._core.take
        on_accepted, on_result = self._on_accepted, self._on_result
        while True:
            try:
                accepted, results, end = take(_TAKE_TIMEOUT_S)
                for ref, task_id in accepted:
                    on_accepted(ref, task_id)
                if results:
                    self.result_batches_received += 1
                    for r in results:
                        on_result(*r)
            except Exception as e:  # a bug in a callback must not leave futures hanging
                logger.exception("DragonExecutor receiver failed")
                self._end(HeadConnectionLost(self.address, f"receiver failed: {type(e).__name__}: {e}"))
                threading.Thread(target=self._core.close, args=(0.0,), daemon=True).start()
                return
            if end is not None:
                self._end(None if end == "ok" else self._stream_error(end))
                return

    def _end(self, error: Optional[DragonError]) -> None:
        self._closed.set()
        if self._closing or error is None:
            return  # whatever ends the stream after close() is the normal end
        self.broken = error
        self._on_broken(error)

    # ---------------------------------------------------------------- unary calls
    def channel(self) -> grpc.Channel:
        """A grpcio channel to the head for unary calls (status, cancel, nodes), made on first use."""
        with self._lock:
            if self._channel is None:
                self._channel = transport.make_channel(self.address, self.credentials)
            return self._channel

    # ---------------------------------------------------------------- counters
    @property
    def batches_sent(self) -> int:
        return int(self._core.batches_sent)

    @property
    def lingers(self) -> int:
        return int(self._core.lingers)

    # ---------------------------------------------------------------- close
    def close(self, timeout: float = 10.0) -> None:
        """Sends what is queued, half-closes the stream and waits up to ``timeout`` for the head
        to end it (then cancels it); the receiver thread ends with it."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        err = self._core.close(float(timeout))
        if err is not None and err[0] == "DEADLINE_EXCEEDED":
            logger.warning("dragond at %s did not end the session within %.0fs: cancelled it",
                           self.address, timeout)
        if self._receiver is not None and self._receiver is not threading.current_thread():
            self._receiver.join(5.0)
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()


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
