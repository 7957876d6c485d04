"""A real multi-node Ray cluster with the mesh on it, shared by a module's tests.

Module scope, because Ray allows one cluster connection per process and some modules need a
cluster of their own shape (no agents at all, nodes that get killed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from mesh import bootstrap, names
from mesh.client import Client
from mesh.schema import MeshConfig

# The head carries no agent, so what runs where is decided by the two workers alone:
# `big` offers 2 CPUs and `vpn`, `small` offers 1 CPU and `arch:arm64`-like `pool:small`.
HEAD = {"num_cpus": 1, "labels": {names.AGENT_OPT_OUT: "off"},
        "_system_config": bootstrap.health_checks()}
BIG = {"num_cpus": 2, "labels": {"vpn": "", "pool": "big"}}
SMALL = {"num_cpus": 1, "labels": {"pool": "small"}}


@dataclass
class Mesh:
    cluster: Cluster
    client: Client
    config: MeshConfig
    big_id: str
    small_id: str


def start_mesh(tmp: Path, *workers: dict[str, Any]) -> tuple[Cluster, MeshConfig, list[str]]:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    cluster = Cluster(initialize_head=True, head_node_args=dict(HEAD))
    node_ids = [cluster.add_node(**w).node_id for w in workers]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=names.NAMESPACE, log_to_driver=False)
    config = MeshConfig(state_dir=str(tmp), kill_grace=2.0)
    bootstrap.up(config)
    return cluster, config, node_ids


def stop_mesh(cluster: Cluster) -> None:
    try:
        bootstrap.down(stop_cluster=False)
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    cluster, config, (big, small) = start_mesh(tmp_path_factory.mktemp("mesh"), BIG, SMALL)
    try:
        client = Client()
        yield Mesh(cluster, client, config, big, small)
    finally:
        stop_mesh(cluster)
