#!/usr/bin/env python3
"""A real Parsl workflow on the Dragon task service, then dragonctl's view of the run.

    make example            # builds, installs, runs this
    python examples/workflow.py [--tasks 200] [--workers 2]

With no $DRAGON_HEAD, DragonExecutor starts a private dragond (found through
$DRAGON_BIN_DIR, then PATH; this script also looks in build-out/bin of its
checkout) under Parsl's run directory and stops it at the end. Exits non-zero
if any result is wrong.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import parsl
from parsl import bash_app, join_app, python_app
from parsl.config import Config

from dragon_parsl import DragonExecutor

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ the apps


@python_app
def square(x: int) -> int:
    return x * x


@python_app
def total(*values: int) -> int:
    return sum(values)


@python_app
def where_am_i() -> str:
    import os
    import socket
    return f"{socket.gethostname()} pid {os.getpid()}"


@python_app
def normalize(word: str) -> str:
    return word.strip().lower()


@python_app
def count_letters(word: str) -> int:
    return sum(ch.isalpha() for ch in word)


@python_app
def parse_ratio(text: str) -> float:
    num, den = text.split("/")
    return int(num) / int(den)  # ZeroDivisionError for "1/0"


@bash_app
def word_count(path: str, stdout: Optional[str] = None, stderr: Optional[str] = None) -> str:
    return f"wc -w < {path}"


@join_app
def sum_of_squares(n: int):
    # Runs in the workflow process and fans out n tasks; its result is the joined total.
    return total(*[square(i) for i in range(n)])


# ------------------------------------------------------------------ helpers


def find_dragonctl() -> Optional[str]:
    candidates = []
    if os.environ.get("DRAGON_BIN_DIR"):
        candidates.append(Path(os.environ["DRAGON_BIN_DIR"]) / "dragonctl")
    found = shutil.which("dragonctl")
    if found:
        candidates.append(Path(found))
    candidates.append(REPO / "build-out" / "bin" / "dragonctl")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def dragonctl(ctl: str, executor: DragonExecutor, *args: str) -> str:
    if executor.run_info_dir:
        where = ["--run-dir", executor.run_info_dir]
    else:
        where = ["--head", executor.head_address or ""]
    cp = subprocess.run([ctl, *args, *where], capture_output=True, text=True, timeout=60)
    if cp.returncode != 0:
        raise RuntimeError(f"dragonctl {' '.join(args)} exited {cp.returncode}: {cp.stderr.strip()}")
    return cp.stdout


class Checker:
    def __init__(self) -> None:
        self.failures: List[str] = []

    def check(self, what: str, got, expected) -> None:
        ok = got == expected
        print(f"  [{'ok' if ok else 'WRONG'}] {what}: {got!r}" + ("" if ok else f" (expected {expected!r})"))
        if not ok:
            self.failures.append(what)


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=200, help="size of the map (default 200)")
    ap.add_argument("--workers", type=int, default=None, help="workers of the private dragond (default: one per core)")
    opts = ap.parse_args()

    if not os.environ.get("DRAGON_BIN_DIR") and not shutil.which("dragond") \
            and (REPO / "build-out" / "bin" / "dragond").exists():
        os.environ["DRAGON_BIN_DIR"] = str(REPO / "build-out" / "bin")

    work = Path(tempfile.mkdtemp(prefix="dragon-example-"))
    executor = DragonExecutor(label="dragon", workers_per_node=opts.workers)
    config = Config(executors=[executor], run_dir=str(work / "runinfo"), strategy="none")
    c = Checker()
    t0 = time.monotonic()
    dfk = parsl.load(config)
    try:
        print(f"DragonExecutor connected to dragond at {executor.head_address}"
              + (f" (private head, run dir {executor.run_info_dir})" if executor.run_info_dir else ""))

        print("python_app:")
        c.check("square(7)", square(7).result(), 49)
        print(f"  ran on {where_am_i().result()} (this process is pid {os.getpid()})")

        print("dependency chain (normalize -> count_letters -> square):")
        c.check("square(count_letters(normalize('  Dragon ')))",
                square(count_letters(normalize("  Dragon "))).result(), 36)

        print(f"map of {opts.tasks} tasks, reduced by a dependent task:")
        squares = [square(i) for i in range(opts.tasks)]
        c.check(f"sum of squares 0..{opts.tasks - 1}", total(*squares).result(),
                sum(i * i for i in range(opts.tasks)))

        print("join_app:")
        c.check("sum_of_squares(10)", sum_of_squares(10).result(), 285)

        print("bash_app:")
        text = work / "text.txt"
        text.write_text("the quick brown fox jumps over the lazy dog\n")
        out = work / "wc.out"
        c.check("word_count exit code", word_count(str(text), stdout=str(out), stderr=str(work / "wc.err")).result(), 0)
        c.check("word_count stdout", out.read_text().strip(), "9")

        print("an app exception comes back with its type and remote traceback:")
        try:
            parse_ratio("1/0").result()
            c.check("parse_ratio('1/0') raised", False, True)
        except ZeroDivisionError as e:
            print(f"  caught {type(e).__name__}: {e}")
            c.check("exception type", type(e).__name__, "ZeroDivisionError")
        c.check("parse_ratio('3/4')", parse_ratio("3/4").result(), 0.75)

        elapsed = time.monotonic() - t0
        print(f"\nworkflow done in {elapsed:.1f}s")

        ctl = find_dragonctl()
        if ctl is None:
            print("dragonctl not found (build it with 'make build'); skipping dragonctl's view")
            c.failures.append("dragonctl not found")
        else:
            print(f"\n$ dragonctl status   ({ctl})")
            print(dragonctl(ctl, executor, "status").rstrip())
            print("\n$ dragonctl ps --limit 10")
            print(dragonctl(ctl, executor, "ps", "--limit", "10").rstrip())
    finally:
        dfk.cleanup()

    if c.failures:
        print(f"\nFAILED: {len(c.failures)} wrong: {', '.join(c.failures)}", file=sys.stderr)
        return 1
    print("\nall results correct")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
