"""dragon_parsl's transport (the Python twin of common/transport.h and the credential part of
common/head_locator.h), its handshake and its error types, without dragond: a tiny in-test
gRPC head plays the server (it records what the client sent, checks a token like dragond,
answers with chosen Welcomes, results and refusals).

Covered: where the token comes from (explicit, $DRAGON_TOKEN, the head.json of "current",
runs/* naming the address, none), refusal of token files other users may read, the
interceptor putting `authorization: Bearer <token>` on every call, TLS with a CA made here,
no client-side message limit, infra_retries in the Hello, protocol mismatch read from the
Welcome's field, UNAUTHENTICATED at connect and on an open stream, and the failure kind of
every result mapped to its exception type (attributes kept, picklable).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
from concurrent import futures
from pathlib import Path
from typing import Callable, List, Optional

import grpc
import pytest

from dragon_parsl import (
    AuthenticationFailed,
    CredentialsError,
    DragonExecutor,
    HeadConnectionLost,
    HeadShutDown,
    HeadUnreachable,
    NodeLost,
    NoNodesAvailable,
    PayloadTooLarge,
    ProtocolMismatch,
    ResourcesUnsatisfiable,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskOutOfMemory,
    TaskRefused,
    TaskTimedOut,
    TaskTooLarge,
    WorkerLost,
    WorkerStartFailed,
    errors,
    transport,
)
from dragon_parsl._proto import common_pb2, head_pb2, head_pb2_grpc
from dragon_parsl.connection import PROTOCOL_VERSION

REPO = Path(__file__).resolve().parent.parent
TOKEN = "0123456789abcdef" * 4  # 64 hex digits, like dragond's
OTHER_TOKEN = "fedcba9876543210" * 4


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No token, CA or head of the user's environment; a DRAGON_HOME of the test's own."""
    for name in ("DRAGON_TOKEN", "DRAGON_TLS_CA", "DRAGON_HEAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DRAGON_HOME", str(tmp_path / "home"))


def write_token(path: Path, token: str = TOKEN, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, mode)
    return path


def write_head_json(run_dir: Path, address: str, token_file: Optional[Path] = None, tls_ca: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"run_id": run_dir.name, "address": address, "pid": 1, "protocol_version": PROTOCOL_VERSION,
            "token_file": str(token_file) if token_file else "", "tls_ca": tls_ca,
            "a_field_of_a_newer_dragond": 1}
    path = run_dir / "head.json"
    path.write_text(json.dumps(info))
    return path


# ------------------------------------------------------------------ the in-test head


class FakeHead(head_pb2_grpc.HeadServiceServicer):
    """A HeadService that records metadata and Hellos. With `expected_token` it refuses calls
    without it (UNAUTHENTICATED, like dragond's TokenCheck). `welcome_version`: the version its
    Welcome carries (another one: it then ends the stream with FAILED_PRECONDITION, like
    dragond). `refuse`: (code, message) to end every Session with before any Welcome.
    `result_for(client_ref) -> TaskResult` answers each submitted task; `on_submit(context)`
    may instead end the stream."""

    def __init__(self, expected_token: Optional[str] = None, welcome_version: int = PROTOCOL_VERSION,
                 refuse: Optional[tuple] = None, head_version: str = "9.9",
                 result_for: Optional[Callable[[int], "common_pb2.TaskResult"]] = None,
                 on_submit: Optional[Callable] = None) -> None:
        self.expected_token = expected_token
        self.welcome_version = welcome_version
        self.refuse = refuse
        self.head_version = head_version
        self.result_for = result_for
        self.on_submit = on_submit
        self.metadata: List[tuple] = []  # (method, {key: value})
        self.hellos: List["head_pb2.Hello"] = []
        self.submitted: List[int] = []

    def _check(self, method: str, context) -> None:
        md = dict(context.invocation_metadata())
        self.metadata.append((method, md))
        if self.expected_token is None:
            return
        got = md.get("authorization")
        if got is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "dragond refused the request: it carried no token; this head requires its run's "
                          "token, which clients read from $DRAGON_TOKEN or /the/run/token")
        if got != "Bearer " + self.expected_token:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "dragond refused the request: it carried a wrong token; this head requires its "
                          "run's token, which clients read from $DRAGON_TOKEN or /the/run/token")

    def Session(self, request_iterator, context):
        self._check("Session", context)
        if self.refuse:
            context.abort(*self.refuse)
        hello = next(request_iterator)
        self.hellos.append(hello.hello)
        yield head_pb2.HeadMessage(welcome=head_pb2.Welcome(
            protocol_version=self.welcome_version, session_id=7, head_version=self.head_version,
            run_id="fake", max_payload_bytes=1 << 20,
            infra_retries=hello.hello.infra_retries if hello.hello.HasField("infra_retries") else 1))
        if self.welcome_version != PROTOCOL_VERSION:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the versions differ (see the Welcome)")
        for msg in request_iterator:
            if msg.WhichOneof("body") != "submit":
                continue
            if self.on_submit is not None:
                self.on_submit(context)
            refs = [t.client_ref for t in msg.submit.tasks]
            self.submitted += refs
            yield head_pb2.HeadMessage(accepted=head_pb2.Accepted(client_refs=refs,
                                                                  task_ids=[100 + r for r in refs]))
            if self.result_for is not None:
                results = []
                for r in refs:
                    res = self.result_for(r)
                    res.task_id = 100 + r
                    results.append(head_pb2.ClientResult(client_ref=r, task_id=100 + r, result=res))
                yield head_pb2.HeadMessage(results=head_pb2.ResultBatch(results=results))

    def Status(self, request, context):
        self._check("Status", context)
        return head_pb2.StatusReply(head_version=self.head_version, protocol_version=PROTOCOL_VERSION,
                                    workers=3)


