"""The Python client: connect, submit, follow logs and stage events, wait, cancel, inspect."""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import Generator, Iterator, Sequence
from itertools import repeat
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mesh import bootstrap
from mesh.arrival import arrived, arrived_list, as_json
from mesh.calls import CALL_TIMEOUT, call, send, wait
from mesh.clientlink import ClientLink, LinkDown
from mesh.errors import (
    ActionTimeout,
    InvalidInput,
    MeshError,
    NotFound,
    SchedulerUnavailable,
    Unplaceable,
)
from mesh.health import judge
from mesh.poolconfig import GroupStatus, JobHome, PoolConfig, PoolStatus
from mesh.schema import (
    STORED,
    AccountConfig,
    AccountStatus,
    Action,
    ActionId,
    ActionPage,
    ActionStatus,
    AgentStatus,
    EventPage,
    EventQuery,
    Health,
    ListQuery,
    LogLine,
    LogRead,
    LogSource,
    MeshConfig,
    MeshEvent,
    MeshHealth,
    QuotaOptions,
    StageEvent,
    SubmitOutcome,
)
from mesh.stages import TERMINAL, Stage

POLL = 5.0
# A follower of the event log rides out a scheduler restart this long, asking this often.
RECONNECT_FOR = 120.0
RECONNECT_PAUSE = 0.5
# Seconds `health` waits for each part's answer.
HEALTH_TIMEOUT = 10.0
# Lines asked for per log read: the relay's own cap (it also caps a reply at ~8 MiB). A read
# returns whatever is there, so a wide window costs a follower no latency, and each read is
# a Ray call with a fixed cost on both sides: following a long log with windows of 10,000
# lines took the relay a third more CPU than with 100,000.
READ_LINES = 100_000
M = TypeVar("M", bound=BaseModel)


def _checked(model: type[M], what: str, query: M | None, fields: dict[str, Any]) -> M:
    """The query with `fields` laid over it, validated here (a bad field is named before
    anything is sent)."""
    try:
        base = query.model_dump() if query is not None else {}
        return model.model_validate({**base, **fields})
    except ValidationError as exc:
        raise InvalidInput.from_validation(what, exc) from None


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _action(spec: Action | dict[str, Any]) -> Action:
    try:
        action = spec if isinstance(spec, Action) else Action.model_validate(spec)
    except ValidationError as exc:
        raise InvalidInput.from_validation("action", exc) from None
    return action.identified()


