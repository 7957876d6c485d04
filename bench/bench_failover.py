"""Failover: from an agent's or a node's death to its action running again elsewhere.

On a local multi-node cluster (head without an agent, health checks 1000/1000/3):
- an agent actor SIGKILLed: time until the action's next attempt runs (target < 0.5 s);
- a node SIGKILLed: time until Ray declares it dead, measured in the same run, and time
  until the action runs again; the mesh's overhead is the difference (target < 0.5 s).
Times are wall-clock on this one machine: the kill is stamped here, the new attempt's start
by the agent that runs it.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from functools import partial
from typing import Any

import ray
from ray.cluster_utils import Cluster

from bench.harness import cluster_mesh, report
from mesh import Action, Stage
from mesh.client import Client
from mesh.schema import ActionStatus
from mesh.waiting import wait_until

WORKER: dict[str, Any] = {"num_cpus": 1, "labels": {"pool": "failover"}}
ROUNDS = 5


def _running(client: Client, action_id: str, attempt: int) -> ActionStatus:
    return wait_until(lambda: client.get(action_id),
                      lambda s: s.attempt == attempt and s.stage is Stage.RUNNING,
                      timeout=60, interval=0.005, what=f"attempt {attempt} running")


def _restarted_at(client: Client, action_id: str) -> float:
    status = _running(client, action_id, 2)
    started = status.attempts[-1].started_at
    assert started is not None
    return started


def agent_kill(client: Client) -> list[float]:
    gaps = []
    for _ in range(ROUNDS):
        handle = client.submit(Action(command=["sleep", "60"], labels=["pool:failover"]))
        first = _running(client, handle.id, 1)
        [agent] = [a for a in client.pool() if a.info.agent_id == first.agent_id]
        wait_until(client.pool, lambda p: len(p) == 2 and all(a.load for a in p), timeout=60)
        killed = time.time()
        os.kill(agent.info.pid, signal.SIGKILL)
        gaps.append(_restarted_at(client, handle.id) - killed)
        handle.cancel()
        wait_until(partial(client.get, handle.id), lambda s: s.stage is Stage.CANCELLED,
                   timeout=60)
    return gaps


def _declared_dead(node_id: str, nodes: list[dict[str, Any]]) -> bool:
    return any(n["NodeID"] == node_id and not n["Alive"] for n in nodes)


def node_kill(cluster: Cluster, client: Client) -> tuple[list[float], list[float]]:
    detected, restarted = [], []
    for _ in range(3):
        handle = client.submit(Action(command=["sleep", "60"], labels=["pool:failover"]))
        first = _running(client, handle.id, 1)
        [node] = [n for n in cluster.worker_nodes if n.node_id == first.agent_id]
        cluster.add_node(**WORKER)  # a place to run again, and the next round's victim
        wait_until(client.pool, lambda p: len(p) == 3 and all(a.load for a in p), timeout=60)
        killed = time.time()
        cluster.remove_node(node, allow_graceful=False)
        wait_until(ray.nodes, partial(_declared_dead, node.node_id), timeout=60, interval=0.02)
        detected.append(time.time() - killed)
        restarted.append(_restarted_at(client, handle.id) - killed)
        handle.cancel()
    return detected, restarted


def main() -> None:
    with cluster_mesh(WORKER) as (cluster, client):
        agents = agent_kill(client)
        detected, restarted = node_kill(cluster, client)
    print(f"agent SIGKILL -> running again: median {statistics.median(agents) * 1e3:.0f} ms, "
          f"max {max(agents) * 1e3:.0f} ms over {len(agents)} (target < 500 ms)")
    overhead = [r - d for r, d in zip(restarted, detected, strict=True)]
    print(f"node SIGKILL: Ray declares it dead after median {statistics.median(detected):.2f}s;"
          f" the action runs again after {statistics.median(restarted):.2f}s; mesh overhead "
          f"median {statistics.median(overhead) * 1e3:.0f} ms, max {max(overhead) * 1e3:.0f} ms"
          " (target < 500 ms)")
    report("node death to running again", statistics.median(restarted),
           statistics.median(detected), "s", "overhead < 0.5 s", higher_is_better=False)


if __name__ == "__main__":
    main()
