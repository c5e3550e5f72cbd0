"""A private dragond started by the executor when no head address is given.

It runs ``dragond start --foreground --exit-with-parent --port 0`` with its own
run directory, waits for ``<run_dir>/head.json`` and stops the process
(SIGTERM, wait, SIGKILL) when asked. ``--exit-with-parent`` makes it go away
even if this Python process is killed.

Its credentials are the ones its head.json names (:meth:`LocalHead.credentials`):
dragond writes the run's token to ``<run_dir>/token`` (mode 0600, in the 0700 run
directory) and its path to head.json, so the embedded default needs nothing from
the user. A ``$DRAGON_TOKEN`` or ``$DRAGON_TLS_CA`` of the user's environment
belongs to some other head and is neither passed to it nor used with it.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from dragon_parsl import transport
from dragon_parsl.errors import LocalHeadError

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
        self.run_info: Optional[transport.common_pb2.RunInfo] = None  # its head.json

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
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        head_json = self.run_dir / "head.json"
        if head_json.exists():
            # A leftover of a killed run would give a dead address.
            head_json.unlink()
        env = dict(os.environ if self.env is None else self.env)
        for name in ("DRAGON_HEAD", transport.TOKEN_ENV, transport.TLS_CA_ENV):
            env.pop(name, None)  # another head's: this one makes its own token
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
                    self.run_info = transport.read_run_info(head_json)
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
        self.address = self.run_info.address
        logger.info("Embedded dragond pid %d listening on %s (run dir %s)", self.proc.pid, self.address,
                    self.run_dir)
        return self.address

    def credentials(self) -> transport.Credentials:
        """The token (from the token_file its head.json names) and TLS CA of this head."""
        if self.run_info is None:
            raise LocalHeadError("the embedded dragond is not started")
        return transport.run_credentials(self.run_info, str(self.run_dir / "head.json"))

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
