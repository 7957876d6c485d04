"""The live-load rule on a real cluster: the mesh's own CPU-bound work keeps its slots full,
while load from outside the mesh keeps new CPU work off the agent until it stops."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mesh import Action, Stage
from mesh.client import Client
from mesh.schema import ActionStatus, Load, MeshConfig
from mesh.waiting import wait_until
from tests.integration.cluster import start_mesh, stop_mesh

pytestmark = pytest.mark.integration

WORKER = {"num_cpus": 2, "labels": {"pool": "gate"}}
# One second of pure CPU, ended by wall time; timeout's 124 is the expected end.
BUSY = "timeout 1 sh -c 'while :; do :; done'; [ $? -eq 124 ]"
SPIN = ["sh", "-c", "while :; do :; done"]


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[tuple[Client, MeshConfig]]:
    """A head without an agent and one 2-CPU worker, with a state dir of this test's own."""
    cluster, config, _ = start_mesh(tmp_path, WORKER)
    try:
        client = Client()
        wait_until(client.pool, lambda p: len(p) == 1 and p[0].load is not None,
                   timeout=60, what="the agent reporting its load")
        yield client, config
    finally:
        stop_mesh(cluster)


def busy(n: int) -> list[Action]:
    return [Action(command=[BUSY], shell=True, cpus=1, labels=["pool:gate"]) for _ in range(n)]


def agent_load(client: Client) -> Load:
    [agent] = client.pool()
    assert agent.load is not None
    return agent.load


def test_outside_load_keeps_cpu_work_off_but_the_mesh_own_load_does_not(
        gate: tuple[Client, MeshConfig]) -> None:
    client, config = gate

    # The mesh's own CPU-bound work: both CPUs busy with it must not read as saturation.
    handles = client.submit_many(busy(6))
    polls: list[dict[str, int]] = []
    loads: list[Load] = []

    def counted() -> dict[str, int]:
        polls.append(client.counts())
        loads.append(agent_load(client))
        return polls[-1]

    wait_until(counted, lambda c: c.get("succeeded", 0) == 6, timeout=120,
               what="the six busy actions to succeed")
    # Every CPU-second of an attempt is counted as the mesh's, also once it has ended (its
    # parent, the agent or its spawn server, has reaped it): none reads as outside load.
    saturated_by_us = [(load.cpu_percent, load.mesh_cpu_percent) for load in loads
                       if load.foreign_cpu_percent >= config.cpu_busy_percent]
    assert not saturated_by_us, f"(CPU, the mesh's share) read as saturated: {saturated_by_us}"
    # The end of an attempt and the assignment that refills its slot happen in one
    # scheduler call, so a poll sees an assigned attempt in the slot, never an empty one.
    started = False
    for counts in polls:
        in_slots = counts.get("assigned", 0) + counts.get("running", 0)
        started = started or in_slots > 0
        if started and counts.get("queued", 0):
            assert in_slots == 2, f"a slot stood empty while work waited: {counts} in {polls}"
    assert all(h.result(timeout=10).stage is Stage.SUCCEEDED for h in handles)

    # Busy loops outside the mesh on every CPU: the agent takes no CPU work while they run.
    spinners = [subprocess.Popen(SPIN, start_new_session=True)
                for _ in range(psutil.cpu_count(logical=True) or 1)]
    try:
        saturated = wait_until(
            lambda: agent_load(client),
            lambda load: load.foreign_cpu_percent >= config.cpu_busy_percent,
            timeout=30, what="the agent reporting the outside load")
        [waiting] = client.submit_many(busy(1))

        def still_queued() -> tuple[ActionStatus, Load]:
            status = waiting.status()
            assert status.stage is Stage.QUEUED, f"it started beside the outside load: {status}"
            return status, agent_load(client)

        status, _ = wait_until(
            still_queued,
            lambda seen: seen[1].sampled_at >= saturated.sampled_at + 4 * config.load_interval,
            timeout=60, what="four more load reports while it waits")
        assert status.pending is not None
        assert "1 agent is saturated by other processes" in status.pending.summary, status.pending
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()
    assert waiting.result(timeout=60).stage is Stage.SUCCEEDED
