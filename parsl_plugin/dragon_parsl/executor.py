"""DragonExecutor: a Parsl executor backed by the Dragon task service (dragond)."""
from __future__ import annotations

import concurrent.futures as cf
import copy
import functools
import itertools
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import grpc
from parsl.app.errors import RemoteExceptionWrapper
from parsl.executors.errors import BadStateException, InvalidResourceSpecification
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.states import JobState, JobStatus
from parsl.monitoring.radios.base import RadioConfig
from parsl.monitoring.radios.filesystem import FilesystemRadio
from parsl.providers.base import ExecutionProvider
from parsl.serialize import deserialize
from parsl.serialize.errors import DeserializationError, SerializationError
from parsl.utils import RepresentationMixin

from dragon_parsl import _affinity, _cwd, blocks, shm, transport
from dragon_parsl.connection import PROTOCOL_VERSION, Session, Submission, default_client_name
from dragon_parsl.errors import (
    AuthenticationFailed,
    DragonError,
    LocalHeadError,
    PayloadTooLarge,
    TaskCancelled,
    TaskFailed,
    task_error,
)
from dragon_parsl.local_head import LocalHead, find_binary
from dragon_parsl.resources import RESOURCE_KEYS, resource_request
from dragon_parsl.worker import deserialize_view, pack_apply, serialize_parts, tune_malloc
from dragon_parsl._proto import common_pb2, head_pb2, head_pb2_grpc

logger = logging.getLogger(__name__)

# Resource specification keys this executor understands (dragon_parsl.resources):
# anything else is refused at submit rather than ignored.
SUPPORTED_RESOURCE_KEYS: frozenset = RESOURCE_KEYS

# Node states (NodeInfo.state) of agents that may still run tasks; "lost" and "gone" may not.
LIVE_NODE_STATES = frozenset({"joining", "ready", "draining"})

# How long the answer to "are all agents on this host?" (ListNodes) is trusted.
AGENT_HOSTS_RECHECK_S = 5.0

# With a provider: the head's view of the blocks' agents (ListNodes) is re-read at most this often.
BLOCK_NODES_RECHECK_S = 1.0
# With a provider: tasks that wait while no block runs or is pending and none is started (a
# strategy that starts none, max_blocks=0, ...) put the executor in Parsl's bad state after this long.
NO_BLOCK_GRACE_S = 120.0
# With a provider the embedded head never fails queued work for want of nodes by itself (its
# --node-grace, at its maximum): blocks come and go, and the executor decides (block failures).
PROVIDER_NODE_GRACE_S = 86400


