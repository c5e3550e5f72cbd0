"""Channels to dragond and the credentials they carry: the Python twin of
common/transport.h (channel options, the token interceptor, TLS) and of the
credential part of common/head_locator.h. The two must agree; this module is the
only place in dragon_parsl that makes a gRPC channel.

Authentication (docs/INTERFACES.md, "Authentication"): every call carries the
run's token as the metadata entry ``authorization: Bearer <token>``, added by a
client interceptor so that no call site can forget it. Where the token comes
from, first hit wins:

1. ``DragonExecutor(token=...)`` (``explicit_token``);
2. ``$DRAGON_TOKEN``;
3. the ``token_file`` of the head.json the address came from (``address="current"``:
   ``$DRAGON_HOME/current/head.json``; the embedded head: its own run directory);
4. the ``token_file`` of a head.json under ``$DRAGON_HOME`` (``current``, then
   ``runs/*``) whose ``address`` is the address given.

None found is not an error here: the head refuses the call, and the client's error
says where it looked. A token file other users may read or write is refused
(it would not be a secret). The TLS CA, first hit wins: ``tls_ca=``,
``$DRAGON_TLS_CA``, that head.json's ``tls_ca``; with one the channel is TLS.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import grpc

from dragon_parsl.errors import CredentialsError, HeadNotFound

try:
    from dragon_parsl._proto import common_pb2
except ImportError as e:  # pragma: no cover - depends on the build step
    raise ImportError(f"dragon_parsl's gRPC stubs are missing or broken ({e}): run 'make python' "
                      f"(or 'python parsl_plugin/generate_stubs.py') in the dragon checkout") from e

# common/transport.h: kAuthMetadataKey, kBearerPrefix.
AUTH_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "
# common/token.h: kTokenEnv, kTlsCaEnv.
TOKEN_ENV = "DRAGON_TOKEN"
TLS_CA_ENV = "DRAGON_TLS_CA"

# common/transport.h KeepaliveOptions: ping an idle connection every 10 s, drop it when
# a ping is not answered within 10 s (gRPC also sets TCP_USER_TIMEOUT to the latter).
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 10_000

# No client-side message limits: the head bounds what it sends by its payload limit and
# tells that limit in Welcome.max_payload_bytes; this client refuses larger arguments
# itself (PayloadTooLarge) instead of letting gRPC break the stream.
CHANNEL_OPTIONS: List[Tuple[str, int]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
]


class Secret:
    """A token that does not show itself: ``repr`` and ``str`` print ``<hidden>``, so that
    neither Parsl's logging of its configuration (RepresentationMixin) nor a stray log
    line reveals it. :meth:`reveal` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Credentials:
    """What a channel to one head carries. ``token`` None: none found (the head refuses
    the calls, and ``token_source`` says where this client looked)."""

    token: Optional[str] = field(default=None, repr=False)
    token_source: str = "no token"
    tls_ca: Optional[str] = None  # PEM file of the CA of the head's certificate; None: plaintext


# ---------------------------------------------------------------- where things are


def dragon_home() -> Path:
    """``$DRAGON_HOME``, or ``~/.dragon`` (``$HOME``, else the passwd entry) when unset or empty."""
    home = os.environ.get("DRAGON_HOME", "")
    if home:
        return Path(home)
    return Path(os.path.expanduser("~")) / ".dragon"


def host_port_problem(value: str) -> str:
    """"" when ``value`` is HOST:PORT (HOST may be a bracketed IPv6 literal), else the reason
    (common/head_locator.cc HostPortProblem)."""
    if not value:
        return "expected HOST:PORT, got an empty string"
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            return "unclosed '[' in IPv6 address"
        host, rest = value[1:close], value[close + 1:]
        if not rest.startswith(":"):
            return "expected [IPV6]:PORT"
        port = rest[1:]
    else:
        if ":" not in value:
            return "expected HOST:PORT (no ':PORT')"
        host, _, port = value.rpartition(":")
        if ":" in host:
            return "an IPv6 address needs brackets, e.g. [::1]:PORT"
    if not host:
        return "empty HOST in HOST:PORT"
    if any(c.isspace() or c == "/" for c in host):
        return "HOST contains whitespace or '/'"
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return f"PORT '{port}' is not a number in 1..65535"
    return ""


