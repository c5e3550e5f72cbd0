"""A private dragond started by the executor when no head address is given.

It runs ``dragond start --foreground --exit-with-parent --port 0`` with its own
run directory, waits for ``<run_dir>/head.json`` and stops the process
(SIGTERM, wait, SIGKILL) when asked. ``--exit-with-parent`` makes it go away
even if this Python process is killed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from dragon_parsl.errors import HeadNotFound, LocalHeadError

logger = logging.getLogger(__name__)

CONSOLE_LOG = "dragond-console.log"


def find_binary(name: str, explicit: Optional[str] = None) -> str:
    """``explicit`` > ``$DRAGON_BIN_DIR/<name>`` > PATH; a clear error otherwise."""
    tried: List[str] = []
    if explicit:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        raise LocalHeadError(f"{name} not found or not executable at {explicit}")
    bin_dir = os.environ.get("DRAGON_BIN_DIR")
    if bin_dir:
        path = Path(bin_dir) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        tried.append(str(path))
    found = shutil.which(name)
    if found:
        return found
    tried.append(f"{name} on PATH")
    raise LocalHeadError(f"cannot find {name} (tried {', '.join(tried)}); build it with 'make build' "
                         f"and put build-out/bin on PATH or set $DRAGON_BIN_DIR")


def read_head_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def address_from_home() -> str:
    """``$DRAGON_HOME/current/head.json`` (default ~/.dragon), as dragonctl resolves it."""
    home = Path(os.environ.get("DRAGON_HOME") or Path.home() / ".dragon")
    head_json = home / "current" / "head.json"
    if not head_json.exists():
        raise HeadNotFound(f"no dragond is running (no $DRAGON_HEAD and no {head_json}); "
                           f"start one with 'dragond start'")
    info = read_head_json(head_json)
    address = info.get("address")
    if not address:
        raise HeadNotFound(f"{head_json} has no address")
    return str(address)


class LocalHead:
    """One embedded dragond process."""

    def __init__(self, run_dir: Path, dragond: str, workers: Optional[int] = None,
                 python: str = sys.executable, extra_args: Optional[List[str]] = None,
                 env: Optional[dict] = None) -> None:
        self.run_dir = Path(run_dir)
        self.env = env  # None: this process's environment
        self.dragond = dragond
        self.workers = workers
        self.python = python
        self.extra_args = list(extra_args or [])
        self.proc: Optional[subprocess.Popen] = None
        self.address: Optional[str] = None
        self.info: dict = {}

    @property
    def command(self) -> List[str]:
        cmd = [self.dragond, "start", "--foreground", "--exit-with-parent", "--port", "0",
               "--run-dir", str(self.run_dir), "--python", self.python, "--no-current"]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        return cmd + self.extra_args

    def console(self) -> str:
        try:
            return (self.run_dir / CONSOLE_LOG).read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def start(self, timeout: float) -> str:
        """Starts dragond and returns its address once head.json exists."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        head_json = self.run_dir / "head.json"
        if head_json.exists():
            # A leftover of a killed run would give a dead address.
            head_json.unlink()
        env = dict(os.environ if self.env is None else self.env)
        env.pop("DRAGON_HEAD", None)
        bin_dir = str(Path(self.dragond).resolve().parent)
        env.setdefault("DRAGON_BIN_DIR", bin_dir)
        logger.info("Starting embedded dragond: %s", " ".join(self.command))
        with open(self.run_dir / CONSOLE_LOG, "ab") as console:
            # A session of its own: a Ctrl-C in the terminal reaches Parsl, which
            # then shuts the executor (and this head) down in order.
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if head_json.exists():
                try:
                    self.info = read_head_json(head_json)
                    if self.info.get("address"):
                        break
                except (OSError, ValueError):
                    pass  # written atomically, but be lenient
            rc = self.proc.poll()
            if rc is not None:
                raise LocalHeadError(f"embedded dragond exited with code {rc} before listening "
                                     f"(command: {' '.join(self.command)}):\n{self.console()}")
            if time.monotonic() > deadline:
                self.stop()
                raise LocalHeadError(f"embedded dragond did not write {head_json} within {timeout:.0f}s "
                                     f"(command: {' '.join(self.command)}):\n{self.console()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        self.address = str(self.info["address"])
        logger.info("Embedded dragond pid %d listening on %s (run dir %s)", self.proc.pid, self.address,
                    self.run_dir)
        return self.address

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("embedded dragond pid %d did not stop within %.0fs of SIGTERM: killing it",
                               proc.pid, timeout)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.kill()
                proc.wait()
        logger.info("Embedded dragond pid %d exited with code %s", proc.pid, proc.returncode)
        return proc.returncode