def serve(servicer: FakeHead, server_credentials: Optional[grpc.ServerCredentials] = None):
    server = grpc.server(futures.ThreadPoolExecutor(8))
    head_pb2_grpc.add_HeadServiceServicer_to_server(servicer, server)
    if server_credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", server_credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def fake_head(request):
    """A FakeHead built with the test's parameters (indirect): yields (address, servicer)."""
    servicer = FakeHead(**getattr(request, "param", {}))
    server, address = serve(servicer)
    try:
        yield address, servicer
    finally:
        server.stop(0)


def executor(address: str, **kwargs) -> DragonExecutor:
    kwargs.setdefault("connect_timeout", 10)
    kwargs.setdefault("shm_threshold", 0)  # no ListNodes, no /dev/shm directory
    return DragonExecutor(address=address, **kwargs)


@pytest.fixture
def started():
    """Starts executors and shuts them down at the end of the test."""
    running: List[DragonExecutor] = []

    def start(ex: DragonExecutor) -> DragonExecutor:
        ex.start()
        running.append(ex)
        return ex

    yield start
    for ex in running:
        ex.shutdown()


# ------------------------------------------------------------------ where the token comes from


def test_explicit_token_wins_over_env_and_head_json(tmp_path, monkeypatch):
    address = "127.0.0.1:4000"
    write_head_json(tmp_path / "home" / "current", address, write_token(tmp_path / "run" / "token", "c" * 64))
    monkeypatch.setenv("DRAGON_TOKEN", "e" * 64)
    creds = transport.find_credentials(address, explicit_token=TOKEN)
    assert creds.token == TOKEN and creds.token_source == "DragonExecutor(token=...)"


def test_env_token_wins_over_head_json(tmp_path, monkeypatch):
    address = "127.0.0.1:4000"
    write_head_json(tmp_path / "home" / "current", address, write_token(tmp_path / "run" / "token", "c" * 64))
    monkeypatch.setenv("DRAGON_TOKEN", TOKEN)
    creds = transport.find_credentials(address)
    assert creds.token == TOKEN and creds.token_source == "$DRAGON_TOKEN"


def test_bad_env_token_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("DRAGON_TOKEN", "has a space in it")
    with pytest.raises(CredentialsError, match=r"\$DRAGON_TOKEN holds a space"):
        transport.find_credentials("127.0.0.1:4000")


def test_token_file_of_current_head_json(tmp_path):
    token_file = write_token(tmp_path / "run" / "token")
    write_head_json(tmp_path / "home" / "current", "127.0.0.1:4000", token_file)
    path, info = transport.current_run_info()
    assert path == tmp_path / "home" / "current" / "head.json" and info.address == "127.0.0.1:4000"
    creds = transport.find_credentials(info.address, run_info=info)
    assert creds.token == TOKEN and creds.token_source == str(token_file)


