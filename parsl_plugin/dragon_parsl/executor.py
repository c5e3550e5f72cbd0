"""DragonExecutor: a Parsl executor backed by the Dragon task service (dragond).

The class is put together from parts, one module each: executor_options (the constructor's
checks), head_start (finding or starting the head, connecting), submit_path (submit, resource
specifications, the shared-memory decision), task_results (the session's results delivered to
futures), block_scaling (blocks of a provider: status, scale-in). This module keeps the
constructor, the calls to the head, Parsl's bad state and shutdown.
"""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import os
import threading
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Union

import grpc
from parsl.executors.errors import BadStateException
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.states import JobStatus
from parsl.monitoring.radios.base import RadioConfig
from parsl.monitoring.radios.filesystem import FilesystemRadio
from parsl.providers.base import ExecutionProvider
from parsl.utils import RepresentationMixin

from dragon_parsl import blocks, client_data_plane, shm, shm_files, shm_pool_path, transport
from dragon_parsl.connection import Session
from dragon_parsl.errors import AuthenticationFailed, DragonError, TaskCancelled
from dragon_parsl.local_head import LocalHead
from dragon_parsl._proto import head_pb2, head_pb2_grpc
# The parts of the class, and the names this module held before it was split (imported from
# dragon_parsl.executor by other code): re-exported here.
from dragon_parsl.block_scaling import BLOCK_NODES_RECHECK_S, NO_BLOCK_GRACE_S, BlockScalingMixin
from dragon_parsl.executor_options import _require_whole_number, check_options
from dragon_parsl.head_start import PROVIDER_NODE_GRACE_S, HeadStartMixin
from dragon_parsl.submit_path import (
    AGENT_HOSTS_RECHECK_S,
    LIVE_NODE_STATES,
    SUPPORTED_RESOURCE_KEYS,
    SubmitPathMixin,
    _is_local_agent,
)
from dragon_parsl.task_results import TaskResultsMixin, _failure_name

__all__ = [
    "DragonExecutor",
    "AGENT_HOSTS_RECHECK_S",
    "BLOCK_NODES_RECHECK_S",
    "LIVE_NODE_STATES",
    "NO_BLOCK_GRACE_S",
    "PROVIDER_NODE_GRACE_S",
    "SUPPORTED_RESOURCE_KEYS",
    "_failure_name",
    "_is_local_agent",
    "_require_whole_number",
]

logger = logging.getLogger(__name__)


