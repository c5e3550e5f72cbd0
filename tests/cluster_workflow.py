#!/usr/bin/env python3
"""A Parsl workflow that says where its tasks ran, for the cluster tests (Slurm, PBS).

    python tests/cluster_workflow.py --out result.json [--python-tasks 200] [--bash-tasks 40]

Connects to the head named by $DRAGON_HEAD (or --address; the token is found as usual:
$DRAGON_TOKEN, or the head.json under $DRAGON_HOME with that address). Runs python_apps that
return (hostname, x*x) and bash_apps that print hostname and x+1 into a file of --bash-dir
(a directory every node sees), checks every result and writes a JSON summary:
{"python_hosts": {host: count}, "bash_hosts": {...}, "wrong": [...], "seconds": ...}.
Exits 0 when every result is right.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import parsl
from parsl import bash_app, python_app
from parsl.config import Config

from dragon_parsl import DragonExecutor


@python_app
def square_where(x):
    import socket
    return socket.gethostname(), x * x


@bash_app
def inc_where(x, stdout=None):
    return f"echo $(hostname) {x + 1}"


def wait_for_nodes(count: int, address: str | None) -> None:
    bin_dir = os.environ.get("DRAGON_BIN_DIR")
    dragonctl = str(Path(bin_dir) / "dragonctl") if bin_dir else shutil.which("dragonctl")
    argv = [dragonctl, "--json", "nodes"] + (["--head", address] if address else [])
    deadline = time.monotonic() + 60
    while True:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        nodes = json.loads(cp.stdout).get("nodes", []) if cp.returncode == 0 else []
        ready = [n["node_id"] for n in nodes if n.get("ready_workers", 0) > 0]
        if len(ready) >= count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {ready} of {count} nodes have ready workers after 60 s: "
                             f"{cp.stdout} {cp.stderr}")
        time.sleep(0.1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--address", default=None, help="HOST:PORT (default $DRAGON_HEAD)")
    p.add_argument("--python-tasks", type=int, default=200)
    p.add_argument("--bash-tasks", type=int, default=40)
    p.add_argument("--bash-dir", default=None, help="default: next to --out")
    p.add_argument("--wait-nodes", type=int, default=0,
                   help="first wait (up to 60 s) until this many nodes have ready workers, so "
                        "that tasks spread over all of them (dragonctl --json nodes)")
    args = p.parse_args()
    if args.wait_nodes:
        wait_for_nodes(args.wait_nodes, args.address)
    out = Path(args.out).resolve()
    bash_dir = Path(args.bash_dir or out.parent / (out.stem + "-bash")).resolve()
    bash_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    kwargs = {"address": args.address} if args.address else {}
    config = Config(executors=[DragonExecutor(label="dragon", **kwargs)],
                    run_dir=str(out.parent / (out.stem + "-runinfo")), strategy="none")
    wrong: list[str] = []
    python_hosts: collections.Counter = collections.Counter()
    bash_hosts: collections.Counter = collections.Counter()
    with parsl.load(config):
        squares = [square_where(i) for i in range(args.python_tasks)]
        incs = [inc_where(i, stdout=str(bash_dir / f"inc-{i}.out"))
                for i in range(args.bash_tasks)]
        for i, f in enumerate(squares):
            host, value = f.result(timeout=120)
            python_hosts[host] += 1
            if value != i * i:
                wrong.append(f"square({i}) = {value}")
        for i, f in enumerate(incs):
            if f.result(timeout=120) != 0:
                wrong.append(f"inc({i}) exited {f.result()}")
                continue
            host, value = (bash_dir / f"inc-{i}.out").read_text().split()
            bash_hosts[host] += 1
            if int(value) != i + 1:
                wrong.append(f"inc({i}) printed {value}")
    parsl.clear()
    summary = {"python_hosts": dict(python_hosts), "bash_hosts": dict(bash_hosts),
               "wrong": wrong, "seconds": round(time.monotonic() - t0, 2),
               "head": args.address or os.environ.get("DRAGON_HEAD", "")}
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