def test_token_file_of_a_run_whose_address_matches(tmp_path):
    home = tmp_path / "home"
    # "current" is another head; of the runs, only one names the address given.
    write_head_json(home / "current", "127.0.0.1:5000", write_token(tmp_path / "t-current", "a" * 64))
    write_head_json(home / "runs" / "other", "127.0.0.1:6000", write_token(tmp_path / "t-other", "b" * 64))
    mine = write_token(tmp_path / "t-mine")
    write_head_json(home / "runs" / "mine", "127.0.0.1:4000", mine)
    (home / "runs" / "broken").mkdir()
    (home / "runs" / "broken" / "head.json").write_text("{not json")
    creds = transport.find_credentials("127.0.0.1:4000")
    assert creds.token == TOKEN and creds.token_source == str(mine)


def test_no_token_found_is_not_an_error_and_says_where_it_looked(tmp_path):
    write_head_json(tmp_path / "home" / "current", "127.0.0.1:5000", write_token(tmp_path / "t", "a" * 64))
    creds = transport.find_credentials("127.0.0.1:4000")
    assert creds.token is None
    assert "no token found" in creds.token_source and "$DRAGON_TOKEN" in creds.token_source
    assert str(tmp_path / "home") in creds.token_source and "127.0.0.1:4000" in creds.token_source


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_token_file_other_users_may_access_is_refused(tmp_path, mode):
    token_file = write_token(tmp_path / "run" / "token", mode=mode)
    write_head_json(tmp_path / "home" / "current", "127.0.0.1:4000", token_file)
    with pytest.raises(CredentialsError) as info:
        transport.find_credentials("127.0.0.1:4000")
    msg = str(info.value)
    assert str(token_file) in msg and f"chmod 600 {token_file}" in msg and f"mode {mode:04o}" in msg, msg
    assert TOKEN not in msg
    assert info.value.path == str(token_file)


def test_token_file_missing_empty_or_implausible(tmp_path):
    with pytest.raises(CredentialsError, match="no token file"):
        transport.read_token_file(str(tmp_path / "absent"))
    with pytest.raises(CredentialsError, match="0 characters long"):
        transport.read_token_file(str(write_token(tmp_path / "empty", "")))
    with pytest.raises(CredentialsError, match="control character"):
        transport.read_token_file(str(write_token(tmp_path / "ctl", "abc\x01defghij")))
    assert transport.read_token_file(str(write_token(tmp_path / "ok", f"  {TOKEN}  "))) == TOKEN


def test_tls_ca_discovery_order(tmp_path, monkeypatch):
    write_head_json(tmp_path / "home" / "current", "127.0.0.1:4000", tls_ca="/from/head.json")
    assert transport.find_credentials("127.0.0.1:4000").tls_ca == "/from/head.json"
    monkeypatch.setenv("DRAGON_TLS_CA", "/from/env")
    assert transport.find_credentials("127.0.0.1:4000").tls_ca == "/from/env"
    assert transport.find_credentials("127.0.0.1:4000", tls_ca="/explicit").tls_ca == "/explicit"
    monkeypatch.delenv("DRAGON_TLS_CA")
    assert transport.find_credentials("127.0.0.1:9").tls_ca is None


def test_run_credentials_ignore_the_environment(tmp_path, monkeypatch):
    """The embedded head: only what its own head.json names."""
    monkeypatch.setenv("DRAGON_TOKEN", OTHER_TOKEN)
    token_file = write_token(tmp_path / "run" / "token")
    info = transport.read_run_info(write_head_json(tmp_path / "run", "127.0.0.1:4000", token_file))
    creds = transport.run_credentials(info, "x/head.json")
    assert creds.token == TOKEN and creds.token_source == str(token_file)
    info.token_file = ""
    assert transport.run_credentials(info, "x/head.json").token is None


def test_head_json_without_a_usable_address(tmp_path):
    path = write_head_json(tmp_path / "run", "no-port")
    with pytest.raises(ValueError, match="no usable address"):
        transport.read_run_info(path)


@pytest.mark.parametrize("value,ok", [("127.0.0.1:1", True), ("[::1]:40123", True), ("host:65535", True),
                                      ("host", False), ("::1:5", False), (":5", False), ("h:0", False),
                                      ("h:+5", False), ("h:70000", False), ("a b:5", False), ("", False)])
