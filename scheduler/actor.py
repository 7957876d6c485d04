"""The scheduler actor: feeds events to the pure core and carries out its decisions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import ray
from pydantic import ValidationError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mesh import names, reasons
from mesh.errors import InvalidInput, NotFound, SchedulerUnavailable
from mesh.schema import (
    AccountConfig,
    AccountId,
    AccountStatus,
    Action,
    ActionId,
    ActionStatus,
    AgentHoldings,
    AgentId,
    AgentInfo,
    AgentStatus,
    Assignment,
    AttemptReport,
    Load,
    MeshConfig,
    QuotaOptions,
    ReportChannel,
    StageEvent,
    SubmitOutcome,
    check_id,
)
from mesh.stages import Stage
from scheduler.agent_handle import AgentGone, AgentHandle, AgentUnreachable, RayAgentHandle
from scheduler.channel import ReportServer
from scheduler.core.decisions import Assign, Decision, Stop
from scheduler.core.quota.events import QuotaEvent
from scheduler.core.quota.snapshot import accounts_snapshot, restore_accounts
from scheduler.core.state import SchedulerState
from scheduler.eventbook import EventBook
from scheduler.nodes import alive, parse_nodes, wanted
from scheduler.store import Batch, Store

log = logging.getLogger("actionmesh.scheduler")

HELLO_TIMEOUT = 60.0
# At start-up (and after a restart) clients wait until every agent has said what it runs,
# or this many seconds; a slower agent is reconciled when it answers.
FIRST_SYNC_WAIT = 10.0
# Seconds between passes when nothing else asks for one.
QUOTA_PASS_INTERVAL = 2.0
# How often balances are written while they change; account changes are written at once.
ACCOUNT_SAVE_INTERVAL = 1.0


def make_agent_handle(node_id: str, config: MeshConfig) -> AgentHandle:
    """Create (or find, after a scheduler restart) the detached agent pinned to the node."""
    from agent.actor import AgentActor

    actor = AgentActor.options(  # type: ignore[attr-defined]
        name=names.agent_name(node_id), namespace=names.NAMESPACE, lifetime="detached",
        get_if_exists=True, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(node_id, config)
    return RayAgentHandle(actor)


class Scheduler:
    """The actor's body, Ray-free apart from node discovery, so tests can drive it directly."""

    def __init__(self, config: MeshConfig,
                 agent_factory: Callable[[str, MeshConfig], AgentHandle] = make_agent_handle,
                 list_nodes: Callable[[], list[dict[str, Any]]] | None = None,
                 clock: Callable[[], float] = time.time, channel_host: str = "127.0.0.1",
                 store: Store | None = None,
                 on_store_failure: Callable[[BaseException], None] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.book = EventBook()
        self.core = SchedulerState(stale_after=config.load_stale_after,
                                   capacity_percent=config.capacity_percent,
                                   cpu_busy_percent=config.cpu_busy_percent, sink=self.book,
                                   quota_sink=QuotaLog())
        self.store = store or Store(config.state_dir)
        self.on_store_failure = on_store_failure or _exit_process
        self._saved_accounts = ""
        self._restore()
        self.agent_factory = agent_factory
        self.list_nodes = list_nodes or ray.nodes
        self.handles: dict[AgentId, AgentHandle] = {}
        self.bringing_up: set[str] = set()
        self.step_errors = 0
        self._wake: asyncio.Event | None = None
        self._synced: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.channel = ReportServer(self.report_attempt, self._deliver_otherwise, channel_host,
                                    config.report_port)
        self._channel_up: asyncio.Future[ReportChannel | None] | None = None

    # ---- durable state -------------------------------------------------------------------

    def _restore(self) -> None:
        """Take back the saved state (a corrupt store stops the start-up, loudly). Attempts
        it has in flight stay unclaimed until their agents say what they run."""
        saved = self.store.load()
        if saved.quota is not None:
            restore_accounts(self.core.quota, saved.quota)
            self._saved_accounts = saved.quota.model_dump_json()
        self.core.restore(saved.actions, self.clock())
        self.book.restore(saved.events)
        if saved.actions or saved.quota is not None:
            log.info("restored %d action(s) (%d in flight, %d queued) and %d account(s)",
                     len(saved.actions), len(self.core.unclaimed),
                     len(self.core.by_stage[Stage.QUEUED]),
                     len(saved.quota.accounts) if saved.quota else 0)

    def persist(self, durable: bool = False) -> None:
        """Write what changed since the last write, as one transaction; `durable`: fsynced.
        On failure the changes stay pending for the next write, and the error is raised."""
        batch = Batch(actions=self.core.take_changed(), events=self.book.take_unsaved())
        try:
            self.store.write(batch, durable)
        except Exception:
            self.core.changed.update(e.id for e in batch.actions)
            self.book.unsaved[:0] = batch.events
            raise

    def _written(self, durable: bool = False) -> bool:
        """Write the pending changes. A scheduler that cannot write must not act on what
        it could not record (a restart would hand out the same attempt numbers again), so
        a failed write stops it: Ray restarts it from what was written."""
        try:
            self.persist(durable)
        except Exception as exc:
            log.critical("writing the scheduler's state to %s failed: %r; stopping so the "
                         "restarted scheduler continues from the saved state",
                         self.store.path, exc)
            self.on_store_failure(exc)
            return False
        return True

    # ---- life cycle ----------------------------------------------------------------------

    def ensure_started(self) -> None:
        if self._wake is not None:
            return
        self._wake = asyncio.Event()
        self._wake.set()  # look at the queue once at start: it may hold work already
        self._synced = asyncio.Event()
        self._channel_up = asyncio.get_running_loop().create_future()
        self._spawn(self._open_channel(self._channel_up))
        self._spawn(self._dispatch_loop())
        self._spawn(self._node_loop())
        self._spawn(self._save_loop())

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
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _open_channel(self, up: asyncio.Future[ReportChannel | None]) -> None:
        try:
            address = await self.channel.start()
        except OSError as exc:
            # Agents then report by Ray calls: slower, but nothing is lost.
            log.error("report channel not opened on %s:%d: %s", self.channel.host,
                      self.channel.port, exc)
            up.set_result(None)
            return
        log.info("report channel on %s:%d", address.host, address.port)
        up.set_result(address)

    async def report_channel(self) -> ReportChannel | None:
        """Where agents send reports, or None when the channel could not be opened."""
        self.ensure_started()
        assert self._channel_up is not None
        return await self._channel_up

    # ---- the loops, which must never die -------------------------------------------------

    async def _dispatch_loop(self) -> None:
        assert self._wake is not None
        while True:
            # Also on a timer: balances move with time alone, so a waiting request may come
            # to afford a preemption, and running work be promoted or demoted, unasked.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), QUOTA_PASS_INTERVAL)
            self._wake.clear()
            self._carry_out(self._step(self.clock()))

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(ACCOUNT_SAVE_INTERVAL)
            try:
                self.save_accounts()
            except Exception:
                log.exception("saving the quota accounts failed; will retry")

    def save_accounts(self) -> None:
        """Write accounts, balances and options if they changed since the last write."""
        if not self.core.quota.configs and not self._saved_accounts:
            return
        self.core.advance(self.clock())
        snapshot = accounts_snapshot(self.core.quota)
        text = snapshot.model_dump_json()
        if text == self._saved_accounts:
            return
        self.store.save_quota(snapshot)
        self._saved_accounts = text

    async def _node_loop(self) -> None:
        assert self._synced is not None
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
        for agent_id in [a for a in self.handles if a not in alive(views)]:
            self.agent_lost(agent_id, reasons.NODE_DEAD)
        todo = [n for n in wanted(views, self.config.head_agent)
                if AgentId(n) not in self.handles and n not in self.bringing_up]
        self.bringing_up.update(todo)
        tasks = [self._spawn(self._bring_up(n)) for n in todo]
        if tasks and not self._synced.is_set():
            # The first pass waits, so `mesh up` returns with the pool filled and clients
            # are answered only once the agents said what they run; later passes must not,
            # or one slow agent would hold up noticing dead nodes.
            await asyncio.wait(tasks, timeout=FIRST_SYNC_WAIT)
        # Saved in-flight attempts on agents of nodes that are gone (or no longer carry
        # an agent) went with them while the scheduler was away.
        gone = set(self.core.unclaimed.values()) - {
            AgentId(n) for n in wanted(views, self.config.head_agent)}
        if gone:
            log.warning("agents gone while the scheduler was away: %s", ", ".join(sorted(gone)))
            self.core.lose_unclaimed(self.clock(), gone)
            self._written()
            self.kick()
        self._synced.set()

    async def _bring_up(self, node_id: str) -> None:
        """Create or find the node's agent, learn what it runs, register it. The caller
        has put the node in `bringing_up`."""
        try:
            handle = self.agent_factory(node_id, self.config)
            info = await handle.hello(HELLO_TIMEOUT)
            held = await handle.holdings(HELLO_TIMEOUT)
            self.register(info, handle, held)
        except Exception as exc:
            log.warning("agent on node %s did not come up: %s", node_id, exc)
        finally:
            self.bringing_up.discard(node_id)

    def register(self, info: AgentInfo, handle: AgentHandle,
                 held: AgentHoldings | None = None) -> None:
        """Add the agent to the pool, squaring what it runs with the saved state."""
        self.handles[info.agent_id] = handle
        now = self.clock()
        self.core.register_agent(info, now)
        self._carry_out(self.core.reconcile_agent(info.agent_id, held or AgentHoldings(), now))
        self._spawn(self._watch(info.agent_id, handle))
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
                self.core.mark_suspect(agent_id)
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
        log.warning("agent %s left the pool: %s", agent_id, why)
        self.core.remove_agent(agent_id, self.clock())
        self._written()
        self.channel.close_agent(agent_id)
        self.kick()

    # ---- carrying out decisions ----------------------------------------------------------

    def _step(self, now: float) -> list[Decision]:
        """One placement step; a failing step is logged and counted, never fatal."""
        try:
            return self.core.step(now)
        except Exception:
            self.step_errors += 1
            log.exception("scheduling step failed; the loop goes on")
            return []

    def _carry_out(self, decisions: list[Decision]) -> bool:
        """Write the state, then act: an assignment is written before its agent hears of
        it, so a restarted scheduler never meets an attempt it did not know it made.
        False (and nothing sent) when the write failed."""
        if not self._written():
            return False
        for decision in decisions:
            handle = self.handles.get(decision.agent_id)
            if handle is None:
                if isinstance(decision, Assign):
                    self._start_failed(decision, reasons.AGENT_LEFT)
                continue
            try:
                if isinstance(decision, Assign):
                    call = handle.start(self._assignment(decision))
                else:
                    call = handle.stop(decision.action_id, decision.attempt, decision.reason)
            except Exception as exc:  # submitting the call itself failed (serialisation)
                log.exception("could not send %s", decision)
                if isinstance(decision, Assign):
                    self._start_failed(decision, reasons.START_NOT_SENT.format(error=exc))
                continue
            self._spawn(self._follow_call(decision, handle, call))
        return True

    def _start_failed(self, decision: Assign, why: str) -> None:
        self.core.assignment_failed(decision.action_id, decision.attempt, self.clock(), why)
        self._written()
        self.kick()

    async def _follow_call(self, decision: Decision, handle: AgentHandle, call: Any) -> None:
        try:
            found = await call
            if isinstance(decision, Stop) and found == "unknown":
                self.core.stop_found_nothing(decision.action_id, decision.attempt, self.clock())
                self._written()
        except AgentGone:
            self.agent_lost(decision.agent_id, reasons.CALL_FAILED, handle)
        except AgentUnreachable:
            self.core.mark_suspect(decision.agent_id)
        except Exception as exc:
            log.error("agent %s refused %s: %s", decision.agent_id, decision, exc)
            if isinstance(decision, Assign):
                self._start_failed(decision, reasons.START_REFUSED.format(error=exc))

    # ---- calls from agents ---------------------------------------------------------------

    def report_load(self, agent_id: AgentId, load: Load) -> None:
        if self.core.report_load(agent_id, load, self.clock()) and \
                self.core.by_stage[Stage.QUEUED]:
            self.kick()

    def report_attempt(self, report: AttemptReport) -> list[Assignment]:
        """Apply a report; answer an end report with the reporting agent's next work.

        The end of an attempt frees room on its agent, so a step runs at once and what it
        places there rides back on this call's answer: the freed slot is refilled one
        round trip sooner than with a separate start call.
        """
        now = self.clock()
        decisions = self.core.report_attempt(report, now)
        if report.stage != "running" and report.agent_id in self.handles:
            decisions += self._step(now)
        mine = [d for d in decisions
                if isinstance(d, Assign) and d.agent_id == report.agent_id]
        if not self._carry_out([d for d in decisions if d not in mine]):  # writes `mine` too
            return []
        return [self._assignment(d) for d in mine]

    def _deliver_otherwise(self, assignments: list[Assignment]) -> None:
        """Start calls for assignments a lost channel may not have delivered; only those
        still waiting for their start (a cancelled or ended one must not run again)."""
        now = self.clock()
        still = [a for a in assignments if self.core.awaits_start(a.action_id, a.attempt)]
        self._carry_out([Assign(a.action_id, a.attempt, a.agent_id, now) for a in still])

    def _assignment(self, decision: Assign) -> Assignment:
        entry = self.core.actions[decision.action_id]
        return Assignment(action=entry.spec, action_id=entry.id, attempt=decision.attempt,
                          agent_id=decision.agent_id)

    # ---- accounts (admin calls from clients) ---------------------------------------------

    def create_account(self, account_id: str, config: AccountConfig | dict[str, Any],
                       ) -> AccountStatus:
        status = self.core.create_account(_account_id(account_id),
                                          _account_config(config), self.clock())
        self.kick()
        return status

    def modify_account(self, account_id: str, changes: dict[str, Any],
                       reset_balance: bool = False) -> AccountStatus:
        """Change only the given fields of the account's config."""
        current = self.core.account_config(_account_id(account_id))
        config = _account_config({**current.model_dump(), **changes})
        status = self.core.modify_account(AccountId(account_id), config, self.clock(),
                                          reset_balance)
        self.kick()
        return status

    def delete_account(self, account_id: str) -> None:
        self.core.delete_account(_account_id(account_id), self.clock())

    def accounts(self) -> list[AccountStatus]:
        self.core.advance(self.clock())
        return self.core.accounts()

    def account(self, account_id: str) -> AccountStatus:
        self.core.advance(self.clock())
        return self.core.account(_account_id(account_id))

    def quota_options(self, changes: dict[str, Any] | None = None) -> QuotaOptions:
        """The pool-wide quota options, after applying `changes` if any."""
        if changes:
            try:
                options = QuotaOptions.model_validate(
                    {**self.core.quota_options.model_dump(), **changes})
            except ValidationError as exc:
                raise InvalidInput.from_validation("quota options", exc) from None
            self.core.set_quota_options(options)
            self.kick()
        return self.core.quota_options

    # ---- calls from clients --------------------------------------------------------------

    def submit(self, specs: list[Action | dict[str, Any]], reject_unplaceable: bool,
               ) -> list[SubmitOutcome]:
        """Accept a batch. Every spec is checked before any is accepted, so a bad one (or an
        id already used by a different action) leaves the whole batch unaccepted."""
        actions = [_with_id(_validated(spec, i)) for i, spec in enumerate(specs)]
        for action in actions:
            self.core.check_resubmission(action)
        now = self.clock()
        outcomes = []
        for action in actions:
            assert action.id is not None
            known = action.id in self.core.actions
            verdict = None if known else self.core.unplaceable_reason(action, now)
            if verdict is not None and reject_unplaceable:
                outcomes.append(SubmitOutcome(action_id=action.id, accepted=False,
                                              created=False, reason=verdict.summary))
                continue
            entry, created = self.core.submit(action, now)
            outcomes.append(SubmitOutcome(action_id=entry.id, accepted=True, created=created,
                                          status=entry.status(), reason=entry.reason))
        if not self._written(durable=True):  # accepted means durable: answer once it is
            raise SchedulerUnavailable("the submission could not be written; try again")
        self.kick()
        return outcomes

    def cancel(self, action_id: ActionId) -> ActionStatus:
        self._carry_out(self.core.cancel(action_id, self.clock()))
        self.kick()
        return self.core.get(action_id, self.clock())

    def get(self, action_id: ActionId) -> ActionStatus:
        return self.core.get(action_id, self.clock())

    def list_actions(self, stage: Stage | None, limit: int | None) -> list[ActionStatus]:
        return self.core.list_actions(stage, limit)

    def pool(self) -> list[AgentStatus]:
        return [status.model_copy(update={
                    "report_channel": status.info.agent_id in self.channel.connected})
                for status in self.core.pool(self.clock())]

    def counts(self) -> dict[str, int]:
        return self.core.counts()

    async def wait_events(self, action_id: ActionId, after: int, timeout: float,
                          ) -> list[StageEvent]:
        if action_id not in self.core.actions:
            raise NotFound(f"no action with id {action_id!r}")
        return await self.book.wait(action_id, after, min(max(timeout, 0.0), 60.0))

    async def shutdown(self) -> int:
        """Stop every agent (their attempts are killed); returns how many were stopped."""
        handles = list(self.handles.items())
        self.handles.clear()
        for agent_id, _ in handles:
            self.core.remove_agent(agent_id, self.clock())
        self._written()
        results = await asyncio.gather(*(h.shutdown(10.0) for _, h in handles),
                                       return_exceptions=True)
        await self.channel.close()
        for task in list(self._tasks):
            task.cancel()
        return sum(1 for r in results if not isinstance(r, BaseException))


def _exit_process(_: BaseException) -> None:
    logging.shutdown()
    os._exit(70)  # EX_SOFTWARE; Ray restarts the actor


class QuotaLog:
    """The quota scheduler's events that an operator wants in the log."""

    def emit(self, event: QuotaEvent) -> None:
        if event.type == "preempted":
            log.info("%s (account %s) preempted by %s (account %s) at priority %s",
                     event.task_id, event.account_id or "-", event.preempting_task_id,
                     event.preempting_account_id or "-", event.new_priority)
        elif event.type == "reprioritized":
            log.info("%s (account %s) moved from priority %s to %s", event.task_id,
                     event.account_id, event.priority, event.new_priority)


def _account_id(value: str) -> AccountId:
    try:
        return AccountId(check_id(value, "account id"))
    except ValueError as exc:
        raise InvalidInput(f"account id: {exc}", [("id", str(exc))]) from None


def _account_config(config: AccountConfig | dict[str, Any]) -> AccountConfig:
    if isinstance(config, AccountConfig):
        return config
    try:
        return AccountConfig.model_validate(config)
    except ValidationError as exc:
        raise InvalidInput.from_validation("account config", exc) from None


def _with_id(action: Action) -> Action:
    if action.id is not None:
        return action
    return action.model_copy(update={"id": ActionId(uuid.uuid4().hex)})


def _validated(spec: Action | dict[str, Any], index: int) -> Action:
    if isinstance(spec, Action):
        return spec
    try:
        return Action.model_validate(spec)
    except ValidationError as exc:
        raise InvalidInput.from_validation(f"action #{index}", exc) from None


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SchedulerActor:
    """The singleton scheduler: a Ray async actor around `Scheduler`."""

    def __init__(self, config: MeshConfig) -> None:
        logging.basicConfig(level=logging.INFO)
        host = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.s = Scheduler(config, channel_host=host)

    async def ready(self, timeout: float = 60.0) -> bool:
        return await self.s.ready(timeout)

    async def _serving(self) -> None:
        """Clients are answered once the agents have said what they run (after a restart,
        the saved state is reconciled with them first)."""
        await self.s.ready(FIRST_SYNC_WAIT + 60.0)

    async def ping(self) -> float:
        self.s.ensure_started()
        return time.time()

    async def report_load(self, agent_id: AgentId, load: Load) -> None:
        self.s.ensure_started()
        self.s.report_load(agent_id, load)

    async def report_attempt(self, report: AttemptReport) -> list[Assignment]:
        self.s.ensure_started()
        return self.s.report_attempt(report)

    async def report_channel(self) -> ReportChannel | None:
        return await self.s.report_channel()

    async def create_account(self, account_id: str, config: AccountConfig | dict[str, Any],
                             ) -> AccountStatus:
        await self._serving()
        status = self.s.create_account(account_id, config)
        self.s.save_accounts()
        return status

    async def modify_account(self, account_id: str, changes: dict[str, Any],
                             reset_balance: bool = False) -> AccountStatus:
        await self._serving()
        status = self.s.modify_account(account_id, changes, reset_balance)
        self.s.save_accounts()
        return status

    async def delete_account(self, account_id: str) -> None:
        await self._serving()
        self.s.delete_account(account_id)
        self.s.save_accounts()

    async def accounts(self) -> list[AccountStatus]:
        await self._serving()
        return self.s.accounts()

    async def account(self, account_id: str) -> AccountStatus:
        await self._serving()
        return self.s.account(account_id)

    async def quota_options(self, changes: dict[str, Any] | None = None) -> QuotaOptions:
        await self._serving()
        options = self.s.quota_options(changes)
        self.s.save_accounts()
        return options

    async def submit(self, specs: list[Action | dict[str, Any]],
                     reject_unplaceable: bool = True) -> list[SubmitOutcome]:
        await self._serving()
        return self.s.submit(specs, reject_unplaceable)

    async def cancel(self, action_id: ActionId) -> ActionStatus:
        await self._serving()
        return self.s.cancel(action_id)

    async def get(self, action_id: ActionId) -> ActionStatus:
        await self._serving()
        return self.s.get(action_id)

    async def list_actions(self, stage: Stage | None = None, limit: int | None = None,
                           ) -> list[ActionStatus]:
        await self._serving()
        return self.s.list_actions(stage, limit)

    async def pool(self) -> list[AgentStatus]:
        await self._serving()
        return self.s.pool()

    async def counts(self) -> dict[str, int]:
        await self._serving()
        return self.s.counts()

    async def wait_events(self, action_id: ActionId, after: int = 0, timeout: float = 10.0,
                          ) -> list[StageEvent]:
        await self._serving()
        return await self.s.wait_events(action_id, after, timeout)

    async def shutdown(self) -> int:
        return await self.s.shutdown()


def scheduler_options() -> dict[str, Any]:
    """How the singleton is created: detached, named, restartable, pinned to the head."""
    return {
        "name": names.SCHEDULER,
        "namespace": names.NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "resources": {names.HEAD_RESOURCE: 0.001},
    }
