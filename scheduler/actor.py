"""The singleton scheduler as a Ray actor: validates what callers send, then hands it to the
scheduler's body (`scheduler/shell.py`) or, for reads, its core."""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

import ray

from mesh import dashboards, names
from mesh.arrival import (
    arrived,
    arrived_changes,
    arrived_count,
    arrived_flag,
    arrived_id,
    arrived_job,
    arrived_seconds,
    as_json,
)
from mesh.errors import InvalidInput, StateCorrupt, StateDirRefused
from mesh.metrics import Recorder
from mesh.poolconfig import GroupStatus, JobHome, PoolConfig, PoolStatus
from mesh.protocol import AttemptReport, LinkGrant, ReportAnswer
from mesh.schema import (
    AccountConfig,
    AccountId,
    AccountStatus,
    Action,
    ActionId,
    ActionPage,
    ActionStatus,
    AgentId,
    AgentStatus,
    EventPage,
    EventQuery,
    FollowedEvents,
    Health,
    ListQuery,
    Load,
    MeshConfig,
    QuotaOptions,
    StageEvent,
    SubmitOutcome,
)
from mesh.statedir import Owner, StateDirLock
from scheduler.clientlink import ClientLinkService
from scheduler.shell import FIRST_SYNC_WAIT, Scheduler

