"""Placement checks, one table per check, each with its exactly-fits boundary."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mesh.poolconfig import PoolConfig
from mesh.schema import AgentState
from scheduler.core.groups import Groups
from scheduler.core.lifecycle import need_of
from scheduler.core.placement import (
    BaseLabels,
    Check,
    CpuReservation,
    LiveLoad,
    MemoryReservation,
    Open,
    Placer,
    Slot,
)
from scheduler.core.pool import AgentEntry
from scheduler.core.quota.model import Request, TaskRun, Worker
from tests.builders import GIB, action, agent, aid, load


def entry(cpus: float = 4, memory: int = 8 * GIB, labels: list[str] | None = None,
          cpu_percent: float = 0.0, available: int = 8 * GIB, loaded_at: float = 0.0,
          state: AgentState = "alive", agent_id: str = "n1", mesh: float = 0.0,
          drained: bool = False, group: str = "") -> Slot:
    """An agent with a fresh load sample (`mesh`: the share of it our attempts use) and
    nothing reserved yet; with `group`, in that group of the pool config GROUPS."""
    info = agent(agent_id, cpus=cpus, memory=memory, labels=[
        *(labels or ["os:linux"]), *([f"pool:{group}"] if group else [])])
    groups = Groups()
    groups.apply(PoolConfig.parse(GROUPS))
    e = AgentEntry(info=info, terms=groups.terms(info), state=state, drained=drained)
    e.take_load(load(cpu_percent, available=available, mesh=mesh), loaded_at)
    return Slot(e, Worker(e.agent_id, e.labels, e.cpu_capacity, int(e.memory_capacity)))


def need(**fields: Any) -> Request:
    """What an action asks of an agent, as the checks see it."""
    return need_of(action("x", **fields))


def reserve(slot: Slot, cpus: float, memory: int = 0, name: str = "other",
            since_sample: bool = True) -> TaskRun:
    """Something runs there; `since_sample`: placed after the last load sample."""
    assert slot.worker is not None
    run = TaskRun(Request(aid(name), cpus=cpus, memory=memory), priority=5)
    slot.worker.running[aid(name)] = run
    if since_sample:
        slot.agent.placed(aid(name), memory)
    return run


GROUPS = """
groups:
  half: {match: {labels: ['pool:half']}, capacity: 50}
  shut: {match: {labels: ['pool:shut']}, blocked: true}
  gpu: {match: {labels: ['pool:gpu']}, capabilities: [cuda]}
"""

CASES: list[tuple[str, Check, Slot, Request, bool]] = [
    # What a pool config's groups add.
    ("capacity 50 exactly fits half", CpuReservation(), entry(cpus=4, group="half"),
     need(cpus=2), True),
    ("capacity 50 just over half", CpuReservation(), entry(cpus=4, group="half"),
     need(cpus=2.01), False),
    ("capacity 50 halves memory too", MemoryReservation(),
     entry(memory=4 * GIB, group="half"), need(memory=2 * GIB + 1), False),
    ("blocked group refuses", Open(), entry(group="shut"), need(), False),
    ("blocked group refuses zero-CPU work too", Open(), entry(group="shut"), need(cpus=0),
     False),
    ("capability offered by the group", BaseLabels(), entry(group="gpu"),
     need(labels=["cuda"]), True),
    ("capability of another group", BaseLabels(), entry(group="half"),
     need(labels=["cuda"]), False),
    ("own group's label offered", BaseLabels(), entry(group="gpu"),
     need(labels=["mesh-group:gpu"]), True),
    ("no group: the default group's label", BaseLabels(), entry(),
     need(labels=["mesh-group:default"]), True),
    ("another group's label (a pin elsewhere)", BaseLabels(), entry(group="gpu"),
     need(labels=["mesh-group:half"]), False),
    ("a preferred group is not required", BaseLabels(), entry(group="gpu"),
     need(provisionable_labels=["mesh-group:half"]), True),
    # The checks themselves.
    ("labels all offered", BaseLabels(), entry(labels=["os:linux", "vpn"]),
     need(labels=["vpn"]), True),
    ("label missing", BaseLabels(), entry(labels=["os:linux"]), need(labels=["vpn"]), False),
    ("no labels asked", BaseLabels(), entry(labels=["os:linux"]), need(), True),
    ("cpu exactly fits", CpuReservation(), entry(cpus=4), need(cpus=4), True),
    ("cpu one over", CpuReservation(), entry(cpus=4), need(cpus=4.5), False),
    ("fractional cpus fit", CpuReservation(), entry(cpus=0.3), need(cpus=0.3), True),
    ("memory exactly fits", MemoryReservation(), entry(memory=2 * GIB), need(memory=2 * GIB),
     True),
    ("memory one byte over", MemoryReservation(), entry(memory=2 * GIB),
     need(memory=2 * GIB + 1), False),
    ("drained refuses", Open(), entry(drained=True), need(), False),
    ("alive is open", Open(), entry(), need(), True),
    ("idle machine has room", LiveLoad(3.0), entry(cpus=4, cpu_percent=0), need(cpus=4), True),
    ("others just below the limit", LiveLoad(3.0, 90), entry(cpus=4, cpu_percent=89.9),
     need(cpus=1), True),
    ("others exactly at the limit saturate it", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=90), need(cpus=1), False),
    ("machine busy only with our attempts has room", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=100, mesh=100), need(cpus=1), True),
    ("ours and others together over the limit has room", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=100, mesh=40), need(cpus=1), True),
    ("others just below the limit beside ours", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=100, mesh=10.1), need(cpus=1), True),
    ("others exactly at the limit beside ours saturate it", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=100, mesh=10), need(cpus=1), False),
    ("ours measured above the total leaves nothing foreign", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=50, mesh=60), need(cpus=1), True),
    ("saturated machine still takes zero-CPU work", LiveLoad(3.0, 90),
     entry(cpus=4, cpu_percent=100), need(cpus=0), True),
    ("live memory exactly fits", LiveLoad(3.0), entry(available=GIB), need(memory=GIB), True),
    ("live memory short", LiveLoad(3.0), entry(available=GIB), need(memory=GIB + 1), False),
]


@pytest.mark.parametrize(("check", "slot", "asked", "passes"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_check(check: Check, slot: Slot, asked: Request, passes: bool) -> None:
    assert (check.reject(slot, asked, now=1.0) is None) is passes


@pytest.mark.parametrize(("slot", "asked"), [c[2:4] for c in CASES], ids=[c[0] for c in CASES])
def test_the_chain_decides_what_it_explains(slot: Slot, asked: Request) -> None:
    """The pass's answer is the first rejection the explanation lists, or none of them."""
    placer = Placer(3.0, 90)
    decided = placer.first_rejection(slot, asked, 1.0)
    explained = placer.explain([slot], asked, 1.0).rejections
    assert decided == (explained[0] if explained else None)


