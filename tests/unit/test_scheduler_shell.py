"""The scheduler actor's body driven in memory: fake agents record every call made to them."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import InvalidInput, NotFound, StateCorrupt, StoreReadOnly
from mesh.protocol import (
    AgentHoldings,
    Assignment,
    AttemptReport,
    CancelOutcome,
    HeldAttempt,
    LinkGrant,
    ReportAnswer,
)
from mesh.schema import (
    AccountConfig,
    AccountId,
    ActionId,
    AgentId,
    AgentInfo,
    MeshConfig,
    QuotaOptions,
)
from mesh.stages import Stage
from mesh.v1 import MAX_DOWN
from mesh.v1 import link_pb2 as pb
from mesh.waiting import async_wait_until
from scheduler.agent_handle import AgentGone, AgentUnreachable
from scheduler.core.decisions import Decision
from scheduler.core.records import Changes, Saved
from scheduler.grants import REGRANT_AFTER
from scheduler.shell import Scheduler
from scheduler.store import Store
from tests.builders import action, agent, load, report
from tests.link_support import LinkClient

# A hang fails within 30 s instead of stalling the run.
pytestmark = pytest.mark.timeout(30)


class FakeAgent:
    """An AgentHandle that records calls; `closed` decides how its watch call ends."""

    def __init__(self, info: AgentInfo) -> None:
        self.info = info
        self.calls: list[tuple[str, Any]] = []
        self.closed: asyncio.Future[None] | None = None
        self.stop_outcome: CancelOutcome = "stopped"
        self.held = AgentHoldings()
        self.grants: list[LinkGrant] = []
        self.unreachable = 0  # how many of the next start and stop calls fail so

    async def hello(self, timeout: float) -> AgentInfo:
        return self.info

    def start(self, assignment: Assignment) -> Any:
        self.calls.append(("start", assignment.action_id))
        return self._unreachable() or _done()

    def stop(self, action_id: str, attempt: int, reason: str = "", held_only: bool = False,
             ) -> Any:
        self.calls.append(("stop", action_id))
        return self._unreachable() or _answer(self.stop_outcome)

    def _unreachable(self) -> Any:
        if self.unreachable <= 0:
            return None
        self.unreachable -= 1
        return _raise(AgentUnreachable("the call may or may not have run"))

    async def holdings(self, timeout: float) -> AgentHoldings:
        return self.held

    async def link(self, grant: LinkGrant) -> None:
        self.grants.append(grant)

    async def wait_closed(self) -> None:
        self.closed = asyncio.get_running_loop().create_future()
        await self.closed

    async def shutdown(self, timeout: float) -> None:
        self.calls.append(("shutdown", None))


async def _done() -> None:
    return None


async def _answer(outcome: CancelOutcome) -> CancelOutcome:
    return outcome


async def _raise(exc: Exception) -> None:
    raise exc


@pytest.fixture
def n1() -> FakeAgent:
    """The one agent of the scheduler `s`: node n1, 1 CPU."""
    return FakeAgent(agent("n1", cpus=1))


@pytest.fixture
async def s(n1: FakeAgent, tmp_path: Path) -> AsyncIterator[Scheduler]:
    """A scheduler driven in memory, its state in the test's own directory and its clock
    standing still at 1.0, with `n1` registered and its load reported. Not started: a test
    starts its loops when it has set up what the first pass should see. Shut down after the
    test (its agents told, its link closed, its loops cancelled)."""
    nodes = [{"NodeID": "n1", "Alive": True, "Resources": {}, "Labels": {}}]
    scheduler = Scheduler(MeshConfig(state_dir=str(tmp_path)),
                          agent_factory=lambda node, _: n1, list_nodes=lambda: nodes,
                          clock=lambda: 1.0)
    scheduler.register(n1.info, n1)
    scheduler.report_load(n1.info.agent_id, load(at=0.0))
    yield scheduler
    await scheduler.shutdown()


Pair = tuple[Scheduler, dict[str, FakeAgent]]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """A started scheduler with two 1-CPU agents, n1 and n2, their load reported, and
    actions a-e submitted: one runs on each agent, the others wait. Shut down after."""
    agents = {n: FakeAgent(agent(n, cpus=1)) for n in ("n1", "n2")}
    nodes = [{"NodeID": n, "Alive": True, "Resources": {}, "Labels": {}} for n in agents]
    s = Scheduler(MeshConfig(state_dir=str(tmp_path)), agent_factory=lambda n, _: agents[n],
                  list_nodes=lambda: nodes, clock=lambda: 1.0)
    for fake in agents.values():
        s.register(fake.info, fake)
        s.report_load(fake.info.agent_id, load(at=0.0))
    s.submit([action(x) for x in "abcde"], True)
    s.ensure_started()
    await settle()
    yield s, agents
    await s.shutdown()


def started(agents: dict[str, FakeAgent]) -> dict[str, list[str]]:
    """The actions each agent was sent a start call for."""
    return {n: [str(x) for kind, x in fake.calls if kind == "start"]
            for n, fake in agents.items()}


def state_of(s: Scheduler, agent_id: str) -> str:
    return next(a.state for a in s.pool() if a.info.agent_id == agent_id)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_bad_action_in_a_batch_leaves_the_whole_batch_unaccepted(tmp_path: Path) -> None:
    s = Scheduler(MeshConfig(state_dir=str(tmp_path)), list_nodes=list, clock=lambda: 1.0)
    s.submit([action("x")], True)
    with pytest.raises(InvalidInput, match="already used"):
        s.submit([action("new"), action("x", command=["false"])], True)
    with pytest.raises(NotFound):
        s.core.get(ActionId("new"), s.clock())


@pytest.mark.parametrize("text", [{"cwd": "/build/br\udcffanch"},
                                  {"tags": {"branch": "f\udcffo"}}])
def test_text_the_store_cannot_encode_is_refused_and_the_scheduler_runs_on(
        text: dict[str, Any], tmp_path: Path) -> None:
    # A lone surrogate (os.fsdecode of a name that is not UTF-8) passes validation when a
    # bare Ray call sends the model itself; only writing it as UTF-8 fails.
    s = Scheduler(MeshConfig(state_dir=str(tmp_path)), list_nodes=list, clock=lambda: 1.0,
                  on_store_failure=lambda exc: pytest.fail(f"stopped by {exc!r}"))
    with pytest.raises(InvalidInput, match="cannot be stored as UTF-8"):
        s.submit([action("fine"), action("odd", **text)], True)
    with pytest.raises(NotFound):
        s.core.get(ActionId("fine"), s.clock())
    assert [o.accepted for o in s.submit([action("fine")], True)] == [True]
    assert [r.id for r, _ in s.store.load().actions] == ["fine"]


async def test_an_end_report_is_answered_with_the_agents_next_assignment(
        s: Scheduler, n1: FakeAgent) -> None:
    s.submit([action("a"), action("b")], True)
    s.ensure_started()
    await settle()
    assert n1.calls == [("start", "a")]
    answer = s.report_attempt(report("a", 1, "n1", "succeeded", exit_code=0))
    assert [x.action_id for x in answer.assignments] == ["b"] and answer.recorded
    assert n1.calls == [("start", "a")], "b must not also get a start call"
    assert s.core.get(ActionId("b"), s.clock()).stage is Stage.ASSIGNED


async def test_a_started_scheduler_sends_new_works_start_before_it_answers_the_submit(
        s: Scheduler, n1: FakeAgent) -> None:
    s.ensure_started()
    await settle()  # the loop's first pass: nothing to place yet
    s.submit([action("a")], True)
    assert n1.calls == [("start", "a")], "the start waited for the loop"


async def test_reports_that_arrive_together_share_one_step_and_one_write(pair: Pair) -> None:
    s, agents = pair
    on = started(agents)
    assert [len(ids) for ids in on.values()] == [1, 1], on
    first, second = on["n1"][0], on["n2"][0]
    writes: list[Changes] = []
    write = s.writer.store.write

    def counted(changes: Changes, durable: bool = False) -> None:
        writes.append(changes)
        write(changes, durable)

    s.writer.store.write = counted  # type: ignore[method-assign]
    answers = s.report_attempts([
        report(first, 1, "n1", "running"),
        report(first, 1, "n1", "succeeded", exit_code=0),
        report(second, 1, "n2", "failed", exit_code=1)])
    assert len(writes) == 1, "one write for the three reports"
    assert all(a.recorded for a in answers)
    # Each agent's next work rides on the answer to its last report; none is lost.
    work = [[(x.action_id, x.agent_id) for x in a.assignments] for a in answers]
    assert work[0] == [] and len(work[1]) == len(work[2]) == 1, work
    assert (work[1][0][1], work[2][0][1]) == ("n1", "n2"), work
    assert {s.core.get(ActionId(x), s.clock()).stage for x, _ in work[1] + work[2]} == {
        Stage.ASSIGNED}


async def test_a_report_that_fails_to_apply_costs_only_itself(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    s, agents = pair
    on = started(agents)
    apply = s.core.report

    def broken(report: AttemptReport, now: float) -> list[Decision]:
        decisions = apply(report, now)
        if report.agent_id == "n1":
            raise RuntimeError("a bug, after the report took effect")
        return decisions

    monkeypatch.setattr(s.core, "report", broken)
    bad, good = s.report_attempts([
        report(on["n1"][0], 1, "n1", "succeeded", exit_code=0),
        report(on["n2"][0], 1, "n2", "succeeded", exit_code=0)])
    assert "a bug" in bad.error and not bad.assignments
    assert good.recorded and not good.error and len(good.assignments) == 1
    # The work placed on n1's freed slot has no answer to ride on: a start call takes it.
    await settle()
    assert len(started(agents)["n1"]) == 2, agents["n1"].calls


async def test_a_start_whose_call_found_its_agent_unreachable_is_sent_again(
        s: Scheduler, n1: FakeAgent) -> None:
    n1.unreachable = 2
    s.submit([action("a")], True)
    s.ensure_started()
    await async_wait_until(lambda: n1.calls.count(("start", "a")), lambda n: n == 3,
                           timeout=10, what="the start sent until a call reaches the agent")
    s.report_attempt(report("a", 1, "n1", "running"))
    assert s.core.get(ActionId("a"), s.clock()).stage is Stage.RUNNING


async def test_a_stop_whose_call_found_its_agent_unreachable_is_sent_again(
        s: Scheduler, n1: FakeAgent) -> None:
    s.submit([action("a")], True)
    s.ensure_started()
    await async_wait_until(lambda: n1.calls, lambda calls: ("start", "a") in calls)
    s.report_attempt(report("a", 1, "n1", "running"))
    n1.unreachable = 1
    s.cancel(ActionId("a"))
    await async_wait_until(lambda: n1.calls.count(("stop", "a")), lambda n: n == 2,
                           timeout=10, what="the cancel's stop sent again")


async def test_an_unreachable_agent_is_suspect_and_watched_again(
        s: Scheduler, n1: FakeAgent) -> None:
    await settle()
    first = n1.closed
    assert first is not None
    first.set_exception(AgentUnreachable("slow"))
    await settle()
    assert state_of(s, "n1") == "suspect"
    s.report_load(AgentId("n1"), load(at=1.0))  # it answers again
    assert state_of(s, "n1") == "alive"
    # The watch is armed again once the agent has had `load_interval` to recover.
    await async_wait_until(lambda: n1.closed, lambda closed: closed is not first,
                           what="the watch re-armed")


async def test_a_late_death_of_an_old_actor_does_not_remove_its_replacement(
        s: Scheduler, n1: FakeAgent) -> None:
    await settle()
    old = n1
    replacement = FakeAgent(old.info)
    s.register(old.info, replacement)
    await settle()
    assert old.closed is not None
    old.closed.set_exception(AgentGone("old actor died"))
    await settle()
    assert s.handles[AgentId("n1")] is replacement
    assert [a.info.agent_id for a in s.pool()] == ["n1"]


async def _stream(s: Scheduler, fake: FakeAgent) -> LinkClient:
    """A stream opened as `fake`'s agent with the grant the scheduler handed it."""
    grants = await async_wait_until(lambda: list(fake.grants), bool, what="a link grant")
    return await LinkClient(grants[-1], fake.info.agent_id).open()


