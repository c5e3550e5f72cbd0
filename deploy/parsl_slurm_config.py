"""A Parsl configuration for a workflow started on a Slurm cluster's login node: DragonExecutor
with a SlurmProvider. The head runs here, beside the workflow; Parsl's strategy submits blocks
(Slurm jobs) when work piles up and gives them back when idle; each block's nodes run one
dragon-agent each (one srun step per block) that dials back to the head.

    # my_workflow.py
    import parsl
    from parsl_slurm_config import config      # this file (copy it next to your workflow)
    parsl.load(config)
    ...                                          # your apps, as with any executor
    parsl.dfk().cleanup()

Edit the settings below for your site. What each node needs: dragon-agent at the same path as
the dragond this process finds (``$DRAGON_BIN_DIR``, then PATH) and this Python (with parsl,
dragon_parsl and your apps' modules) at the same path: a shared filesystem, as on most
clusters. The run directory (Parsl's ``runinfo/NNN/dragon``, under the directory you start the
workflow in; or ``head_run_dir``) must be on a filesystem the nodes share too: the agents read
the run's token from its 0600 token file there (it is never on a command line) and write their
logs there (``agent-NODE-bBLOCK.log``, ``workers/``).

Run ``python deploy/parsl_slurm_config.py`` to try it: a burst of tasks, printed with the nodes
that ran them.
"""
import os

from parsl.config import Config
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

from dragon_parsl import DragonExecutor

PARTITION = os.environ.get("DRAGON_PARTITION") or None   # None: the cluster's default partition
ACCOUNT = os.environ.get("DRAGON_ACCOUNT") or None
NODES_PER_BLOCK = int(os.environ.get("DRAGON_NODES_PER_BLOCK", "2"))
MAX_BLOCKS = int(os.environ.get("DRAGON_MAX_BLOCKS", "4"))
WALLTIME = os.environ.get("DRAGON_WALLTIME", "01:00:00")
CORES_PER_NODE = int(os.environ["DRAGON_CORES_PER_NODE"]) if os.environ.get("DRAGON_CORES_PER_NODE") else None

config = Config(
    executors=[DragonExecutor(
        label="dragon",
        # One worker per CPU the agent gets; give the count explicitly when srun binds each agent
        # to fewer CPUs than the node has (see the launcher below).
        workers_per_node=CORES_PER_NODE,
        # Where the compute nodes reach this head: default the address routing to the partition's
        # nodes; name the high-speed interface if that is the one to use, e.g. "ib0".
        head_listen=os.environ.get("DRAGON_HEAD_LISTEN") or None,
        # No new task on a block in its last 2 minutes; tasks still running when Slurm ends the
        # job run again elsewhere (infrastructure retries, not the app's retries).
        drain_before_end=120,
        # A block whose job runs but whose agents do not register within 5 minutes is failed
        # (with the agents' logs and the job's output); 3 failed blocks in a row stop the workflow
        # with that error instead of waiting forever.
        block_connect_timeout=300,
        provider=SlurmProvider(
            partition=PARTITION,
            account=ACCOUNT,
            nodes_per_block=NODES_PER_BLOCK,
            init_blocks=1,
            min_blocks=0,
            max_blocks=MAX_BLOCKS,
            parallelism=1.0,
            walltime=WALLTIME,
            exclusive=True,
            # One srun step per block, one agent per node. With CORES_PER_NODE, each agent gets
            # them (--cpus-per-task); without, srun may bind each agent to one CPU.
            launcher=SrunLauncher(overrides=f"--cpus-per-task={CORES_PER_NODE}" if CORES_PER_NODE else ""),
            # Whatever the nodes need before the agent starts (modules, a virtualenv):
            worker_init=os.environ.get("DRAGON_WORKER_INIT", ""),
        ),
    )],
    # Idle blocks go back to Slurm after 2 minutes; the strategy looks every 5 s.
    max_idletime=120,
    strategy_period=5,
)


if __name__ == "__main__":
    import socket
    import time
    from collections import Counter

    import parsl
    from parsl import python_app

    @python_app
    def where(x):
        import socket as s
        return s.gethostname(), x * x

    parsl.load(config)
    try:
        t0 = time.monotonic()
        results = [f.result() for f in [where(i) for i in range(1000)]]
        assert [v for _, v in results] == [i * i for i in range(1000)]
        print(f"1000 tasks in {time.monotonic() - t0:.1f} s (blocks included) on "
              f"{dict(Counter(h for h, _ in results))}; workflow on {socket.gethostname()}")
    finally:
        parsl.dfk().cleanup()
