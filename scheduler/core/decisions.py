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
    """Kill the attempt's process tree on the agent (cancel, or a superseded attempt).

    `held_only`: drop the start only if the agent still holds it for a slot (it reports
    the attempt withdrawn then); one that started runs on, and the scheduler keeps it.
    """

    action_id: ActionId
    attempt: int
    agent_id: AgentId
    reason: str
    held_only: bool = False


Decision = Assign | Stop
