"""What every benchmark shares: a fresh local mesh, the scheduler's process, percentiles, and
the ratio printout."""

from __future__ import annotations

import compileall
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

import agent
import mesh
import scheduler
from mesh import bootstrap, names
from mesh.client import Client
from mesh.schema import MeshConfig
from mesh.waiting import wait_until


def byte_compiled() -> None:
    """Compile the project's modules as an installed package has them. An editable install
    run with PYTHONDONTWRITEBYTECODE (as on the benchmark machine) otherwise compiles them
    from source in every new Ray worker, which a restarted scheduler pays on each restart."""
    for package in (mesh, agent, scheduler):
        compileall.compile_dir(Path(str(package.__file__)).parent, quiet=1)


@contextmanager
def local_mesh(num_cpus: int = 2, config: MeshConfig | None = None, **settings: Any,
               ) -> Iterator[Client]:
    """A new single-node Ray cluster in this process with the mesh up on it (with `config`,
    else the defaults with `settings` in a state dir of its own)."""
    byte_compiled()
    with tempfile.TemporaryDirectory(prefix="meshbench-") as state:
        # address="local": always a new cluster, never one another process left running
        # on a shared machine (ray.init would join that one).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 namespace=names.NAMESPACE, log_to_driver=False,
                 _system_config=bootstrap.health_checks())
        try:
            bootstrap.up(config or MeshConfig(state_dir=state, **settings))
            client = Client()
            wait_until(client.pool, lambda p: bool(p) and all(a.load for a in p), timeout=60,
                       interval=0.1, what="the agents reporting their load")
            yield client
        finally:
            bootstrap.down(stop_cluster=False)
            ray.shutdown()


@contextmanager
def cluster_mesh(worker: dict[str, Any], workers: int = 2) -> Iterator[tuple[Cluster, Client]]:
    """A new multi-node cluster (the head without an agent, health checks 1000/1000/3)
    with the mesh up and every agent reporting its load."""
    head = {"num_cpus": 0, "labels": {names.AGENT_OPT_OUT: "off"},
            "_system_config": bootstrap.health_checks()}
    byte_compiled()
    with tempfile.TemporaryDirectory(prefix="meshbench-") as state:
        cluster = Cluster(initialize_head=True, head_node_args=head)
        for _ in range(workers):
            cluster.add_node(**worker)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=names.NAMESPACE, log_to_driver=False)
        try:
            bootstrap.up(MeshConfig(state_dir=state))
            client = Client()
            wait_until(client.pool, lambda p: len(p) == workers and all(a.load for a in p),
                       timeout=60, interval=0.1, what="every agent reporting its load")
            yield cluster, client
        finally:
            bootstrap.down(stop_cluster=False)
            ray.shutdown()
            cluster.shutdown()  # type: ignore[no-untyped-call]


def scheduler_pid() -> int:
    return bootstrap.actor_pid(names.SCHEDULER)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(name: str, ours: float, baseline: float, unit: str, target: str,
           higher_is_better: bool = True) -> float:
    ratio = ours / baseline if baseline else float("inf")
    print(f"{name}: mesh {ours:,.1f} {unit} vs baseline {baseline:,.1f} {unit} "
          f"-> ratio {ratio:.2f} ({'higher' if higher_is_better else 'lower'} is better; "
          f"target {target})")
    return ratio
