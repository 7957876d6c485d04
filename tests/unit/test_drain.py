"""Draining an agent: no new work, running work finishes, then drained; by id or hostname;
kept across a restart of the scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.errors import Conflict, NotFound
from mesh.schema import AgentInfo, MeshEvent
from mesh.stages import Stage
from scheduler.core.decisions import Assign
from scheduler.core.state import SchedulerState
from scheduler.store import Store
from tests.builders import action, agent, aid, load, nid, report


def two_agents() -> SchedulerState:
    core = SchedulerState(stale_after=1e9)
    for name in ("n1", "n2"):
        core.agent_joined(agent(name, cpus=1, labels=["os:linux", f"at:{name}"]), 0)
        core.load(nid(name), load(), 0)
    return core


def state_of(core: SchedulerState, agent_id: str, now: float) -> str:
    return next(s.state for s in core.pool(now) if s.info.agent_id == agent_id)


def test_a_drained_agent_finishes_its_work_takes_no_more_then_reads_drained() -> None:
    core = two_agents()
    core.submit([action("r", labels=["at:n1"])], 1)
    assert [d.agent_id for d in core.step(1) if isinstance(d, Assign)] == ["n1"]
    core.report(report("r", 1, "n1", "running"), 2)
    status = core.drain("n1", 3)
    assert status.state == "draining" and len(status.running) == 1
    core.submit([action("waits", labels=["at:n1"]), action("elsewhere")], 4)
    assert [(d.action_id, d.agent_id) for d in core.step(4) if isinstance(d, Assign)] == [
        ("elsewhere", "n2")]
    pending = core.get(aid("waits"), 4).pending
    assert pending is not None and "drained" in pending.summary, pending
    core.report(report("r", 1, "n1", "succeeded", exit_code=0), 5)
    assert core.get(aid("r"), 5).stage is Stage.SUCCEEDED, "its running work finished"
    assert core.step(5) == []
    assert state_of(core, "n1", 5) == "drained"
    assert core.drain("n1", 6, drained=False).state == "alive"
    assert [(d.action_id, d.agent_id) for d in core.step(6) if isinstance(d, Assign)] == [
        ("waits", "n1")]


def test_an_agent_is_named_by_id_or_by_a_hostname_only_it_has() -> None:
    core = two_agents()
    assert core.find_agent("n2") == "n2"
    assert core.find_agent("host-n2") == "n2"
    with pytest.raises(NotFound, match="nowhere"):
        core.find_agent("nowhere")
    twin = AgentInfo(**{**agent("n3").model_dump(), "hostname": "host-n2"})
    core.agent_joined(twin, 1)
    with pytest.raises(Conflict, match="n2, n3"):
        core.drain("host-n2", 1)
    assert state_of(core, "n2", 1) == "alive", "an ambiguous name drains nothing"


def test_a_drain_is_in_the_event_log_and_survives_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = two_agents()
    core.drain("n1", 1)
    core.drain("n2", 2)
    core.drain("n2", 3, drained=False)
    with core.writing() as changes:
        drains = [e for e in changes.events if isinstance(e, MeshEvent)
                  and e.kind.startswith("agent_") and "drain" in e.kind]
        store.write(changes)
    assert [(e.kind, e.agent_id) for e in drains] == [
        ("agent_drained", "n1"), ("agent_drained", "n2"), ("agent_undrained", "n2")]
    store.close()
    restarted = SchedulerState(stale_after=1e9)
    restarted.restore(Store(tmp_path).load(), 10)
    for name in ("n1", "n2"):
        restarted.agent_joined(agent(name, cpus=1), 10)
    assert state_of(restarted, "n1", 10) == "drained"
    assert state_of(restarted, "n2", 10) == "alive"
