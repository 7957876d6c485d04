"""An agent's backlog with a real executor: starts held until running attempts leave room."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.backlog import Backlog
from agent.executor import Executor
from mesh.protocol import Assignment, HeldAttempt
from mesh.schema import ActionId
from mesh.waiting import async_wait_until
from tests.agent_support import RecordingSinks, ended, shell

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def backlog(ex: Executor) -> Backlog:
    return Backlog(ex, ex.start)


def held_until(script: str, action_id: str, within: float | None = 1.0,
               cpus: float = 1.0) -> Assignment:
    start = shell(script, action_id, cpus=cpus)
    return start.model_copy(update={"within_cpus": within})


async def running(ex: Executor, action_id: str) -> None:
    await async_wait_until(lambda: ex.knows(ActionId(action_id), 1), bool,
                           what=f"{action_id} to run")


def alone(marks: Path, action_id: str) -> str:
    """A script that fails if another such script runs beside it."""
    return (f"ls {marks} | grep -q . && exit 7; touch {marks}/{action_id}; sleep 0.2; "
            f"rm {marks}/{action_id}")


async def test_held_starts_run_one_after_another_in_the_order_they_came(
        backlog: Backlog, sinks: RecordingSinks, tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    backlog.offer([held_until(alone(tmp_path, n), n) for n in names])
    assert backlog.held() == [HeldAttempt(action_id=ActionId(n), attempt=1) for n in "bc"]
    for name in names:
        await ended(sinks, name)
    assert [sinks.end(n).exit_code for n in names] == [0, 0, 0]  # type: ignore[union-attr]
    ends = [r.action_id for r in sinks.reports if r.stage == "succeeded"]
    assert ends == names
    assert backlog.held() == []


async def test_a_start_without_a_limit_runs_at_once_beside_held_work(
        backlog: Backlog, sinks: RecordingSinks) -> None:
    backlog.offer([held_until("sleep 5", "long"), held_until("true", "held")])
    backlog.offer([held_until("true", "free", within=None)])
    await ended(sinks, "free")
    assert sinks.stages("held") == []
    assert backlog.held() == [HeldAttempt(action_id=ActionId("held"), attempt=1)]


async def test_a_start_larger_than_the_limit_runs_when_nothing_else_does(
        backlog: Backlog, sinks: RecordingSinks) -> None:
    backlog.offer([held_until("true", "big", cpus=2.0)])
    await ended(sinks, "big")
    assert sinks.end("big").exit_code == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("held_only, reported", [(False, "cancelled"), (True, "withdrawn")])
async def test_a_held_start_stopped_ends_without_running(
        backlog: Backlog, ex: Executor, sinks: RecordingSinks, tmp_path: Path,
        held_only: bool, reported: str) -> None:
    ran = tmp_path / "ran"
    backlog.offer([held_until("sleep 5", "long"), held_until(f"touch {ran}", "held")])
    await running(ex, "long")
    assert await backlog.stop(ActionId("held"), 1, "why", held_only) == "stopped"
    assert backlog.held() == []
    end = sinks.end("held")
    assert end is not None and (end.stage, end.reason) == (reported, "why")
    assert sinks.closed[("held", 1)] == 0  # its log is closed, empty
    # The long attempt ending frees the slot, and nothing is left to start.
    assert await backlog.stop(ActionId("long"), 1, "cancelled") == "stopped"
    backlog.offer([held_until(f"touch {ran}", "held")])  # a repeat of the start is ignored
    assert backlog.pending() == 0 and not ran.exists()


async def test_a_start_taken_back_after_it_started_runs_on_once(
        backlog: Backlog, ex: Executor, sinks: RecordingSinks, tmp_path: Path) -> None:
    # The scheduler asks back a held start that has just been let go: it runs on.
    backlog.offer([held_until("true", "first"),
                   held_until(f"echo x >> {tmp_path}/ran; sleep 0.3", "held")])
    await running(ex, "held")
    assert await backlog.stop(ActionId("held"), 1, "taken back", held_only=True) == "unknown"
    await ended(sinks, "held")
    assert sinks.end("held").exit_code == 0  # type: ignore[union-attr]
    assert (tmp_path / "ran").read_text() == "x\n"
    assert await backlog.stop(ActionId("held"), 1, "taken back", held_only=True) == "unknown"


async def test_a_repeated_start_is_held_once(backlog: Backlog) -> None:
    backlog.offer([held_until("sleep 5", "long"), held_until("true", "held")])
    backlog.offer([held_until("true", "held"), held_until("sleep 5", "long")])
    assert backlog.held() == [HeldAttempt(action_id=ActionId("held"), attempt=1)]


async def test_a_closed_backlog_starts_nothing_more(
        backlog: Backlog, ex: Executor, sinks: RecordingSinks) -> None:
    backlog.offer([held_until("sleep 5", "long"), held_until("true", "held")])
    await running(ex, "long")
    backlog.close()
    assert backlog.held() == []
    assert await ex.cancel(ActionId("long"), 1) == "stopped"
    backlog.offer([held_until("true", "late")])
    assert backlog.pending() == 0  # nothing started, nothing held
    assert sinks.stages("held") == [] and sinks.stages("late") == []


async def test_a_later_attempt_drops_the_held_one_and_stops_the_running_one(
        backlog: Backlog, ex: Executor, sinks: RecordingSinks) -> None:
    backlog.offer([held_until("sleep 5", "a"), held_until("sleep 5", "b")])
    await running(ex, "a")
    # A later attempt of a held action takes its place; the earlier ends unstarted.
    backlog.offer([held_until("true", "b").model_copy(update={"attempt": 2})])
    await ended(sinks, "b", 1)
    assert sinks.stages("b", 1) == ["cancelled"]
    assert backlog.held() == [HeldAttempt(action_id=ActionId("b"), attempt=2)]
    # A later attempt of a running action starts at once, stopping the earlier one, as
    # it did before starts were held (that attempt holds the room it needs).
    backlog.offer([held_until("true", "a").model_copy(update={"attempt": 2})])
    await ended(sinks, "a", 1)
    assert sinks.end("a", 1).stage == "cancelled"  # type: ignore[union-attr]
    await ended(sinks, "a", 2)
    await ended(sinks, "b", 2)


async def test_a_start_carried_out_at_once_counts_until_it_runs(
        backlog: Backlog, ex: Executor, sinks: RecordingSinks) -> None:
    first = held_until("sleep 5", "first")
    assert backlog.fits(first)
    starting = backlog.start_now(first)
    backlog.offer([held_until("true", "second")])  # while `first` is on its way
    assert backlog.held() == [HeldAttempt(action_id=ActionId("second"), attempt=1)]
    await starting
    assert backlog.held() == [HeldAttempt(action_id=ActionId("second"), attempt=1)]
    assert await ex.cancel(ActionId("first"), 1) == "stopped"
    await ended(sinks, "second")


async def test_an_attempt_whose_start_is_under_way_holds_its_room_once(
        ex: Executor, sinks: RecordingSinks) -> None:
    # `a`'s start has not returned (as while its spawn is answered): counted once, as the
    # executor counts it, so a slot that frees meanwhile is taken at once.
    answered = asyncio.Event()

    async def start(assignment: Assignment) -> None:
        await ex.start(assignment)
        if assignment.action_id == "a":
            await answered.wait()

    backlog = Backlog(ex, start)
    backlog.offer([held_until("sleep 60", "a", within=2.0),
                   held_until("sleep 60", "b", within=2.0), held_until("true", "c", within=2.0)])
    await running(ex, "a")
    await running(ex, "b")
    assert backlog.held() == [HeldAttempt(action_id=ActionId("c"), attempt=1)]
    assert await ex.cancel(ActionId("b"), 1) == "stopped"
    await ended(sinks, "c")
    assert not answered.is_set() and backlog.held() == []
    answered.set()
    assert await ex.cancel(ActionId("a"), 1) == "stopped"