def test_host_port(value, ok):
    assert (transport.host_port_problem(value) == "") == ok


def test_credentials_and_secrets_do_not_show_the_token():
    creds = transport.Credentials(token=TOKEN, token_source="$DRAGON_TOKEN")
    secret = transport.Secret(TOKEN)
    for text in (repr(creds), str(creds), repr(secret), str(secret), f"{secret}",
                 repr(transport.TokenInterceptor(TOKEN))):
        assert TOKEN not in text
    assert secret.reveal() == TOKEN


def test_the_twin_agrees_with_common_transport_h():
    """The constants this module shares with the C++ factory (common/transport.h, token.h)."""
    header = REPO / "common" / "transport.h"
    token_h = REPO / "common" / "token.h"
    if not header.exists() or not token_h.exists():
        pytest.skip("common/transport.h or common/token.h is not in this checkout")
    text = header.read_text() + token_h.read_text()
    assert f'kAuthMetadataKey[] = "{transport.AUTH_METADATA_KEY}"' in text
    assert f'kBearerPrefix[] = "{transport.BEARER_PREFIX}"' in text
    assert f'kTokenEnv[] = "{transport.TOKEN_ENV}"' in text
    assert f'kTlsCaEnv[] = "{transport.TLS_CA_ENV}"' in text
    assert f"time = absl::Seconds({transport.KEEPALIVE_TIME_MS // 1000})" in text
    assert f"timeout = absl::Seconds({transport.KEEPALIVE_TIMEOUT_MS // 1000})" in text
    options = dict(transport.CHANNEL_OPTIONS)
    assert options["grpc.max_send_message_length"] == -1 and options["grpc.max_receive_message_length"] == -1
    assert options["grpc.keepalive_permit_without_calls"] == 1


# ------------------------------------------------------------------ constructor options


def test_constructor_validates_token_tls_ca_and_infra_retries(tmp_path):
    for bad in ("short", "has spaces in the token", "x" * 300):
        with pytest.raises(ValueError, match="DragonExecutor: token must be") as info:
            DragonExecutor(address="127.0.0.1:1", token=bad)
        assert bad not in str(info.value)  # a secret, even a wrong one, is not echoed
    with pytest.raises(ValueError, match="token must be a string"):
        DragonExecutor(address="127.0.0.1:1", token=TOKEN.encode())
    with pytest.raises(ValueError, match=r"DragonExecutor: tls_ca must be .*absent.pem' \(no such file\)"):
        DragonExecutor(address="127.0.0.1:1", tls_ca=str(tmp_path / "absent.pem"))
    with pytest.raises(ValueError, match=r"DragonExecutor: tls_ca must be .*\(not a path\)"):
        DragonExecutor(address="127.0.0.1:1", tls_ca=3)
    for bad in (-1, 1.5, "2", True, 1 << 32):
        with pytest.raises(ValueError, match="DragonExecutor: infra_retries must be"):
            DragonExecutor(address="127.0.0.1:1", infra_retries=bad)
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")
    ex = DragonExecutor(address="127.0.0.1:1", token=TOKEN, tls_ca=ca, infra_retries=0)
    assert ex.tls_ca == str(ca) and ex.infra_retries == 0 and ex.token.reveal() == TOKEN


def test_repr_shows_every_option_but_not_the_token():
    ex = DragonExecutor(address="127.0.0.1:1", token=TOKEN, infra_retries=3)
    text = repr(ex)
    assert TOKEN not in text
    assert "token=<hidden>" in text and "infra_retries=3" in text and "tls_ca=None" in text
    assert "token=None" in repr(DragonExecutor(address="127.0.0.1:1"))
    ex._validate_repr = True  # Parsl's check: every constructor argument is an attribute
    repr(ex)


