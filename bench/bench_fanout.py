"""Fan-out: what each idle agent costs the scheduler, and what each agent costs it under load.

One multi-node cluster on this machine: the head (no agent) and one worker node, then seven
more. The scheduler's CPU is read from its process (user + system time, in 10 ms ticks) over the
same idle window with 1 agent and with 8; the difference over 7 is the cost of one more
idle agent.
Then 8 x 250 `true` actions run through the 8 agents, and the scheduler's CPU per action
and per agent-second is printed.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from bench.harness import cluster_mesh, scheduler_pid
from mesh import Action
from mesh.client import Client
from mesh.waiting import wait_until

WORKER: dict[str, Any] = {"num_cpus": 2}
IDLE_WINDOW = 30.0
SETTLE = 5.0
MORE = 7
PER_AGENT = 250


def busy_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def idle_share(process: psutil.Process) -> float:
    """The scheduler's CPU over IDLE_WINDOW, as a share of one core (percent)."""
    time.sleep(SETTLE)  # what joining set off (registration, first samples) has settled
    before, start = busy_seconds(process), time.monotonic()
    time.sleep(IDLE_WINDOW)
    return 100 * (busy_seconds(process) - before) / (time.monotonic() - start)


def load_messages(client: Client, seconds: float = 20.0) -> float:
    """Load samples each agent sent a second, counted by their stamps (after the idle
    windows: the polling costs the scheduler too)."""
    seen: dict[str, set[float]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for agent in client.pool():
            if agent.load is not None:
                seen.setdefault(agent.info.agent_id, set()).add(agent.load.sampled_at)
        time.sleep(0.2)
    return sum(len(stamps) for stamps in seen.values()) / len(seen) / seconds


def on_streams(client: Client, agents: int) -> None:
    wait_until(client.pool, lambda p: len(p) == agents and all(
        a.link == "stream" and a.load for a in p), timeout=120, interval=0.2,
        what=f"{agents} agents on their streams")


def main() -> None:
    with cluster_mesh(WORKER, workers=1) as (cluster, client):
        on_streams(client, 1)
        scheduler = psutil.Process(scheduler_pid())
        one = idle_share(scheduler)
        for _ in range(MORE):
            cluster.add_node(**WORKER)
        cluster.wait_for_nodes()
        on_streams(client, 1 + MORE)
        eight = idle_share(scheduler)
        per_agent = (eight - one) / MORE
        print(f"scheduler idle CPU ({IDLE_WINDOW:g} s windows): {one:.2f} % of a core with 1 "
              f"agent, {eight:.2f} % with {1 + MORE}")
        print(f"idle cost per additional agent: {per_agent:.3f} % of a core "
              f"(target <= 0.03; a window resolves about "
              f"{100 * 0.01 / IDLE_WINDOW / MORE:.3f} per agent)")
        print(f"load samples sent per idle agent: {load_messages(client):.2f}/s")

        n = PER_AGENT * (1 + MORE)
        before, start = busy_seconds(scheduler), time.perf_counter()
        handles = client.submit_many([Action(command=["true"], cpus=1) for _ in range(n)])
        results = [h.result(timeout=600) for h in handles]
        elapsed = time.perf_counter() - start
        used = busy_seconds(scheduler) - before
        assert all(r.stage == "succeeded" for r in results), "an action failed"
        agents = {r.agent_id for r in results}
        print(f"under load: {n} `true` actions on {len(agents)} agents in {elapsed:.1f} s "
              f"({n / elapsed:,.0f}/s); scheduler CPU {1000 * used / n:.2f} ms per action, "
              f"{100 * used / elapsed / len(agents):.1f} % of a core per busy agent")


if __name__ == "__main__":
    main()
