"""Runs a task in a given directory (used when the workflow changed directory
after the executor's session was opened). Imported by workers, so keep it light."""
from __future__ import annotations

import os
from typing import Any, Callable


def run_in_dir(cwd: str, func: Callable, *args: Any, **kwargs: Any) -> Any:
    if os.getcwd() != cwd:
        os.chdir(cwd)
    return func(*args, **kwargs)
