"""The quota core at the scale of upstream's profiler simulation (qslib/profiler).

20 accounts with random charge rates (0-10 per priority), a 10 s charge cap, no free tasks,
fanout 2 and a per-label limit of 2 per `label-model` value; a 1,000-label corpus and 50
provisionable labels; preemption off. 100 ticks one simulated minute apart each add 1,000
requests (4 base labels + 1 provisionable) and 50 agents (50 labels + 1 provisionable), ending
with 5,000 agents and 100,000 requests. Reported: the simulation's total and per-tick times,
then at full size the median of several `update_time` + `run_once` passes, peak memory and
the snapshot's size. The baseline, measured in the same run, is the least any pass does:
sorting the queue once by its order key.
"""

from __future__ import annotations

import os
import random
import resource
import statistics
import time
from operator import attrgetter

from bench.harness import report
from mesh.schema import AccountConfig, AccountId, ActionId, AgentId, QuotaOptions
from scheduler.core.quota.model import Request
from scheduler.core.quota.run import run_once
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.snapshot import to_snapshot

TICKS = int(os.environ.get("QUOTA_TICKS", "100"))
REQUESTS_PER_TICK = 1_000
AGENTS_PER_TICK = 50
ACCOUNTS = 20
CORPUS = [f"label-{i}" for i in range(1_000)]
PROVISIONABLE = [f"provisionable-{i}" for i in range(50)]
MODELS = [f"label-model:{i}" for i in range(20)]


def build(rng: random.Random) -> QuotaScheduler:
    qs = QuotaScheduler(0.0, QuotaOptions(disable_preemption=True, agent_expiry=100 * 3600))
    for a in range(ACCOUNTS):
        qs.add_account(AccountId(f"account-{a}"), AccountConfig(
            charge_rate=[rng.uniform(0, 10) for _ in range(5)], max_charge_seconds=10,
            disable_free_tasks=True, max_fanout=2,
            per_label_task_limits={"label-model": 2}))
    return qs


def tick(qs: QuotaScheduler, rng: random.Random, n: int, agents: list[list[str]]) -> float:
    now = n * 60.0
    for w in range(AGENTS_PER_TICK):
        labels = [*rng.sample(CORPUS, 49), rng.choice(MODELS), rng.choice(PROVISIONABLE)]
        agents.append(labels)
        qs.mark_idle(AgentId(f"agent-{n}-{w}"), frozenset(labels), now)
    for r in range(REQUESTS_PER_TICK):
        # Base labels from some agent's, so that each request can run somewhere.
        base = rng.sample(rng.choice(agents)[:49], 4)
        qs.add_request(Request(ActionId(f"request-{n}-{r}"),
                               AccountId(f"account-{rng.randrange(ACCOUNTS)}"),
                               frozenset(base), frozenset([rng.choice(PROVISIONABLE)]), now),
                       now)
    start = time.perf_counter()
    qs.update_time(now)
    run_once(qs)
    return time.perf_counter() - start


def main() -> None:
    rng = random.Random(7)
    qs = build(rng)
    agents: list[list[str]] = []
    simulated = [tick(qs, rng, n, agents) for n in range(TICKS)]
    running = len(qs.running)
    print(f"simulation: {TICKS} ticks in {sum(simulated):.1f}s (median tick "
          f"{statistics.median(simulated) * 1e3:.0f} ms, slowest {max(simulated) * 1e3:.0f} ms);"
          f" {len(qs.workers)} agents, {len(qs.queued) + running} requests, {running} running")
    passes = []
    for i in range(5):
        start = time.perf_counter()
        qs.update_time((TICKS + i) * 60.0)
        run_once(qs)
        passes.append(time.perf_counter() - start)
    key = attrgetter("examined_time", "enqueue_time", "id")
    sorts = []
    for _ in range(5):
        start = time.perf_counter()
        sorted(qs.queued.values(), key=key)
        sorts.append(time.perf_counter() - start)
    one_pass = statistics.median(passes)
    snapshot = len(to_snapshot(qs).model_dump_json())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"one pass at full size: median {one_pass * 1e3:.0f} ms of {len(passes)} "
          f"(target < 1000 ms); peak memory {peak:.0f} MiB (target < 500); snapshot "
          f"{snapshot / 2**20:.1f} MiB of JSON")
    report("quota pass (100k requests, 5k agents)", one_pass * 1e3,
           statistics.median(sorts) * 1e3, "ms", "one pass < 1 s", higher_is_better=False)
    assert running > 0 and one_pass < 5.0, "the simulation did not schedule, or stalled"


if __name__ == "__main__":
    main()