def test_reservations_count_against_capacity() -> None:
    slot = entry(cpus=4)
    reserve(slot, 3)
    assert CpuReservation().reject(slot, need(cpus=1), 0) is None
    assert CpuReservation().reject(slot, need(cpus=1.5), 0) is not None


def test_capacity_percent_scales_headroom() -> None:
    slot = entry(cpus=4)
    slot.agent.terms = replace(slot.agent.terms, capacity_percent=50)
    assert CpuReservation().reject(slot, need(cpus=2), 0) is None
    assert CpuReservation().reject(slot, need(cpus=2.5), 0) is not None


def test_stale_load_counts_as_no_room() -> None:
    slot = entry(loaded_at=0.0)
    check = LiveLoad(stale_after=3.0)
    assert check.reject(slot, need(), now=3.0) is None
    rejection = check.reject(slot, need(), now=3.5)
    assert rejection is not None and "stale" in rejection.detail


def test_a_saturated_machine_is_explained_by_the_load_that_is_not_ours() -> None:
    rejection = LiveLoad(3.0, 95).reject(entry(cpu_percent=99, mesh=2), need(cpus=1), 0)
    assert rejection is not None
    assert rejection.detail == "is saturated by other processes (CPU 97% not ours, limit 95%)"
    assert (rejection.requested, rejection.available) == (97, 95)


def test_memory_stays_strict_on_a_machine_busy_with_our_attempts() -> None:
    slot = entry(cpu_percent=100, mesh=100, available=GIB)
    assert LiveLoad(3.0).reject(slot, need(memory=GIB), 0) is None
    assert LiveLoad(3.0).reject(slot, need(memory=GIB + 1), 0) is not None


def test_memory_placed_since_the_sample_is_subtracted() -> None:
    slot = entry(available=4 * GIB)
    reserve(slot, 0, memory=3 * GIB)
    assert LiveLoad(3.0).reject(slot, need(memory=GIB), 0) is None
    assert LiveLoad(3.0).reject(slot, need(memory=GIB + 1), 0) is not None
    slot.agent.left(aid("other"))  # gone before any sample saw it
    assert LiveLoad(3.0).reject(slot, need(memory=4 * GIB), 0) is None
    reserve(slot, 0, memory=3 * GIB)
    slot.agent.take_load(load(available=4 * GIB), 0.5)  # a fresh sample sees it
    assert LiveLoad(3.0).reject(slot, need(memory=4 * GIB), 0.5) is None


def test_making_room_frees_the_victims_reservation_and_memory() -> None:
    slot = entry(cpus=1, available=GIB, cpu_percent=100)
    victim = reserve(slot, 1, memory=GIB, since_sample=False)  # the sample shows its use
    placer = Placer(3.0)
    assert placer.first_rejection(slot, need(cpus=1, memory=GIB), 0) is not None
    slot.freed = victim
    assert placer.first_rejection(slot, need(cpus=1, memory=2 * GIB), 0) is None, \
        "its CPU, its memory, and the saturation it causes go with it"
    assert placer.first_rejection(slot, need(cpus=1, memory=2 * GIB + 1), 0) is not None


def test_memory_granted_earlier_in_the_pass_counts() -> None:
    slot = entry(available=4 * GIB)
    slot.granted_memory = 3 * GIB
    assert LiveLoad(3.0).reject(slot, need(memory=GIB), 0) is None
    assert LiveLoad(3.0).reject(slot, need(memory=GIB + 1), 0) is not None


def test_explain_counts_every_failing_dimension() -> None:
    placer = Placer(3.0)
    pool = [entry(agent_id=f"n{i}", labels=["os:linux"]) for i in range(3)]
    vpn = entry(agent_id="v1", labels=["vpn"], cpus=4)
    reserve(vpn, 3)
    pool.append(vpn)
    reason = placer.explain(pool, need(labels=["vpn"], cpus=2), 0)
    assert not reason.unplaceable
    assert "3 agents lack `vpn`" in reason.summary
    assert "1 agent lacks 2 CPUs of headroom" in reason.summary


def test_explain_flags_unplaceable_when_no_machine_could_ever_take_it() -> None:
    placer = Placer(3.0)
    reason = placer.explain([entry(cpus=4), entry(cpus=2, agent_id="n2")], need(cpus=16), 0)
    assert reason.unplaceable
    assert reason.summary.startswith("unplaceable:")
    assert {r.agent_id for r in reason.rejections} == {"n1", "n2"}


def test_explain_with_no_agents_says_so() -> None:
    reason = Placer(3.0).explain([], need(), 0)
    assert not reason.unplaceable and "no agents" in reason.summary
