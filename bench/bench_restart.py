"""Scheduler restart: 10,000 queued and 50 running actions, the scheduler SIGKILLed.

Measured: time from the kill until the restarted scheduler answers a client (it answers
only after reloading its state and reconciling with every agent), and until the pool shows
all 50 running attempts back on their agents. Baseline, in the same run and cluster: how
long Ray takes to bring back an empty restartable actor after the same SIGKILL.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from typing import Any

import ray

from bench.harness import cluster_mesh, report, scheduler_pid
from mesh import Action
from mesh.client import Client
from mesh.waiting import wait_until

WORKER: dict[str, Any] = {"num_cpus": 25, "labels": {"pool": "restart"}}
QUEUED = int(os.environ.get("RESTART_QUEUED", "10000"))
RUNNING = 50
ROUNDS = 5


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Empty:
    def pid(self) -> int:
        return os.getpid()


def baseline() -> float:
    """SIGKILL to an answer from a restarted actor that holds nothing."""
    actor = Empty.remote()  # type: ignore[attr-defined]
    pid = ray.get(actor.pid.remote())
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    ray.get(actor.pid.remote(), timeout=60)
    took = time.monotonic() - killed
    ray.kill(actor)
    return took


def running_on_agents(client: Client) -> int:
    return sum(len(a.running) for a in client.pool())


def scheduler_restart(client: Client) -> tuple[float, float]:
    killed = time.monotonic()
    os.kill(scheduler_pid(), signal.SIGKILL)
    client.counts()
    answered = time.monotonic() - killed
    wait_until(lambda: running_on_agents(client), lambda n: n == RUNNING, timeout=120,
               interval=0.01, what="every running attempt back on its agent")
    return answered, time.monotonic() - killed


def main() -> None:
    with cluster_mesh(WORKER) as (_, client):
        long = Action(command=["sleep", "600"], labels=["pool:restart"])
        client.submit_many([long] * RUNNING)
        wait_until(client.counts, lambda c: c["running"] == RUNNING, timeout=120)
        for start in range(0, QUEUED, 1000):
            client.submit_many([long] * min(1000, QUEUED - start))
        counts = client.counts()
        assert (counts["queued"], counts["running"]) == (QUEUED, RUNNING), counts
        bases, answers, reconciled = [], [], []
        for _ in range(ROUNDS):
            bases.append(baseline())
            answered, whole = scheduler_restart(client)
            answers.append(answered)
            reconciled.append(whole)
            counts = client.counts()
            assert (counts["queued"], counts["running"]) == (QUEUED, RUNNING), counts
    base = statistics.median(bases)
    print(f"scheduler SIGKILL with {QUEUED} queued and {RUNNING} running: answers clients "
          f"again after median {statistics.median(answers):.2f}s (max {max(answers):.2f}s), "
          f"all running attempts reconciled after {statistics.median(reconciled):.2f}s; "
          f"an empty actor's restart takes {base:.2f}s")
    report("scheduler restart to answering", statistics.median(answers), base, "s",
           "<= 1.5", higher_is_better=False)


if __name__ == "__main__":
    main()
