"""DragonExecutor's submit path: resource specifications, and whether a task's arguments go
through shared memory (the pool of an agent on this host, which workers on other nodes reach
through the agents' data plane; on a host without an agent the client's own pool and data plane;
the files path only when every agent is on this host) or inline through gRPC."""
from __future__ import annotations

import concurrent.futures as cf
import copy
import functools
import logging
import os
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from parsl.serialize.errors import SerializationError

from dragon_parsl import _cwd, blocks, shm, shm_pool_path
from dragon_parsl.connection import Submission
from dragon_parsl import _core  # after connection: its import says how to build a missing core
from dragon_parsl.errors import DragonError, PayloadTooLarge
from dragon_parsl.resources import RESOURCE_KEYS, resource_request
from dragon_parsl.worker import pack_apply, serialize_parts
from dragon_parsl._proto import head_pb2

# The executor's logger, as before the executor was split into modules: logging
# configurations and filters that name "dragon_parsl.executor" see every message.
logger = logging.getLogger("dragon_parsl.executor")

# Resource specification keys this executor understands (dragon_parsl.resources):
# anything else is refused at submit rather than ignored.
SUPPORTED_RESOURCE_KEYS: frozenset = RESOURCE_KEYS

# The workflow's directory, asked once per task: the client core's getcwd keeps the
# interpreter lock (as _cwd.current_dir does) for a tenth of the ctypes call's cost.
_getcwd = _core.getcwd_keeping_gil

# Node states (NodeInfo.state) of agents that may still run tasks; "lost" and "gone" may not.
LIVE_NODE_STATES = frozenset({"joining", "ready", "draining"})

# How long the answer to "are all agents on this host?" (ListNodes) is trusted.
AGENT_HOSTS_RECHECK_S = 5.0
# How soon it is asked again while no agent is connected.
AGENT_WAIT_RECHECK_S = 0.2