async def test_a_start_answered_on_a_stream_that_closes_unconfirmed_goes_by_a_start_call(
        s: Scheduler, n1: FakeAgent) -> None:
    s.submit([action("a"), action("b"), action("c")], True)
    s.ensure_started()
    await settle()
    assert n1.calls == [("start", "a")]
    link = await _stream(s, n1)
    assert await link.ask(report("a", 1, "n1", "succeeded", exit_code=0)) == ["b"]
    assert s.pool()[0].link == "stream"
    await link.close()  # before the agent said a word about b: b may never have reached it
    await async_wait_until(lambda: list(n1.calls),
                           lambda calls: calls[-1] == ("start", "b"),
                           what="b's start sent by a call")
    s.report_load(AgentId("n1"), load(at=s.clock()))  # the shell's clock has moved on
    link = await _stream(s, n1)
    assert await link.ask(report("b", 1, "n1", "succeeded", exit_code=0)) == ["c"]
    s.cancel(ActionId("c"))
    await link.close()
    await async_wait_until(lambda: s.pool()[0].link, lambda how: how == "ray",
                           what="the stream closed at the scheduler")
    await settle()
    assert ("start", "c") not in n1.calls, "a cancelled attempt was started again"


async def test_with_a_stream_open_starts_go_down_it_and_a_refused_start_runs_again(
        s: Scheduler, n1: FakeAgent) -> None:
    s.ensure_started()
    link = await _stream(s, n1)
    s.submit([action("a")], True)
    pushed = await link.read()
    assert [(a.action_id, a.attempt) for a in pushed.assignments] == [("a", 1)]
    assert n1.calls == [], "no start call when the stream carries the start"
    await link.send(report("a", 1, "n1", "refused", reason="OSError('no reaper')"))
    answer = await link.answer()
    again = [*link.pushed[1:], *answer.assignments]
    if not again:  # the new start may come apart from the answer to the refusal
        again = list((await link.read()).assignments)
    assert [(a.action_id, a.attempt) for a in again] == [("a", 2)]
    first = s.core.get(ActionId("a"), s.clock()).attempts[0]
    assert first.outcome == "lost" and "agent refused the start" in first.reason
    assert "no reaper" in first.reason
    await link.close()


