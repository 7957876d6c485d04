"""Job-to-group dispatch: the recorded CPU-seconds of each job over a sliding window, and the
assignment that spreads that load across groups in proportion to their capacity.

After the Prow dispatcher (`../shared/seeds/004`): manual assignments are honoured (a
pinned one always, another unless its group is blocked), colocated jobs move together,
and blocked groups get nothing. Pure and deterministic: the same history and groups give
the same assignment.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# History is kept in buckets of this many seconds: a window is counted to within one.
BUCKET = 86400.0


class JobHistory:
    """CPU-seconds per job, in day buckets, for as long as the window asks."""

    def __init__(self) -> None:
        self._buckets: dict[str, dict[int, float]] = {}

    def record(self, job: str, at: float, cpu_seconds: float) -> None:
        if not job or cpu_seconds <= 0:
            return
        days = self._buckets.setdefault(job, {})
        day = int(at // BUCKET)
        days[day] = days.get(day, 0.0) + cpu_seconds

    def loads(self, now: float, window: float) -> dict[str, float]:
        """Each job's CPU-seconds in the window ending at `now` (jobs with none left out)."""
        first = int((now - window) // BUCKET)
        found: dict[str, float] = {}
        for job, days in self._buckets.items():
            total = sum(seconds for day, seconds in days.items() if day >= first)
            if total > 0:
                found[job] = total
        return found

    def forget_before(self, before: float) -> None:
        """Drop the buckets that end before `before` (and jobs left with none)."""
        first = int(before // BUCKET)
        for job in list(self._buckets):
            days = self._buckets[job]
            for day in [d for d in days if d < first]:
                del days[day]
            if not days:
                del self._buckets[job]

    def snapshot(self) -> dict[str, dict[int, float]]:
        return {job: dict(days) for job, days in self._buckets.items()}

    @classmethod
    def restore(cls, saved: Mapping[str, Mapping[int, float]]) -> JobHistory:
        history = cls()
        history._buckets = {job: {int(d): float(s) for d, s in days.items()}
                            for job, days in saved.items()}
        return history


@dataclass(frozen=True)
class Manual:
    group: str
    pin: bool = False


@dataclass
class Dispatch:
    """Where each job goes, and the load each group was given."""

    assignments: dict[str, str] = field(default_factory=dict)
    loads: dict[str, float] = field(default_factory=dict)


def dispatch(loads: Mapping[str, float], weights: Mapping[str, float],
             manual: Mapping[str, Manual] | None = None,
             colocate: Iterable[Iterable[str]] = (),
             blocked: Iterable[str] = ()) -> Dispatch:
    """Assign every job with recorded load to a group.

    `weights` is each group's capacity (its agents' CPUs times its capacity percent, say);
    a group's share of the whole load is its weight over the sum of the open groups'.
    Jobs colocated move as one unit. Units are placed heaviest first, each on the open
    group furthest below its share, so that no group ends above its share by more than
    one unit's load. Manual units are placed first: a pinned one on its group whatever
    it is, another on its group unless that is blocked.
    """
    manual = manual or {}
    closed = set(blocked)
    open_groups = sorted(g for g, w in weights.items() if w > 0 and g not in closed)
    units = _units(loads, manual, colocate)
    result = Dispatch(loads={g: 0.0 for g in sorted(weights)})

    def place(jobs: list[str], load: float, group: str) -> None:
        for job in jobs:
            result.assignments[job] = group
        result.loads[group] = result.loads.get(group, 0.0) + load

    free: list[tuple[list[str], float]] = []
    for jobs, load in units:
        chosen = next((manual[j] for j in jobs if j in manual), None)
        if chosen is not None and (chosen.pin or chosen.group not in closed):
            place(jobs, load, chosen.group)
        else:
            free.append((jobs, load))
    if not open_groups:
        return result  # nowhere to send the rest: they stay unassigned
    total = sum(load for _, load in units)
    weight = sum(weights[g] for g in open_groups)
    # Furthest below its share first; ties by name, so the answer is the same every time.
    deficits = [(-(total * weights[g] / weight - result.loads[g]), g) for g in open_groups]
    heapq.heapify(deficits)
    for jobs, load in free:
        deficit, group = heapq.heappop(deficits)
        place(jobs, load, group)
        heapq.heappush(deficits, (deficit + load, group))
    return result


def _units(loads: Mapping[str, float], manual: Mapping[str, Manual],
           colocate: Iterable[Iterable[str]]) -> list[tuple[list[str], float]]:
    """Jobs to place, as (jobs that move together, their load), heaviest first: those with
    load, and those assigned by hand. A colocation set counts when one of its jobs does."""
    units: list[tuple[list[str], float]] = []
    taken: set[str] = set()
    for members in colocate:
        jobs = sorted(set(members))
        if any(j in loads or j in manual for j in jobs):
            units.append((jobs, sum(loads.get(j, 0.0) for j in jobs)))
            taken.update(jobs)
    units += [([job], load) for job, load in loads.items() if job not in taken]
    # A job assigned by hand has a group even before it has a history.
    units += [([job], 0.0) for job in manual if job not in loads and job not in taken]
    units.sort(key=lambda unit: (-unit[1], unit[0][0]))
    return units
