"""Job-to-group dispatch at the issue's scale: 5,000 jobs with 14 days of history over 50
groups (some blocked, a few hundred manual assignments and colocation sets).

Timed: summing each job's window from its day buckets and computing the assignment, the
median of several runs. The baseline, measured in the same run on the same data, is the
least such a pass does: one plain sort of every recorded bucket. Target: well under a
second; the ratio says what the dispatch costs beyond that sort.
"""

from __future__ import annotations

import random
import statistics
import time

from bench.harness import report
from scheduler.core.dispatch import BUCKET, JobHistory, Manual, dispatch

JOBS = 5_000
DAYS = 14
GROUPS = 50
RUNS = 7


def build(rng: random.Random) -> tuple[JobHistory, list[tuple[str, int, float]],
                                       dict[str, float], dict[str, Manual],
                                       list[list[str]], set[str]]:
    history = JobHistory()
    records: list[tuple[str, int, float]] = []
    now = 1_000 * BUCKET
    for j in range(JOBS):
        job = f"job-{j}"
        # A few heavy jobs and a long tail, as CI jobs are.
        scale = rng.paretovariate(1.2) * 60
        for day in range(DAYS):
            seconds = scale * rng.uniform(0.5, 1.5)
            history.record(job, now - day * BUCKET, seconds)
            records.append((job, day, seconds))
    weights = {f"group-{g}": float(rng.choice([16, 32, 64, 128]) * rng.randint(1, 100))
               for g in range(GROUPS)}
    manual = {f"job-{rng.randrange(JOBS)}": Manual(f"group-{rng.randrange(GROUPS)}",
                                                   pin=rng.random() < 0.2)
              for _ in range(300)}
    free = [f"job-{j}" for j in range(JOBS) if f"job-{j}" not in manual]
    colocate = [free[i:i + 3] for i in range(0, 600, 3)]
    blocked = {f"group-{g}" for g in rng.sample(range(GROUPS), 5)}
    return history, records, weights, manual, colocate, blocked


def main() -> None:
    rng = random.Random(7)
    history, records, weights, manual, colocate, blocked = build(rng)
    now = 1_000 * BUCKET
    ours, baseline = [], []
    for _ in range(RUNS):
        began = time.perf_counter()
        sorted(records)
        baseline.append(time.perf_counter() - began)
        began = time.perf_counter()
        result = dispatch(history.loads(now, DAYS * BUCKET), weights, manual, colocate,
                          blocked)
        ours.append(time.perf_counter() - began)
    assert len(result.assignments) == JOBS
    assert not set(result.assignments.values()) & blocked - {m.group for m in manual.values()
                                                             if m.pin}
    print(f"dispatch of {JOBS:,} jobs x {DAYS} days over {GROUPS} groups: median "
          f"{statistics.median(ours) * 1000:.1f} ms (target: well under 1,000 ms)")
    report("dispatch", statistics.median(ours) * 1000, statistics.median(baseline) * 1000,
           "ms", "well under a second in absolute terms", higher_is_better=False)


if __name__ == "__main__":
    main()