def read_run_info(path: Path) -> "common_pb2.RunInfo":
    """A head.json (RunInfo as protobuf JSON; unknown fields ignored, so that a newer dragond
    can add some). FileNotFoundError when it does not exist; ValueError when it cannot be
    parsed or has no usable address."""
    from google.protobuf import json_format

    text = Path(path).read_text()
    info = common_pb2.RunInfo()
    try:
        json_format.Parse(text, info, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise ValueError(f"cannot parse {path}: {e}") from None
    problem = host_port_problem(info.address)
    if problem:
        raise ValueError(f"{path} has no usable address ('{info.address}': {problem})")
    return info


def current_run_info() -> Tuple[Path, "common_pb2.RunInfo"]:
    """``$DRAGON_HOME/current/head.json`` and what it says (``address="current"``)."""
    head_json = dragon_home() / "current" / "head.json"
    try:
        return head_json, read_run_info(head_json)
    except FileNotFoundError:
        raise HeadNotFound(f"no dragond is running (no $DRAGON_HEAD and no {head_json}); "
                           f"start one with 'dragond start'") from None
    except (OSError, ValueError) as e:
        raise HeadNotFound(f"cannot use {head_json}: {e}") from None


def find_run_info_for(address: str) -> Optional["common_pb2.RunInfo"]:
    """A head.json under ``$DRAGON_HOME`` whose address is ``address``: ``current`` first,
    then every run directory (a user with several heads on one machine)."""
    home = dragon_home()
    candidates = [home / "current" / "head.json"]
    try:
        candidates += [entry / "head.json" for entry in (home / "runs").iterdir()]
    except OSError:
        pass
    for path in candidates:
        try:
            info = read_run_info(path)
        except (OSError, ValueError):
            continue
        if info.address == address:
            return info
    return None


# ---------------------------------------------------------------- the token


def token_problem(token: str, origin: str) -> str:
    """"" when ``token`` looks like one (8..256 printable characters, no spaces), else the
    reason (common/token.h ValidateToken)."""
    if not 8 <= len(token) <= 256:
        return f"the token in {origin} is {len(token)} characters long; a dragond token has 64"
    if not all(c.isascii() and c.isprintable() and not c.isspace() for c in token):
        return f"the token in {origin} holds a space or control character"
    return ""


def read_token_file(path: str) -> str:
    """The token in ``path`` (surrounding whitespace removed). Refuses, naming the path, a file
    other users may read or write (it would not be a secret), an empty one and one that does
    not hold a plausible token (common/token.h ReadTokenFile)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CredentialsError(f"no token file {path}", path) from None
    except OSError as e:
        raise CredentialsError(f"cannot read the token file {path}: {e.strerror}", path) from None
    if st.st_mode & 0o077:
        raise CredentialsError(
            f"the token file {path} is accessible to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"it must be 0600 (chmod 600 {path})", path)
    try:
        with open(path) as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialsError(f"cannot read the token file {path}: {e}", path) from None
    problem = token_problem(token, path)
    if problem:
        raise CredentialsError(problem, path)
    return token


def find_credentials(address: str, explicit_token: Optional[str] = None, tls_ca: Optional[str] = None,
                     run_info: Optional["common_pb2.RunInfo"] = None) -> Credentials:
    """The token and TLS CA for ``address``, first hit wins (see the module's docstring).

    ``run_info`` is the head.json the address came from, if it came from one; otherwise a
    head.json under ``$DRAGON_HOME`` naming ``address`` is looked for. Raises
    CredentialsError for a token that is given or found but cannot be used; finding none
    is not an error."""
    if run_info is None:
        run_info = find_run_info_for(address)
    token: Optional[str] = None
    env_token = os.environ.get(TOKEN_ENV, "")
    if explicit_token:
        problem = token_problem(explicit_token, "DragonExecutor(token=...)")
        if problem:
            raise CredentialsError(problem)
        token, source = explicit_token, "DragonExecutor(token=...)"
    elif env_token:
        problem = token_problem(env_token, f"${TOKEN_ENV}")
        if problem:
            raise CredentialsError(problem)
        token, source = env_token, f"${TOKEN_ENV}"
    elif run_info is not None and run_info.token_file:
        token, source = read_token_file(run_info.token_file), run_info.token_file
    else:
        source = (f"no token found: not given (DragonExecutor(token=...)), no ${TOKEN_ENV}, and no "
                  f"head.json under {dragon_home()} names {address}")
    ca = tls_ca or os.environ.get(TLS_CA_ENV, "") or (run_info.tls_ca if run_info is not None else "")
    return Credentials(token=token, token_source=source, tls_ca=ca or None)


def run_credentials(run_info: "common_pb2.RunInfo", where: str) -> Credentials:
    """The credentials a head's own head.json names, and nothing else (the embedded head:
    $DRAGON_TOKEN may belong to another head). ``where`` names the head.json for messages."""
    if run_info.token_file:
        token: Optional[str] = read_token_file(run_info.token_file)
        source = run_info.token_file
    else:
        token, source = None, f"none: {where} names no token_file (the head runs without authentication)"
    return Credentials(token=token, token_source=source, tls_ca=run_info.tls_ca or None)


# ---------------------------------------------------------------- the channel


class _CallDetails(NamedTuple):
    method: str
    timeout: Optional[float]
    metadata: Optional[Sequence[Tuple[str, Any]]]
    credentials: Optional[grpc.CallCredentials]
    wait_for_ready: Optional[bool]
    compression: Any


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    pass


class TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                       grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to the metadata of every call of a channel."""

    def __init__(self, token: str) -> None:
        self._entry = (AUTH_METADATA_KEY, BEARER_PREFIX + token)

    def __repr__(self) -> str:
        return "TokenInterceptor(<hidden>)"

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(d.metadata or [])
        metadata.append(self._entry)
        return _ClientCallDetails(d.method, d.timeout, metadata, d.credentials,
                                  getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable, details: grpc.ClientCallDetails, requests: Any):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable, details: grpc.ClientCallDetails, requests: Any):
        return continuation(self._details(details), requests)