async def test_a_start_too_large_for_a_message_goes_by_a_start_call(
        s: Scheduler, n1: FakeAgent) -> None:
    s.ensure_started()
    link = await _stream(s, n1)
    # No action accepted now is this large (argv and env are bounded at submit), but one
    # saved by an older release is read back unchecked.
    big = action("big", cpus=0).model_copy(update={"env": {"BIG": "x" * (MAX_DOWN + 1)}})
    s.submit([big], True)
    await async_wait_until(lambda: list(n1.calls), lambda calls: ("start", "big") in calls,
                           what="the large start sent by a call")
    s.submit([action("small", cpus=0)], True)  # the loop goes on, and pushes again
    pushed = await link.read()
    assert [a.action_id for a in pushed.assignments] == ["small"]
    assert ("start", "small") not in n1.calls
    await link.close()


async def test_a_stop_goes_down_the_stream_and_an_unknown_outcome_ends_the_attempt(
        s: Scheduler, n1: FakeAgent) -> None:
    s.ensure_started()
    link = await _stream(s, n1)
    s.submit([action("a", command=["sleep", "60"])], True)
    assert [a.action_id for a in (await link.read()).assignments] == ["a"]
    s.cancel(ActionId("a"))
    stops = list((await link.read()).stops)
    assert [(x.action_id, x.attempt) for x in stops] == [("a", 1)]
    assert n1.calls == [], "no stop call when the stream carries the stop"
    await link.send(stopped=[pb.Stopped(action_id="a", attempt=1,
                                        outcome=pb.STOP_OUTCOME_UNKNOWN)])
    await async_wait_until(lambda: s.core.get(ActionId("a"), s.clock()).stage,
                           lambda stage: stage is Stage.CANCELLED, what="a cancelled")
    await link.close()


