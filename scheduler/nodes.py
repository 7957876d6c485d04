"""Which Ray nodes should carry an agent, read from `ray.nodes()` records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh import names


@dataclass(frozen=True)
class NodeView:
    node_id: str
    alive: bool
    is_head: bool
    labels: Mapping[str, str]

    @property
    def opted_out(self) -> bool:
        return self.labels.get(names.AGENT_OPT_OUT, "").lower() in ("off", "false", "no", "0")


def parse_nodes(records: Iterable[Mapping[str, Any]]) -> list[NodeView]:
    """Turn `ray.nodes()` records into views; Ray lists a dead node until it is forgotten."""
    views = []
    for record in records:
        resources = record.get("Resources") or {}
        views.append(NodeView(
            node_id=str(record["NodeID"]),
            alive=bool(record.get("Alive")),
            is_head=names.HEAD_RESOURCE in resources,
            labels=dict(record.get("Labels") or {}),
        ))
    return views


def wanted(nodes: Iterable[NodeView], head_agent: bool) -> set[str]:
    """Ids of the alive nodes that should each run one agent."""
    return {
        n.node_id for n in nodes
        if n.alive and not n.opted_out and (head_agent or not n.is_head)
    }


def alive(nodes: Iterable[NodeView]) -> set[str]:
    return {n.node_id for n in nodes if n.alive}