def read_tls_ca(path: str) -> bytes:
    """The PEM of the CA file ``path``; CredentialsError naming the file when it cannot be
    read or is empty (both client cores check it here, before connecting)."""
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise CredentialsError(f"cannot read the TLS CA certificate {path}: {e.strerror}", path) from None
    if not pem.strip():
        raise CredentialsError(f"the TLS CA certificate {path} is empty", path)
    return pem


def make_channel(address: str, credentials: Optional[Credentials] = None) -> grpc.Channel:
    """A channel to ``address`` (HOST:PORT) with the token interceptor (when there is a token),
    TLS when ``credentials.tls_ca`` is set, keepalive and no message limits. Raises
    CredentialsError naming the CA file when it cannot be read."""
    credentials = credentials or Credentials()
    if credentials.tls_ca:
        pem = read_tls_ca(credentials.tls_ca)
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=pem),
                                      options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    if credentials.token:
        channel = grpc.intercept_channel(channel, TokenInterceptor(credentials.token))
    return channel


__all__ = [
    "AUTH_METADATA_KEY", "BEARER_PREFIX", "CHANNEL_OPTIONS", "Credentials", "Secret", "TLS_CA_ENV",
    "TOKEN_ENV", "TokenInterceptor", "current_run_info", "dragon_home", "find_credentials",
    "find_run_info_for", "host_port_problem", "make_channel", "read_tls_ca", "read_run_info", "read_token_file",
    "run_credentials", "token_problem",
]
