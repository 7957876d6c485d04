"""Small fluent builders for actions, agents and loads used across the tests."""

from __future__ import annotations

from typing import Any

from mesh.schema import Action, ActionId, AgentId, AgentInfo, AttemptReport, Load, ReportStage

GIB = 2**30


def action(action_id: str = "a1", **fields: Any) -> Action:
    fields.setdefault("command", ["true"])
    return Action(id=ActionId(action_id), **fields)


def agent(agent_id: str = "n1", cpus: float = 4, memory: int = 8 * GIB,
          labels: list[str] | None = None) -> AgentInfo:
    return AgentInfo(agent_id=AgentId(agent_id), node_id=agent_id, hostname=f"host-{agent_id}",
                     address="127.0.0.1", labels=labels or ["os:linux"], cpus=cpus,
                     memory=memory, pid=1, started_at=0.0)


def load(cpu_percent: float = 0.0, cpus: int = 4, available: int = 8 * GIB,
         at: float = 0.0, mesh: float = 0.0) -> Load:
    """`mesh`: the share of `cpu_percent` the agent's own attempts used."""
    return Load(cpu_percent=cpu_percent, mesh_cpu_percent=mesh, cpu_count=cpus,
                memory_total=available,
                memory_used=0, memory_available=available, sampled_at=at)


def report(action_id: str, attempt: int, agent_id: str, stage: ReportStage, time: float = 0.0,
           exit_code: int | None = None) -> AttemptReport:
    return AttemptReport(action_id=ActionId(action_id), attempt=attempt,
                         agent_id=AgentId(agent_id), stage=stage, time=time,
                         exit_code=exit_code)
