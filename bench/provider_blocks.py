"""DragonExecutor(provider=...) (issue 12): how fast a block comes up, and no-op throughput with
blocks next to the embedded default.

    python bench/provider_blocks.py burst [--provider local|slurm] [--tries 5] [--strategy-period 1]
    python bench/provider_blocks.py noop [--tasks 5000] [--rounds 3]

burst: a fresh DFK with no block (init_blocks=0); at t0 a burst of 2 x workers_per_node tasks of
0.2 s is submitted; reported per try: when the strategy submitted the block (scale-out), when its
agent registered with the head (NodeInfo.connected_us), when the first task started running
(TaskInfo running_us, from the head) and when its result was back in the workflow, all from t0.
--provider slurm needs the Slurm test bed up and $SLURM_CONF set (one 1-node block, SrunLauncher,
partition debug); run it under the test beds' session lock, e.g.

    flock /run/lock/dragon-testbeds.session sh -c 'bash tests/testbed/slurm.sh up 4 &&
        SLURM_CONF=/etc/slurm/slurm.conf python3 bench/provider_blocks.py burst --provider slurm;
        bash tests/testbed/slurm.sh down'

noop: no-op throughput (tasks/s, submit of the first to the last result) of DragonExecutor() (the
embedded default, one agent with 2 workers) next to DragonExecutor(provider=LocalProvider(...))
with two blocks of one agent with 1 worker each (the same 2 workers), alternating A, B, B, A per
round, each in a fresh DFK after its blocks are up. The JSON of every number goes to stdout's last
line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
os.environ["PYTHONPATH"] = str(BENCH) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")


def sleepy(seconds):
    import time as t
    t.sleep(seconds)
    return seconds


def _dfk(executor, run_dir, **config):
    import parsl
    from parsl.config import Config
    return parsl.load(Config(executors=[executor], run_dir=run_dir, initialize_logging=False, **config))


def _cleanup(dfk):
    import parsl
    dfk.cleanup()
    parsl.clear()


def burst_try(provider_kind: str, strategy_period: float, workdir: str) -> dict:
    from parsl import python_app
    from dragon_parsl import DragonExecutor
    from dragon_parsl._proto import head_pb2

    if provider_kind == "local":
        from parsl.providers import LocalProvider
        provider = LocalProvider(init_blocks=0, min_blocks=0, max_blocks=1)
    else:
        from parsl.launchers import SrunLauncher
        from parsl.providers import SlurmProvider
        provider = SlurmProvider(partition="debug", nodes_per_block=1, init_blocks=0, min_blocks=0, max_blocks=1,
                                 walltime="00:10:00", launcher=SrunLauncher(), cmd_timeout=30)
    ex = DragonExecutor(label="burst", workers_per_node=2, provider=provider)
    dfk = _dfk(ex, workdir, strategy_period=strategy_period)
    try:
        app = python_app(sleepy, executors=["burst"])
        time.sleep(strategy_period * 1.5)  # the strategy's first (empty) pass is over
        t0_wall, t0 = time.time(), time.monotonic()
        futures = [app(0.2) for _ in range(4)]
        futures[0].result(timeout=300)
        first_result = time.monotonic() - t0
        for f in futures:
            f.result(timeout=300)
        block = ex._blocks["0"]
        nodes = ex._unary("ListNodes", head_pb2.ListNodesRequest(), timeout=10).nodes
        tasks = ex._unary("ListTasks", head_pb2.ListTasksRequest(limit=100), timeout=10).tasks
        registered = min(n.connected_us for n in nodes) / 1e6 - t0_wall
        first_running = min(t.times.running_us for t in tasks) / 1e6 - t0_wall
        return {"scale_out_s": round(block.submitted - t0, 3), "agent_registered_s": round(registered, 3),
                "first_task_running_s": round(first_running, 3), "first_result_s": round(first_result, 3)}
    finally:
        _cleanup(dfk)


def noop_run(kind: str, tasks: int, workdir: str) -> float:
    from parsl import python_app
    from noop_task import noop
    from dragon_parsl import DragonExecutor

    if kind == "embedded":
        ex = DragonExecutor(label="noop", workers_per_node=2)
    else:
        from parsl.providers import LocalProvider
        ex = DragonExecutor(label="noop", workers_per_node=1,
                            provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2))
    dfk = _dfk(ex, workdir, strategy_period=0.5)
    try:
        app = python_app(noop, executors=["noop"])
        if kind == "blocks":
            deadline = time.monotonic() + 60
            while sorted(ex.connected_blocks()) != ["0", "1"]:
                assert time.monotonic() < deadline, "blocks did not connect"
                time.sleep(0.1)
        for f in [app() for _ in range(200)]:  # warm the workers
            f.result(timeout=120)
        t0 = time.monotonic()
        futures = [app() for _ in range(tasks)]
        for f in futures:
            f.result(timeout=600)
        return tasks / (time.monotonic() - t0)
    finally:
        _cleanup(dfk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("burst", "noop"))
    ap.add_argument("--provider", choices=("local", "slurm"), default="local")
    ap.add_argument("--tries", type=int, default=5)
    ap.add_argument("--strategy-period", type=float, default=1.0)
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    out: dict = {"what": args.what}
    with tempfile.TemporaryDirectory(prefix="provider-blocks-", dir=os.getcwd()) as work:
        if args.what == "burst":
            tries = [burst_try(args.provider, args.strategy_period, os.path.join(work, f"t{i}"))
                     for i in range(args.tries)]
            out.update(provider=args.provider, strategy_period=args.strategy_period, tries=tries)
            for key in tries[0]:
                vals = [t[key] for t in tries]
                print(f"{key:>22}: median {statistics.median(vals):.2f} s, min {min(vals):.2f}, "
                      f"max {max(vals):.2f}")
        else:
            rates: dict = {"embedded": [], "blocks": []}
            for r in range(args.rounds):
                order = ("embedded", "blocks", "blocks", "embedded") if r % 2 == 0 else \
                        ("blocks", "embedded", "embedded", "blocks")
                for i, kind in enumerate(order):
                    rate = noop_run(kind, args.tasks, os.path.join(work, f"r{r}-{i}"))
                    rates[kind].append(round(rate, 1))
                    print(f"round {r} {kind:>8}: {rate:.0f} tasks/s", flush=True)
            out.update(tasks=args.tasks, rates=rates)
            med = {k: statistics.median(v) for k, v in rates.items()}
            print(f"median: embedded {med['embedded']:.0f} tasks/s, two LocalProvider blocks "
                  f"{med['blocks']:.0f} tasks/s ({med['blocks'] / med['embedded']:.3f}x)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
