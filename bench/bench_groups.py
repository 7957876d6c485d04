"""Placement with groups at the issue's scale: 10,000 queued actions over 1,000 agents, one
scheduling step of the pure core, with a pool config of 20 groups (capabilities) and every
job assigned a group (by dispatch from recorded load, 10 % pinned), against the same step
with no pool config. Two configs: one that leaves every agent's room as it is (capacity 100,
nothing blocked: the same 4,000 start, so the ratio is the cost of groups, preferences and
pins alone), and an operator's (capacities of 50-100 %, one group blocked: fewer start).

Timed (in the process's CPU time: the step is one thread of pure Python, and on a shared
machine other tenants' load moved its wall time by a third between runs): the first step,
which fills every free slot, and the step after one attempt on each
of 100 agents ended (refilling those slots). Each is the median of several runs on a
freshly built core, the runs with and without groups interleaved. Target: with groups
under 1.3x without.
"""

from __future__ import annotations

import random
import statistics
import time

from bench.harness import report
from mesh.poolconfig import PoolConfig
from mesh.protocol import AttemptReport
from mesh.schema import Action, ActionId, AgentId, AgentInfo, Load
from scheduler.core.decisions import Assign
from scheduler.core.state import SchedulerState

AGENTS = 1_000
QUEUED = 10_000
JOBS = 500
GROUPS = 20
RUNS = 7
REFILLS = 7  # refill steps timed per built core
GIB = 2**30
TARGET = 1.3


def config_text(rng: random.Random, restricted: bool) -> str:
    lines = ["groups:"]
    for g in range(GROUPS):
        capacity = rng.choice([50, 75, 100]) if restricted else 100
        blocked = restricted and g == 0
        lines.append(f"  g{g}: {{match: {{labels: ['rack:{g}']}}, capacity: {capacity}, "
                     f"blocked: {str(blocked).lower()}, capabilities: [cache-{g % 4}]}}")
    lines.append("assignments:")
    for j in range(0, JOBS, 10):  # 10 % pinned by hand
        lines.append(f"  job-{j}: {{group: g{1 + j % (GROUPS - 1)}, pin: true}}")
    return "\n".join(lines) + "\n"


START = 86400.0 * 7  # a week in: the recorded load is in the window


def build(with_groups: bool, restricted: bool = False) -> SchedulerState:
    rng = random.Random(11)
    core = SchedulerState(stale_after=1e9)
    for a in range(AGENTS):
        info = AgentInfo(agent_id=AgentId(f"agent-{a:04d}"), node_id=f"node-{a}",
                         hostname=f"host-{a:04d}", address="10.0.0.1", cpus=4,
                         memory=16 * GIB, labels=["os:linux", f"rack:{a % GROUPS}"], pid=1,
                         started_at=0.0)
        core.agent_joined(info, START)
        core.load(info.agent_id, Load(cpu_percent=5, mesh_cpu_percent=0, cpu_count=4,
                                      memory_total=16 * GIB, memory_used=0,
                                      memory_available=16 * GIB, sampled_at=START), START)
    if with_groups:
        for j in range(JOBS):  # a day's history: a long tail, as CI jobs have
            core.groups.ran(f"job-{j}", START - 86400.0, rng.paretovariate(1.2) * 3600)
        core.apply_pool(PoolConfig.parse(config_text(rng, restricted)), START)
    specs = [Action(id=ActionId(f"a-{i}"), command=["true"], job=f"job-{i % JOBS}",
                    # A tenth asks for a cache capability (none of the pinned jobs, whose
                    # group might lack it).
                    labels=[f"cache-{i % 4}"] if i % 10 == 5 else [])
             for i in range(QUEUED)]
    core.submit(specs, START)
    return core


def one_run(with_groups: bool, restricted: bool) -> tuple[float, float, int]:
    """(the full step's seconds, the median refill step's, how many the full step started)."""
    core = build(with_groups, restricted)
    now = START + 1
    began = time.process_time()
    running = [d for d in core.step(now) if isinstance(d, Assign)]
    full = time.process_time() - began
    started = len(running)
    refills = []
    for _ in range(REFILLS):
        # One attempt ends on each of 100 agents: the next step refills those slots.
        ended: dict[AgentId, Assign] = {}
        for decision in running:
            ended.setdefault(decision.agent_id, decision)
            if len(ended) == 100:
                break
        now += 10
        for d in ended.values():
            for stage in ("running", "succeeded"):
                core.report(AttemptReport(
                    action_id=ActionId(d.action_id), attempt=d.attempt, agent_id=d.agent_id,
                    stage=stage, time=now, exit_code=0 if stage == "succeeded" else None), now)
        running = [d for d in running if d not in ended.values()]
        began = time.process_time()
        refill = [d for d in core.step(now + 1) if isinstance(d, Assign)]
        refills.append(time.process_time() - began)
        assert len(refill) == len(ended), (len(refill), len(ended))
        running += refill
    return full, statistics.median(refills), started


def main() -> None:
    for restricted, config in ((False, "same room"), (True, "an operator's config")):
        timed: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
        for _ in range(RUNS):  # interleaved, so that a noisy spell hits both alike
            for with_groups in (False, True):
                timed[with_groups].append(one_run(with_groups, restricted))
        for name, index in (("full step", 0), ("refill step", 1)):
            plain = statistics.median(t[index] for t in timed[False]) * 1000
            grouped = statistics.median(t[index] for t in timed[True]) * 1000
            print(f"{config}, {name}: {QUEUED:,} queued over {AGENTS:,} agents, started "
                  f"{timed[True][0][2]:,} with groups / {timed[False][0][2]:,} without")
            report(f"placement with groups ({config}, {name})", grouped, plain, "ms",
                   f"< {TARGET}x", higher_is_better=False)


if __name__ == "__main__":
    main()