log = logging.getLogger("actionmesh.scheduler")
# Seconds between tries to read saved state that could not be read.
OPEN_RETRY = 5.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SchedulerActor:
    """The singleton scheduler: a Ray async actor around `Scheduler`.

    Calls from clients wait until the scheduler is serving: after a restart, until the
    saved state has been squared with what the agents run.
    """

    def __init__(self, config: MeshConfig) -> None:
        logging.basicConfig(level=logging.INFO)
        self.config = arrived(MeshConfig, config, "config")
        self.lock = StateDirLock(self.config.state_dir, "scheduler")
        self.owner = Owner.here(ray.get_runtime_context().gcs_address)
        self.host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.refusal: StateDirRefused | None = None
        self.unopened: StateCorrupt | None = None
        self.tried = 0.0
        self._open()
        session = _session_dir()
        if session is not None:
            dashboards.install(session)

    def _open(self) -> None:
        """Take the state dir, read the saved state and build the scheduler.

        Refused (another cluster's dir, or unsafe): every call answers with the reason,
        which `mesh up` then shows. Not readable (a full or read-only disk, a damaged
        file): every call answers why, and one after OPEN_RETRY tries again. A constructor
        that raised would only tell callers the actor died, and Ray does not restart one,
        so the mesh would stay down until someone stepped in."""
        self.tried = time.monotonic()
        try:
            if not self.lock.held:
                self.lock.acquire(self.owner)
            self.s = Scheduler(self.config, link_host=self.host, metrics=Recorder())
        except StateDirRefused as exc:
            log.error("%s", exc)
            self.refusal = exc
            return
        except (StateCorrupt, OSError) as exc:
            self.unopened = exc if isinstance(exc, StateCorrupt) else StateCorrupt(
                f"the state dir {self.config.state_dir} cannot be used: {exc}")
            log.error("%s; trying again in %gs", self.unopened, OPEN_RETRY)
            return
        if self.unopened is not None:
            log.warning("the saved state could be read after all")
            self.unopened = None
        self.client_link = ClientLinkService(self.submit_and_wait, self.wait_result)
        self.s.link.add_service(self.client_link.handler())
        # What the modules and the restored state built lives as long as the process: kept
        # out of the cyclic collector's full passes, which would otherwise scan it all
        # (once soon after a restart, then again as the queue turns over).
        gc.freeze()

    def __repr__(self) -> str:
        return "scheduler"  # the dashboard's actor list shows it by its role

    def _body(self) -> Scheduler:
        if self.refusal is not None:
            raise self.refusal
        if self.unopened is not None and time.monotonic() - self.tried >= OPEN_RETRY:
            self._open()
        if self.unopened is not None:
            raise self.unopened
        return self.s

    def _started(self) -> Scheduler:
        body = self._body()
        body.ensure_started()
        return body

    async def ready(self, timeout: float = 60.0) -> bool:
        return await self._body().ready(timeout)

    async def _serving(self) -> None:
        await self._body().ready(FIRST_SYNC_WAIT + 60.0)

    async def ping(self) -> float:
        """Answers once it holds the state dir (StateDirRefused if not); starts nothing."""
        self._body()
        return time.time()

    # ---- agents --------------------------------------------------------------------------

    async def report_load(self, agent_id: AgentId, load: Load) -> None:
        body, agent = self._started(), _agent_id(agent_id)
        body.report_load(agent, arrived(Load, load, "load"))
        body.grants.by_ray_call(agent)

    async def report_attempt(self, report: AttemptReport) -> ReportAnswer:
        body, checked = self._started(), arrived(AttemptReport, report, "report")
        body.grants.by_ray_call(checked.agent_id)
        return body.report_attempt(checked)

    # ---- clients -------------------------------------------------------------------------

    async def submit(self, specs: list[Action | dict[str, Any] | str],
                     reject_unplaceable: bool = True) -> str:
        """Accept a batch of actions (models, their fields, or their JSON text); the
        outcomes as a JSON array (see mesh.arrival)."""
        return as_json(await self._submit(specs, reject_unplaceable))

    async def _submit(self, specs: list[Action | dict[str, Any] | str],
                      reject_unplaceable: bool) -> list[SubmitOutcome]:
        await self._serving()
        actions = [arrived(Action, spec, f"action #{i}") for i, spec in enumerate(specs)]
        return self.s.submit(actions, reject_unplaceable)

    async def submit_and_follow(self, spec: Action | dict[str, Any] | str,
                                reject_unplaceable: bool = True, linger: float = 0.0,
                                ) -> tuple[SubmitOutcome, FollowedEvents | None]:
        """`submit` of one action, then its first `follow` from its start (None when it was
        refused): one call where a follower would make two."""
        (outcome,) = await self._submit([spec], reject_unplaceable)
        if not outcome.accepted:
            return outcome, None
        return outcome, await self.s.waits.follow(outcome.action_id, 0, 0.0,
                                                  arrived_seconds(linger, "linger"))

    async def submit_and_wait(self, spec: Action | dict[str, Any] | str,
                              reject_unplaceable: bool = True, timeout: float = 10.0,
                              ) -> tuple[SubmitOutcome, str | None]:
        """`submit` of one action, then `wait_result` on it: one call where a client would
        make two (and the second, on an idle pool, arrives barely before the result)."""
        wait = arrived_seconds(timeout, "timeout")  # a bad one refuses the call, not after
        (outcome,) = await self._submit([spec], reject_unplaceable)
        if not outcome.accepted:
            return outcome, None
        status = await self.s.waits.result(outcome.action_id, wait)
        return outcome, None if status is None else as_json(status)

    async def cancel(self, action_id: ActionId) -> ActionStatus:
        await self._serving()
        return self.s.cancel(_action_id(action_id))

    async def get(self, action_id: ActionId) -> ActionStatus:
        await self._serving()
        return self.s.core.get(_action_id(action_id), self.s.clock())

    async def page(self, query: ListQuery | dict[str, Any]) -> ActionPage:
        await self._serving()
        return self.s.core.page(arrived(ListQuery, query, "listing"))

    async def pool(self) -> list[AgentStatus]:
        await self._serving()
        return self.s.pool()

    async def counts(self) -> dict[str, int]:
        await self._serving()
        return self.s.core.counts()

    async def wait_events(self, action_id: ActionId, after: int = 0, timeout: float = 10.0,
                          ) -> list[StageEvent]:
        await self._serving()
        return await self.s.waits.events(_action_id(action_id), arrived_count(after, "after"),
                                        arrived_seconds(timeout, "timeout"))

    async def follow(self, action_id: ActionId, after: int = 0, timeout: float = 10.0,
                     linger: float = 0.0) -> FollowedEvents:
        await self._serving()
        return await self.s.waits.follow(_action_id(action_id), arrived_count(after, "after"),
                                         arrived_seconds(timeout, "timeout"),
                                         arrived_seconds(linger, "linger"))

    async def events(self, query: EventQuery | dict[str, Any], timeout: float = 0.0,
                     ) -> EventPage:
        """A page of the event log after `query.after`, waiting up to `timeout` seconds
        for new entries when there are none yet."""
        await self._serving()
        return await self.s.journal.read(arrived(EventQuery, query, "event query"),
                                         arrived_seconds(timeout, "timeout"))

    async def client_grant(self) -> LinkGrant | None:
        """Where and with what token a client calls `run` and `wait_result` over gRPC
        (mesh/v1/client.proto); None while the link does not serve (it is off, or its port
        cannot be had), when the client calls here."""
        await self._serving()
        return self.s.link.grant_with(self.client_link.token)

    async def wait_result(self, action_id: ActionId, timeout: float = 10.0) -> str | None:
        """The action's status as JSON text once it has ended (see `Waits.result`)."""
        await self._serving()
        status = await self.s.waits.result(_action_id(action_id),
                                           arrived_seconds(timeout, "timeout"))
        return None if status is None else as_json(status)

    # ---- accounts ------------------------------------------------------------------------

    async def create_account(self, account_id: str, config: AccountConfig | dict[str, Any],
                             ) -> AccountStatus:
        await self._serving()
        checked = _account_id(account_id), arrived(AccountConfig, config, "account config")
        return self.s.change_accounts(
            lambda: self.s.core.accounts.create(*checked, self.s.clock()))

    async def modify_account(self, account_id: str, changes: dict[str, Any],
                             reset_balance: bool = False) -> AccountStatus:
        """Change only the given fields of the account's config."""
        await self._serving()
        checked = _account_id(account_id)
        fields = arrived_changes(AccountConfig, changes, "account config")
        reset = arrived_flag(reset_balance, "reset_balance")
        return self.s.change_accounts(lambda: self.s.core.accounts.modify(
            checked, fields, self.s.clock(), reset))

    async def delete_account(self, account_id: str) -> None:
        await self._serving()
        checked = _account_id(account_id)
        self.s.change_accounts(lambda: self.s.core.accounts.delete(checked, self.s.clock()))

    async def accounts(self) -> list[AccountStatus]:
        await self._serving()
        return self.s.core.accounts.all(self.s.clock())

    async def account(self, account_id: str) -> AccountStatus:
        await self._serving()
        return self.s.core.accounts.status(_account_id(account_id), self.s.clock())

    async def quota_options(self, changes: dict[str, Any] | None = None) -> QuotaOptions:
        """The pool-wide quota options, after applying `changes` if any."""
        await self._serving()
        if changes is None or changes == {}:
            return self.s.core.accounts.options
        checked = arrived_changes(QuotaOptions, changes, "quota options")
        return self.s.change_accounts(lambda: self.s.core.accounts.set_options(checked))

    async def drain(self, agent: str, drained: bool = True) -> AgentStatus:
        """No new work for the agent (its id, or its hostname) and its running work
        finishes; with `drained` false, it takes work again."""
        await self._serving()
        return self.s.drain(arrived_id(agent, "agent"), arrived_flag(drained, "drained"))

    async def apply_pool(self, text: str) -> PoolStatus:
        """Put the pool config in this YAML text in force (a bad one is refused whole, each
        field named, and the config in force stays)."""
        await self._serving()
        if not isinstance(text, str):
            raise InvalidInput("pool config: expected the file's text", [("pool config",
                                                                          "not text")])
        return self.s.pools.apply(PoolConfig.parse(text))

    async def pool_status(self) -> PoolStatus:
        await self._serving()
        return self.s.core.pool_status(self.s.clock())

    async def block_group(self, group: str, blocked: bool = True) -> GroupStatus:
        """No new work for the group's agents (their running work finishes); with
        `blocked` false, open it again. Kept across restarts."""
        await self._serving()
        return self.s.pools.block(arrived_id(group, "group"), arrived_flag(blocked, "blocked"))

    async def dispatch(self) -> PoolStatus:
        """Assign jobs to groups again from their recorded load, now."""
        await self._serving()
        return self.s.pools.dispatch()

    async def job_home(self, job: str) -> JobHome:
        await self._serving()
        return self.s.core.job_home(arrived_job(job), self.s.clock())

    async def http_port(self) -> int | None:
        """The port the dispatcher's HTTP endpoint serves on (None: it does not serve)."""
        return self._body().pools.http_port

    async def health(self) -> Health:
        """Answers at once, serving or not: whether it serves and can write its state."""
        return self._body().health()

    async def shutdown(self) -> int:
        if self.refusal is not None or self.unopened is not None:
            return 0  # it never started anything
        return await self.s.shutdown()


def scheduler_options() -> dict[str, Any]:
    """How the singleton is created: detached, named, restartable, pinned to the head."""
    return names.on_the_head(names.SCHEDULER)


def _session_dir() -> Path | None:
    # Ray names no public way to this node's session directory; its worker knows it.
    node = ray._private.worker.global_worker.node
    return None if node is None else Path(node.get_session_dir_path())


def _action_id(value: Any) -> ActionId:
    return ActionId(arrived_id(value, "action id"))


def _account_id(value: Any) -> AccountId:
    return AccountId(arrived_id(value, "account id"))


def _agent_id(value: Any) -> AgentId:
    return AgentId(arrived_id(value, "agent id"))
