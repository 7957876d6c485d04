"""The scheduler dies, then the whole head: every accepted action still ends exactly once.

Clusters of their own: the scheduler actor is SIGKILLed (Ray restarts it), then the whole
cluster is torn down and a new one started over the same state directory.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mesh import Action, Stage
from mesh.client import ActionHandle, Client
from mesh.schema import AccountConfig, ActionStatus
from mesh.stages import TERMINAL
from mesh.waiting import wait_until
from tests.integration.cluster import (
    runs,
    scheduler_pid,
    start_mesh,
    stop_mesh,
    survivors,
    tear_down,
)

pytestmark = pytest.mark.integration

WORKER = {"num_cpus": 2, "labels": {"pool": "restart"}}


def marked(action_id: str, log: Path, seconds: float, **fields: Any) -> Action:
    """An action that sleeps, then appends its id to `log`: each line is one run that got
    to its end, so an action run twice to success shows twice."""
    return Action(id=action_id, command=[f"sleep {seconds}; echo {action_id} >> {log}"],
                  shell=True, labels=["pool:restart"], **fields)


def assert_each_ended_once(client: Client, handles: list[ActionHandle], log: Path,
                           ) -> list[ActionStatus]:
    results = [h.result(timeout=120) for h in handles]
    assert [r.stage for r in results] == [Stage.SUCCEEDED] * len(handles), [
        (r.id, r.stage, r.reason) for r in results if r.stage is not Stage.SUCCEEDED]
    for r in results:
        assert [a.outcome for a in r.attempts].count(Stage.SUCCEEDED) == 1, r.attempts
    assert sorted(runs(log)) == sorted(h.id for h in handles), "each ran to its end once"
    events = {h.id: list(h.events(follow=False)) for h in handles}
    for action_id, story in events.items():
        assert [e.seq for e in story] == list(range(1, len(story) + 1)), action_id
        assert story[0].reason == "accepted" and story[-1].stage is Stage.SUCCEEDED
    assert not any(client.list(stage=s) for s in (Stage.QUEUED, Stage.ASSIGNED,
                                                  Stage.RUNNING))
    return results


def test_a_killed_scheduler_comes_back_and_loses_nothing(tmp_path: Path) -> None:
    cluster, _, _ = start_mesh(tmp_path / "state", WORKER, WORKER)
    log = tmp_path / "runs"
    waiter = ThreadPoolExecutor(1)
    try:
        client = Client()
        wait_until(client.pool, lambda p: len(p) == 2 and all(a.load for a in p),
                   what="two agents reporting load")
        client.create_account("ci", AccountConfig(charge_rate=[2.0], max_charge_seconds=30))
        assert client.run(Action(command=["true"], labels=["pool:restart"]), timeout=60).ok
        # 4 CPUs: four run at once, the rest queue; they end at different times, some
        # while the scheduler is away.
        handles = client.submit_many([
            marked(f"r{i}", log, 1.0 + (i % 4) * 0.7, account="ci" if i % 2 else "")
            for i in range(14)])
        wait_until(lambda: client.counts(), lambda c: c["running"] == 4,
                   what="four running")
        running = {s.id for s in client.list(stage=Stage.RUNNING)}
        assert len(running) == 4
        # A client on the client link, inside `run` as the scheduler dies: its call goes
        # again over Ray, to the restarted one, with the same id (accepted once).
        assert client.link.serving
        waited = waiter.submit(client.run, marked("w", tmp_path / "w-runs", 0.5), 120)
        wait_until(lambda: client.counts(), lambda c: sum(c.values()) == 16,
                   what="the waited one accepted")
        os.kill(scheduler_pid(), signal.SIGKILL)
        killed_at, killed_wall = time.monotonic(), time.time()
        # The next call waits for the restarted scheduler, which answers once it has
        # reconciled: the actions in flight are still there, running where they were.
        counts = client.counts()
        back_after = time.monotonic() - killed_at
        assert counts["queued"] + counts["assigned"] + counts["running"] + \
            counts["succeeded"] == 16, counts
        results = assert_each_ended_once(client, handles, log)
        for r in results:  # what ran through the restart was kept, not run again
            if r.id in running:
                assert [a.outcome for a in r.attempts] == [Stage.SUCCEEDED], r.attempts
        assert waited.result(timeout=60).ok and runs(tmp_path / "w-runs") == ["w"]
        # The link is granted again by the new scheduler once its pause is over.
        wait_until(lambda: client.run(Action(command=["true"], labels=["pool:restart"]),
                                      timeout=60).ok and client.link.serving,
                   bool, what="runs over the new scheduler's client link")
        # Within the cap (2/s for 30 s), and charged for the paid work that ran.
        account = client.account("ci")
        assert -60.0 <= account.balance[0] <= 60.0
        assert account.running == 0 and account.balance[0] < 60.0
        # The new scheduler process handed out new grants: the agents are back on streams.
        wait_until(client.pool, lambda p: all(
            a.link == "stream" and (a.link_since or 0) > killed_wall for a in p),
            what="the agents on streams to the new scheduler")
        print(f"scheduler answered again {back_after:.2f}s after its SIGKILL")
    finally:
        waiter.shutdown(wait=False, cancel_futures=True)
        stop_mesh(cluster)


def test_a_restarted_head_with_its_state_kept_runs_what_it_had_accepted(
        tmp_path: Path) -> None:
    state, log = tmp_path / "state", tmp_path / "runs"
    cluster, _, _ = start_mesh(state, WORKER)
    try:
        client = Client()
        wait_until(client.pool, lambda p: len(p) == 1 and all(a.load for a in p),
                   what="the agent reporting load")
        done = client.submit(marked("done", log, 0.1))
        assert done.result(timeout=60).stage is Stage.SUCCEEDED
        handles = client.submit_many([marked(f"h{i}", log, 8.0 if i < 2 else 0.5)
                                      for i in range(6)])
        wait_until(lambda: client.counts(), lambda c: c["running"] == 2, what="two running")
        lost = [survivors(h.id) for h in handles[:2]]
        assert all(lost)
    finally:
        # The head goes down hard: no `mesh down`, the agents' processes die with it.
        tear_down(cluster)
    assert not any(survivors(h.id) for h in handles)
    cluster, _, _ = start_mesh(state, WORKER)
    try:
        client = Client()
        assert client.get("done").stage is Stage.SUCCEEDED, "finished work stays finished"
        results = [client.handle(h.id).result(timeout=120) for h in handles]
        assert all(r.stage is Stage.SUCCEEDED for r in results), results
        for r in results[:2]:
            assert [a.outcome for a in r.attempts] == ["lost", Stage.SUCCEEDED]
        assert sorted(runs(log)) == sorted(["done"] + [h.id for h in handles])
        assert all(s.stage in TERMINAL for s in client.list())
    finally:
        stop_mesh(cluster)
