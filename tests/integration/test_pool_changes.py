"""With zero agents actions wait; a node that joins gets an agent and runs them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ray.cluster_utils import Cluster

from mesh import Action, Stage
from mesh.client import Client
from mesh.waiting import wait_until
from tests.integration.cluster import start_mesh, stop_mesh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def empty_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster, _, _ = start_mesh(tmp_path_factory.mktemp("empty"))
    try:
        yield cluster
    finally:
        stop_mesh(cluster)


def test_actions_wait_with_zero_agents_then_run_when_a_node_joins(empty_mesh: Cluster) -> None:
    client = Client()
    assert client.pool() == []
    handle = client.submit(Action(command=["echo", "hello"]))
    status = handle.status()
    assert status.stage is Stage.QUEUED
    assert status.pending is not None and "no agents" in status.pending.summary
    node = empty_mesh.add_node(num_cpus=1, labels={"pool": "late"})
    result = handle.result(timeout=60)
    assert result.ok and result.agent_id == node.node_id
    assert [line.text for line in handle.logs()] == ["hello"]
    empty_mesh.remove_node(node, allow_graceful=True)
    wait_until(client.pool, lambda p: p == [], timeout=30, what="the agent leaving the pool")
