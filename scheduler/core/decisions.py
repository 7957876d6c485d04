"""Decisions the core returns as values for the actor shell to persist and carry out."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.schema import FREE_BUCKET, ActionId, AgentId, Priority


@dataclass(frozen=True, slots=True)
class Assign:
    """Start `attempt` of the action on the agent."""

    action_id: ActionId
    attempt: int
    agent_id: AgentId
    time: float
    priority: Priority = FREE_BUCKET


@dataclass(frozen=True, slots=True)
class Stop:
    """Kill the attempt's process tree on the agent (cancel, or a superseded attempt)."""

    action_id: ActionId
    attempt: int
    agent_id: AgentId
    reason: str


Decision = Assign | Stop
