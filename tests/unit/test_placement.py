"""Placement checks, one table per check, each with its exactly-fits boundary."""

from __future__ import annotations

import pytest

from mesh.schema import Action
from scheduler.core.placement import (
    BaseLabels,
    Check,
    CpuReservation,
    LiveLoad,
    MemoryReservation,
    Open,
    Placer,
    default_checks,
)
from scheduler.core.pool import AgentEntry
from tests.builders import GIB, action, agent, load


def entry(cpus: float = 4, memory: int = 8 * GIB, labels: list[str] | None = None,
          cpu_percent: float = 0.0, available: int = 8 * GIB, loaded_at: float = 0.0,
          state: str = "alive", agent_id: str = "n1", mesh: float = 0.0) -> AgentEntry:
    e = AgentEntry(info=agent(agent_id, cpus=cpus, memory=memory, labels=labels))
    e.state = state  # type: ignore[assignment]
    e.take_load(load(cpu_percent, available=available, mesh=mesh), loaded_at)
    return e


def reserve(e: AgentEntry, cpus: float, memory: int = 0, name: str = "other") -> None:
    e.reserve(name, 1, Action(id=name, command=["true"], cpus=cpus, memory=memory))  # type: ignore[arg-type]


CASES: list[tuple[str, Check, AgentEntry, Action, bool]] = [
    ("labels all offered", BaseLabels(), entry(labels=["os:linux", "vpn"]),
     action(labels=["vpn"]), True),
    ("label missing", BaseLabels(), entry(labels=["os:linux"]), action(labels=["vpn"]), False),
    ("no labels asked", BaseLabels(), entry(labels=["os:linux"]), action(), True),
    ("cpu exactly fits", CpuReservation(), entry(cpus=4), action(cpus=4), True),
    ("cpu one over", CpuReservation(), entry(cpus=4), action(cpus=4.5), False),
    ("fractional cpus fit", CpuReservation(), entry(cpus=0.3), action(cpus=0.3), True),
    ("memory exactly fits", MemoryReservation(), entry(memory=2 * GIB), action(memory=2 * GIB),
     True),
    ("memory one byte over", MemoryReservation(), entry(memory=2 * GIB),
     action(memory=2 * GIB + 1), False),
    ("draining refuses", Open(), entry(state="draining"), action(), False),
    ("blocked refuses", Open(), entry(state="blocked"), action(), False),
    ("alive is open", Open(), entry(), action(), True),
    ("idle machine has room", LiveLoad(3.0), entry(cpus=4, cpu_percent=0), action(cpus=4), True),
    ("others just below the limit", LiveLoad(3.0, 90), entry(cpus=4, cpu_percent=89.9),
     action(cpus=1), True),
    ("others exactly at the limit saturate it", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=90), action(cpus=1), False),
    ("machine busy only with our attempts has room", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=100, mesh=100), action(cpus=1), True),
    ("ours and others together over the limit has room", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=100, mesh=40), action(cpus=1), True),
    ("others just below the limit beside ours", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=100, mesh=10.1), action(cpus=1), True),
    ("others exactly at the limit beside ours saturate it", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=100, mesh=10), action(cpus=1), False),
    ("ours measured above the total leaves nothing foreign", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=50, mesh=60), action(cpus=1), True),
    ("saturated machine still takes zero-CPU work", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=100), action(cpus=0), True),
    ("live memory exactly fits", LiveLoad(3.0), entry(available=GIB), action(memory=GIB), True),
    ("live memory short", LiveLoad(3.0), entry(available=GIB), action(memory=GIB + 1), False),
]


@pytest.mark.parametrize(("check", "agent_entry", "act", "passes"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_check(check: Check, agent_entry: AgentEntry, act: Action, passes: bool) -> None:
    assert (check.reject(agent_entry, act, now=1.0) is None) is passes


def test_reservations_count_against_capacity() -> None:
    e = entry(cpus=4)
    reserve(e, 3)
    assert CpuReservation().reject(e, action(cpus=1), 0) is None
    assert CpuReservation().reject(e, action(cpus=1.5), 0) is not None


def test_capacity_percent_scales_headroom() -> None:
    e = entry(cpus=4)
    e.capacity_percent = 50
    assert CpuReservation().reject(e, action(cpus=2), 0) is None
    assert CpuReservation().reject(e, action(cpus=2.5), 0) is not None


def test_stale_load_counts_as_no_room() -> None:
    e = entry(loaded_at=0.0)
    check = LiveLoad(stale_after=3.0)
    assert check.reject(e, action(), now=3.0) is None
    rejection = check.reject(e, action(), now=3.5)
    assert rejection is not None and "stale" in rejection.detail


def test_a_saturated_machine_is_explained_by_the_load_that_is_not_ours() -> None:
    rejection = LiveLoad(3.0, 95).reject(entry(cpu_percent=99, mesh=2), action(cpus=1), 0)
    assert rejection is not None
    assert rejection.detail == "is saturated by other processes (CPU 97% not ours, limit 95%)"
    assert (rejection.requested, rejection.available) == (97, 95)


def test_memory_stays_strict_on_a_machine_busy_with_our_attempts() -> None:
    e = entry(cpu_percent=100, mesh=100, available=GIB)
    assert LiveLoad(3.0).reject(e, action(memory=GIB), 0) is None
    assert LiveLoad(3.0).reject(e, action(memory=GIB + 1), 0) is not None


def test_memory_placed_since_the_sample_is_subtracted() -> None:
    e = entry(available=4 * GIB)
    reserve(e, 0, memory=3 * GIB)
    assert LiveLoad(3.0).reject(e, action(memory=GIB), 0) is None
    assert LiveLoad(3.0).reject(e, action(memory=GIB + 1), 0) is not None
    e.release("other")  # type: ignore[arg-type]  # gone before any sample saw it
    assert LiveLoad(3.0).reject(e, action(memory=4 * GIB), 0) is None
    reserve(e, 0, memory=3 * GIB)
    e.take_load(load(available=4 * GIB), 0.5)  # a fresh sample resets what it could not see
    assert LiveLoad(3.0).reject(e, action(memory=4 * GIB), 0.5) is None


def test_explain_counts_every_failing_dimension() -> None:
    placer = Placer(default_checks(3.0))
    pool = [entry(agent_id=f"n{i}", labels=["os:linux"]) for i in range(3)]
    vpn = entry(agent_id="v1", labels=["vpn"], cpus=4)
    reserve(vpn, 3)
    pool.append(vpn)
    reason = placer.explain(pool, action(labels=["vpn"], cpus=2), 0)
    assert not reason.unplaceable
    assert "3 agents lack `vpn`" in reason.summary
    assert "1 agent lacks 2 CPUs of headroom" in reason.summary


def test_explain_flags_unplaceable_when_no_machine_could_ever_take_it() -> None:
    placer = Placer(default_checks(3.0))
    reason = placer.explain([entry(cpus=4), entry(cpus=2, agent_id="n2")], action(cpus=16), 0)
    assert reason.unplaceable
    assert reason.summary.startswith("unplaceable:")
    assert {r.agent_id for r in reason.rejections} == {"n1", "n2"}


def test_explain_with_no_agents_says_so() -> None:
    reason = Placer(default_checks(3.0)).explain([], action(), 0)
    assert not reason.unplaceable and "no agents" in reason.summary
