"""Agents and nodes die mid-action on a real cluster: every action still ends exactly once.

A cluster of its own: the tests kill agents and, last, a whole node.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.cluster_utils import Cluster

from mesh import Action, RetryPolicy, Stage
from mesh.client import ActionHandle, Client
from mesh.schema import ActionStatus
from mesh.waiting import wait_until
from tests.integration.cluster import start_mesh, stop_mesh, survivors

pytestmark = pytest.mark.integration

WORKER = {"num_cpus": 1, "labels": {"pool": "fail"}}


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Client]]:
    cluster, _, _ = start_mesh(Path(tmp_path_factory.mktemp("failures")),
                               WORKER, WORKER, WORKER)
    try:
        client = Client()
        wait_until(client.pool, lambda p: len(p) == 3 and all(a.load for a in p),
                   what="three agents reporting load")
        yield cluster, client
    finally:
        stop_mesh(cluster)


def agent_pid(client: Client, agent_id: str) -> int:
    [agent] = [a for a in client.pool() if a.info.agent_id == agent_id]
    return agent.info.pid


def test_an_agent_killed_mid_action_has_it_run_again_and_end_once(
        three: tuple[Cluster, Client]) -> None:
    _, client = three
    handle = client.submit(Action(command=["echo started; sleep 3; echo finished"],
                                  shell=True, labels=["pool:fail"]))
    first = wait_until(handle.status, lambda s: s.stage is Stage.RUNNING,
                       what="the first attempt running")
    victims = wait_until(lambda: survivors(handle.id), bool, what="its processes")
    assert first.agent_id is not None
    os.kill(agent_pid(client, first.agent_id), signal.SIGKILL)
    result = handle.result(timeout=90)
    assert result.stage is Stage.SUCCEEDED and result.attempt == 2
    assert result.attempts[0].outcome == "lost" and result.attempts[1].outcome is Stage.SUCCEEDED
    # The lost attempt's processes died with their agent; the second ran to its end.
    assert not set(victims) & set(survivors(handle.id))
    assert [line.text for line in handle.logs(attempt=2)] == ["started", "finished"]
    wait_until(client.pool, lambda p: len(p) == 3, what="the killed agent replaced")


# The nearest ancestor that is an agent (the parent is the agent's spawn server, where the
# machine gives attempts control groups).
KILL_MY_AGENT = ("p=$PPID; until [ \"$p\" -le 1 ] || tr '\\0' ' ' < /proc/$p/cmdline | "
                 "grep -q AgentActor; do p=$(awk '/^PPid:/ {print $2}' /proc/$p/status); "
                 "done; [ \"$p\" -gt 1 ] && kill -9 $p")


def test_an_action_that_kills_its_agents_is_quarantined_after_three(
        three: tuple[Cluster, Client]) -> None:
    _, client = three
    poison = client.submit(Action(command=[KILL_MY_AGENT + "; sleep 30"], shell=True,
                                  labels=["pool:fail"],
                                  retry=RetryPolicy(on_lost=30, quarantine_after=3)))
    result = poison.result(timeout=180)
    assert result.stage is Stage.FAILED and result.reason.startswith(
        "quarantined: lost with 3 different agents in a row"), result.reason
    assert all(a.outcome == "lost" for a in result.attempts)
    assert len({a.agent_id for a in result.attempts}) == 3
    wait_until(lambda: survivors(poison.id), lambda pids: not pids, what="no processes left")
    wait_until(client.pool, lambda p: len(p) == 3, what="every agent back")


def test_a_frozen_agent_gets_no_new_work_loses_none_and_is_trusted_when_it_thaws(
        three: tuple[Cluster, Client]) -> None:
    _, client = three
    agents = wait_until(client.pool, lambda p: len(p) == 3 and all(a.load for a in p),
                        what="three agents with load")
    busy = client.submit(Action(command=["sleep 4; echo survived"], shell=True,
                                labels=["pool:fail"]))
    running = wait_until(busy.status, lambda s: s.stage is Stage.RUNNING, what="it running")
    frozen = running.agent_id
    assert frozen is not None
    pid = agent_pid(client, frozen)
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing and reports no load
    try:
        # Its load goes stale: new work goes elsewhere, nothing of its own is rescheduled.
        wait_until(client.pool, lambda p: any(
            a.info.agent_id == frozen and (a.load_age or 0) > 3.5 for a in p),
            what="the frozen agent's load gone stale")
        others = [client.submit(Action(command=["true"], labels=["pool:fail"]))
                  for _ in range(4)]
        assert {h.result(timeout=60).agent_id for h in others} <= \
            {a.info.agent_id for a in agents} - {frozen}
        assert busy.status().attempt == 1 and busy.status().stage is Stage.RUNNING
    finally:
        os.kill(pid, signal.SIGCONT)
        thawed = time.time()
    result = busy.result(timeout=60)
    assert result.stage is Stage.SUCCEEDED and result.attempt == 1 and result.agent_id == frozen
    # (Not every agent's load at once: an idle agent sends one only every load_heartbeat.)
    wait_until(client.pool, lambda p: any(
        a.info.agent_id == frozen and a.load is not None and a.load.sampled_at > thawed
        for a in p), what="the thawed agent reporting its load again")
    # Trusted again: work lands on it when it is the only one with room.
    sleepers = [client.submit(Action(command=["sleep", "2"], labels=["pool:fail"]))
                for _ in range(3)]
    placed = {wait_until(h.status, lambda s: s.agent_id is not None,
                         what="placed").agent_id for h in sleepers}
    assert frozen in placed
    for h in sleepers:
        assert h.result(timeout=60).stage is Stage.SUCCEEDED


def running_on_a_node(cluster: Cluster, client: Client,
                      ) -> tuple[ActionHandle, ActionStatus, Any]:
    """A short action, once it runs, and the Ray node under its agent."""
    handle = client.submit(Action(command=["sleep 2; echo done"], shell=True,
                                  labels=["pool:fail"]))
    first = wait_until(handle.status, lambda s: s.stage is Stage.RUNNING,
                       what="the first attempt running")
    [node] = [n for n in cluster.worker_nodes if n.node_id == first.agent_id]
    return handle, first, node


# Last: these two take nodes away for good.
def test_a_killed_raylet_takes_its_node_and_the_action_runs_on_another(
        three: tuple[Cluster, Client]) -> None:
    cluster, client = three
    before = len(client.pool())
    handle, first, node = running_on_a_node(cluster, client)
    node.kill_raylet()  # only the raylet: Ray's health checks declare the node dead
    result = handle.result(timeout=90)
    assert result.stage is Stage.SUCCEEDED and result.attempt == 2
    assert result.agent_id != first.agent_id and result.attempts[0].outcome == "lost"
    wait_until(client.pool, lambda p: len(p) == before - 1, what="its agent gone")
    wait_until(lambda: survivors(handle.id), lambda pids: not pids, what="no processes left")


def test_a_sigkilled_node_has_its_action_run_again_on_another(
        three: tuple[Cluster, Client]) -> None:
    cluster, client = three
    before = len(client.pool())
    handle, first, node = running_on_a_node(cluster, client)
    cluster.remove_node(node, allow_graceful=False)
    result = handle.result(timeout=90)
    assert result.stage is Stage.SUCCEEDED and result.attempt == 2
    assert result.agent_id != first.agent_id
    assert "its node is dead" in result.attempts[0].reason or \
        "lost" in result.attempts[0].reason
    wait_until(client.pool, lambda p: len(p) == before - 1, what="the dead node's agent gone")
