"""Runs a task in a given directory (used when the workflow changed directory
after the executor's session was opened). Imported by workers, so keep it light."""
from __future__ import annotations

import os
from typing import Any, Callable


def run_in_dir(cwd: str, func: Callable, *args: Any, **kwargs: Any) -> Any:
    if os.getcwd() != cwd:
        os.chdir(cwd)
    return func(*args, **kwargs)


# os.getcwd() releases the GIL around its syscall. DragonExecutor.submit asks for the
# directory once per task, on the DataFlowKernel's launch thread, while the result
# receiver and gRPC's threads are queued for the GIL: each release hands the GIL away
# and the launch thread then waits for it (a convoy that cost 15-20% of no-op
# throughput). libc's getcwd through ctypes.PyDLL keeps the GIL for the microsecond the
# syscall takes.
try:
    import ctypes

    _libc_getcwd = ctypes.PyDLL(None).getcwd
    _libc_getcwd.restype = ctypes.c_void_p
    _libc_getcwd.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
    _buf = ctypes.create_string_buffer(4096)
except (ImportError, OSError, AttributeError):  # pragma: no cover - no ctypes or no libc symbol
    _libc_getcwd = None


def current_dir() -> str:
    """os.getcwd() without releasing the GIL; the same OSError when it fails (a deleted
    directory, a path longer than 4 KiB: os.getcwd() then says why)."""
    if _libc_getcwd is not None and _libc_getcwd(_buf, len(_buf)):
        return os.fsdecode(_buf.value)
    return os.getcwd()