class DragonExecutor(BlockProviderExecutor, RepresentationMixin):
    """Runs Parsl apps on dragond's workers.

    Three ways to get workers: no ``provider`` and no ``address`` starts a private dragond with
    one agent on this node (the embedded default); ``address`` uses a head started by hand
    (``dragond start``, in a job or from a login node); ``provider`` (any Parsl
    ExecutionProvider) runs the head beside the workflow and gets nodes in blocks, one batch
    job each, that Parsl's strategy grows and shrinks (``init_blocks``, ``min_blocks``,
    ``max_blocks``, ``parallelism``, ``Config(max_idletime=...)``), as for Parsl's
    HighThroughputExecutor.

    Parameters
    ----------
    address : str, optional
        ``HOST:PORT`` of a running dragond, or ``"current"`` for
        ``$DRAGON_HOME/current/head.json``. Default: ``$DRAGON_HEAD`` if set,
        otherwise a private dragond is started (and stopped by ``shutdown()``).
    token : str, optional
        The run's token, for a head given by ``address`` or ``$DRAGON_HEAD``. Default:
        ``$DRAGON_TOKEN``, else the token file named by the head.json the address came
        from (``"current"``), or by a head.json under ``$DRAGON_HOME`` (``current``, then
        ``runs/*``) whose address is the one given. Without one the head refuses the
        client (:class:`~dragon_parsl.errors.AuthenticationFailed`, saying where the
        token is read from). Never logged, and ``repr()`` shows ``<hidden>``. The embedded
        head needs none: its own token file is used (a token given here is ignored).
    tls_ca : str, optional
        PEM file of the CA that signed the head's TLS certificate (dragond
        ``--tls-ca``); with it the channel is TLS. Default: ``$DRAGON_TLS_CA``, else the
        ``tls_ca`` of that head.json; none: plaintext.
    infra_retries : int, optional
        How many times a task whose node is lost while it runs is run again elsewhere
        before it fails with :class:`~dragon_parsl.errors.NodeLost`; these runs do not
        count against Parsl's ``retries``. 0 turns them off. Default None: the head's
        (``dragond --infra-retries``).
    label : str
        Parsl executor label.
    workers_per_node : int, optional
        Workers of the embedded dragond (``--workers``); default one per core.
        Ignored with an existing head.
    dragond_path : str, optional
        The dragond binary for the embedded head; default ``$DRAGON_BIN_DIR/dragond``, then PATH.
    head_run_dir : str, optional
        Run directory of the embedded head; default ``<parsl run dir>/dragon``
        (``dragon-<label>`` for another label than "dragon"; a temporary directory
        when used outside a DataFlowKernel). Named so
        because Parsl itself sets ``executor.run_dir``.
    max_batch_tasks, max_batch_bytes : int
        Caps of one SubmitBatch message. Whatever is queued is sent at once;
        while fewer than ``batch_linger_in_flight`` tasks are outstanding there
        is no waiting for a batch to fill.
    batch_linger_ms : float
        With at least ``batch_linger_in_flight`` tasks outstanding (submitted,
        no result yet), the sender waits this long after the first queued task
        before sending, so that a burst of submissions leaves in one message
        instead of one every few tasks: each message wakes the head, an agent
        and two of gRPC's threads in this process. The workers already hold
        that many tasks, so the wait costs them nothing; a task submitted while
        few are outstanding (a sequential workflow, the latency of one call)
        goes at once. Default 10 ms; 0 turns it off.
    batch_linger_in_flight : int
        Outstanding tasks from which the sender lingers. Default 64.
    client_cpu : int, optional
        At the end of ``start()``, confine every thread of the workflow process (the
        DataFlowKernel's, this executor's, the user's) to this CPU. Python threads take
        turns on one interpreter lock, and handing it between CPUs is slow: under Parsl's
        default logging the DFK then spends about twice the CPU per task
        (bench/README.md). It changes the whole process: threads and processes it starts
        afterwards inherit the CPU (another executor started later in the same Config, a
        multi-threaded numpy in the workflow itself), so pick a CPU that no worker is
        pinned to, and leave it off if the workflow process computes in parallel itself.
        The embedded dragond, its agent and workers are started before and keep every CPU.
        Default None: the process's affinity is left alone.
    connect_timeout : float
        Seconds to wait for the head to answer (and send its Welcome).
    head_start_timeout : float
        Seconds to wait for the embedded dragond to listen.
    prefetch : int, optional
        ``dragond start --prefetch`` of the embedded dragond: the minimum number of
        tasks queued on an agent per worker beyond the one running (dragond may
        queue more for short tasks, up to its ``--max-prefetch``). More hides the
        round trip to the head between short tasks, at the price of tasks waiting
        behind a long one on the same worker. Default: dragond's default. Ignored
        with an existing head.
    tune_malloc : bool
        At start, set glibc's malloc so that freed multi-MiB buffers stay in
        the heap (mmap threshold 64 MiB, trim threshold 256 MiB) instead of being
        unmapped and page-faulted in again for every large task argument and
        result; the workers always do this. It changes how the whole workflow
        process uses memory (up to 256 MiB of freed memory may stay mapped), so
        it is opt-in: worth it for workflows that pass multi-MiB arrays. Default
        False; a no-op when ``MALLOC_MMAP_THRESHOLD_`` is set or off glibc.
    shm_threshold : int, optional
        Task arguments and results holding buffers (numpy arrays, ...) of at
        least this many bytes, or pickling to at least this many bytes, go
        through a file on the node-local ``shm_dir`` instead of gRPC; the task
        message carries only a small envelope naming it (docs/INTERFACES.md).
        Arguments take this path only when every agent of the head runs on this
        host (always so for the embedded head); results whenever the worker is
        on this host. Default 64 KiB; 0 or None turns the shared-memory path off
        (every byte through gRPC, as with dragond's ``--max-payload-mb`` limit).
    shm_dir : str
        Where the executor makes its directory of task data files,
        ``dragon-<user>-<pid>.<start>-<random>``; it must be node-local (a tmpfs,
        so that files are memory). Default ``/dev/shm``. Removed at shutdown;
        directories left by dead clients are removed when an executor starts.
    storage_access, working_dir, remote_monitoring_radio
        As for Parsl's other executors. Tasks run in the directory the
        workflow was in when it submitted them.
    provider : parsl.providers.base.ExecutionProvider, optional
        Gets nodes in blocks (SlurmProvider, PBSProProvider, LocalProvider, ...). The head runs
        beside the workflow (an embedded dragond with ``--launcher none``, listening on
        ``head_listen``); each block's job runs, through the provider's own launcher
        (SrunLauncher, MpiExecLauncher, SingleNodeLauncher, SimpleLauncher, ...), one
        ``dragon-agent --head ADDR --run-dir RUN --token-file RUN/token --block-id B --python PY
        [--workers N] [--job-end ...]`` per node; the agents dial back with the run's token, read
        from the run directory's 0600 token file (``head_run_dir`` must be on a filesystem the
        compute nodes share; the token is never on a command line). ``dragon-agent`` and the
        workers' Python must be at the same paths on the nodes. Scale-in drains a block's
        agents (no new tasks, running ones finish, prefetched ones go back to the queue), then
        cancels its job. Excludes ``address``.
    head_listen : str, optional
        With a provider: where the head listens, an address, host name or interface (``ib0``);
        the compute nodes dial it. Default: ``127.0.0.1`` for LocalProvider, for SlurmProvider
        the address that routes to its partition's nodes (``sinfo``), otherwise the address of
        this host's name; ``start()`` fails, saying so, when that is a loopback address.
    drain_before_end : float
        With a provider: seconds before a block's job ends (its walltime, or
        ``$SLURM_JOB_END_TIME``) from which the head places no new task on its nodes; tasks
        sent there and not started go back to the queue, running ones may finish (those still
        running at the end run again elsewhere, as infrastructure retries). Such a block is
        reported HELD, so that the strategy can start its replacement. Default 60.
    block_connect_timeout : float
        With a provider: a block whose job runs (or ended) without any of its agents
        registering within this many seconds is reported FAILED, with the provider's words, the
        end of the agents' logs and of the job's output; its job is cancelled. Default 120.
    block_error_handler : bool or callable
        With a provider: True (default): every task fails with Parsl's BadStateException, and
        new ones at once, once every block failed (at least ``max(1, init_blocks)`` of them) or
        the last 3 blocks failed in a row, naming each failure; False: never; or a callable
        ``(executor, {block_id: JobStatus})`` as for HighThroughputExecutor.
    worker_python : str, optional
        With a provider: the Python the agents run their workers with on the compute nodes;
        default this workflow's ``sys.executable``.
    """

    def __init__(self, address: Optional[str] = None, label: str = "dragon",
                 workers_per_node: Optional[int] = None, dragond_path: Optional[str] = None,
                 head_run_dir: Optional[str] = None, max_batch_tasks: int = 1000,
                 max_batch_bytes: int = 4 * 1024 * 1024, connect_timeout: float = 30.0,
                 head_start_timeout: float = 60.0, storage_access: Optional[List[Any]] = None,
                 working_dir: Optional[str] = None,
                 remote_monitoring_radio: Optional[RadioConfig] = None, tune_malloc: bool = False,
                 prefetch: Optional[int] = None,
                 shm_threshold: Optional[int] = shm.DEFAULT_THRESHOLD,
                 shm_dir: str = shm.DEFAULT_DIR, batch_linger_ms: float = 10.0,
                 batch_linger_in_flight: int = 64, client_cpu: Optional[int] = None,
                 token: Optional[str] = None, tls_ca: Optional[str] = None,
                 infra_retries: Optional[int] = None,
                 provider: Optional[ExecutionProvider] = None, head_listen: Optional[str] = None,
                 drain_before_end: float = 60.0, block_connect_timeout: float = 120.0,
                 block_error_handler: Union[bool, Callable[[BlockProviderExecutor, Dict[str, JobStatus]],
                                                           None]] = True,
                 worker_python: Optional[str] = None) -> None:
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
        handler = blocks.dragon_block_error_handler if block_error_handler is True else block_error_handler
        super().__init__(provider=provider, block_error_handler=handler)
        self.head_listen = head_listen
        self.drain_before_end = float(drain_before_end)
        self.block_connect_timeout = float(block_connect_timeout)
        self.worker_python = worker_python
        self.address = address
        if token is not None:  # the messages never show the value: it is a secret
            if not isinstance(token, str):
                raise ValueError(f"DragonExecutor: token must be a string (the run's token), not a "
                                 f"{type(token).__name__}")
            problem = transport.token_problem(token, "the token= argument")
            if problem:
                raise ValueError(f"DragonExecutor: token must be the run's token (8..256 printable characters "
                                 f"without spaces, as in the run directory's token file): {problem}")
        # RepresentationMixin's repr (which Parsl logs with the configuration) shows
        # getattr(self, "token"): a Secret prints as <hidden>.
        self.token: Optional[transport.Secret] = transport.Secret(token) if token is not None else None
        if tls_ca is not None:
            if not isinstance(tls_ca, (str, os.PathLike)) or not os.path.isfile(tls_ca):
                why = "no such file" if isinstance(tls_ca, (str, os.PathLike)) else "not a path"
                raise ValueError(f"DragonExecutor: tls_ca must be the path of the PEM file of the CA that "
                                 f"signed the head's TLS certificate, not {tls_ca!r} ({why})")
            tls_ca = os.fspath(tls_ca)
        self.tls_ca = tls_ca
        if infra_retries is not None:
            _require_whole_number("infra_retries", infra_retries, 0,
                                  "a number of reruns >= 0 (0: off; None: the head's default)")
            if infra_retries >= 1 << 32:
                raise ValueError(f"DragonExecutor: infra_retries must be below 2**32, not {infra_retries!r}")
        self.infra_retries = infra_retries
        self.label = label
        if workers_per_node is not None:
            _require_whole_number("workers_per_node", workers_per_node, 1, "a number of workers >= 1 (None: "
                                  "one per core)")
        self.workers_per_node = workers_per_node  # the property's setter
        self.dragond_path = dragond_path
        self.head_run_dir = head_run_dir
        self.max_batch_tasks = max_batch_tasks
        self.max_batch_bytes = max_batch_bytes
        self.connect_timeout = connect_timeout
        self.head_start_timeout = head_start_timeout
        self.tune_malloc = tune_malloc
        self.prefetch = prefetch
        # A typo here would otherwise surface as a TypeError at start(), or (negative)
        # silently turn the shared-memory path off.
        if shm_threshold is not None:
            _require_whole_number("shm_threshold", shm_threshold, 0, "a byte count >= 0 (0 or None: off)")
        self.shm_threshold = shm_threshold
        self.shm_dir = shm_dir
        if isinstance(batch_linger_ms, bool) or not isinstance(batch_linger_ms, (int, float)) \
                or not 0 <= batch_linger_ms <= 1000:
            raise ValueError(f"DragonExecutor: batch_linger_ms must be a number of milliseconds in [0, 1000] "
                             f"(0: off), not {batch_linger_ms!r}")
        _require_whole_number("batch_linger_in_flight", batch_linger_in_flight, 1, "a task count >= 1")
        self.batch_linger_ms = float(batch_linger_ms)
        self.batch_linger_in_flight = batch_linger_in_flight
        if client_cpu is not None:
            _require_whole_number("client_cpu", client_cpu, 0,
                                  "a CPU number >= 0 (None: leave the process's affinity alone)")
        self.client_cpu = client_cpu
        self.storage_access = storage_access
        self.working_dir = working_dir
        self.remote_monitoring_radio = (remote_monitoring_radio if remote_monitoring_radio is not None
                                        else FilesystemRadio())

        self.head_address: Optional[str] = None  # the address actually used
        self.credentials: Optional[transport.Credentials] = None  # the token and CA actually used
        self.local_head: Optional[LocalHead] = None
        self.session: Optional[Session] = None
        self.welcome: Optional[head_pb2.Welcome] = None
        self.max_payload_bytes = 0
        self._tasks: Dict[int, cf.Future] = {}
        self._lock = threading.Lock()
        self._refs = itertools.count(1)
        self._broken: Optional[DragonError] = None
        self._started = False
        self._shut_down = False
        self._temp_run_dir: Optional[str] = None
        # The shared-memory data path: this executor's directory (None when off),
        # each outstanding task's argument file, and whether all agents share this host.
        self.shm: Optional[shm.ClientDirectory] = None
        self._arg_files: Dict[int, str] = {}
        self._agents_local = False
        self._agents_checked_at = float("-inf")
        # With a provider: each block, the command its job runs, the head's view of the nodes.
        self._blocks: Dict[str, blocks.Block] = {}
        self._blocks_lock = threading.RLock()
        self._launch_cmd: Optional[str] = None
        self._nodes_read_at = float("-inf")
        self._idle_without_blocks_since: Optional[float] = None
        self._repr = threading.local()

    # ------------------------------------------------------------------ workers_per_node
    @property
    def workers_per_node(self) -> Any:
        """Workers per node. What was configured (None: one per core); with a provider, what
        Parsl's strategy counts per node of a block: the configured number, else the most
        workers an agent of a block registered, else the provider's ``cores_per_node``, else 1."""
        configured = self._workers_per_node_config
        if configured is not None or self.provider is None or getattr(self._repr, "active", False):
            return configured
        with self._blocks_lock:
            seen = [n.workers for b in self._blocks.values() for n in b.nodes.values() if n.workers]
        if seen:
            return max(seen)
        cores = getattr(self.provider, "cores_per_node", None)
        return cores if isinstance(cores, int) and cores > 0 else 1

    @workers_per_node.setter
    def workers_per_node(self, value: Optional[int]) -> None:
        self._workers_per_node_config = value

    def __repr__(self) -> str:
        # RepresentationMixin shows each constructor argument as given (workers_per_node=None,
        # not what the strategy counts).
        self._repr.active = True
        try:
            return RepresentationMixin.__repr__(self)
        finally:
            self._repr.active = False

    # ------------------------------------------------------------------ start
    def _resolve_address(self) -> Tuple[Optional[str], Optional["transport.common_pb2.RunInfo"]]:
        """The address of an existing head (None: the embedded default) and the head.json
        it came from, if it came from one."""
        if self.address:
            if self.address == "current":
                _, info = transport.current_run_info()
                return info.address, info
            return self.address, None
        env = os.environ.get("DRAGON_HEAD", "").strip()
        if env:
            return env, None
        return None, None

    def _embedded_run_dir(self) -> Path:
        if self.head_run_dir:
            return Path(self.head_run_dir).resolve()
        if self.run_id is not None:  # inside a DFK, which set run_dir
            # One directory per executor: two DragonExecutors of one Config (two heads) must not
            # share a token file or agent logs.
            name = "dragon" if self.label == "dragon" else "dragon-" + re.sub(r"[^A-Za-z0-9._-]", "_", self.label)
            return Path(self.run_dir) / name
        self._temp_run_dir = tempfile.mkdtemp(prefix="dragon-parsl-")
        return Path(self._temp_run_dir)

    def start(self) -> None:
        if self._started:
            raise DragonError(f"DragonExecutor {self.label!r} is already started")
        self._started = True
        super().start()  # BlockProviderExecutor: block monitoring messages
        if self.tune_malloc:
            tune_malloc()
        if self.provider is not None:
            address, run_info = None, None  # blocks dial a head of this executor's own
            if os.environ.get("DRAGON_HEAD", "").strip():
                logger.warning("DragonExecutor %s: $DRAGON_HEAD is ignored with a provider, which runs its "
                               "own head", self.label)
        else:
            address, run_info = self._resolve_address()
        if address is None:
            dragond = find_binary("dragond", self.dragond_path)
            extra = ["--prefetch", str(int(self.prefetch))] if self.prefetch is not None else []
            workers = self._workers_per_node_config
            if self.provider is not None:
                listen = self.head_listen or blocks.default_head_listen(self.provider)
                extra += ["--launcher", "none", "--listen", listen, "--node-grace", str(PROVIDER_NODE_GRACE_S)]
                workers = None  # the blocks' agents get it (--workers in their command)
            self.local_head = LocalHead(self._embedded_run_dir(), dragond, workers=workers,
                                        python=sys.executable, extra_args=extra)
            address = self.local_head.start(self.head_start_timeout)
            if self.token is not None or self.tls_ca is not None:
                logger.warning("DragonExecutor %s: token and tls_ca are ignored with the embedded head, which "
                               "makes its own token", self.label)
        elif self._workers_per_node_config is not None or self.prefetch is not None:
            logger.warning("DragonExecutor %s: workers_per_node=%s, prefetch=%s are ignored with an existing "
                           "head (%s)", self.label, self._workers_per_node_config, self.prefetch, address)
        self.head_address = address
        from dragon_parsl import __version__
        try:
            if self.local_head is not None:
                self.credentials = self.local_head.credentials()
            else:
                self.credentials = transport.find_credentials(
                    address, explicit_token=self.token.reveal() if self.token is not None else None,
                    tls_ca=self.tls_ca, run_info=run_info)
            self.session = Session(address, default_client_name(__version__),
                                   on_accepted=self._on_accepted, on_result=self._on_result,
                                   on_broken=self._on_broken, max_batch_tasks=self.max_batch_tasks,
                                   max_batch_bytes=self.max_batch_bytes,
                                   in_flight=self.outstanding, linger_s=self.batch_linger_ms / 1000.0,
                                   linger_in_flight=self.batch_linger_in_flight,
                                   credentials=self.credentials, infra_retries=self.infra_retries)
            self.welcome = self.session.connect(self.connect_timeout)
        except BaseException:
            self.session = None
            self._stop_local_head()
            raise
        self.max_payload_bytes = int(self.welcome.max_payload_bytes)
        if self.provider is not None:
            try:
                self._launch_cmd = self._agent_command(dragond)
            except BaseException:
                self.shutdown()
                raise
        self._open_shm_directory()
        self._pin_client_threads()
        logger.info("DragonExecutor %s: session %d with dragond %s at %s (run %s, protocol %d, "
                    "max payload %d bytes, infra retries %d, token: %s, %s)", self.label,
                    self.welcome.session_id, self.welcome.head_version, address, self.welcome.run_id,
                    PROTOCOL_VERSION, self.max_payload_bytes, self.welcome.infra_retries,
                    self.credentials.token_source,
                    f"TLS with CA {self.credentials.tls_ca}" if self.credentials.tls_ca else "plaintext")

    def _pin_client_threads(self) -> None:
        """client_cpu: after the embedded head started (its processes keep every CPU)."""
        if self.client_cpu is None:
            return
        try:
            moved = _affinity.pin_process_threads(self.client_cpu)
        except (ValueError, OSError) as e:
            self.shutdown()
            raise DragonError(f"DragonExecutor {self.label!r}: client_cpu={self.client_cpu}: {e}") from e
        logger.info("DragonExecutor %s: the %d threads of the workflow process now run on CPU %d (client_cpu)",
                    self.label, moved, self.client_cpu)

    def _open_shm_directory(self) -> None:
        if not self.shm_threshold or self.shm_threshold <= 0:
            return
        try:
            self.shm = shm.ClientDirectory(self.shm_dir, int(self.shm_threshold))
        except OSError as e:
            logger.warning("DragonExecutor %s: cannot create a directory in %s (%s): large task data goes "
                           "through gRPC", self.label, self.shm_dir, e)
            return
        for path in self.shm.swept:
            logger.info("DragonExecutor %s: removed %s, left behind by a client that is gone", self.label, path)
        logger.info("DragonExecutor %s: task data of %d bytes or more goes through %s", self.label,
                    self.shm.threshold, self.shm.path)

    def _agents_share_this_host(self) -> bool:
        """True when every connected agent runs on this host, so workers can read
        argument files written here. Asked of the head (ListNodes) at most every
        few seconds; an embedded head's agent is always local. With a provider, only
        LocalProvider's blocks are (others may join any time, on other hosts)."""
        if self.provider is not None:
            return blocks.is_local(self.provider)
        if self.local_head is not None:
            return True
        now = time.monotonic()
        if now - self._agents_checked_at < AGENT_HOSTS_RECHECK_S:
            return self._agents_local
        try:
            nodes = self._unary("ListNodes", head_pb2.ListNodesRequest(),
                                timeout=min(self.connect_timeout, 5.0)).nodes
        except Exception as e:  # noqa: BLE001  (any failure: be safe, send inline)
            logger.warning("DragonExecutor %s: ListNodes failed (%s): task arguments go inline", self.label, e)
            nodes = None
        connected = [n for n in nodes or [] if n.state in LIVE_NODE_STATES]
        self._agents_local = bool(connected) and all(_is_local_agent(n) for n in connected)
        self._agents_checked_at = now
        return self._agents_local

    def shm_counters(self) -> Dict[str, Any]:
        """Tasks and bytes that went through shared memory and inline (arguments and
        results), and ``dir``: the executor's directory (None when the path is off)."""
        if self.shm is None:
            return {"dir": None}
        return {"dir": self.shm.path, **vars(self.shm.counters)}

    @property
    def run_info_dir(self) -> Optional[str]:
        """The run directory of the embedded head (for ``dragonctl --run-dir``), if any."""
        return str(self.local_head.run_dir) if self.local_head is not None else None

    # ------------------------------------------------------------------ submit
    def validate_resource_spec(self, resource_specification: Dict[str, Any]) -> None:
        """Refuses (InvalidResourceSpecification naming the key) unknown keys and bad values."""
        resource_request(resource_specification)

    def submit(self, func: Callable, resource_specification: Dict[str, Any], *args: Any,
               **kwargs: Any) -> cf.Future:
        if getattr(func, "dragon_mpi_launch", None) or hasattr(func, "__wrapped__"):
            from dragon_parsl import mpi  # @mpi_app: run here, launched by the leader agent
            if mpi.launch_of(func) is not None:
                return mpi.submit_job(self, func, resource_specification, args, kwargs)
        if self.bad_state_is_set:
            raise self.executor_exception
        resources = resource_request(resource_specification)  # refuses bad keys and values
        session = self.session
        if session is None:
            if self._broken is not None:
                raise self._broken
            raise DragonError(f"DragonExecutor {self.label!r} is not started (or already shut down)")
        if self._shut_down:
            raise DragonError(f"DragonExecutor {self.label!r} is shut down")
        name = getattr(func, "__name__", None) or type(func).__name__
        try:
            cwd = _cwd.current_dir()
        except OSError:
            cwd = session.cwd
        call: Callable = func
        if cwd != session.cwd:
            # The session's tasks run in the directory of the Hello; a workflow
            # that changed directory since gets its tasks run where it is now.
            call = functools.partial(_cwd.run_in_dir, cwd, func)
        arg_file: Optional[str] = None
        try:
            if self.shm is not None:
                payload, arg_file = self.shm.pack_task(shm.Part.from_parsl(serialize_parts(call)), args,
                                                       kwargs, allow_file=self._agents_share_this_host())
            else:
                # Byte for byte parsl.serialize.pack_apply_message, with one copy of large
                # arguments instead of several (and no per-task "exceeds buffer threshold"
                # warning: the payload limit below is what counts).
                payload = pack_apply(call, args, kwargs)
        except TypeError:
            raise SerializationError(name)

        fut: cf.Future = cf.Future()
        fut.dragon_task_id = None  # type: ignore[attr-defined]
        if self.max_payload_bytes and len(payload) > self.max_payload_bytes:
            fut.set_exception(PayloadTooLarge(name, len(payload), self.max_payload_bytes))
            return fut
        try:
            with self._lock:
                if self._broken is not None:
                    raise copy.copy(self._broken)
                if self._shut_down:
                    raise DragonError(f"DragonExecutor {self.label!r} is shut down")
                ref = next(self._refs)
                fut.parsl_executor_task_id = ref  # type: ignore[attr-defined]
                self._tasks[ref] = fut
                if arg_file is not None:
                    self._arg_files[ref] = arg_file
                session.submit(Submission(ref, payload, name, resources))
        except BaseException:
            self._discard_arg_file(arg_file)
            raise
        return fut

    def _discard_arg_file(self, path: Optional[str]) -> None:
        if path is not None and self.shm is not None:
            self.shm.discard(path)

    # ------------------------------------------------------------------ results
    def _on_accepted(self, client_ref: int, task_id: int) -> None:
        fut = self._tasks.get(client_ref)
        if fut is not None:
            fut.dragon_task_id = task_id  # type: ignore[attr-defined]
            on_accepted = getattr(fut, "dragon_on_accepted", None)  # dragon_parsl.mpi
            if on_accepted is not None:
                on_accepted(task_id)

    def _on_result(self, r: "head_pb2.ClientResult") -> None:
        # No self._lock here: dict.pop is atomic under the GIL, and a contended lock on the
        # receiver thread would hand the GIL to the submitting thread once per result. A
        # future that shutdown() fails at the same moment is caught as InvalidStateError;
        # shutdown() swaps both dicts, so a file is discarded by one side only.
        fut = self._tasks.pop(r.client_ref, None)
        arg_file = self._arg_files.pop(r.client_ref, None)
        # The task is over (done, failed or cancelled): no worker reads its arguments any more.
        self._discard_arg_file(arg_file)
        if fut is None:
            # In Parsl's bad state every future has failed already and the head cancels the rest.
            (logger.debug if self.bad_state_is_set else logger.warning)(
                "DragonExecutor %s: result for unknown client_ref %d (task %d)", self.label, r.client_ref,
                r.task_id)
            if self.shm is not None and r.result.outcome == common_pb2.OK:
                self.shm.discard_result(r.result.data)
            return
        fut.dragon_task_id = r.task_id  # type: ignore[attr-defined]
        if getattr(fut, "dragon_raw_result", False):  # dragon_parsl.mpi decodes its own results
            try:
                fut.set_result(r)
            except cf.InvalidStateError:
                pass
            return
        res = r.result
        outcome = res.outcome
        try:
            if outcome == common_pb2.OK:
                try:
                    value = self._result_value(res.data)
                except Exception as e:
                    fut.set_exception(DeserializationError(
                        f"result of task {r.task_id} (node {res.node}): {type(e).__name__}: {e}"))
                else:
                    fut.set_result(value)
            elif outcome == common_pb2.APP_EXCEPTION:
                fut.set_exception(self._app_exception(r))
            elif outcome == common_pb2.SYSTEM_ERROR or outcome == common_pb2.CANCELED:
                # The failure kind picks the class; the message is the head's, never parsed.
                fut.set_exception(task_error(_failure_name(res.failure), res.error, r.task_id, res.node,
                                             res.worker_pid, cancelled=outcome == common_pb2.CANCELED))
            else:
                fut.set_exception(TaskFailed(
                    f"task {r.task_id}: dragond reported unknown outcome {outcome} ({res.error})",
                    task_id=r.task_id, node=res.node, worker_pid=res.worker_pid))
        except cf.InvalidStateError:
            pass  # the user cancelled the future; nothing to deliver

    def _result_value(self, data: bytes) -> Any:
        if self.shm is None:
            return deserialize_view(data)
        if shm.is_envelope(data):
            return self.shm.load_result(data)
        self.shm.count_inline_result(len(data))
        return deserialize_view(data)

    def _app_exception(self, r: "head_pb2.ClientResult") -> BaseException:
        try:
            s = deserialize(r.result.data)
        except Exception as e:
            return DeserializationError(f"exception of task {r.task_id} (node {r.result.node}) could not be "
                                        f"deserialized: {type(e).__name__}: {e}")
        if isinstance(s, RemoteExceptionWrapper):
            try:
                s.reraise()
            except BaseException as e:  # the app's own exception, with its remote traceback
                return e
            return DeserializationError(f"task {r.task_id}: RemoteExceptionWrapper did not raise")
        if isinstance(s, BaseException):
            return s
        return DeserializationError(f"task {r.task_id}: unknown exception-like type received: {type(s)}")

    def _on_broken(self, error: DragonError) -> None:
        with self._lock:
            self._broken = error
            tasks, self._tasks = self._tasks, {}
            arg_files, self._arg_files = self._arg_files, {}
        for path in list(arg_files.values()):  # list(): the receiver may still pop from it
            self._discard_arg_file(path)
        if tasks:
            logger.error("DragonExecutor %s: %s; failing %d outstanding tasks", self.label, error, len(tasks))
        else:
            logger.error("DragonExecutor %s: %s", self.label, error)
        for fut in list(tasks.values()):
            try:
                # HeadConnectionLost, or AuthenticationFailed when the head refused the token;
                # one copy per future (each gets its own traceback when raised).
                fut.set_exception(copy.copy(error))
            except cf.InvalidStateError:
                pass

    # ------------------------------------------------------------------ info
    def outstanding(self) -> int:
        """Tasks submitted and not yet finished."""
        return len(self._tasks)

    def _stub(self) -> head_pb2_grpc.HeadServiceStub:
        if self.session is None or self.session._channel is None:
            raise DragonError(f"DragonExecutor {self.label!r} is not connected")
        return head_pb2_grpc.HeadServiceStub(self.session._channel)

    def _unary(self, method: str, request: Any, timeout: float) -> Any:
        """One HeadService call; a refused token is an AuthenticationFailed, not a bare RpcError."""
        stub = self._stub()
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                source = self.credentials.token_source if self.credentials is not None else "?"
                raise AuthenticationFailed(self.head_address or "?", e.details() or "", source) from None
            raise

    def head_status(self, timeout: float = 10.0) -> "head_pb2.StatusReply":
        return self._unary("Status", head_pb2.StatusRequest(), timeout=timeout)

    def connected_workers(self, timeout: float = 10.0) -> int:
        """Workers registered with the head (all nodes)."""
        return int(self.head_status(timeout).workers)

    def cancel_task(self, fut: cf.Future, timeout: float = 10.0) -> "head_pb2.CancelReply":
        """Asks dragond to cancel the task behind ``fut`` (its future then fails with TaskCancelled)."""
        task_id = getattr(fut, "dragon_task_id", None)
        if not task_id:
            raise DragonError("this future has no dragon task id (yet): it was not accepted by dragond")
        return self._unary("Cancel", head_pb2.CancelRequest(task_id=task_id), timeout=timeout)

    def monitor_resources(self) -> bool:
        return True

    # ------------------------------------------------------------------ blocks (provider)
    def _agent_command(self, dragond: str) -> str:
        """The command each block's job runs (``{block_id}`` left in), from what the head
        started with: its address, run dir and token file."""
        assert self.local_head is not None and self.local_head.run_info is not None
        agent = Path(dragond).resolve().parent / "dragon-agent"
        if not (agent.is_file() and os.access(agent, os.X_OK)):
            raise LocalHeadError(f"DragonExecutor {self.label!r}: no dragon-agent next to {dragond} (at {agent}); "
                                 f"blocks run it on their nodes from that path")
        info = self.local_head.run_info
        if not info.token_file:
            raise LocalHeadError(f"DragonExecutor {self.label!r}: the embedded head names no token file "
                                 f"(head.json of {self.local_head.run_dir})")
        walltime = blocks.walltime_seconds(self.provider)
        cmd = blocks.agent_command(str(agent), info.address, str(self.local_head.run_dir), info.token_file,
                                   self.worker_python or sys.executable, self._workers_per_node_config,
                                   self.drain_before_end, walltime)
        logger.info("DragonExecutor %s: blocks of %s run (through %s): %s", self.label,
                    type(self.provider).__name__, type(getattr(self.provider, "launcher", None)).__name__, cmd)
        if walltime is not None and walltime <= self.drain_before_end:
            logger.warning("DragonExecutor %s: the provider's walltime (%d s) is not longer than drain_before_end "
                           "(%g s): its blocks drain as soon as they start and run no task", self.label, walltime,
                           self.drain_before_end)
        return cmd

    def _get_launch_command(self, block_id: str) -> str:
        if self._launch_cmd is None:
            raise DragonError(f"DragonExecutor {self.label!r} is not started with a provider")
        return self._launch_cmd.replace("{block_id}", block_id)

    def _launch_block(self, block_id: str) -> Any:
        job_id = super()._launch_block(block_id)
        with self._blocks_lock:
            self._blocks[block_id] = blocks.Block(block_id, job_id)
        logger.info("DragonExecutor %s: block %s submitted as job %s", self.label, block_id, job_id)
        return job_id

    def connected_blocks(self) -> List[str]:
        """Blocks with at least one agent that may run tasks (joining, ready, draining)."""
        self._refresh_blocks(force=True)
        with self._blocks_lock:
            return [b.block_id for b in self._blocks.values() if b.live]

    def _refresh_blocks(self, force: bool = False) -> bool:
        """Reads the head's nodes (ListNodes, at most every BLOCK_NODES_RECHECK_S unless forced)
        into the blocks. True when the provider's status should be read again now: a block's
        agents connected or all left, a block began to drain before its end, a running block's
        agents are overdue, or a connected block has no agent left and its job still runs."""
        now = time.monotonic()
        if not force and now - self._nodes_read_at < BLOCK_NODES_RECHECK_S:
            return False
        if self.session is None or self._shut_down or self.bad_state_is_set:
            return False  # (in bad state the session is closed: nothing left to learn)
        try:
            nodes = self._unary("ListNodes", head_pb2.ListNodesRequest(),
                                timeout=min(self.connect_timeout, 10.0)).nodes
        except Exception as e:  # noqa: BLE001  (a head that is gone breaks the session: reported there)
            logger.warning("DragonExecutor %s: ListNodes failed: %s", self.label, e)
            return False
        self._nodes_read_at = now
        by_block: Dict[str, Dict[str, Any]] = {}
        for n in nodes:
            if n.block_id:
                by_block.setdefault(n.block_id, {})[n.node_id] = n
        now_us = int(time.time() * 1e6)
        changed = False
        with self._blocks_lock:
            for b in self._blocks.values():
                b.nodes = by_block.get(b.block_id, {})
                live = [n for n in b.nodes.values() if n.state in blocks.LIVE]
                if b.nodes and b.connected_at is None:
                    b.connected_at = now
                    if b.running_since is None:
                        b.running_since = now
                    changed = True
                    logger.info("DragonExecutor %s: block %s (job %s) connected: %s", self.label, b.block_id,
                                b.job_id, ", ".join(sorted(b.nodes)))
                if bool(live) != bool(b.live):
                    changed = True
                b.live = len(live)
                b.job_end_us = max((n.job_end_us for n in b.nodes.values()), default=0)
                ending = bool(live) and all(
                    n.state == "draining" and not n.removing and n.job_end_us > 0
                    and n.job_end_us - now_us <= self.drain_before_end * 1e6 for n in live)
                if ending and not b.draining_for_end:
                    changed = True
                b.draining_for_end = ending
                if b.scaled_in or b.failure is not None:
                    continue
                if (b.connected_at is None and b.running_since is not None
                        and now - b.running_since > self.block_connect_timeout):
                    changed = True
                if b.connected_at is not None and not b.live:
                    st = self._status.get(b.block_id)
                    if st is not None and not st.terminal:
                        changed = True  # its agents are gone: has its job ended?
        return changed

    def status(self) -> Dict[str, JobStatus]:
        """The provider's status of each block, refined with what the head knows: a PENDING
        block whose agents registered is RUNNING; a block whose job runs but whose agents have
        not registered within ``block_connect_timeout``, or whose job ended before any did, is
        FAILED (naming why: the provider's words, the agents' logs, the job's output; a job
        still running is cancelled); a block whose every agent drains before its job's end is
        HELD (the strategy may replace it)."""
        status = super().status()
        if self.provider is None:
            return status
        self._refresh_blocks(force=True)
        now = time.monotonic()
        to_cancel: List[blocks.Block] = []
        with self._blocks_lock:
            for block_id, js in list(status.items()):
                b = self._blocks.get(block_id)
                if b is None or b.scaled_in:
                    continue
                if b.failure is not None:
                    status[block_id] = b.failure
                    continue
                if js.state == JobState.PENDING and b.live:
                    js = status[block_id] = JobStatus(JobState.RUNNING, stdout_path=js.stdout_path,
                                                      stderr_path=js.stderr_path)
                if js.state == JobState.RUNNING:
                    if b.running_since is None:
                        b.running_since = now
                    if b.connected_at is None and now - b.running_since > self.block_connect_timeout:
                        b.failure = JobStatus(
                            JobState.FAILED,
                            f"block {block_id} (job {b.job_id}): its job has run for {now - b.running_since:.0f} s "
                            f"but none of its agents registered with the head at {self.head_address} "
                            f"(DragonExecutor(block_connect_timeout={self.block_connect_timeout:g})); its job is "
                            f"cancelled; {blocks.failure_details(self, b, js)}",
                            stdout_path=js.stdout_path, stderr_path=js.stderr_path)
                        status[block_id] = b.failure
                        to_cancel.append(b)
                    elif b.draining_for_end:
                        left = max(0.0, b.job_end_us / 1e6 - time.time())
                        status[block_id] = JobStatus(
                            JobState.HELD, f"block {block_id} (job {b.job_id}): its allocation ends in {left:.0f} s; "
                            f"its nodes take no new task (drain_before_end={self.drain_before_end:g})",
                            stdout_path=js.stdout_path, stderr_path=js.stderr_path)
                elif js.terminal and b.connected_at is None:
                    b.failure = JobStatus(
                        JobState.FAILED,
                        f"block {block_id} (job {b.job_id}) ended ({js.state.name}) before any of its agents "
                        f"registered with the head at {self.head_address}: {blocks.failure_details(self, b, js)}",
                        exit_code=js.exit_code, stdout_path=js.stdout_path, stderr_path=js.stderr_path)
                    status[block_id] = b.failure
                if b.failure is not None and status[block_id] is b.failure and js is not b.failure:
                    logger.error("DragonExecutor %s: %s", self.label, b.failure.message)
        for b in to_cancel:
            self._cancel_job(b)
        return status

    def poll_facade(self) -> None:
        """The poller's step: the provider's status (read now, not at the provider's own polling
        interval, when the head saw something change), then the scale-ins that wait for their
        agents to leave, then the check that tasks do not wait with no block at all."""
        if self.provider is not None and self._refresh_blocks():
            self._last_poll_time = 0.0
        super().poll_facade()
        if self.provider is not None:
            self._finish_scale_in()
            self._check_blocks_exist()

    def scale_in(self, blocks_count: int, max_idletime: Optional[float] = None) -> List[str]:
        """Scales in by ``blocks_count`` blocks without killing running work: blocks whose
        agents have not connected go first (their jobs are cancelled at once), then idle ones,
        then the least busy; each chosen block's agents are drained (RemoveNode: no new tasks,
        prefetched ones go back to the queue, running ones finish, then the agent leaves) and
        its job is cancelled once they are gone. With ``max_idletime``, only idle blocks."""
        if self.provider is None:
            return []
        self._refresh_blocks(force=True)
        with self._blocks_lock:
            candidates = []
            for block_id, b in self._blocks.items():
                st = self._status.get(block_id)
                if b.scaled_in or b.failure is not None or (st is not None and st.terminal):
                    continue
                busy = sum(n.assigned_tasks for n in b.nodes.values() if n.state in blocks.LIVE)
                if max_idletime is not None and busy:
                    continue
                candidates.append((b.live > 0, busy, b.job_end_us or float("inf"),
                                   blocks._block_order(block_id), b))
            candidates.sort(key=lambda c: c[:4])
            chosen = [c[-1] for c in candidates[:max(0, int(blocks_count))]]
            for b in chosen:
                b.scaled_in = True
        for b in chosen:
            self._drain_block(b)
        return [b.block_id for b in chosen]

    def _drain_block(self, b: blocks.Block) -> None:
        live = [n for n in b.nodes.values() if n.state in blocks.LIVE and not n.removing]
        if not b.live:
            logger.info("DragonExecutor %s: scaling in block %s: no agent of it runs; cancelling job %s",
                        self.label, b.block_id, b.job_id)
            self._cancel_job(b)
            return
        logger.info("DragonExecutor %s: scaling in block %s: draining its agents (%s): running tasks finish, "
                    "then job %s is cancelled", self.label, b.block_id, ", ".join(n.node_id for n in live),
                    b.job_id)
        for n in live:
            self._remove_node(n.node_id)

    def _remove_node(self, node_id: str) -> None:
        try:
            self._unary("RemoveNode", head_pb2.RemoveNodeRequest(node_id=node_id),
                        timeout=min(self.connect_timeout, 10.0))
        except grpc.RpcError as e:
            # Gone or lost meanwhile: nothing left to drain.
            logger.info("DragonExecutor %s: RemoveNode %s: %s", self.label, node_id, e.details() or e.code())
        except Exception as e:  # noqa: BLE001
            logger.warning("DragonExecutor %s: RemoveNode %s failed: %s", self.label, node_id, e)

    def _finish_scale_in(self) -> None:
        """Blocks being scaled in: an agent that registered late is drained too; once none of a
        block's agents is left, its job is cancelled (it usually ended by itself already)."""
        with self._blocks_lock:
            pending = [b for b in self._blocks.values() if b.scaled_in and not b.cancelled]
        for b in pending:
            late = [n for n in b.nodes.values() if n.state in blocks.LIVE and not n.removing]
            for n in late:
                self._remove_node(n.node_id)
            if not b.live:
                self._cancel_job(b, unless_ended=True)

    def _cancel_job(self, b: blocks.Block, unless_ended: bool = False) -> None:
        """provider.cancel of the block's job, once; with ``unless_ended`` not for a job the
        provider already sees ended (its agents left, so its launcher returned)."""
        with self._blocks_lock:
            if b.cancelled:
                return
            b.cancelled = True
        try:
            if unless_ended:
                st = self.provider.status([b.job_id])[0]
                if st is not None and st.terminal:
                    logger.info("DragonExecutor %s: block %s: its agents left and job %s ended (%s)", self.label,
                                b.block_id, b.job_id, st.state.name)
                    return
                logger.info("DragonExecutor %s: block %s: its agents left; cancelling job %s", self.label,
                            b.block_id, b.job_id)
            self.provider.cancel([b.job_id])
        except Exception as e:  # noqa: BLE001  (logged, never fatal: the job ends with its agents anyway)
            logger.warning("DragonExecutor %s: cancelling job %s of block %s failed: %s", self.label, b.job_id,
                           b.block_id, e)

    def _check_blocks_exist(self) -> None:
        """Tasks wait, no agent is live and no block runs or is pending, for NO_BLOCK_GRACE_S:
        nothing will run them (the strategy starts no block: strategy='none', max_blocks=0, ...):
        Parsl's bad state, saying so, instead of a workflow that waits forever."""
        if self.bad_state_is_set or self._shut_down or not self.outstanding():
            self._idle_without_blocks_since = None
            return
        with self._blocks_lock:
            live = any(b.live for b in self._blocks.values())
        active = any(st.state in (JobState.PENDING, JobState.RUNNING) for st in self._status.values())
        if live or active:
            self._idle_without_blocks_since = None
            return
        now = time.monotonic()
        if self._idle_without_blocks_since is None:
            self._idle_without_blocks_since = now
            return
        if now - self._idle_without_blocks_since > NO_BLOCK_GRACE_S:
            provider = self.provider
            self.set_bad_state_and_fail_all(DragonError(
                f"DragonExecutor {self.label!r}: {self.outstanding()} task(s) waited {NO_BLOCK_GRACE_S:.0f} s while no "
                f"block ran or was pending and none was started (the provider's max_blocks="
                f"{getattr(provider, 'max_blocks', '?')}, and the Config's strategy); blocks so far: "
                f"{', '.join(f'{k}: {v.state.name}' for k, v in sorted(self._status.items())) or 'none'}"))

    def set_bad_state_and_fail_all(self, exception: Exception) -> None:
        """Parsl's bad state (from the block error handler): every outstanding task fails with
        BadStateException naming ``exception``, and every later submit raises it. The session
        is closed, so that the head cancels what it still holds of them."""
        logger.error("DragonExecutor %s: bad state: %s", self.label, exception)
        self._executor_exception = exception
        self._executor_bad_state.set()
        with self._lock:
            tasks, self._tasks = self._tasks, {}
            arg_files, self._arg_files = self._arg_files, {}
        for path in list(arg_files.values()):
            self._discard_arg_file(path)
        for fut in list(tasks.values()):
            try:
                fut.set_exception(BadStateException(self, exception))
            except cf.InvalidStateError:
                pass
        session = self.session
        if session is not None:
            threading.Thread(target=session.close, kwargs={"timeout": 5.0}, daemon=True,
                             name=f"dragon-bad-state-{self.label}").start()

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        logger.info("DragonExecutor %s: shutting down", self.label)
        with self._lock:
            self._shut_down = True
            leftover, self._tasks = self._tasks, {}
        session = self.session
        if session is not None:
            # With tasks still running there is nothing to wait for: end the stream now.
            session.close(timeout=0.0 if leftover else 10.0)
        for ref, fut in list(leftover.items()):  # list(): the receiver may still pop from it
            try:
                fut.set_exception(TaskCancelled(
                    f"DragonExecutor {self.label!r} was shut down before task "
                    f"{getattr(fut, 'dragon_task_id', None) or '(client ref %d)' % ref} finished",
                    getattr(fut, "dragon_task_id", None) or 0))
            except cf.InvalidStateError:
                pass
        self._stop_local_head()
        if self.provider is not None:
            # After the head told the agents to leave (their jobs end by themselves): every job
            # that still runs or waits in the queue is cancelled.
            self._cancel_remaining_jobs()
        if self.shm is not None:
            # After the head (and with it an embedded head's workers) stopped:
            # nothing is left that would still read or write these files.
            self.shm.remove()
        super().shutdown()
        logger.info("DragonExecutor %s: shut down", self.label)

    def _cancel_remaining_jobs(self, wait_s: float = 10.0) -> None:
        with self._blocks_lock:
            left = [b for b in self._blocks.values() if not b.cancelled]
        if not left:
            return
        try:
            states = self.provider.status([b.job_id for b in left])
        except Exception as e:  # noqa: BLE001
            logger.warning("DragonExecutor %s: provider status failed at shutdown (%s): cancelling every job",
                           self.label, e)
            states = [None] * len(left)
        for b, st in zip(left, states):
            if st is not None and st.terminal:
                b.cancelled = True
                continue
            logger.info("DragonExecutor %s: shutdown: cancelling job %s of block %s", self.label, b.job_id,
                        b.block_id)
            self._cancel_job(b)
        if not blocks.is_local(self.provider):
            return
        # LocalProvider's jobs are processes of this host: wait (briefly) for them to end.
        deadline = time.monotonic() + wait_s
        jobs = [b.job_id for b in left]
        while time.monotonic() < deadline:
            try:
                if all(st is None or st.terminal for st in self.provider.status(jobs)):
                    return
            except Exception:  # noqa: BLE001
                return
            time.sleep(0.1)

    def _stop_local_head(self) -> None:
        head = self.local_head
        if head is None:
            return
        rc = head.stop()
        if self._temp_run_dir and rc == 0:
            shutil.rmtree(self._temp_run_dir, ignore_errors=True)
            self._temp_run_dir = None


def _require_whole_number(option: str, value: Any, minimum: int, what: str) -> None:
    """Refuses, naming the option, anything but an int >= minimum (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"DragonExecutor: {option} must be {what}, not {value!r}")


def _failure_name(failure: int) -> str:
    """The FailureKind name of a result's failure field; a kind this client's stubs do not
    know (a newer head) gets a name no class maps, i.e. TaskFailed."""
    try:
        return common_pb2.FailureKind.Name(failure)
    except ValueError:
        return f"FAILURE_KIND_{failure}"


def _is_local_agent(node: "head_pb2.NodeInfo") -> bool:
    """An agent on this host, run by this user: its workers can read this client's
    files. The pid check also tells apart a same-named host (or a container) that
    would not see this /dev/shm."""
    if node.host != socket.gethostname() or node.agent_pid <= 0:
        return False
    try:
        return os.stat(f"/proc/{node.agent_pid}").st_uid == os.getuid()
    except OSError:
        return False