# ------------------------------------------------------------------ the wire


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"expected_token": TOKEN}], indirect=True)
def test_every_call_carries_the_token(fake_head, started, caplog):
    address, head = fake_head
    caplog.set_level(logging.DEBUG)
    ex = started(executor(address, token=TOKEN))
    assert ex.head_status().workers == 3
    assert ex.connected_workers() == 3
    methods = [m for m, _ in head.metadata]
    assert methods == ["Session", "Status", "Status"]
    for _, md in head.metadata:
        assert md["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in caplog.text  # never logged
    assert "token: DragonExecutor(token=...)" in caplog.text


@pytest.mark.timeout(60)
def test_without_a_token_no_authorization_is_sent(fake_head, started):
    address, head = fake_head
    started(executor(address)).head_status()
    assert [m for m, _ in head.metadata] == ["Session", "Status"]
    assert all("authorization" not in md for _, md in head.metadata)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"expected_token": TOKEN}], indirect=True)
def test_address_current_uses_the_token_file_its_head_json_names(fake_head, started, tmp_path):
    address, head = fake_head
    write_head_json(tmp_path / "home" / "current", address, write_token(tmp_path / "run" / "token"))
    ex = started(DragonExecutor(address="current", connect_timeout=10, shm_threshold=0))
    assert ex.head_address == address
    assert ex.credentials.token_source == str(tmp_path / "run" / "token")
    assert head.metadata[0][1]["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"expected_token": TOKEN}], indirect=True)
def test_dragon_head_env_finds_the_token_of_the_run_naming_it(fake_head, started, tmp_path, monkeypatch):
    address, head = fake_head
    write_head_json(tmp_path / "home" / "runs" / "r1", address, write_token(tmp_path / "r1-token"))
    monkeypatch.setenv("DRAGON_HEAD", address)
    ex = started(DragonExecutor(connect_timeout=10, shm_threshold=0))
    assert ex.local_head is None and ex.credentials.token_source == str(tmp_path / "r1-token")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{}], indirect=True)
def test_infra_retries_goes_in_the_hello_only_when_set(fake_head, started):
    address, head = fake_head
    started(executor(address, infra_retries=0))
    started(executor(address, infra_retries=5))
    started(executor(address))
    assert [h.HasField("infra_retries") for h in head.hellos] == [True, True, False]
    assert [h.infra_retries for h in head.hellos[:2]] == [0, 5]
    assert head.hellos[0].protocol_version == PROTOCOL_VERSION


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"head_version": "v" * (6 << 20)}], indirect=True)
def test_no_client_side_receive_limit(fake_head, started):
    """gRPC's default would refuse a message over 4 MiB; the head bounds what it sends."""
    address, _ = fake_head
    ex = started(executor(address))
    assert len(ex.welcome.head_version) == 6 << 20


# ------------------------------------------------------------------ authentication refused


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"expected_token": TOKEN}], indirect=True)
def test_no_token_is_refused_with_authentication_failed(fake_head):
    address, _ = fake_head
    ex = executor(address)
    with pytest.raises(AuthenticationFailed) as info:
        ex.start()
    e = info.value
    assert e.address == address and "carried no token" in e.detail and "/the/run/token" in e.detail
    assert "no token found" in e.token_source and "no token found" in str(e)
    assert ex.session is None
    assert pickle.loads(pickle.dumps(e)).token_source == e.token_source


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"expected_token": TOKEN}], indirect=True)
def test_wrong_token_is_refused_naming_where_this_client_took_it(fake_head, monkeypatch):
    address, _ = fake_head
    monkeypatch.setenv("DRAGON_TOKEN", OTHER_TOKEN)
    with pytest.raises(AuthenticationFailed) as info:
        executor(address).start()
    assert "carried a wrong token" in str(info.value) and "$DRAGON_TOKEN" in str(info.value)
    assert OTHER_TOKEN not in str(info.value)


@pytest.mark.timeout(60)
def test_unary_call_refused_is_authentication_failed(started):
    head = FakeHead()
    server, address = serve(head)
    try:
        ex = started(executor(address, token=TOKEN))
        head.expected_token = OTHER_TOKEN  # the head's token changed under the client
        with pytest.raises(AuthenticationFailed, match="wrong token"):
            ex.head_status()
    finally:
        server.stop(0)