async def test_a_stop_unanswered_when_the_stream_closes_goes_by_a_stop_call(
        s: Scheduler, n1: FakeAgent) -> None:
    s.ensure_started()
    link = await _stream(s, n1)
    s.submit([action("a", command=["sleep", "60"])], True)
    await link.read()
    await link.send(report("a", 1, "n1", "running"))
    await link.answer()
    s.cancel(ActionId("a"))
    assert [x.action_id for x in (await link.read()).stops] == ["a"]
    await link.close()
    await async_wait_until(lambda: list(n1.calls), lambda calls: ("stop", "a") in calls,
                           what="the stop sent again by a call")
    assert ("start", "a") not in n1.calls, "a started attempt was started again"


async def test_while_the_link_port_is_taken_agents_report_by_ray_until_it_is_served(
        n1: FakeAgent, tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    nodes = [{"NodeID": "n1", "Alive": True, "Resources": {}, "Labels": {}}]
    s = Scheduler(MeshConfig(state_dir=str(tmp_path), link_port=port),
                  agent_factory=lambda node, _: n1, list_nodes=lambda: nodes)
    try:
        assert await s.ready(5)
        await asyncio.sleep(0.2)
        assert n1.grants == [] and s.pool()[0].link == "ray"
        taken.close()
        grants = await async_wait_until(lambda: list(n1.grants), bool, timeout=10,
                                        what="a grant once the port is free")
        assert grants[0].port == port
        link = await LinkClient(grants[0], "n1").open()
        await async_wait_until(lambda: s.pool()[0].link, lambda how: how == "stream",
                               what="the agent on its stream")
        await link.close()
    finally:
        taken.close()
        await s.shutdown()


async def test_an_agent_reporting_by_ray_calls_without_a_stream_is_granted_again(
        n1: FakeAgent, tmp_path: Path) -> None:
    clock = [100.0]
    nodes = [{"NodeID": "n1", "Alive": True, "Resources": {}, "Labels": {}}]
    s = Scheduler(MeshConfig(state_dir=str(tmp_path)), agent_factory=lambda node, _: n1,
                  list_nodes=lambda: nodes, clock=lambda: clock[0])
    try:
        assert await s.ready(5)
        await async_wait_until(lambda: len(n1.grants), lambda n: n == 1, what="a grant")
        s.grants.by_ray_call(AgentId("n1"))  # just granted: the grant may still be on its way
        clock[0] += REGRANT_AFTER
        link = await LinkClient(n1.grants[0], "n1").open()
        await async_wait_until(lambda: s.pool()[0].link, lambda how: how == "stream",
                               what="the agent on its stream")
        s.grants.by_ray_call(AgentId("n1"))  # a late Ray call from an agent on its stream
        await settle()
        assert len(n1.grants) == 1, "an agent on its stream is not granted again"
        await link.close()
        await async_wait_until(lambda: s.pool()[0].link, lambda how: how == "ray",
                               what="the stream gone")
        s.grants.by_ray_call(AgentId("n1"))
        await async_wait_until(lambda: len(n1.grants), lambda n: n == 2, what="a new grant")
        assert n1.grants[1] == n1.grants[0], "the same agent process, the same grant"
    finally:
        await s.shutdown()


@pytest.mark.parametrize(("outcome", "stage"), [("unknown", Stage.CANCELLED),
                                                ("finished", Stage.ASSIGNED)])
async def test_a_cancelled_attempt_its_agent_never_had_ends_cancelled_at_once(
        s: Scheduler, n1: FakeAgent, outcome: CancelOutcome, stage: Stage) -> None:
    n1.stop_outcome = outcome
    s.submit([action("a", command=["sleep", "60"])], True)
    s.ensure_started()
    await settle()
    assert n1.calls == [("start", "a")]
    s.cancel(ActionId("a"))
    await settle()
    # "finished": its end report is on the way and decides; "unknown": none will come.
    assert s.core.get(ActionId("a"), s.clock()).stage is stage


def test_accounts_and_balances_outlive_the_scheduler(tmp_path: Path) -> None:
    clock = [1000.0]

    def scheduler() -> Scheduler:  # no nodes, never started: it makes no agents
        return Scheduler(MeshConfig(state_dir=str(tmp_path)), list_nodes=list,
                         clock=lambda: clock[0])

    first = scheduler()
    first.change_accounts(lambda: first.core.accounts.create(
        AccountId("ci"), AccountConfig(charge_rate=[1], max_charge_seconds=100), clock[0]))
    first.change_accounts(
        lambda: first.core.accounts.set_options(QuotaOptions(disable_preemption=True)))
    clock[0] += 30
    first.writer.save_accounts()

    second = scheduler()
    assert second.core.accounts.options.disable_preemption
    clock[0] += 10  # ten more seconds accrue while it was down
    assert second.core.accounts.status(AccountId("ci"), clock[0]).balance[0] == 40

    second.writer.save_accounts()
    clock[0] -= 86400  # the clock ran a day ahead; corrected before this restart
    third = scheduler()
    clock[0] += 10
    assert third.core.accounts.status(AccountId("ci"), clock[0]).balance[0] == 50, \
        "accounts earn from the restart on, not from when the clock catches up"


def test_a_quota_file_of_the_release_before_is_imported_and_a_bad_one_refused(
        tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "quota.json").write_text(
        '{"last_update_time": 5, "options": {"disable_preemption": true}, "accounts": '
        '{"ci": {"charge_rate": [2]}}, "balances": {"ci": [7, 0, 0, 0, 0]}, "queued": [], '
        '"workers": []}')
    s = Scheduler(MeshConfig(state_dir=str(tmp_path / "old")), list_nodes=list,
                  clock=lambda: 5.0)
    assert s.core.accounts.status(AccountId("ci"), 5.0).balance[0] == 7
    assert s.core.accounts.options.disable_preemption
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "quota.json").write_text('{"last_update_time": "soon"}')
    with pytest.raises(StateCorrupt, match="not a quota snapshot"):
        Scheduler(MeshConfig(state_dir=str(tmp_path / "bad")), list_nodes=list)


