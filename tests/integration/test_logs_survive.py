"""Logs outlive restarts: a relay killed after actions finished still serves every line of
their logs, and so does a new cluster's mesh over the same state dir."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from mesh import Stage, names
from mesh.bootstrap import actor_pid
from mesh.client import Client
from mesh.schema import Action
from mesh.waiting import wait_until
from tests.integration.cluster import SMALL, start_mesh, stop_mesh, tear_down

pytestmark = pytest.mark.integration

LINES = 3000


def printing(n: int) -> Action:
    return Action(command=["sh", "-c", f"seq 1 {LINES} | sed 's/^/{n}-/'"], shell=False)


def restarted_relay() -> int | None:
    try:
        return actor_pid(names.RELAY)
    except ValueError:  # between its death and its restart
        return None


def every_line(client: Client, action_id: str) -> list[str]:
    return [line.text for line in client.handle(action_id).logs()]


def test_logs_of_finished_actions_outlive_a_relay_kill_and_a_head_restart(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    # A small memory budget: some lines were spilled while the actions ran, the rest only
    # when they ended; both must come back.
    cluster, _, _ = start_mesh(state, SMALL, relay_memory_bytes=1 << 20)
    try:
        client = Client()
        done = [h.id for h in client.submit_many([printing(n) for n in range(4)])]
        wait_until(lambda: [client.get(a).stage for a in done],
                   lambda stages: all(s is Stage.SUCCEEDED for s in stages), timeout=120,
                   what="the printing actions to finish")
        expected = {a: [f"{n}-{i}" for i in range(1, LINES + 1)] for n, a in enumerate(done)}
        assert {a: every_line(client, a) for a in done} == expected

        relay = actor_pid(names.RELAY)
        os.kill(relay, signal.SIGKILL)
        wait_until(restarted_relay, lambda pid: pid not in (None, relay), timeout=60,
                   what="Ray restarting the relay")
        assert {a: every_line(client, a) for a in done} == expected, "lost with the relay"
    except BaseException:
        stop_mesh(cluster)
        raise
    tear_down(cluster)  # the head dies: nothing of the mesh is told

    cluster, _, _ = start_mesh(state, SMALL)
    try:
        client = Client()
        assert client.get(done[0]).stage is Stage.SUCCEEDED
        assert {a: every_line(client, a) for a in done} == expected, "lost with the head"
    finally:
        stop_mesh(cluster)