class ActionHandle:
    """One accepted action: its logs, its stage events, its result."""

    def __init__(self, client: Client, action_id: ActionId) -> None:
        self.client = client
        self.id = action_id

    def __repr__(self) -> str:
        return f"ActionHandle({self.id!r})"

    def status(self) -> ActionStatus:
        return self.client.get(self.id)

    def cancel(self) -> ActionStatus:
        return self.client.cancel(self.id)

    def events(self, follow: bool = True, after: int = 0) -> Iterator[StageEvent]:
        """Stage events in order; with follow, until the action reaches a final stage."""
        while True:
            batch: list[StageEvent] = call(self.client.scheduler.wait_events, self.id, after,
                                           POLL if follow else 0.0,
                                           timeout=POLL + CALL_TIMEOUT)
            for event in batch:
                after = event.seq
                yield event
                if event.stage in TERMINAL:
                    return
            if not follow:
                return

    def result(self, timeout: float | None = None) -> ActionStatus:
        """Wait until the action ends; raise ActionTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if left <= 0:
                raise ActionTimeout(f"action {self.id} did not finish within {timeout:g}s")
            text = self.client._wait_result(self.id, left)
            if text is not None:
                # Its spec was checked when it was accepted: types and bounds alone now.
                return arrived(ActionStatus, text, "status", STORED)

    def logs(self, follow: bool = False, attempt: int | None = None, offset: int = 0,
             ) -> Iterator[LogLine]:
        """Output lines from `offset` of one attempt (default: the current one).

        With follow, keeps reading until the action ends; when a new attempt starts, its
        lines follow (each line carries its attempt number).
        """
        current = attempt if attempt is not None else max(self.status().attempt, 1)
        while True:
            offset, closed = yield from self._read_attempt(current, offset, follow)
            if not follow or attempt is not None:
                return
            status = self._await_next(current, closed)
            if status.attempt > current:
                current, offset = status.attempt, 0
            elif status.stage in TERMINAL:
                return

    def _await_next(self, current: int, closed: bool) -> ActionStatus:
        """Wait, on stage events, until the action has ended or an attempt not yet read has
        begun. A closed log means `current` is done, so only a newer attempt can follow;
        otherwise `current` itself may just not have started yet."""

        def ready(st: ActionStatus) -> bool:
            return (st.stage in TERMINAL or st.attempt > current
                    or (not closed and st.attempt == current))

        events: list[StageEvent] = call(self.client.scheduler.wait_events, self.id, 0, 0.0)
        seen = events[-1].seq if events else 0
        status = self.status()
        while not ready(status):
            new: list[StageEvent] = call(self.client.scheduler.wait_events, self.id, seen,
                                         POLL, timeout=POLL + CALL_TIMEOUT)
            seen = new[-1].seq if new else seen
            status = self.status()
        return status

    def _read_attempt(self, attempt: int, offset: int, follow: bool,
                      ) -> Generator[LogLine, None, tuple[int, bool]]:
        """Yield the attempt's lines from `offset`; return where reading stopped and whether
        the log is complete (closed)."""
        relay = self.client.relay
        last_pass = not follow

        def ask(at: int) -> Any:
            return send(relay.read, self.id, attempt, at, READ_LINES,
                        0.0 if last_pass else POLL)

        pending = ask(offset)
        told: set[int] = set()  # gaps already noted, by where they start
        while True:
            read: LogRead = wait(pending, POLL + CALL_TIMEOUT)
            if read.dropped:
                raise NotFound(f"the log of {self.id} attempt {attempt} is gone: "
                               f"{read.dropped}")
            offset = read.next_offset
            done = read.closed or (last_pass and not read.batches)
            if read.batches and not done:
                # Ask for the next lines before handing these out, so the relay's round trip
                # overlaps the caller's work on this batch.
                pending = ask(offset)
            for piece in read.in_order(told):
                if isinstance(piece, tuple):
                    yield self._lost(attempt, *piece)
                    continue
                lines = piece.lines
                source = LogSource(piece.action_id, piece.attempt, piece.stream)
                yield from map(LogLine, repeat(source),
                               range(piece.offset, piece.offset + len(lines)), lines)
            if done:
                return offset, read.closed
            if not read.batches:
                # Quiet for a while. An attempt lost with its agent is never closed, so check
                # it is still the live one, then drain what arrived meanwhile and stop.
                status = self.status()
                last_pass = status.attempt != attempt or status.stage in TERMINAL
                pending = ask(offset)


    def _lost(self, attempt: int, start: int, end: int) -> LogLine:
        return LogLine(LogSource(self.id, attempt, "stderr", lost=end - start), start,
                       f"[actionmesh: lines {start}-{end - 1} of this log were lost]")


class Client:
    """A connection to the mesh on a Ray cluster."""

    def __init__(self) -> None:
        self.scheduler = bootstrap.scheduler_handle()
        self._relay: Any = None
        # `run` and `result` take the client link when it serves: the calls a user waits on,
        # and a Ray call costs about twice a gRPC call (mesh/v1/client.proto).
        self.link = ClientLink(lambda: call(self.scheduler.client_grant))

    @property
    def relay(self) -> Any:
        """The log relay, found when first needed: a mesh whose relay is gone still takes
        submissions and answers `health`."""
        if self._relay is None:
            self._relay = bootstrap.relay_handle()
        return self._relay

    def submit(self, action: Action | dict[str, Any], reject_unplaceable: bool = True,
               ) -> ActionHandle:
        """Submit one action; raises Unplaceable if no agent in the pool could ever run it."""
        return self.submit_many([action], reject_unplaceable)[0]

    def submit_many(self, actions: Sequence[Action | dict[str, Any]],
                    reject_unplaceable: bool = True) -> builtins.list[ActionHandle]:
        """Submit a batch. Ids are chosen here, so repeating the call is idempotent."""
        specs = [as_json(_action(a)) for a in actions]
        outcomes = arrived_list(SubmitOutcome, call(self.scheduler.submit, specs,
                                                    reject_unplaceable), "submit outcomes")
        _raise_refused(outcomes)
        return [ActionHandle(self, o.action_id) for o in outcomes]

    def run(self, action: Action | dict[str, Any], timeout: float | None = None,
            reject_unplaceable: bool = True) -> ActionStatus:
        """Submit one action and wait until it ends, its final status returned: what
        `submit(action).result(timeout)` does, in one call to the scheduler instead of
        two. Raises Unplaceable, or ActionTimeout after `timeout` seconds (the action is
        accepted then, and runs on: `handle(id)` finds it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        first = POLL if timeout is None else min(POLL, timeout)
        spec = as_json(_action(action))
        try:
            answer, text = self.link.run(spec, reject_unplaceable, first)
        except LinkDown:  # the id is the action's own: asking again cannot accept it twice
            wait = first if deadline is None else min(first, _left(deadline))
            answer, text = call(self.scheduler.submit_and_wait, spec, reject_unplaceable,
                                wait, timeout=wait + CALL_TIMEOUT)
        outcome = arrived(SubmitOutcome, answer, "submit outcome")
        _raise_refused([outcome])
        if text is not None:
            # Its spec was checked when it was accepted: types and bounds alone now.
            return arrived(ActionStatus, text, "status", STORED)
        left = None if deadline is None else _left(deadline)
        return ActionHandle(self, outcome.action_id).result(left)

    def _wait_result(self, action_id: ActionId, wait: float) -> str | None:
        """The action's status as JSON text once it ends within `wait` seconds, else None."""
        deadline = time.monotonic() + wait
        try:
            return self.link.result(action_id, wait)
        except LinkDown:
            left = _left(deadline)
            text: str | None = call(self.scheduler.wait_result, action_id, left,
                                    timeout=left + CALL_TIMEOUT)
            return text

    def handle(self, action_id: str) -> ActionHandle:
        return ActionHandle(self, ActionId(action_id))

    def get(self, action_id: str) -> ActionStatus:
        status: ActionStatus = call(self.scheduler.get, ActionId(action_id))
        return status

    def cancel(self, action_id: str) -> ActionStatus:
        status: ActionStatus = call(self.scheduler.cancel, ActionId(action_id))
        return status

    def page(self, query: ListQuery | None = None, **fields: Any) -> ActionPage:
        """One page of accepted actions in submission order, filtered by stage, account,
        job, tags and submission time (`ListQuery`'s fields); pass its `cursor` as
        `after` for the next page."""
        result: ActionPage = call(self.scheduler.page,
                                  _checked(ListQuery, "listing", query, fields))
        return result

    def pages(self, query: ListQuery | None = None, **fields: Any) -> Iterator[ActionPage]:
        """Every page of a listing, fetched as they are iterated."""
        checked = _checked(ListQuery, "listing", query, fields)
        while True:
            found = self.page(checked)
            yield found
            if found.cursor is None:
                return
            checked = checked.model_copy(update={"after": found.cursor})

    def list(self, stage: Stage | str | None = None, limit: int | None = None,
             **fields: Any) -> builtins.list[ActionStatus]:
        """Every accepted action matching the filters (see `page`), at most `limit`."""
        out: builtins.list[ActionStatus] = []
        wanted = {"stage": stage, **fields} if stage is not None else fields
        for found in self.pages(**wanted, limit=min(limit or 1000, 1000)):
            out += found.actions
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out

    def counts(self) -> dict[str, int]:
        """How many accepted actions are in each stage."""
        result: dict[str, int] = call(self.scheduler.counts)
        return result

    def pool(self) -> builtins.list[AgentStatus]:
        result: builtins.list[AgentStatus] = call(self.scheduler.pool)
        return result

    def event_page(self, query: EventQuery | None = None, timeout: float = 0.0,
                   **fields: Any) -> EventPage:
        """One page of the event log after `after` (`EventQuery`'s fields), waiting up to
        `timeout` seconds for new entries when there are none yet."""
        checked = _checked(EventQuery, "event query", query, fields)
        page: EventPage = call(self.scheduler.events, checked, timeout,
                               timeout=timeout + CALL_TIMEOUT)
        return page

    def events(self, after: int = 0, follow: bool = False, *,
               reconnect_for: float = RECONNECT_FOR, **fields: Any,
               ) -> Iterator[MeshEvent]:
        """The event log's entries after `after` that match the filters (`action_id`,
        `agent_id`, `kinds`, `since`), oldest first. Without `follow` it ends at the
        newest; with it, it waits for more, and rides out a scheduler restart (up to
        `reconnect_for` seconds without an answer), resuming after the last entry it
        gave: the log is durable and its seqs are never reused, so nothing is missed or
        given twice."""
        query = _checked(EventQuery, "event query", None, {**fields, "after": after})
        gone_since: float | None = None
        while True:
            try:
                page = self.event_page(query, POLL if follow else 0.0)
            except SchedulerUnavailable:
                if not follow:
                    raise
                now = time.monotonic()
                gone_since = gone_since or now
                if now - gone_since > reconnect_for:
                    raise
                time.sleep(RECONNECT_PAUSE)
                self._find_scheduler()
                continue
            gone_since = None
            yield from page.events
            if not follow and page.last == query.after:
                return
            query = query.model_copy(update={"after": page.last})

    def _find_scheduler(self) -> None:
        """Look the scheduler up again: a `mesh up` after a `mesh down` makes a new one."""
        with contextlib.suppress(MeshError):
            self.scheduler = bootstrap.scheduler_handle()

    def drain(self, agent: str) -> AgentStatus:
        """Give the agent (its id, or the hostname `pool()` shows) no new work; its running
        work finishes, then it shows as drained. Kept across scheduler restarts."""
        status: AgentStatus = call(self.scheduler.drain, agent, True)
        return status

    def undrain(self, agent: str) -> AgentStatus:
        """Let a drained agent take work again."""
        status: AgentStatus = call(self.scheduler.drain, agent, False)
        return status

    def apply(self, config: str | PoolConfig) -> PoolStatus:
        """Put a pool config (a YAML text, or the model) in force, without restarting
        anything; a bad one is refused whole (InvalidInput naming each field) and the
        config in force stays. Kept across scheduler restarts."""
        text = config if isinstance(config, str) else yaml.safe_dump(
            config.model_dump(mode="json"), sort_keys=False)
        status: PoolStatus = call(self.scheduler.apply_pool, text)
        return status

    def pool_config(self) -> PoolStatus:
        """The pool config in force, and its groups now."""
        status: PoolStatus = call(self.scheduler.pool_status)
        return status

    def block(self, group: str) -> GroupStatus:
        """Give a whole group no new work; its running work finishes."""
        status: GroupStatus = call(self.scheduler.block_group, group, True)
        return status

    def unblock(self, group: str) -> GroupStatus:
        """Lift an operator's block of a group (a block in the pool config stays)."""
        status: GroupStatus = call(self.scheduler.block_group, group, False)
        return status

    def dispatch(self) -> PoolStatus:
        """Assign jobs to groups again from their recorded load, now."""
        status: PoolStatus = call(self.scheduler.dispatch)
        return status

    def assignment(self, job: str) -> JobHome:
        """Where the job's work goes and why (NotFound for a job with no group yet)."""
        home: JobHome = call(self.scheduler.job_home, job)
        return home

    def health(self) -> MeshHealth:
        """Every part asked (the scheduler, whether it serves and can write its state, the
        relay, the agents and their link) and a verdict: healthy, degraded or down."""
        relay = self._relay_answers()
        try:
            scheduler: Health = call(self.scheduler.health, timeout=HEALTH_TIMEOUT)
        except MeshError as exc:
            return judge(None, relay, [], str(exc))
        agents = self.pool() if scheduler.serving else []
        return judge(scheduler, relay, agents)

    def _relay_answers(self) -> bool:
        try:
            return bool(call(self.relay.ping, timeout=HEALTH_TIMEOUT))
        except MeshError:
            return False

    # ---- quota accounts --------------------------------------------------------------------

    def create_account(self, account_id: str, config: AccountConfig | None = None,
                       **fields: Any) -> AccountStatus:
        """Create an account from a config, or from AccountConfig's fields by name."""
        spec: AccountConfig | dict[str, Any] = config if config is not None else fields
        status: AccountStatus = call(self.scheduler.create_account, account_id, spec)
        return status

    def modify_account(self, account_id: str, reset_balance: bool = False,
                       **changes: Any) -> AccountStatus:
        """Change the named fields of an account's config; the rest stays."""
        status: AccountStatus = call(self.scheduler.modify_account, account_id, changes,
                                     reset_balance)
        return status

    def delete_account(self, account_id: str) -> None:
        call(self.scheduler.delete_account, account_id)

    def accounts(self) -> builtins.list[AccountStatus]:
        result: builtins.list[AccountStatus] = call(self.scheduler.accounts)
        return result

    def account(self, account_id: str) -> AccountStatus:
        status: AccountStatus = call(self.scheduler.account, account_id)
        return status

    def quota_options(self, **changes: Any) -> QuotaOptions:
        """The pool-wide quota options, after setting the named ones if any are given."""
        options: QuotaOptions = call(self.scheduler.quota_options, changes or None)
        return options


def connect(address: str | None = "auto", start_local: bool = False,
            config: MeshConfig | None = None, quiet: bool = False) -> Client:
    """Connect to the mesh. With `start_local`, start a local Ray cluster when none is
    running and bring the mesh up on it if it is not up yet; `quiet`: Ray's own warnings
    are not printed."""
    bootstrap.connect_ray(address, start_local, quiet)
    if start_local:
        try:
            bootstrap.scheduler_handle()
        except MeshError:
            bootstrap.up(config)
    return Client()


def _raise_refused(outcomes: Sequence[SubmitOutcome]) -> None:
    refused = [o for o in outcomes if not o.accepted]
    if refused:
        detail = "; ".join(f"{o.action_id}: {o.reason}" for o in refused)
        raise Unplaceable(detail, [o.action_id for o in refused])