def test_an_account_whose_saved_state_does_not_load_is_suspended_not_the_start_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = Scheduler(MeshConfig(state_dir=str(tmp_path)), list_nodes=list, clock=lambda: 5.0)
    for name in ("ci", "broke"):
        first.core.accounts.create(AccountId(name), AccountConfig(charge_rate=[2]), 5.0)
    first.writer.save_accounts()
    first.store.close()
    # As an older release could save it: an infinite balance became JSON null.
    db = sqlite3.connect(tmp_path / "scheduler.db")
    [(text,)] = db.execute("SELECT snapshot FROM quota")
    saved = json.loads(text)
    saved["balances"]["broke"] = [None, 0, 0, 0, 0]
    saved["accounts"]["broke"]["charge_rate"] = [1e308]
    db.execute("UPDATE quota SET snapshot = ?", (json.dumps(saved),))
    db.commit()
    db.close()

    s = Scheduler(MeshConfig(state_dir=str(tmp_path)), list_nodes=list, clock=lambda: 5.0)
    assert s.core.accounts.status(AccountId("ci"), 5.0).config.charge_rate == [2]
    broke = s.core.accounts.status(AccountId("broke"), 5.0)
    assert broke.config.charge_rate == [] and broke.config.disable_free_tasks
    assert broke.config.description.startswith("suspended")
    assert "'broke' cannot be loaded" in caplog.text