def _refuse_token(context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "dragond refused the request: it carried a wrong token")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"on_submit": _refuse_token}], indirect=True)
def test_refused_on_an_open_stream_fails_outstanding_futures_with_it(fake_head):
    address, _ = fake_head
    ex = executor(address, token=TOKEN)
    ex.start()
    try:
        futs = [ex.submit(len, {}, "abc") for _ in range(3)]
        for f in futs:
            assert isinstance(f.exception(timeout=30), AuthenticationFailed)
        assert len({id(f.exception()) for f in futs}) == 3  # one copy each
        with pytest.raises(AuthenticationFailed, match="wrong token"):
            ex.submit(len, {}, "abc")
    finally:
        ex.shutdown()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"on_submit": lambda c: c.abort(grpc.StatusCode.UNAVAILABLE, "gone")}],
                         indirect=True)
def test_a_broken_stream_is_still_head_connection_lost(fake_head):
    address, _ = fake_head
    ex = executor(address)
    ex.start()
    try:
        fut = ex.submit(len, {}, "abc")
        e = fut.exception(timeout=30)
        assert type(e) is HeadConnectionLost and "UNAVAILABLE: gone" in str(e)
    finally:
        ex.shutdown()


# ------------------------------------------------------------------ protocol version


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"welcome_version": PROTOCOL_VERSION + 1}], indirect=True)
def test_welcome_with_another_protocol_version(fake_head):
    address, head = fake_head
    with pytest.raises(ProtocolMismatch) as info:
        executor(address).start()
    e = info.value
    assert e.head_version == PROTOCOL_VERSION + 1 and e.client_version == PROTOCOL_VERSION
    msg = str(e)
    assert f"version {PROTOCOL_VERSION + 1}" in msg and f"version {PROTOCOL_VERSION}" in msg and address in msg
    assert head.hellos[0].protocol_version == PROTOCOL_VERSION


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"refuse": (grpc.StatusCode.FAILED_PRECONDITION,
                                                   "this dragond speaks protocol version 1")}], indirect=True)
def test_refusal_before_any_welcome_is_head_unreachable(fake_head):
    """An older head refuses with FAILED_PRECONDITION and no Welcome: its text is not parsed."""
    address, _ = fake_head
    with pytest.raises(HeadUnreachable) as info:
        executor(address).start()
    assert "session refused: FAILED_PRECONDITION: this dragond speaks protocol version 1" in str(info.value)
    assert not isinstance(info.value, ProtocolMismatch)


# ------------------------------------------------------------------ failure kinds

EXPECTED_CLASS = {
    "FAILURE_KIND_UNSPECIFIED": TaskFailed,
    "FAILURE_WORKER_LOST": WorkerLost,
    "FAILURE_NODE_LOST": NodeLost,
    "FAILURE_CANCELLED": TaskCancelled,
    "FAILURE_TIMED_OUT": TaskTimedOut,
    "FAILURE_TOO_LARGE": TaskTooLarge,
    "FAILURE_REFUSED": TaskRefused,
    "FAILURE_NO_NODES": NoNodesAvailable,
    "FAILURE_WORKER_START": WorkerStartFailed,
    "FAILURE_SHUTDOWN": HeadShutDown,
    "FAILURE_INTERNAL": TaskFailed,
    "FAILURE_OUT_OF_MEMORY": TaskOutOfMemory,
    "FAILURE_UNSATISFIABLE": ResourcesUnsatisfiable,
}


def test_every_failure_kind_of_the_proto_has_its_class():
    assert set(EXPECTED_CLASS) == set(common_pb2.FailureKind.keys())
    assert set(errors.FAILURE_CLASSES) == set(common_pb2.FailureKind.keys()) - {"FAILURE_KIND_UNSPECIFIED"}
    assert issubclass(NodeLost, WorkerLost) and issubclass(PayloadTooLarge, TaskTooLarge)
    assert issubclass(TaskTooLarge, TaskFailed) and issubclass(TaskCancelled, TaskError)
    assert not issubclass(TaskCancelled, TaskFailed)


@pytest.mark.parametrize("kind", sorted(EXPECTED_CLASS))
def test_task_error_maps_the_kind_keeps_attributes_and_pickles(kind):
    e = errors.task_error(kind, f"task 5 on n1: {kind} happened", 5, "n1", 4242)
    assert type(e) is EXPECTED_CLASS[kind]
    assert (e.task_id, e.node, e.worker_pid, e.failure) == (5, "n1", 4242, kind)
    assert str(e) == f"task 5 on n1: {kind} happened"
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e) and back.__dict__ == e.__dict__ and str(back) == str(e)


