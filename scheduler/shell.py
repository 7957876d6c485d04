"""The scheduler's body: the loops that never die, agents coming and going, and the calls
of agents and clients, fed to the pure core (`scheduler/core`).

What each step changed is written before it is acted on; the core's `Assign` / `Stop`
decisions are carried out by `Delivery`, operators' pool changes by `PoolKeeper`, and the
agents' link grants by `Grants`. Ray appears only behind injected interfaces (agent
handles, node listing), so tests drive it in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import ray

from mesh import reasons
from mesh.errors import MeshError, SchedulerUnavailable
from mesh.metrics import METRICS_INTERVAL
from mesh.protocol import (
    AgentHoldings,
    Assignment,
    AttemptReport,
    ReportAnswer,
)
from mesh.schema import (
    Action,
    ActionId,
    ActionStatus,
    AgentId,
    AgentInfo,
    AgentStatus,
    Health,
    Load,
    MeshConfig,
    SubmitOutcome,
)
from scheduler.agent_handle import AgentGone, AgentHandle, AgentUnreachable, make_agent_handle
from scheduler.core.decisions import Assign, Decision, Stop
from scheduler.core.state import SchedulerState
from scheduler.delivery import Delivery
from scheduler.durable import Writer
from scheduler.grants import Grants
from scheduler.journal import JournalReads
from scheduler.link import LinkServer
from scheduler.nodes import alive, parse_nodes, wanted
from scheduler.pooling import PoolKeeper
from scheduler.sinks import EventBook, QuotaLog
from scheduler.store import Store
from scheduler.telemetry import Discard, Sink, Telemetry
from scheduler.upkeep import Upkeep
from scheduler.waits import Waits

log = logging.getLogger("actionmesh.scheduler")
T = TypeVar("T")

HELLO_TIMEOUT = 60.0
# At start-up (and after a restart) clients wait until every agent has said what it runs,
# or this many seconds; a slower agent is reconciled when it answers.
FIRST_SYNC_WAIT = 10.0
# Seconds between passes when nothing else asks for one.
QUOTA_PASS_INTERVAL = 2.0
# Finished actions kept in memory (the latest, written ones); the store answers for others.
FINISHED_IN_MEMORY = 1000


class Scheduler:
    """The actor's body, Ray-free apart from node discovery, so tests can drive it directly."""

    def __init__(self, config: MeshConfig,
                 agent_factory: Callable[[str, MeshConfig], AgentHandle] = make_agent_handle,
                 list_nodes: Callable[[], list[dict[str, Any]]] | None = None,
                 clock: Callable[[], float] = time.time, link_host: str = "127.0.0.1",
                 store: Store | None = None,
                 on_store_failure: Callable[[BaseException], None] | None = None,
                 metrics: Sink | None = None) -> None:
        self.config = config
        self.clock = clock
        self.store = store or Store(config.state_dir)
        self.book = EventBook(self.store.events)
        self.core = SchedulerState(stale_after=config.load_stale_after,
                                   capacity_percent=config.capacity_percent,
                                   cpu_busy_percent=config.cpu_busy_percent, sink=self.book,
                                   quota_sink=QuotaLog(), archive=self.store,
                                   backlog_turnover=config.backlog_turnover,
                                   backlog_depth=config.backlog_depth)
        self.waits = Waits(self.core, self.book, clock)
        self.journal = JournalReads(self.store)
        self.telemetry = Telemetry(metrics or Discard(), clock())
        self.store.listeners.append(self.telemetry.written)
        self.writer = Writer(self.core, self.store, clock, on_store_failure or _exit_process)
        self.agent_factory = agent_factory
        self.list_nodes = list_nodes or ray.nodes
        self._greeted = self._greet_agents()
        try:
            self.writer.restore()
        except BaseException:
            self.store.close()  # the actor tries again later with a new one
            raise
        self.upkeep = Upkeep(self.core, self.writer, clock, config.retention,
                             config.expire_every)
        self.handles: dict[AgentId, AgentHandle] = {}
        self.bringing_up: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._synced: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.pools = PoolKeeper(self.core, self.writer, self.kick, config, clock)
        self.link = LinkServer(config, link_host, self.core.agent_info, self.report_attempts,
                               self.report_load, lambda *a: self.delivery.stopped(*a),
                               lambda *a: self.delivery.otherwise(*a), clock)
        self.grants = Grants(self.link, self.handles, self.core.agent_info, clock, self._spawn)
        self.delivery = Delivery(self.core, self.writer, self.link, self.handles, clock,
                                 self.kick, self._spawn, self.agent_lost)

    # ---- durable state -------------------------------------------------------------------

    def _greet_agents(self) -> dict[str, AgentHandle]:
        """Handles to the agents of the wanted nodes, made before the saved state is read:
        making one may ask its agent what it needs to know (see RayAgentHandle), and the
        answers then travel while a restart reads. The first node pass takes them."""
        try:
            views = parse_nodes(self.list_nodes())
            return {node: self.agent_factory(node, self.config)
                    for node in wanted(views, self.config.head_agent)}
        except Exception as exc:  # only a head start: the node pass makes them anyway
            log.info("agents not greeted before reading the saved state: %r", exc)
            return {}

    def _resume(self, held: list[Decision]) -> None:
        """The store writes again: carry out what was held (starts still wanted only)."""
        self.delivery.carry_out([d for d in held if not isinstance(d, Assign)
                         or self.core.awaits_start(d.action_id, d.attempt)])
        self.kick()

    def health(self) -> Health:
        link = "ray" if self.config.link == "ray" else "stream" if self.link.serving else "down"
        return self.writer.health(self._synced is not None and self._synced.is_set())\
            .model_copy(update={"link": link})

    # ---- life cycle ----------------------------------------------------------------------

    def ensure_started(self) -> None:
        if self._wake is not None:
            return
        self._wake = asyncio.Event()
        self._wake.set()  # look at the queue once at start: it may hold work already
        self._synced = asyncio.Event()
        if self.config.link == "stream":
            self._spawn(self.grants.serve())
        self._spawn(self._dispatch_loop())
        self._spawn(self._node_loop())
        self._spawn(self.upkeep.save_accounts())
        self._spawn(self.upkeep.expire())
        self._spawn(self._metrics_loop())
        self._spawn(self.pools.follow())
        if self.config.http_port is not None:
            self._spawn(self.pools.serve_http(self.config.http_port))
        self.writer.start(self._spawn, self._resume)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def ready(self, timeout: float) -> bool:
        """True once the first pass over the cluster's nodes has registered their agents."""
        self.ensure_started()
        assert self._synced is not None
        if self._synced.is_set():
            return True  # every client call asks: answer without a loop turn
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ---- the loops, which must never die -------------------------------------------------

    async def _metrics_loop(self) -> None:
        while True:
            try:
                now = self.clock()
                self.telemetry.sample(self.core.counts(), self.core.accounts.queue_depth(now),
                                      self.pool(), self.health())
            except Exception:
                log.exception("sampling the metrics failed; will sample again")
            await asyncio.sleep(METRICS_INTERVAL)

    async def _dispatch_loop(self) -> None:
        assert self._wake is not None
        while True:
            # Also on a timer: balances move with time alone, so a waiting request may come
            # to afford a preemption, and running work be promoted or demoted, unasked.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), QUOTA_PASS_INTERVAL)
            self._wake.clear()
            self.dispatch()

    def dispatch(self) -> None:
        """One step, carried out now; a failing one is logged, never fatal."""
        if self.writer.read_only:
            return  # nothing new starts; the recovery kicks once it can write
        try:
            if self.delivery.carry_out(self._step(self.clock())):
                self.core.evict_finished(FINISHED_IN_MEMORY)
        except Exception:
            log.exception("carrying out a step failed; the loop goes on")

    async def _node_loop(self) -> None:
        while True:
            try:
                await self.sync_nodes()
            except Exception:
                log.exception("node check failed; will retry")
            await asyncio.sleep(self.config.node_check_interval)

    async def sync_nodes(self) -> None:
        """Give every wanted alive node an agent; drop the agents of nodes that are gone."""
        assert self._synced is not None
        records = await asyncio.get_running_loop().run_in_executor(None, self.list_nodes)
        views = parse_nodes(records)
        living = alive(views)
        for agent_id in [a for a in self.handles if a not in living]:
            self.agent_lost(agent_id, reasons.NODE_DEAD)
        if self.core.forget_drained(living):
            self.writer.write()
        todo = [n for n in wanted(views, self.config.head_agent)
                if AgentId(n) not in self.handles and n not in self.bringing_up]
        self.bringing_up.update(todo)
        tasks = [self._spawn(self._bring_up(n, self._greeted.pop(n, None))) for n in todo]
        self._greeted.clear()  # the first pass took those it wanted
        if tasks and not self._synced.is_set():
            # The first pass waits, so `mesh up` returns with the pool filled and clients
            # are answered only once the agents said what they run; later passes must not,
            # or one slow agent would hold up noticing dead nodes.
            began = time.perf_counter()
            await asyncio.wait(tasks, timeout=FIRST_SYNC_WAIT)
            log.info("%d agent(s) registered in %.3fs", len(self.handles),
                     time.perf_counter() - began)
        # Saved in-flight attempts on agents of nodes that are gone (or no longer carry
        # an agent) went with them while the scheduler was away.
        gone = self.core.agents_wanted(
            {AgentId(n) for n in wanted(views, self.config.head_agent)}, self.clock())
        if gone:
            log.warning("agents gone while the scheduler was away: %s", ", ".join(sorted(gone)))
            self.writer.write()
            self.kick()
        self._synced.set()

    async def _bring_up(self, node_id: str, greeted: AgentHandle | None = None) -> None:
        """Create or find the node's agent (unless `greeted` already has), learn what it
        runs, register it. The caller has put the node in `bringing_up`."""
        try:
            handle = greeted or self.agent_factory(node_id, self.config)
            info, held = await asyncio.gather(handle.hello(HELLO_TIMEOUT),
                                              handle.holdings(HELLO_TIMEOUT))
            self.register(info, handle, held)
        except Exception as exc:
            log.warning("agent on node %s did not come up: %s", node_id, exc)
        finally:
            self.bringing_up.discard(node_id)

    def register(self, info: AgentInfo, handle: AgentHandle,
                 held: AgentHoldings | None = None) -> None:
        """Add the agent to the pool, squaring what it runs with the saved state."""
        self.handles[info.agent_id] = handle
        self.link.since.setdefault(info.agent_id, self.clock())
        decisions = self.core.agent_joined(info, self.clock(), held)
        self.telemetry.reconciled(held or AgentHoldings(),
                                  sum(isinstance(d, Stop) for d in decisions))
        self.delivery.carry_out(decisions)
        self._spawn(self._watch(info.agent_id, handle))
        self.grants.send(info.agent_id)
        self.kick()

    async def _watch(self, agent_id: AgentId, handle: AgentHandle) -> None:
        # One call stays in flight per agent; when the actor dies Ray fails it at once. An
        # unreachable agent is only suspect (its node may be slow, not dead): watch again.
        while self.handles.get(agent_id) is handle:
            try:
                await handle.wait_closed()
            except AgentGone:
                self.agent_lost(agent_id, reasons.ACTOR_DIED, handle)
                return
            except AgentUnreachable:
                self.core.agent_suspect(agent_id, self.clock())
                await asyncio.sleep(self.config.load_interval)
            except Exception as exc:
                log.warning("watch on agent %s failed: %r; watching again", agent_id, exc)
                await asyncio.sleep(self.config.load_interval)

    def agent_lost(self, agent_id: AgentId, why: str, handle: AgentHandle | None = None,
                   ) -> None:
        """Drop the agent; with `handle`, only if it is still the one registered (a late
        failure of an old actor must not remove its replacement)."""
        current = self.handles.get(agent_id)
        if current is None or (handle is not None and current is not handle):
            return
        del self.handles[agent_id]
        self.link.since.pop(agent_id, None)
        log.warning("agent %s left the pool: %s", agent_id, why)
        self.core.agent_left(agent_id, self.clock(), why)
        self.writer.write()
        self.link.close_agent(agent_id)
        self.kick()

    # ---- carrying out decisions ----------------------------------------------------------

    def _step(self, now: float) -> list[Decision]:
        """One placement step; a failing step is logged, never fatal."""
        try:
            return self.core.step(now)
        except Exception:
            log.exception("scheduling step failed; the loop goes on")
            return []

    # ---- calls from agents ---------------------------------------------------------------

    def report_load(self, agent_id: AgentId, load: Load) -> None:
        if self.core.load(agent_id, load, self.clock()):
            self.kick()

    def report_attempt(self, report: AttemptReport) -> ReportAnswer:
        """Apply one report (see report_attempts)."""
        return self.report_attempts([report])[0]

    def report_attempts(self, reports: list[AttemptReport]) -> list[ReportAnswer]:
        """Apply reports that arrived together, in order, with one step and one write; one
        answer per report, each saying whether what it changed is written.

        The end of an attempt frees room on its agent, so a step runs at once and what it
        places there rides back on the answer to that agent's last report: the freed slot
        is refilled one round trip sooner than with a separate start call. Under load,
        reports from many agents share the step and the write.
        """
        now = self.clock()
        decisions: list[Decision] = []
        failed: dict[int, str] = {}
        for i, report in enumerate(reports):
            try:
                decisions += self.core.report(report, now)
            except Exception as exc:
                # A bug in applying one report must cost that report, not those with it.
                log.exception("applying %s of %s attempt %d failed", report.stage,
                              report.action_id, report.attempt)
                failed[i] = f"the scheduler failed to apply it: {exc!r}"
        if not self.writer.read_only and any(
                r.stage != "running" and r.agent_id in self.handles for r in reports):
            decisions += self._step(now)
        # An agent whose reports all failed gets its work another way.
        last = {r.agent_id: i for i, r in enumerate(reports) if i not in failed}
        mine: list[Assign] = []
        others: list[Decision] = []
        for decision in decisions:
            if isinstance(decision, Assign) and decision.agent_id in last:
                mine.append(decision)
            else:
                others.append(decision)
        if not self.delivery.carry_out(others):  # writes `mine` too
            self.writer.hold(mine)  # unwritten: sent by the recovery once it can write
            return [ReportAnswer(recorded=False) for _ in reports]
        work: dict[AgentId, list[Assignment]] = {}
        for decision in mine:
            work.setdefault(decision.agent_id, []).append(self.core.assignment(decision))
        return [ReportAnswer(error=failed[i]) if i in failed else
                ReportAnswer(assignments=work.get(r.agent_id, []) if last[r.agent_id] == i
                             else [], recorded=True) for i, r in enumerate(reports)]

    # ---- calls from clients that change state --------------------------------------------

    def submit(self, specs: list[Action], reject_unplaceable: bool) -> list[SubmitOutcome]:
        """Accept a batch (all or nothing); accepted means durable, so the answer comes
        once it is on disk. A batch that could not be written is not accepted."""
        self.writer.refuse_if_read_only("submissions")
        try:
            outcomes = self.core.submit(specs, self.clock(), reject_unplaceable,
                                        commit=self.writer.commit_durably)
        except MeshError:
            raise
        except Exception as exc:
            log.error("writing a submission to %s failed: %r", self.store.path, exc)
            raise SchedulerUnavailable("the submission could not be written; nothing was "
                                       "accepted; try again") from None
        if self._wake is not None:
            # Once started, stepped here rather than by the loop: a start for the new work
            # then goes out before this answer does, not after it and several turns of the
            # loop (on an idle pool, about a millisecond of the time to a result).
            self.dispatch()
        return outcomes

    def cancel(self, action_id: ActionId) -> ActionStatus:
        self.writer.refuse_if_read_only("cancels")
        self.delivery.carry_out(self.core.cancel(action_id, self.clock()))
        self.kick()
        return self.core.get(action_id, self.clock())

    def change_accounts(self, change: Callable[[], T]) -> T:
        """Make an admin change to accounts or options (refused while read-only), write
        it, and run a pass."""
        self.writer.refuse_if_read_only("account changes")
        result = change()
        self.writer.save_accounts()
        self.kick()
        if self.writer.read_only:
            raise self.writer.unwritten("the change")
        return result

    def drain(self, name: str, drained: bool) -> AgentStatus:
        """Drain an agent (or open it again), durably; refused while read-only."""
        self.writer.refuse_if_read_only("drains")
        status = self.core.drain(name, self.clock(), drained)
        self.kick()
        self.writer.write_change("the drain" if drained else "the undrain")
        return self._linked(status)

    # ---- reads that are not the core's alone ---------------------------------------------

    def pool(self) -> list[AgentStatus]:
        return [self._linked(status) for status in self.core.pool(self.clock())]

    def _linked(self, status: AgentStatus) -> AgentStatus:
        """The core's view of an agent with how it talks with the scheduler, and since when."""
        agent_id = status.info.agent_id
        return status.model_copy(update={
            "link": "stream" if self.link.on_stream(agent_id) else "ray",
            "link_since": self.link.since.get(agent_id)})

    async def shutdown(self) -> int:
        """Stop every agent (their attempts are killed); returns how many were stopped."""
        handles = list(self.handles.items())
        self.handles.clear()
        for agent_id, _ in handles:
            # Not their agents' deaths: `mesh down` must not use up their retries.
            self.core.agent_left(agent_id, self.clock(), reasons.MESH_DOWN, counted=False)
        self.writer.write()
        results = await asyncio.gather(*(h.shutdown(10.0) for _, h in handles),
                                       return_exceptions=True)
        await self.link.close()
        await self.pools.close()
        for task in list(self._tasks):
            task.cancel()
        return sum(1 for r in results if not isinstance(r, BaseException))


def _exit_process(_: BaseException) -> None:
    logging.shutdown()
    os._exit(70)  # EX_SOFTWARE; Ray restarts the actor