async def test_a_restarted_scheduler_reconciles_with_its_agents_before_serving(
        tmp_path: Path) -> None:
    info = agent("n1", cpus=2)
    nodes = [{"NodeID": "n1", "Alive": True, "Resources": {}, "Labels": {}}]

    def scheduler(fake: FakeAgent) -> Scheduler:
        return Scheduler(MeshConfig(state_dir=str(tmp_path)),
                         agent_factory=lambda node, _: fake, list_nodes=lambda: nodes)

    async def first_life() -> None:
        fake = FakeAgent(info)
        s = scheduler(fake)
        s.submit([action("a"), action("b"), action("c"), action("d", cpus=2)], True)
        assert await s.ready(5)
        s.report_load(AgentId("n1"), load(at=0.0))
        await async_wait_until(lambda: len(fake.calls), lambda n: n == 2, what="two starts")
        s.report_attempt(report("a", 1, "n1", "running"))
        # The process dies here: its agents are not told, its state is not closed.
        await s.link.close()

    # The first scheduler lives on an event loop of its own, in a thread: its loops end with
    # that loop, as they would with its process.
    await asyncio.to_thread(asyncio.run, first_life())

    fake = FakeAgent(info)
    # a ended while the scheduler was away; b's start never reached the agent; an
    # attempt the state never made runs there.
    fake.held = AgentHoldings(
        running=[HeldAttempt(action_id=ActionId("zz"), attempt=1)],
        ended=[report("a", 1, "n1", "succeeded", exit_code=0)])
    s = scheduler(fake)
    assert {a.id: a.stage for a in s.core.list_actions()} == {
        "a": Stage.RUNNING, "b": Stage.ASSIGNED, "c": Stage.QUEUED, "d": Stage.QUEUED}
    assert await s.ready(5)
    assert s.core.get(ActionId("a"), s.clock()).stage is Stage.SUCCEEDED
    b = s.core.get(ActionId("b"), s.clock())
    assert b.attempts[0].outcome == "lost" and "restarted" in b.reason, "not a loss"
    assert ("stop", "zz") in fake.calls
    s.report_load(AgentId("n1"), load(at=0.0))
    await async_wait_until(lambda: fake.calls, lambda c: ("start", "b") in c,
                           what="b started again")
    assert s.core.get(ActionId("b"), s.clock()).attempt == 2
    events = [e.reason for e in await s.waits.events(ActionId("a"), 0, 0)]
    assert events[0] == "accepted" and len(events) == 4, events
    await s.shutdown()


