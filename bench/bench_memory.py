"""Memory: PSS of the mesh's actors with 2 idle agents, beside the bare Ray processes."""

from __future__ import annotations

import os
import tempfile
import time

import psutil
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from mesh import bootstrap, names
from mesh.client import Client
from mesh.schema import MeshConfig

MESH_CLASSES = {"SchedulerActor", "LogRelay", "AgentActor"}


def pss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_full_info().pss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def ray_pids() -> set[int]:
    """Every process of the local Ray cluster (not this driver)."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and ("ray" in cmd and ("/ray/" in cmd or "raylet" in cmd
                                                           or "gcs_server" in cmd)):
            found.add(proc.pid)
    return found


def with_children(pids: set[int]) -> set[int]:
    out = set(pids)
    for pid in pids:
        try:
            out.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return out


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "_system_config": bootstrap.health_checks()})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=names.NAMESPACE, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as state:
            bootstrap.up(MeshConfig(state_dir=state))
            client = Client()
            deadline = time.monotonic() + 60
            while len([a for a in client.pool() if a.load]) < 2:
                assert time.monotonic() < deadline, "two agents never reported"
                time.sleep(0.2)
            time.sleep(3)  # let start-up garbage settle before measuring idle memory
            actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
                      if a.class_name in MESH_CLASSES]
            assert len([a for a in actors if a.class_name == "AgentActor"]) == 2
            mesh_pids = with_children({int(a.pid or 0) for a in actors})
            ray_only = ray_pids() - mesh_pids
            mesh_pss = sum(pss(p) for p in mesh_pids)
            ray_pss = sum(pss(p) for p in ray_only)
            mib = 2**20
            print(f"memory (2 idle agents): mesh actors {mesh_pss / mib:.0f} MiB PSS in "
                  f"{len(mesh_pids)} processes; bare Ray {ray_pss / mib:.0f} MiB PSS in "
                  f"{len(ray_only)} processes -> ratio {mesh_pss / ray_pss:.2f}")
            for a in actors:
                print(f"  {a.class_name:15s} pid {a.pid}: {pss(int(a.pid or 0)) / mib:.0f} MiB")
            bootstrap.down(stop_cluster=False)
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
