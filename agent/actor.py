"""The agent actor: one per Ray node, a thin async shell over the executor and the sampler.

The scheduler creates it with
`AgentActor.options(name=agent_name(node_id), namespace=NAMESPACE, lifetime="detached",
scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
get_if_exists=True).remote(node_id, config)`.
It is an async actor so that load reports, cancels and pings never wait behind an action.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

import ray

from agent.backlog import Backlog
from agent.executor import Executor
from agent.links import NamedActor, RelayLogs
from agent.loadfilter import LoadFilter
from agent.nodeinfo import find_node, offered
from agent.sampler import LoadSampler
from agent.uplink import SchedulerLink
from mesh.arrival import arrived, arrived_count, arrived_id
from mesh.names import RELAY, SCHEDULER
from mesh.protocol import AgentHoldings, Assignment, AttemptReport, CancelOutcome, LinkGrant
from mesh.schema import STORED, ActionId, AgentId, AgentInfo, MeshConfig

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=0)
class AgentActor:
    def __init__(self, node_id: str, config: MeshConfig) -> None:
        self.node_id = node_id
        self.config = config = arrived(MeshConfig, config, "config")
        self.agent_id = AgentId(node_id)
        self.started_at = time.time()
        self.scheduler = NamedActor(SCHEDULER)
        # A fresh token per agent process: the reaper of a dead agent on this node must not
        # match a new agent's actions, nor the other way round.
        self.uplink = SchedulerLink(self.scheduler, self.agent_id, self._start_all,
                                    self._stop, use_stream=config.link == "stream",
                                    linger=config.report_linger,
                                    holds_work=lambda: self.backlog.holds_work())
        self.executor = Executor(self.agent_id, uuid.uuid4().hex, config, self.uplink,
                                 RelayLogs(NamedActor(RELAY)))
        self.uplink.on_recorded = self.executor.recorded
        self.backlog = Backlog(self.executor, self._start_one)
        self._sampler: asyncio.Task[None] | None = None
        # What it tells the scheduler never changes while it lives (Ray fixes a node's
        # resources and labels when it starts): a restarted scheduler is answered at once.
        self._info: AgentInfo | None = None

    def __repr__(self) -> str:
        # What the Ray dashboard's actor list shows for it (and its log lines' prefix): on
        # one machine several nodes share a hostname, so their node follows.
        return f"agent {socket.gethostname()} (node {self.node_id[:8]})"

    async def hello(self) -> AgentInfo:
        """Register: start the reaper and the load stream (once), describe the machine."""
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._stream_load())
            # From the event loop's thread, which lives as long as the actor: the reaper's
            # parent-death signal fires when the thread that spawned it ends.
            await self.executor.prepare()
        if self._info is not None:
            return self._info
        nodes: list[dict[str, Any]] = await asyncio.get_running_loop().run_in_executor(
            None, ray.nodes)
        cpus, memory, labels = offered(find_node(nodes, self.node_id))
        self._info = AgentInfo(
            agent_id=self.agent_id,
            node_id=self.node_id,
            hostname=socket.gethostname(),
            address=ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            labels=labels,
            cpus=cpus,
            memory=memory,
            pid=os.getpid(),
            started_at=self.started_at,
            containment=self.executor.containment,
            runs_as=self.executor.runs_as,
            holds_starts=True,
        )
        return self._info

    async def start(self, assignment: Assignment) -> None:
        """A start by Ray call: carried out before the call returns (its failure is the
        call's), unless it must wait for room here, as a start down the stream would."""
        # As stored: the scheduler sends specs it accepted, some under older rules; types
        # and bounds are still checked.
        assignment = arrived(Assignment, assignment, "assignment", STORED)
        if self.backlog.fits(assignment):
            await self.backlog.start_now(assignment)
        else:
            self.backlog.offer([assignment])

    async def link(self, grant: LinkGrant) -> None:
        """The scheduler's grant for this agent's stream: open it (again)."""
        self.uplink.grant(arrived(LinkGrant, grant, "link grant"))

    def _start_all(self, assignments: list[Assignment]) -> None:
        """Start assignments that came down the stream, or hold them until they have room."""
        self.backlog.offer(assignments)

    async def _start_one(self, assignment: Assignment) -> None:
        """Start an assignment the backlog lets go; a refusal goes back as a report, and
        the scheduler queues the action again at once."""
        try:
            await self.executor.start(assignment)
        except Exception as exc:
            log.exception("starting %s attempt %d failed", assignment.action_id,
                          assignment.attempt)
            self.uplink.report(AttemptReport(
                action_id=assignment.action_id, attempt=assignment.attempt,
                agent_id=self.agent_id, stage="refused", time=time.time(), reason=repr(exc)))

    async def cancel(self, action_id: str, attempt: int, reason: str = "",
                     held_only: bool = False) -> CancelOutcome:
        return await self._stop(action_id, attempt, reason, held_only)

    async def _stop(self, action_id: Any, attempt: Any, reason: Any, held_only: Any = False,
                    ) -> CancelOutcome:
        """A stop, by Ray call or down the stream: checked where it lands."""
        if not isinstance(reason, str):
            reason = repr(reason)
        action_id = ActionId(arrived_id(action_id, "action id"))
        attempt = arrived_count(attempt, "attempt", 1)
        return await self.backlog.stop(action_id, attempt, reason[:1000], held_only is True)

    async def holdings(self) -> AgentHoldings:
        """What a (re)starting scheduler reconciles against: what runs or waits to run
        here, what ended."""
        return self.executor.holdings().model_copy(update={"waiting": self.backlog.held()})

    async def shutdown(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        self.backlog.close()
        await self.executor.shutdown()
        await self.uplink.close()

    async def wait_closed(self) -> None:
        """Never returns: the scheduler keeps one such call in flight, so the agent's death
        reaches it at once as ActorDiedError."""
        await asyncio.get_running_loop().create_future()

    async def ping(self) -> float:
        return time.time()

    async def _stream_load(self) -> None:
        sampler = LoadSampler(self.executor.process_groups, self.executor.attempt_parents)
        worth = LoadFilter(self.config.load_heartbeat, self.config.cpu_busy_percent)
        while True:
            await asyncio.sleep(self.config.load_interval)
            try:
                load = sampler.sample(time.time())
            except Exception:
                log.exception("sampling the machine's load failed")
                continue
            if worth.due(load):
                self.uplink.load(load)