async def test_a_starting_scheduler_greets_its_agents_before_it_reads_its_state(
        tmp_path: Path) -> None:
    # So that a restart reads its state while the agents' answers are on the way; the
    # first node pass then registers the agents through those same handles.
    order: list[str] = []
    fake = FakeAgent(agent("n1", cpus=2))
    nodes = [{"NodeID": "n1", "Alive": True, "Resources": {}, "Labels": {}}]

    class Watched(Store):
        def load(self) -> Saved:
            order.append("read the state")
            return super().load()

    def make(node: str, _: MeshConfig) -> FakeAgent:
        order.append(f"made the agent of {node}")
        return fake

    s = Scheduler(MeshConfig(state_dir=str(tmp_path)), agent_factory=make,
                  list_nodes=lambda: nodes, store=Watched(str(tmp_path)))
    assert order == ["made the agent of n1", "read the state"]
    assert await s.ready(5)
    assert [a.info.agent_id for a in s.pool()] == ["n1"]
    assert order == ["made the agent of n1", "read the state"], "made twice"
    await s.shutdown()


def disk_full() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    return exc


class FillingDisk(Store):
    """A store whose disk can be filled and freed: writes and probes fail while full."""

    full = False

    def write(self, changes: Changes, durable: bool = False) -> None:
        if self.full and changes:
            raise disk_full()
        super().write(changes, durable)

    def probe(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().probe()


def on_filling_disk(tmp_path: Path, cpus: float) -> tuple[Scheduler, FakeAgent, FillingDisk]:
    """A scheduler whose store's disk a test fills and frees, with one agent registered;
    a stop (a write error not about storage) fails the test."""
    fake = FakeAgent(agent("n1", cpus=cpus))
    store = FillingDisk(tmp_path)
    s = Scheduler(MeshConfig(state_dir=str(tmp_path)), agent_factory=lambda node, _: fake,
                  list_nodes=lambda: [{"NodeID": "n1", "Alive": True}], store=store,
                  on_store_failure=lambda exc: pytest.fail(f"stopped by {exc!r}"))
    s.register(fake.info, fake)
    s.report_load(AgentId("n1"), load(at=0.0))
    return s, fake, store


async def test_a_full_disk_makes_the_scheduler_read_only_until_it_can_write_again(
        tmp_path: Path) -> None:
    s, fake, store = on_filling_disk(tmp_path, cpus=4)
    s.submit([action("a")], True)  # written: it is only queued
    store.full = True
    s.ensure_started()
    await async_wait_until(s.health, lambda h: h.store == "read-only", what="read-only")
    assert "disk full" in s.health().reason
    with pytest.raises(StoreReadOnly, match=r"disk full.*submissions are refused"):
        s.submit([action("b")], True)
    with pytest.raises(StoreReadOnly, match="account changes are refused"):
        s.change_accounts(lambda: pytest.fail("applied while read-only"))
    await settle()
    assert fake.calls == [], "a start that was not written was sent"
    assert s.core.get(ActionId("a"), s.clock()).stage is Stage.ASSIGNED, "lost in memory"
    store.full = False
    await async_wait_until(lambda: fake.calls, lambda c: c == [("start", "a")],
                           what="the held start sent once it was written")
    assert s.health().store == "ok"
    s.submit([action("b")], True)
    assert Store(tmp_path).find(ActionId("a")) is not None
    await s.shutdown()


async def test_the_next_work_an_end_report_would_carry_is_held_while_the_disk_is_full(
        tmp_path: Path) -> None:
    s, fake, store = on_filling_disk(tmp_path, cpus=1)  # b waits for a
    s.submit([action("a"), action("b")], True)
    s.ensure_started()
    await async_wait_until(lambda: fake.calls, lambda c: c == [("start", "a")],
                           what="a started")
    store.full = True
    s.report_load(AgentId("n1"), load(at=0.5))
    # Taken, not written: the agent keeps offering it to a restarted scheduler.
    assert s.report_attempt(report("a", 1, "n1", "succeeded", exit_code=0)) == ReportAnswer(
        recorded=False)
    assert s.health().store == "read-only"
    store.full = False
    await async_wait_until(lambda: fake.calls, lambda c: ("start", "b") in c,
                           what="b's start, held while the disk was full, sent")
    await s.shutdown()


async def test_a_write_error_not_about_storage_stops_it_and_the_next_start_backs_off(
        tmp_path: Path) -> None:
    class Poisoned(Store):
        def write(self, changes: Changes, durable: bool = False) -> None:
            if any(r.stage is Stage.ASSIGNED for r in changes.updated):
                raise OverflowError("Python int too large to convert to SQLite INTEGER")
            super().write(changes, durable)

    stopped: list[BaseException] = []
    fake = FakeAgent(agent("n1"))
    s = Scheduler(MeshConfig(state_dir=str(tmp_path)), agent_factory=lambda node, _: fake,
                  list_nodes=lambda: [{"NodeID": "n1", "Alive": True}],
                  store=Poisoned(tmp_path), on_store_failure=stopped.append)
    s.register(fake.info, fake)
    s.report_load(AgentId("n1"), load(at=0.0))
    s.submit([action("a")], True)
    s.ensure_started()
    await async_wait_until(lambda: stopped, bool, what="the failed write stopping it")
    await settle()
    assert fake.calls == [], "an assignment that was not written is not sent"
    await s.shutdown()

    # Ray restarts it: it comes back read-only for a while, saying why, not in a loop.
    again = Scheduler(MeshConfig(state_dir=str(tmp_path)), list_nodes=list,
                      on_store_failure=stopped.append)
    health = again.health()
    assert health.store == "read-only" and "1 stop(s)" in health.reason
    assert "OverflowError" in health.reason and again.writer.retry_in >= 5
    with pytest.raises(StoreReadOnly):
        again.submit([action("b")], True)
    assert again.writer.retry() and again.health().store == "ok"
    again.submit([action("b")], True)
    # A write succeeding at once proves nothing: another stop soon after counts as a second.
    again.writer.failed(OverflowError("the same poison"))
    third = Scheduler(MeshConfig(state_dir=str(tmp_path)), list_nodes=list,
                      on_store_failure=lambda exc: None)
    assert "2 stop(s)" in third.health().reason and third.writer.retry_in >= 10


async def test_a_result_waiter_gets_the_final_status_in_one_answer(
        s: Scheduler, n1: FakeAgent) -> None:
    s.submit([action("a")], True)
    s.ensure_started()
    await settle()
    assert await s.waits.result(ActionId("a"), 0.0) is None, "still running: no status"
    waiter = asyncio.ensure_future(s.waits.result(ActionId("a"), 30.0))
    s.report_attempt(report("a", 1, "n1", "running"))
    await settle()
    assert not waiter.done(), "a running report is not the end"
    s.report_attempt(report("a", 1, "n1", "failed", exit_code=3))
    status = await waiter
    assert status is not None and status.stage is Stage.FAILED and status.exit_code == 3
    with pytest.raises(NotFound):
        await s.waits.result(ActionId("nope"), 0.0)


async def test_the_drain_of_an_agent_whose_node_died_is_forgotten(
        n1: FakeAgent, tmp_path: Path) -> None:
    nodes = [{"NodeID": "n1", "Alive": True, "Resources": {}, "Labels": {}}]
    s = Scheduler(MeshConfig(state_dir=str(tmp_path), link="ray"),
                  agent_factory=lambda node, _: n1, list_nodes=lambda: nodes)
    try:
        assert await s.ready(5)
        s.drain("n1", True)
        assert s.store.load().drained == {"n1"}
        nodes[0]["Alive"] = False  # Ray never gives a dead node's id out again
        await async_wait_until(lambda: set(s.core.drained), lambda d: not d,
                               what="the drain forgotten")
        assert s.store.load().drained == set()
    finally:
        await s.shutdown()
