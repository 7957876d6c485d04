"""Chaos: 1,000 short actions with logs while, at seeded points, agents, a node, the scheduler
and the relay are killed, an agent is frozen past the load-stale window, and the state disk
fills up for a while.

Afterwards every action is in exactly one final stage, its events tell its story in order,
its log is complete or says where lines were lost, and nothing of any attempt is left
running. A cluster of its own: it loses a node. The disk fills only where a small tmpfs
can be mounted (as root); elsewhere that one disruption is skipped, saying so.
"""

from __future__ import annotations

import contextlib
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

from mesh import Action, RetryPolicy, Stage, StoreReadOnly, names
from mesh.bootstrap import actor_pid
from mesh.client import ActionHandle, Client
from mesh.names import ENV_ACTION
from mesh.schema import ActionStatus
from mesh.stages import TERMINAL
from mesh.waiting import wait_until
from tests.integration.cluster import (
    fill,
    runs,
    scheduler_pid,
    small_disk,
    start_mesh,
    stop_mesh,
)

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("CHAOS_SEED", "20261123"))
ACTIONS = 1000
BATCH = 100
LINES = 20  # each action prints these, numbered, besides logging its run
WORKER: dict[str, Any] = {"num_cpus": 2, "labels": {"pool": "chaos"}}
KILLS = ["agent", "agent", "scheduler", "scheduler", "node", "relay", "freeze", "disk"]
# A frozen agent stays stopped this much longer than the load-stale window (3 s).
FREEZE = 5.0
DISK_FULL = 3.0


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

    def __init__(self, cluster: Cluster, client: Client, rng: random.Random,
                 disk: Path | None) -> None:
        self.cluster, self.client, self.rng, self.disk = cluster, client, rng, disk
        self.done: list[str] = []
        self.frozen: set[int] = set()

    def thaw(self) -> None:
        for pid in list(self.frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self.frozen.discard(pid)

    def kill(self, kind: str) -> None:
        if kind == "scheduler":
            os.kill(scheduler_pid(), signal.SIGKILL)
            self.done.append("scheduler")
        elif kind == "relay":
            os.kill(actor_pid(names.RELAY), signal.SIGKILL)
            self.done.append("relay")
        elif kind == "freeze":
            agents = sorted((a for a in self.client.pool() if a.info.pid),
                            key=lambda a: a.info.agent_id)
            victim = self.rng.choice(agents)
            os.kill(victim.info.pid, signal.SIGSTOP)
            self.frozen.add(victim.info.pid)
            threading.Timer(FREEZE, self.thaw).start()
            self.done.append(f"froze agent {victim.info.agent_id[:8]} for {FREEZE:g}s")
        elif kind == "disk":
            if self.disk is None:
                self.done.append("disk (skipped: no tmpfs)")
                return
            filler = fill(self.disk)
            threading.Timer(DISK_FULL, filler.unlink).start()
            self.done.append(f"disk full for {DISK_FULL:g}s")
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


def check_log(handle: ActionHandle) -> int:
    """The final attempt's log is complete, or notes where lines were lost; how many were."""
    lines = list(handle.logs())
    lost = sum(line.lost for line in lines)
    printed = [line.text for line in lines if not line.lost]
    if not lost:
        assert printed == [str(n) for n in range(1, LINES + 1)], (handle.id, printed)
    else:
        assert len(printed) + lost == LINES, (handle.id, printed, lost)
    return lost


def test_every_action_ends_once_through_seeded_chaos(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(small_disk(tmp_path / "state", "64m", skip=False))
        run_chaos(tmp_path, disk)


def run_chaos(tmp_path: Path, disk: Path | None) -> None:
    rng = random.Random(SEED)
    log = tmp_path / "runs"
    state = disk if disk is not None else tmp_path / "state"
    cluster, _, _ = start_mesh(state, WORKER, WORKER, WORKER)
    chaos: Chaos | None = None
    try:
        client = Client()
        wait_until(client.pool, lambda p: len(p) == 3 and all(a.load for a in p),
                   what="three agents reporting load")
        specs = [Action(id=f"c{i:04d}", shell=True, labels=["pool:chaos"],
                        command=[f"sleep {rng.uniform(0.05, 0.4):.2f}; seq 1 {LINES}; "
                                 f"echo c{i:04d} >> {log}"],
                        retry=RetryPolicy(on_lost=10, quarantine_after=6))
                 for i in range(ACTIONS)]
        # Each kill strikes once a seeded number of actions has ended: points in the run
        # rather than in time, so a slow machine sees the same chaos as a fast one.
        plan = sorted((rng.randint(10, ACTIONS - 40), kind) for kind in KILLS)
        chaos = Chaos(cluster, client, rng, disk)
        handles: list[ActionHandle] = []

        def submit() -> None:  # in batches, so submissions meet a restarting scheduler too
            for batch in range(ACTIONS // BATCH):
                wait_until(partial(ended, client), at_least(batch * BATCH * 3 // 4),
                           timeout=120, what=f"actions ended before batch {batch + 1}")
                part = specs[batch * BATCH:(batch + 1) * BATCH]
                # A full disk refuses the batch whole; the same ids again are harmless.
                accepted = wait_until(partial(submit_through, client, part),
                                      lambda got: got is not None, timeout=120,
                                      what=f"batch {batch + 1} accepted")
                assert accepted is not None
                handles.extend(accepted)

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
        lost_lines = sum(check_log(handle) for handle in handles)
        assert len(chaos.done) == len(KILLS)
        assert not any(client.list(stage=s) for s in (Stage.QUEUED, Stage.ASSIGNED,
                                                      Stage.RUNNING))
        wait_until(attempt_processes, lambda found: not any(
            a.startswith("c") for a in found), what="no attempt process left")
        pool = client.pool()
        assert pool and not any(a.running for a in pool)
        print(f"losses: {sum(a.outcome == 'lost' for s in final for a in s.attempts)}, "
              f"reruns of a completed run: {sum(n - 1 for n in ran.values())}, "
              f"log lines lost and noted: {lost_lines}")
    finally:
        if chaos is not None:
            chaos.thaw()
        stop_mesh(cluster)


def submit_through(client: Client, specs: list[Action]) -> list[ActionHandle] | None:
    try:
        return client.submit_many(specs)
    except StoreReadOnly:
        return None
