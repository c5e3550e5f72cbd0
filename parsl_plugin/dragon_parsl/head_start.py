"""DragonExecutor's head: finding or starting it (the embedded dragond, with or without a
provider), connecting the session, and what start() sets up after (shared memory, client_cpu)."""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Tuple

from dragon_parsl import _affinity, blocks, shm_files, shm_pool_path, transport
from dragon_parsl.connection import PROTOCOL_VERSION, Session, default_client_name
from dragon_parsl.errors import DragonError, LocalHeadError
from dragon_parsl.local_head import LocalHead, find_binary
from dragon_parsl.worker import tune_malloc

# The executor's logger, as before the executor was split into modules: logging
# configurations and filters that name "dragon_parsl.executor" see every message.
logger = logging.getLogger("dragon_parsl.executor")

# With a provider the embedded head never fails queued work for want of nodes by itself (its
# --node-grace, at its maximum): blocks come and go, and the executor decides (block failures).
PROVIDER_NODE_GRACE_S = 86400


class HeadStartMixin:
    """start(): the head found (address, ``$DRAGON_HEAD``) or started (embedded dragond), the
    session connected; and the embedded head stopped again."""

    # A part of DragonExecutor: the attributes it uses are set by DragonExecutor.__init__.

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
                                   linger_s=self.batch_linger_ms / 1000.0,
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
        if self.shm_path == "pool":
            self.shm = shm_pool_path.PoolDataPath(int(self.shm_threshold), self.shm_pool_wait_s)
            logger.info("DragonExecutor %s: task data of %d bytes or more goes through the shared-memory pool "
                        "of an agent on this host", self.label, self.shm.threshold)
            return
        try:
            self.shm = shm_files.ClientDirectory(self.shm_dir, int(self.shm_threshold))
        except OSError as e:
            logger.warning("DragonExecutor %s: cannot create a directory in %s (%s): large task data goes "
                           "through gRPC", self.label, self.shm_dir, e)
            return
        for path in self.shm.swept:
            logger.info("DragonExecutor %s: removed %s, left behind by a client that is gone", self.label, path)
        logger.info("DragonExecutor %s: task data of %d bytes or more goes through %s", self.label,
                    self.shm.threshold, self.shm.path)


    @property
    def run_info_dir(self) -> Optional[str]:
        """The run directory of the embedded head (for ``dragonctl --run-dir``), if any."""
        return str(self.local_head.run_dir) if self.local_head is not None else None


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


    def _stop_local_head(self) -> None:
        head = self.local_head
        if head is None:
            return
        rc = head.stop()
        if self._temp_run_dir and rc == 0:
            shutil.rmtree(self._temp_run_dir, ignore_errors=True)
            self._temp_run_dir = None