class SubmitPathMixin:
    """submit(): a Parsl app call made a task of the session, its large arguments through shared
    memory where the workers can read them."""

    # A part of DragonExecutor: the attributes it uses are set by DragonExecutor.__init__.

    def validate_resource_spec(self, resource_specification: Dict[str, Any]) -> None:
        """Refuses (InvalidResourceSpecification naming the key) unknown keys and bad values."""
        resource_request(resource_specification)

    def submit(self, func: Callable, resource_specification: Dict[str, Any], *args: Any,
               **kwargs: Any) -> cf.Future:
        if getattr(func, "dragon_mpi_launch", None) or hasattr(func, "__wrapped__"):
            from dragon_parsl import mpi  # @mpi_app: run here, launched by the leader agent
            if mpi.launch_of(func) is not None:
                return mpi.submit_job(self, func, resource_specification, args, kwargs)
        return self._submit_call(func, resource_specification, args, kwargs, cf.Future())

    def _submit_call(self, func: Callable, resource_specification: Dict[str, Any], args: Any, kwargs: Any,
                     fut: cf.Future) -> cf.Future:
        """submit() of a Python call whose outcome goes to ``fut`` (a new, pending future: a
        DragonPoolFuture for dragon_parsl.pool_executor, so that no second future is chained)."""
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
        cwd = _getcwd()  # None when getcwd(3) fails: _cwd.current_dir raises the reason
        if cwd is None:
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
        data_node = ""  # the node whose pool holds the arguments: the scheduler prefers it
        try:
            if self.shm is not None:
                place = self._task_data_place()
                payload, arg_file = self.shm.pack_task(shm.Part.from_parsl(serialize_parts(call)), args,
                                                       kwargs, place)
                if arg_file is not None and isinstance(place, shm_pool_path.PoolPlace) and not place.own:
                    data_node = place.node
            else:
                # Byte for byte parsl.serialize.pack_apply_message, with one copy of large
                # arguments instead of several (and no per-task "exceeds buffer threshold"
                # warning: the payload limit below is what counts).
                payload = pack_apply(call, args, kwargs)
        except TypeError:
            raise SerializationError(name)

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
                session.submit(Submission(ref, payload, name, resources, data_node=data_node))
        except BaseException:
            self._discard_arg_file(arg_file)
            raise
        return fut

    def _discard_arg_file(self, path: Optional[str]) -> None:
        if path is not None and self.shm is not None:
            self.shm.discard(path)

    # Whether some live agent runs on another host (set by _local_agents): the files path is
    # then off, the pool path needs a local agent with a data plane.
    _agents_elsewhere: bool = True

    # The last (local agents, place_for(them)): _local_agents returns the same list until it asks again.
    _place_of_agents: Optional[Tuple[Any, Any]] = None

    # From the last ListNodes: whether a live agent runs on this host, and whether every live
    # agent elsewhere has a data plane (set by _local_agents).
    _local_agent_seen: bool = False
    _remote_data_planes: bool = False

    def _task_data_place(self) -> Any:
        """Where large task arguments may go: for the pool path (``shm_path="pool"``) the pool of
        an agent on this host (a PoolPlace) that every worker can reach, or, on a host without
        an agent whose agents elsewhere all have a data plane, the client's own pool and data
        plane (dragon_parsl.client_data_plane); for the files path whether files may be used at
        all (every agent on this host); None/False: inline."""
        local = self._local_agents()
        if isinstance(self.shm, shm_pool_path.PoolDataPath):
            # The same list of agents (kept for seconds) gives the same place: not sorted again per task.
            known = self._place_of_agents
            if known is not None and known[0] is local:
                place = known[1]
            else:
                place = self.shm.place_for(local)
                self._place_of_agents = (local, place)
            if place is None and self._agents_elsewhere and not self._local_agent_seen:
                place = self._own_data_place()
            return place
        return local is not None and not self._agents_elsewhere

    def _own_data_place(self) -> Optional[shm_pool_path.PoolPlace]:
        """The client's own pool on a host without an agent (started on first need), or None
        (counted in ``client_plane_fallbacks``): some agent elsewhere has no data plane, or the
        client's could not start (logged once)."""
        place = None
        session = self.session
        welcome = session.welcome if session is not None else None
        if self._remote_data_planes and welcome is not None and self.client_plane is not None:
            credentials = self.credentials
            place = self.client_plane.place(welcome.session_id, self.head_address or "",
                                            credentials.token if credentials else None,
                                            credentials.tls_ca if credentials else None)
        if place is None and isinstance(self.shm, shm_pool_path.PoolDataPath):
            self.shm.count_client_plane_fallback()
        return place

    def _local_agents(self) -> Optional[List[Any]]:
        """The live agents (NodeInfo) on this host whose pools every worker can reach: all of
        them when every live agent runs on this host; when some run on other hosts, the local
        ones with a data plane (NodeInfo.data_socket: workers elsewhere pull from their pools
        and push results into them), if every agent elsewhere has one too. None when there is
        none: task data goes inline, or on a node without an agent (e.g. a login node) through the
        client's own data plane (_task_data_place). Asked of the head (ListNodes) at most every
        few seconds, with or without a provider: what counts is where the live agents are and
        whether they have a data plane, not how they were started."""
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
        local: List[Any] = []
        remote: List[Any] = []
        for n in connected:
            (local if _is_local_agent(n) else remote).append(n)
        if not connected:
            self._expect_agents(known=nodes is not None)
        else:
            self._agents_elsewhere = bool(remote)
            self._local_agent_seen = bool(local)
            # A client on a host without an agent reaches them through its own data plane only if
            # each can pull from it (a data plane: its socket for workers, its UCX address).
            self._remote_data_planes = bool(remote) and all(n.data_socket and n.ucx_address for n in remote)
            if not self._agents_elsewhere:
                self._agents_local = connected
            elif all(n.data_socket for n in remote):
                self._agents_local = [n for n in local if n.data_socket and n.shm_pool_path] or None
            else:  # a worker there could not fetch the data: inline rather than tasks failing
                self._agents_local = None
        # No agent yet: ask again soon (its pool is not known until it registers).
        self._agents_checked_at = now if connected else now - AGENT_HOSTS_RECHECK_S + AGENT_WAIT_RECHECK_S
        return self._agents_local

    def _expect_agents(self, known: bool) -> None:
        """No live agent (``known``: the head said so; else ListNodes failed): where the next ones
        will be. The embedded head's own agent, or LocalProvider's blocks, on this host (their pool
        is known once they register: inline until then). The blocks of any other provider on other
        hosts, started by this executor with a pool and a data plane (blocks.agent_command): the
        client's own data plane, so that a burst submitted before the first block starts (Parsl's
        usual order) does not go through the head. A block whose agents then turn out to have no
        data plane shows at the next ListNodes (asked again within AGENT_WAIT_RECHECK_S while none
        is live): later tasks go inline; those already packed for the client's pool and placed on
        it fail with SharedMemoryError naming the node and the fix (shm.no_data_plane_error)."""
        provider_elsewhere = self.provider is not None and not blocks.is_local(self.provider)
        self._local_agent_seen = False
        if not known:  # nothing is known: inline (counted on a host without an agent)
            self._agents_elsewhere = self.local_head is None or provider_elsewhere
            self._remote_data_planes = False
            self._agents_local = None
        elif provider_elsewhere:
            self._agents_elsewhere = True
            self._remote_data_planes = True
            self._agents_local = None
        else:
            self._agents_elsewhere = self.local_head is None
            self._remote_data_planes = False
            # The embedded head's agent is local; it has not registered yet. Else nothing is known.
            self._agents_local = [] if self.local_head is not None else None

    def shm_counters(self) -> Dict[str, Any]:
        """Tasks and bytes that went through shared memory and inline (arguments and
        results), and ``dir``: the executor's directory (None when the path is off)."""
        if self.shm is None:
            return {"dir": None}
        return {"dir": self.shm.path, **vars(self.shm.counters)}



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
