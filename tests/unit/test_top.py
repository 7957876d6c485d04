"""`mesh top`'s frame, drawn from one snapshot: agents with their bars and reservations,
and the queue by account and priority."""

from __future__ import annotations

from rich.console import Console

from mesh.schema import (
    FREE_BUCKET,
    AccountConfig,
    AccountId,
    AccountStatus,
    AgentStatus,
    RunningAttempt,
)
from mesh.stages import Stage
from mesh.top import Snapshot, frame
from tests.builders import GIB, agent, aid, load


def shown(snapshot: Snapshot) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(frame(snapshot))
    return console.export_text()


def test_a_frame_shows_each_agent_and_the_queue() -> None:
    busy = AgentStatus(
        info=agent("n1", cpus=4), state="alive", capacity_percent=50.0,
        load=load(cpu_percent=95.0, cpus=4, available=2 * GIB), reserved_cpus=2.0,
        reserved_memory=GIB, link="stream",
        running=[RunningAttempt(action_id=aid(f"action{i:02d}xyz"), attempt=1,
                                stage=Stage.RUNNING, cpus=0.5, memory=0) for i in range(4)])
    quiet = AgentStatus(info=agent("n2", cpus=2), state="suspect", capacity_percent=100.0,
                        load=None, reserved_cpus=0.0, reserved_memory=0, running=[])
    team = AccountStatus(id=AccountId("team"), config=AccountConfig(), balance=[0.0] * 5,
                         running=3, queued_by_priority={0: 2, FREE_BUCKET: 7})
    text = shown(Snapshot([quiet, busy], [team], {"queued": 9, "running": 4}, 0.0))
    lines = text.splitlines()
    assert "2 agent(s); queued 9, running 4" in lines[0]
    n1 = next(line for line in lines if line.startswith("host-n1"))
    assert "alive" in n1 and " 95%" in n1 and "2/2 CPUs" in n1, n1
    assert "action00#1" in n1 and "+1" in n1 and "stream" in n1
    n2 = next(line for line in lines if line.startswith("host-n2"))
    assert "suspect" in n2 and "0/2 CPUs" in n2 and "ray" in n2, n2
    assert lines.index(n2) > lines.index(n1), "agents in hostname order"
    team_row = next(line for line in lines if line.startswith("team")).split()
    assert team_row == ["team", "2", ".", ".", ".", ".", "7", "3"]


def test_an_empty_mesh_draws() -> None:
    text = shown(Snapshot([], [], {}, 0.0))
    assert "0 agent(s); no actions" in text and "queue by account" in text
