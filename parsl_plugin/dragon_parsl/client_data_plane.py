"""The workflow's own data plane on a host without an agent (a login node; issue 14, "UCX
between nodes": its large arguments go to the agent that runs the task over UCX, never through
the head).

Where no agent runs on the client's host there is no agent pool to write task data into. The
client then becomes a data-plane peer itself (dragon_parsl._core.ClientDataPlane,
client/client_data_plane.h): a private pool of ``client_pool_mb`` and the agents' own UCX data
plane on it, published to the head for this session (PublishDataPeer, as
``client-<session id>``). Envelopes name that peer as their node, so the workers need nothing
new: a worker's agent pulls the argument block from the client's pool over UCX, and pushes a
large result into a new block of it, owned by the client, which reads it as any local result.

The pool's file is removed from /dev/shm as soon as this process has mapped it: its memory
goes with the process, so a killed client leaves nothing there. Started lazily, on the first
task that could use it, and once: if it cannot start (no UCX transport, the head refuses the
publication) a warning is logged once and task data goes inline through the head, as before.

With a provider whose blocks run on other hosts (SlurmProvider from a login node) the same holds
for its blocks' agents, and tasks submitted before the first block is up use it too
(dragon_parsl.submit_path decides, from the head's live agents).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable, Optional

from dragon_parsl import shm, shm_pool_path
from dragon_parsl._proto import head_pb2

logger = logging.getLogger("dragon_parsl.executor")

# The client's pool unless DragonExecutor(client_pool_mb=...) says otherwise; lazily backed:
# /dev/shm (memory) holds only the blocks in use.
DEFAULT_CLIENT_POOL_MB = 1024
POOL_OPTION = "DragonExecutor(client_pool_mb=...)"


class ClientDataPlane:
    """Starts (once, on first need) and stops the client's data plane; ``place()`` is where a
    task's large data goes (a PoolPlace naming the client's peer id), or None: inline."""

    def __init__(self, label: str, pool_mb: int,
                 publish: Callable[["head_pb2.PublishDataPeerRequest"], "head_pb2.DataPeer"]) -> None:
        self.label = label
        self.pool_bytes = int(pool_mb) << 20
        self._publish = publish
        self._lock = threading.Lock()
        self._plane: Any = None
        self._place: Optional[shm_pool_path.PoolPlace] = None
        self.failed: Optional[str] = None  # why it could not start (then never tried again)

    def place(self, session_id: int, head_address: str, token: Optional[str],
              tls_ca: Optional[str]) -> Optional[shm_pool_path.PoolPlace]:
        if self._place is not None or self.failed is not None:
            return self._place
        with self._lock:
            if self._place is None and self.failed is None:
                try:
                    self._place = self._start(session_id, head_address, token or "", tls_ca or "")
                except Exception as e:  # noqa: BLE001  (any failure: inline, as before)
                    self.failed = str(e)
                    self.stop()
                    logger.warning("DragonExecutor %s: no agent runs on this host and the client's own data "
                                   "plane could not start (%s): large task data goes inline through the head",
                                   self.label, e)
        return self._place

    def _start(self, session_id: int, head_address: str, token: str,
               tls_ca: str) -> shm_pool_path.PoolPlace:
        from dragon_parsl import _core
        if not hasattr(_core, "ClientDataPlane"):
            raise RuntimeError("this dragon_parsl._core has no ClientDataPlane (rebuild it: make python)")
        peer_id = f"client-{session_id}"  # what the head names it (PublishDataPeer's reply)
        self._plane = _core.ClientDataPlane.start(peer_id, head_address, token=token, tls_ca=tls_ca,
                                                  pool_bytes=self.pool_bytes, pool_dir=shm.DEFAULT_DIR,
                                                  pool_option=POOL_OPTION)
        path = self._plane.pool_path
        try:
            shm_pool_path.adopt(path, _core.ShmPool.attach(path))
        finally:
            self._plane.unlink_pool_file()  # from now on the memory lives with this process only
        reply = self._publish(head_pb2.PublishDataPeerRequest(session_id=session_id, peer=head_pb2.DataPeer(
            host=socket.gethostname(), pid=os.getpid(), ucx_address=self._plane.ucx_address,
            shm_pool_rkey=self._plane.pool_rkey, shm_pool_address=self._plane.pool_address,
            shm_pool_bytes=self._plane.pool_bytes)))
        if reply.peer_id != peer_id:
            raise RuntimeError(f"the head published this client's data plane as {reply.peer_id!r}, "
                               f"not {peer_id!r}")
        logger.info("DragonExecutor %s: no agent on this host: large task data goes through this client's "
                    "own pool (%d MiB, %s) and data plane, peer %s", self.label, self.pool_bytes >> 20,
                    POOL_OPTION, peer_id)
        return shm_pool_path.PoolPlace(path, peer_id, own=True)

    @property
    def running(self) -> bool:
        return self._plane is not None and self._plane.running

    def stop(self) -> None:
        """Stops the data plane's threads (after the session closed: no agent pushes any more);
        the pool's memory goes once no result read in place refers to it."""
        plane, self._plane = self._plane, None
        if plane is None:
            return
        path = plane.pool_path
        plane.stop()
        shm_pool_path.forget(path)