def test_task_error_without_a_kind():
    assert type(errors.task_error("FAILURE_KIND_UNSPECIFIED", "", 3, cancelled=True)) is TaskCancelled
    e = errors.task_error("FAILURE_KIND_UNSPECIFIED", "", 3)
    assert type(e) is TaskFailed and "task 3 failed in the service" in str(e)
    assert type(errors.task_error("FAILURE_KIND_77", "new kind", 3)) is TaskFailed


def test_payload_too_large_names_size_limit_and_options():
    e = PayloadTooLarge("big", 300 << 20, 256 << 20)
    msg = str(e)
    for part in ("'big'", "300.0 MiB", str(300 << 20), str(256 << 20), "dragond --max-payload-mb",
                 "DragonExecutor(shm_threshold="):
        assert part in msg, (part, msg)
    assert isinstance(e, TaskTooLarge) and e.failure == "FAILURE_TOO_LARGE"
    back = pickle.loads(pickle.dumps(e))
    assert (back.name, back.size, back.limit) == ("big", 300 << 20, 256 << 20) and str(back) == msg


# Submitted in this order: client ref i gets ORDER[i - 1].
ORDER = sorted(EXPECTED_CLASS) + ["CANCELED without a kind", "an unknown kind"]


def _result_of(ref: int) -> "common_pb2.TaskResult":
    what = ORDER[ref - 1]
    res = common_pb2.TaskResult(outcome=common_pb2.SYSTEM_ERROR, node="node-7", worker_pid=1000 + ref,
                                error=f"task {100 + ref} on node-7: {what}")
    if what == "CANCELED without a kind":
        res.outcome = common_pb2.CANCELED
    elif what == "an unknown kind":
        res.failure = 99  # a kind of a newer head
    else:
        res.failure = common_pb2.FailureKind.Value(what)
        if what == "FAILURE_CANCELLED":
            res.outcome = common_pb2.CANCELED
    return res


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake_head", [{"result_for": _result_of}], indirect=True)
def test_results_fail_futures_with_the_class_of_their_kind(fake_head, started):
    address, _ = fake_head
    ex = started(executor(address))
    futs = [ex.submit(len, {}, "abc") for _ in ORDER]
    expected = [EXPECTED_CLASS.get(w) for w in ORDER[:-2]] + [TaskCancelled, TaskFailed]
    for ref, (fut, what, cls) in enumerate(zip(futs, ORDER, expected), start=1):
        e = fut.exception(timeout=30)
        assert type(e) is cls, (what, e)
        assert (e.task_id, e.node, e.worker_pid) == (100 + ref, "node-7", 1000 + ref)
        assert str(e) == f"task {100 + ref} on node-7: {what}"
        assert fut.dragon_task_id == 100 + ref
        assert type(pickle.loads(pickle.dumps(e))) is cls


# ------------------------------------------------------------------ TLS


def _make_certs(tmp: Path) -> tuple:
    """A CA and a certificate for 127.0.0.1/localhost signed by it (openssl, made here)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=dragon test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "head.key", "-out", "head.csr", "-subj", "/CN=localhost")
    (tmp / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "head.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "head.pem", "-days", "1", "-extfile", "san.ext")
    return tmp / "ca.pem", tmp / "head.pem", tmp / "head.key"


@pytest.mark.timeout(60)
def test_tls_round_trip_with_a_ca_made_by_the_test(tmp_path, started):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca, cert, key = _make_certs(tmp_path)
    head = FakeHead(expected_token=TOKEN)
    server, address = serve(head, grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    try:
        ex = started(executor(address, token=TOKEN, tls_ca=str(ca)))
        assert ex.head_status().workers == 3
        assert ex.credentials.tls_ca == str(ca)
        assert all(md["authorization"] == f"Bearer {TOKEN}" for _, md in head.metadata)
        # Without the CA the client speaks plaintext to a TLS port: no answer.
        with pytest.raises(HeadUnreachable):
            executor(address, token=TOKEN, connect_timeout=2).start()
    finally:
        server.stop(0)


def test_unreadable_ca_is_named():
    with pytest.raises(CredentialsError, match="cannot read the TLS CA certificate /no/such/ca.pem"):
        transport.make_channel("127.0.0.1:1", transport.Credentials(tls_ca="/no/such/ca.pem"))
