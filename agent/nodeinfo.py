"""What an agent offers: its labels and resources, read from its Ray node's entry (no Ray here)."""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping
from typing import Any

from mesh.names import LABEL_PREFIX, RAY_LABEL_PREFIX
from mesh.schema import check_label

log = logging.getLogger(__name__)


def automatic_labels(system: str | None = None, machine: str | None = None) -> list[str]:
    """`os:<system>` and `arch:<machine>` of this machine, e.g. `os:linux`, `arch:x86_64`."""
    system = (system if system is not None else platform.system()).lower()
    machine = (machine if machine is not None else platform.machine()).lower()
    return [label for label in (f"os:{system}", f"arch:{machine}") if _valid(label)]


def node_labels(ray_labels: Mapping[str, str]) -> list[str]:
    """The node's Ray labels as action labels: `key:value`, or `key` when the value is "".

    Ray's own labels (`ray.io/...`) and the mesh's steering labels (`actionmesh/...`) are not
    offered; a label our grammar refuses is dropped with a warning rather than failing the
    agent's registration.
    """
    labels: list[str] = []
    for key, value in ray_labels.items():
        if key.startswith((RAY_LABEL_PREFIX, LABEL_PREFIX)):
            continue
        label = f"{key}:{value}" if value != "" else key
        if _valid(label):
            labels.append(label)
    return labels


def _valid(label: str) -> bool:
    try:
        check_label(label)
    except ValueError as exc:
        log.warning("not offering label: %s", exc)
        return False
    return True


def find_node(nodes: list[dict[str, Any]], node_id: str) -> dict[str, Any]:
    """This node's entry in `ray.nodes()`; KeyError if Ray does not list it."""
    for node in nodes:
        if node.get("NodeID") == node_id:
            return node
    raise KeyError(f"Ray lists no node {node_id!r}")


def offered(node: Mapping[str, Any]) -> tuple[float, int, list[str]]:
    """(CPUs, memory bytes, labels) an agent on this node offers.

    A node started with no CPUs has no "CPU" resource at all: it offers 0.
    """
    resources: Mapping[str, float] = node.get("Resources") or {}
    labels = sorted(set(automatic_labels()) | set(node_labels(node.get("Labels") or {})))
    return float(resources.get("CPU", 0.0)), int(resources.get("memory", 0)), labels
