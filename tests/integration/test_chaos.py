"""Chaos: 300 short actions while agents, a node and the scheduler are killed at seeded points.

Afterwards every action is in exactly one final stage, its events tell its story in order,
and nothing of any attempt is left running. A cluster of its own: it loses a node.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
from ray.cluster_utils import Cluster

from mesh import Action, RetryPolicy, Stage
from mesh.client import ActionHandle, Client
from mesh.names import ENV_ACTION
from mesh.schema import ActionStatus
from mesh.stages import TERMINAL
from mesh.waiting import wait_until
from tests.integration.cluster import runs, scheduler_pid, start_mesh, stop_mesh

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("CHAOS_SEED", "20261123"))
ACTIONS = 300
WORKER: dict[str, Any] = {"num_cpus": 2, "labels": {"pool": "chaos"}}
KILLS = ["agent", "agent", "scheduler", "scheduler", "node"]


def attempt_processes() -> Counter[str]:
    """Live processes per action id, found by the id every attempt carries in its env."""
    found: Counter[str] = Counter()
    for proc in psutil.process_iter(["pid"]):
        try:
            action_id = proc.environ().get(ENV_ACTION)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if action_id:
            found[action_id] += 1
    return found


class Chaos:
    """Carries out the seeded kills, noting what it did."""

    def __init__(self, cluster: Cluster, client: Client, rng: random.Random) -> None:
        self.cluster, self.client, self.rng = cluster, client, rng
        self.done: list[str] = []

    def kill(self, kind: str) -> None:
        if kind == "scheduler":
            os.kill(scheduler_pid(), signal.SIGKILL)
            self.done.append("scheduler")
        elif kind == "agent":
            agents = [a for a in self.client.pool() if a.info.pid]
            victim = self.rng.choice(sorted(agents, key=lambda a: a.info.agent_id))
            os.kill(victim.info.pid, signal.SIGKILL)
            self.done.append(f"agent {victim.info.agent_id[:8]}")
        else:
            workers = [n for n in self.cluster.worker_nodes]
            victim = self.rng.choice(sorted(workers, key=lambda n: n.node_id))
            self.cluster.remove_node(victim, allow_graceful=False)
            self.cluster.add_node(**WORKER)  # the fleet replaces the machine
            self.done.append(f"node {victim.node_id[:8]}")


def ended(client: Client) -> int:
    counts = client.counts()
    return sum(counts[s.value] for s in TERMINAL)


def at_least(n: int) -> Callable[[int], bool]:
    return lambda seen: seen >= n


def check_story(status: ActionStatus, handle: ActionHandle) -> None:
    story = list(handle.events(follow=False))
    assert [e.seq for e in story] == list(range(1, len(story) + 1)), status.id
    assert story[0].reason == "accepted", story[0]
    assert story[-1].stage is status.stage and all(
        e.stage not in TERMINAL for e in story[:-1])
    assert sum(e.stage is Stage.ASSIGNED for e in story) == len(status.attempts), status.id


def test_every_action_ends_once_through_seeded_chaos(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    log = tmp_path / "runs"
    cluster, _, _ = start_mesh(tmp_path / "state", WORKER, WORKER, WORKER)
    try:
        client = Client()
        wait_until(client.pool, lambda p: len(p) == 3 and all(a.load for a in p),
                   what="three agents reporting load")
        specs = [Action(id=f"c{i:03d}", shell=True, labels=["pool:chaos"],
                        command=[f"sleep {rng.uniform(0.05, 0.4):.2f}; echo c{i:03d} >> {log}"],
                        retry=RetryPolicy(on_lost=10, quarantine_after=6))
                 for i in range(ACTIONS)]
        # Each kill strikes once a seeded number of actions has ended: points in the run
        # rather than in time, so a slow machine sees the same chaos as a fast one.
        plan = sorted((rng.randint(10, ACTIONS - 40), kind) for kind in KILLS)
        chaos = Chaos(cluster, client, rng)
        handles: list[ActionHandle] = []

        def submit() -> None:  # in batches, so submissions meet a restarting scheduler too
            for batch in range(3):
                wait_until(partial(ended, client), at_least(batch * 75),
                           timeout=120, what=f"actions ended before batch {batch + 1}")
                handles.extend(client.submit_many(specs[batch * 100:(batch + 1) * 100]))

        # Ray's test cluster adds and removes nodes only from the main thread.
        submitter = threading.Thread(target=submit)
        submitter.start()
        for after, kind in plan:
            wait_until(partial(ended, client), at_least(after), timeout=120,
                       interval=0.05, what=f"{after} actions ended before killing a {kind}")
            chaos.kill(kind)
        submitter.join()
        assert len(handles) == ACTIONS
        print("chaos:", ", ".join(chaos.done))

        final = wait_until(lambda: [client.get(h.id) for h in handles],
                           lambda ss: all(s.done for s in ss), timeout=240,
                           what="every action in a final stage")
        stuck = {s.id: (s.stage, s.reason) for s in final if s.stage is not Stage.SUCCEEDED}
        assert not stuck, stuck
        ran = Counter(runs(log))
        for status, handle in zip(final, handles, strict=True):
            assert [a.outcome for a in status.attempts].count(Stage.SUCCEEDED) == 1
            # A run counts once, unless an attempt got to its end and its agent died
            # before telling anyone: then it ran again, as at-least-once allows.
            lost = sum(a.outcome == "lost" for a in status.attempts)
            assert 1 <= ran[status.id] <= 1 + lost, (status.id, ran[status.id], status.attempts)
            check_story(status, handle)
        assert len(chaos.done) == len(KILLS)
        assert not any(client.list(stage=s) for s in (Stage.QUEUED, Stage.ASSIGNED,
                                                      Stage.RUNNING))
        wait_until(attempt_processes, lambda found: not any(
            a.startswith("c") for a in found), what="no attempt process left")
        pool = client.pool()
        assert pool and not any(a.running for a in pool)
        print(f"losses: {sum(a.outcome == 'lost' for s in final for a in s.attempts)}, "
              f"reruns of a completed run: {sum(n - 1 for n in ran.values())}")
    finally:
        stop_mesh(cluster)
