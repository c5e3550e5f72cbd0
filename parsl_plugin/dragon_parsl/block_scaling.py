"""DragonExecutor with a provider: its blocks (one batch job each) launched, their status as the
head sees their agents, scale-in by draining, and the jobs left cancelled at shutdown."""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional

import grpc
from parsl.jobs.states import JobState, JobStatus

from dragon_parsl import blocks
from dragon_parsl.errors import DragonError
from dragon_parsl._proto import head_pb2

# The executor's logger, as before the executor was split into modules: logging
# configurations and filters that name "dragon_parsl.executor" see every message.
logger = logging.getLogger("dragon_parsl.executor")

# With a provider: the head's view of the blocks' agents (ListNodes) is re-read at most this often.
BLOCK_NODES_RECHECK_S = 1.0
# With a provider: tasks that wait while no block runs or is pending and none is started (a
# strategy that starts none, max_blocks=0, ...) put the executor in Parsl's bad state after this long.
NO_BLOCK_GRACE_S = 120.0


class BlockScalingMixin:
    """Parsl's block interface (BlockProviderExecutor) over the head's view of the blocks' agents."""

    # A part of DragonExecutor: the attributes it uses are set by DragonExecutor.__init__.

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
