"""Parsl's ``parsl_resource_specification`` as dragond's ``ResourceRequest``.

The keys DragonExecutor honours, with Parsl's units:

==================== =========================================================
``cores``            cores per process (per MPI rank), a whole number >= 1
``memory``           MB (MiB, 2**20 bytes) per node, >= 0 (0: no limit)
``gpus``             GPUs per node, a whole number >= 0
``walltime``         seconds (as Parsl apps' ``walltime``), > 0
``running_time_min`` minutes (as Work Queue / TaskVine), > 0; not with ``walltime``
``priority``         a whole number; higher runs first (Work Queue's sense;
                     HTEX's is the opposite)
``num_nodes``        MPI: nodes of the task, >= 1
``ranks_per_node``   MPI: ranks on each node, >= 1
``num_ranks``        MPI: ranks in all; with both others it must equal their product
``launcher_options`` MPI: extra options of the launcher (a string)
==================== =========================================================

Anything else, and any value that is not of its kind, is refused at submit
with Parsl's :class:`~parsl.executors.errors.InvalidResourceSpecification`
naming the key. dragond checks the request again (and refuses at once, with
``FAILURE_UNSATISFIABLE``, one that no node or set of nodes could ever hold).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from parsl.executors.errors import InvalidResourceSpecification

from dragon_parsl._proto import common_pb2

RESOURCE_KEYS = frozenset({
    "cores", "memory", "gpus", "walltime", "running_time_min", "priority",
    "num_nodes", "ranks_per_node", "num_ranks", "launcher_options",
})
MPI_KEYS = frozenset({"num_nodes", "ranks_per_node", "num_ranks"})

_U32 = 2 ** 32 - 1
_MAX_MEMORY_MB = 2 ** 44  # 16 EiB in MiB: anything beyond is a typo


def _refuse(key: str, value: Any, what: str) -> InvalidResourceSpecification:
    return InvalidResourceSpecification(
        {key}, f"DragonExecutor: {key!r} must be {what}, not {value!r}")


def _number(key: str, value: Any, what: str) -> float:
    """A number from an int, a float or a numeric string (Parsl passes some as strings)."""
    if isinstance(value, bool):
        raise _refuse(key, value, what)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _refuse(key, value, what) from None
    else:
        raise _refuse(key, value, what)
    if math.isnan(number) or math.isinf(number):
        raise _refuse(key, value, what)
    return number


def _whole(key: str, value: Any, minimum: int, maximum: int = _U32) -> int:
    what = f"a whole number >= {minimum}" if maximum == _U32 else \
        f"a whole number in {minimum}..{maximum}"
    number = _number(key, value, what)
    if number != int(number) or not minimum <= number <= maximum:
        raise _refuse(key, value, what)
    return int(number)


def resource_request(spec: Optional[Dict[str, Any]]) -> Optional[common_pb2.ResourceRequest]:
    """The ResourceRequest of a resource specification; None when it asks for nothing.
    Raises InvalidResourceSpecification naming the offending key(s)."""
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise InvalidResourceSpecification(set(), f"DragonExecutor: parsl_resource_specification must "
                                                  f"be a dict, not {type(spec).__name__}")
    unknown = {str(k) for k in spec} - RESOURCE_KEYS
    if unknown:
        raise InvalidResourceSpecification(
            unknown, f"DragonExecutor does not know {', '.join(sorted(repr(k) for k in unknown))}; "
                     f"it takes: {', '.join(sorted(RESOURCE_KEYS))}")
    r = common_pb2.ResourceRequest()
    if "cores" in spec:
        r.cores = _whole("cores", spec["cores"], 1)
    if "memory" in spec:
        mb = _number("memory", spec["memory"], "a number of MB >= 0")
        if not 0 <= mb <= _MAX_MEMORY_MB:
            raise _refuse("memory", spec["memory"], "a number of MB >= 0")
        r.memory_bytes = int(math.ceil(mb * 2 ** 20))
    if "gpus" in spec:
        r.gpus = _whole("gpus", spec["gpus"], 0)
    if "walltime" in spec and "running_time_min" in spec:
        raise InvalidResourceSpecification(
            {"walltime", "running_time_min"},
            "DragonExecutor: give one of 'walltime' (seconds) and 'running_time_min' (minutes)")
    if "walltime" in spec:
        seconds = _number("walltime", spec["walltime"], "a number of seconds > 0")
        if not 0 < seconds <= _U32:
            raise _refuse("walltime", spec["walltime"], "a number of seconds > 0")
        r.walltime_s = max(1, int(math.ceil(seconds)))
    if "running_time_min" in spec:
        minutes = _number("running_time_min", spec["running_time_min"], "a number of minutes > 0")
        if not 0 < minutes <= _U32 / 60:
            raise _refuse("running_time_min", spec["running_time_min"], "a number of minutes > 0")
        r.walltime_s = max(1, int(math.ceil(minutes * 60)))
    if "priority" in spec:
        r.priority = _whole("priority", spec["priority"], -2 ** 31, 2 ** 31 - 1)
    if "num_nodes" in spec:
        r.nodes = _whole("num_nodes", spec["num_nodes"], 1)
    if "ranks_per_node" in spec:
        r.ranks_per_node = _whole("ranks_per_node", spec["ranks_per_node"], 1)
    if "num_ranks" in spec:
        r.ranks = _whole("num_ranks", spec["num_ranks"], 1)
    if r.nodes and r.ranks_per_node and r.ranks and r.nodes * r.ranks_per_node != r.ranks:
        raise InvalidResourceSpecification(
            set(MPI_KEYS),
            f"DragonExecutor: num_ranks ({r.ranks}) must equal num_nodes ({r.nodes}) x ranks_per_node "
            f"({r.ranks_per_node}) = {r.nodes * r.ranks_per_node}")
    if r.nodes and r.ranks and r.ranks < r.nodes:
        raise InvalidResourceSpecification(
            {"num_ranks", "num_nodes"},
            f"DragonExecutor: num_ranks ({r.ranks}) must be at least num_nodes ({r.nodes})")
    if "launcher_options" in spec:
        opts = spec["launcher_options"]
        if not isinstance(opts, str):
            raise _refuse("launcher_options", opts, "a string")
        if "\0" in opts or "\n" in opts:
            raise _refuse("launcher_options", opts, "one line of launcher options")
        r.launcher_options = opts
    return r


__all__ = ["RESOURCE_KEYS", "resource_request"]
