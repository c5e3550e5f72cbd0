"""DragonExecutor's constructor options checked: a bad value is refused at once, naming the
option, rather than failing later at start() or submit (or being silently ignored)."""
from __future__ import annotations

import os
from typing import Any, Optional

from parsl.providers.base import ExecutionProvider

from dragon_parsl import transport


def check_options(*, address: Optional[str], provider: Optional[ExecutionProvider], drain_before_end: Any,
                  block_connect_timeout: Any, head_listen: Any, token: Any, tls_ca: Any, infra_retries: Any,
                  workers_per_node: Any, shm_threshold: Any, shm_path: Any, shm_pool_wait_s: Any,
                  batch_linger_ms: Any, batch_linger_in_flight: Any,
                  client_cpu: Any) -> None:
    """Raises ValueError for the first bad option, in the order of DragonExecutor's checks."""
    if provider is not None:
        if not isinstance(provider, ExecutionProvider):
            raise ValueError(f"DragonExecutor: provider must be a Parsl ExecutionProvider (SlurmProvider, "
                             f"PBSProProvider, LocalProvider, ...), not {type(provider).__name__}")
        if address is not None:
            raise ValueError("DragonExecutor: give provider= (blocks of nodes, with a head beside the "
                             "workflow) or address= (a head started by hand), not both")
    for option, value in (("drain_before_end", drain_before_end),
                          ("block_connect_timeout", block_connect_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (option == "block_connect_timeout" and value <= 0):
            raise ValueError(f"DragonExecutor: {option} must be a number of seconds "
                             f"{'> 0' if option == 'block_connect_timeout' else '>= 0'}, not {value!r}")
    if head_listen is not None and (not isinstance(head_listen, str) or not head_listen.strip()):
        raise ValueError(f"DragonExecutor: head_listen must be an address, host name or interface, "
                         f"not {head_listen!r}")
    if token is not None:  # the messages never show the value: it is a secret
        if not isinstance(token, str):
            raise ValueError(f"DragonExecutor: token must be a string (the run's token), not a "
                             f"{type(token).__name__}")
        problem = transport.token_problem(token, "the token= argument")
        if problem:
            raise ValueError(f"DragonExecutor: token must be the run's token (8..256 printable characters "
                             f"without spaces, as in the run directory's token file): {problem}")
    if tls_ca is not None:
        if not isinstance(tls_ca, (str, os.PathLike)) or not os.path.isfile(tls_ca):
            why = "no such file" if isinstance(tls_ca, (str, os.PathLike)) else "not a path"
            raise ValueError(f"DragonExecutor: tls_ca must be the path of the PEM file of the CA that "
                             f"signed the head's TLS certificate, not {tls_ca!r} ({why})")
    if infra_retries is not None:
        _require_whole_number("infra_retries", infra_retries, 0,
                              "a number of reruns >= 0 (0: off; None: the head's default)")
        if infra_retries >= 1 << 32:
            raise ValueError(f"DragonExecutor: infra_retries must be below 2**32, not {infra_retries!r}")
    if workers_per_node is not None:
        _require_whole_number("workers_per_node", workers_per_node, 1, "a number of workers >= 1 (None: "
                              "one per core)")
    # A typo here would otherwise surface as a TypeError at start(), or (negative)
    # silently turn the shared-memory path off.
    if shm_threshold is not None:
        _require_whole_number("shm_threshold", shm_threshold, 0, "a byte count >= 0 (0 or None: off)")
    if shm_path not in ("pool", "files"):
        raise ValueError(f"DragonExecutor: shm_path must be \"pool\" (the agent's shared-memory pool) or "
                         f"\"files\" (one file per task in shm_dir), not {shm_path!r}")
    if isinstance(shm_pool_wait_s, bool) or not isinstance(shm_pool_wait_s, (int, float)) \
            or not 0 <= shm_pool_wait_s <= 3600:
        raise ValueError(f"DragonExecutor: shm_pool_wait_s must be a number of seconds in [0, 3600], "
                         f"not {shm_pool_wait_s!r}")
    if isinstance(batch_linger_ms, bool) or not isinstance(batch_linger_ms, (int, float)) \
            or not 0 <= batch_linger_ms <= 1000:
        raise ValueError(f"DragonExecutor: batch_linger_ms must be a number of milliseconds in [0, 1000] "
                         f"(0: off), not {batch_linger_ms!r}")
    _require_whole_number("batch_linger_in_flight", batch_linger_in_flight, 1, "a task count >= 1")
    if client_cpu is not None:
        _require_whole_number("client_cpu", client_cpu, 0,
                              "a CPU number >= 0 (None: leave the process's affinity alone)")


def _require_whole_number(option: str, value: Any, minimum: int, what: str) -> None:
    """Refuses, naming the option, anything but an int >= minimum (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"DragonExecutor: {option} must be {what}, not {value!r}")