# The parts come before BlockProviderExecutor, so that their start(), submit(), status(),
# scale_in(), ... are the ones Parsl calls, and their super() calls reach Parsl's.
class DragonExecutor(HeadStartMixin, SubmitPathMixin, TaskResultsMixin, BlockScalingMixin,
                     BlockProviderExecutor, RepresentationMixin):
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
        through shared memory instead of gRPC; the task message carries only a
        small envelope naming where (docs/INTERFACES.md). Arguments take this
        path only when every agent of the head runs on this host (always so for
        the embedded head); results whenever the worker is on this host.
        Default 64 KiB; 0 or None turns the shared-memory path off (every byte
        through gRPC, as with dragond's ``--max-payload-mb`` limit).
    shm_path : str
        ``"pool"`` (default): task data goes into the shared-memory pool of an
        agent on this host (``dragon-agent --shm-pool-mb``, ``dragond start
        --shm-pool-mb``), written once and read in place by the worker; a result
        stays in the pool until its value is garbage collected. ``"files"``: one
        file per task in a directory of ``shm_dir`` (the older path, kept to
        compare against).
    shm_pool_wait_s : float
        How long a submit waits for room in a full pool before the task fails
        with ShmPoolFull, which names the pool's size and ``--shm-pool-mb``.
        Default 10.
    client_pool_mb : int
        On a host where no agent runs (a login node: with ``address``, or with a provider whose
        blocks run on other hosts, such as SlurmProvider) and every agent elsewhere has a data
        plane: the size in MiB of the client's own shared-memory pool, into which large
        task arguments are written for the agents to pull over UCX and large results are pushed
        (dragon_parsl.client_data_plane): no bulk data goes through the head. Lazily backed (only
        the blocks in use take memory) and started on the first task that needs it; its file is
        removed from /dev/shm as soon as it is mapped. Default 1024; 0 turns it off (such task
        data then goes inline through the head).
    shm_dir : str
        With ``shm_path="files"``: where the executor makes its directory of task
        data files, ``dragon-<user>-<pid>.<start>-<random>``; it must be
        node-local (a tmpfs, so that files are memory). Default ``/dev/shm``.
        Removed at shutdown; directories left by dead clients are removed when
        an executor starts.
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
                 shm_dir: str = shm.DEFAULT_DIR, shm_path: str = "pool",
                 shm_pool_wait_s: float = shm_pool_path.DEFAULT_WAIT_S, batch_linger_ms: float = 10.0,
                 batch_linger_in_flight: int = 64, client_cpu: Optional[int] = None,
                 token: Optional[str] = None, tls_ca: Optional[str] = None,
                 infra_retries: Optional[int] = None,
                 provider: Optional[ExecutionProvider] = None, head_listen: Optional[str] = None,
                 drain_before_end: float = 60.0, block_connect_timeout: float = 120.0,
                 block_error_handler: Union[bool, Callable[[BlockProviderExecutor, Dict[str, JobStatus]],
                                                           None]] = True,
                 worker_python: Optional[str] = None,
                 client_pool_mb: int = client_data_plane.DEFAULT_CLIENT_POOL_MB) -> None:
        check_options(address=address, provider=provider, drain_before_end=drain_before_end,
                      block_connect_timeout=block_connect_timeout, head_listen=head_listen, token=token,
                      tls_ca=tls_ca, infra_retries=infra_retries, workers_per_node=workers_per_node,
                      shm_threshold=shm_threshold, shm_path=shm_path, shm_pool_wait_s=shm_pool_wait_s,
                      batch_linger_ms=batch_linger_ms,
                      batch_linger_in_flight=batch_linger_in_flight, client_cpu=client_cpu)
        if isinstance(client_pool_mb, bool) or not isinstance(client_pool_mb, int) or client_pool_mb < 0:
            raise ValueError(f"DragonExecutor: client_pool_mb must be a whole number of MiB >= 0 (0: no pool "
                             f"of the client's own), not {client_pool_mb!r}")
        handler = blocks.dragon_block_error_handler if block_error_handler is True else block_error_handler
        super().__init__(provider=provider, block_error_handler=handler)
        self.head_listen = head_listen
        self.drain_before_end = float(drain_before_end)
        self.block_connect_timeout = float(block_connect_timeout)
        self.worker_python = worker_python
        self.address = address
        # RepresentationMixin's repr (which Parsl logs with the configuration) shows
        # getattr(self, "token"): a Secret prints as <hidden>.
        self.token: Optional[transport.Secret] = transport.Secret(token) if token is not None else None
        self.tls_ca = os.fspath(tls_ca) if tls_ca is not None else None
        self.infra_retries = infra_retries
        self.label = label
        self.workers_per_node = workers_per_node  # the property's setter
        self.dragond_path = dragond_path
        self.head_run_dir = head_run_dir
        self.max_batch_tasks = max_batch_tasks
        self.max_batch_bytes = max_batch_bytes
        self.connect_timeout = connect_timeout
        self.head_start_timeout = head_start_timeout
        self.tune_malloc = tune_malloc
        self.prefetch = prefetch
        self.shm_threshold = shm_threshold
        self.shm_dir = shm_dir
        self.shm_path = shm_path
        self.shm_pool_wait_s = float(shm_pool_wait_s)
        self.client_pool_mb = client_pool_mb
        # On a host without an agent: the client's own pool and data plane (None: off).
        self.client_plane: Optional[client_data_plane.ClientDataPlane] = (
            client_data_plane.ClientDataPlane(label, client_pool_mb, self._publish_data_peer)
            if client_pool_mb else None)
        self.batch_linger_ms = float(batch_linger_ms)
        self.batch_linger_in_flight = batch_linger_in_flight
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
        # The tasks shutdown() failed while they ran: their results may still come in while the
        # session closes, and are then expected (any other unknown ref is a duplicate: warned).
        self._ended_refs: FrozenSet[int] = frozenset()
        self._lock = threading.Lock()
        self._refs = itertools.count(1)
        self._broken: Optional[DragonError] = None
        self._started = False
        self._shut_down = False
        self._temp_run_dir: Optional[str] = None
        # The shared-memory data path: this executor's directory (None when off),
        # each outstanding task's argument file, and whether all agents share this host.
        self.shm: Optional[Union[shm_pool_path.PoolDataPath, shm_files.ClientDirectory]] = None
        self._arg_files: Dict[int, Any] = {}
        self._agents_local: Optional[List[Any]] = None
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

    # ------------------------------------------------------------------ info
    def outstanding(self) -> int:
        """Tasks submitted and not yet finished."""
        return len(self._tasks)

    def _stub(self) -> head_pb2_grpc.HeadServiceStub:
        if self.session is None or self.session.welcome is None:
            raise DragonError(f"DragonExecutor {self.label!r} is not connected")
        return head_pb2_grpc.HeadServiceStub(self.session.channel())

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

    def _publish_data_peer(self, request: "head_pb2.PublishDataPeerRequest") -> "head_pb2.DataPeer":
        return self._unary("PublishDataPeer", request, timeout=min(self.connect_timeout, 10.0))

    def head_status(self, timeout: float = 10.0) -> "head_pb2.StatusReply":
        return self._unary("Status", head_pb2.StatusRequest(), timeout=timeout)

    def connected_workers(self, timeout: float = 10.0) -> int:
        """Workers registered with the head (all nodes)."""
        return int(self.head_status(timeout).workers)

    def cancel_task(self, fut: cf.Future, timeout: float = 10.0) -> "head_pb2.CancelReply":
        """Asks dragond to cancel the task behind ``fut`` (its future then fails with TaskCancelled)."""
        task_id = getattr(fut, "dragon_task_id", None)
        if not task_id:
            # The head tells a Python task's id with its next message to this session (at most a
            # tick, 0.1 s, after accepting it) or only with the result (Hello.accepted_with_results).
            raise DragonError("this future has no dragon task id yet: dragond has not accepted it, or "
                              "accepted it less than 0.1 s ago and not said so yet (try again, or use "
                              "DragonPoolExecutor.cancel(), which waits for the id)")
        return self._unary("Cancel", head_pb2.CancelRequest(task_id=task_id), timeout=timeout)

    def monitor_resources(self) -> bool:
        return True

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
            self._ended_refs = frozenset(leftover)
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
        if self.client_plane is not None:
            # The session is closed: the head no longer lists it and no agent pushes into it.
            self.client_plane.stop()
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

