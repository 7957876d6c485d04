"""What each level of one pass holds, and the match lists the pass walks, drawn lazily.

A pass sees the queue as six levels (QSCHEDULER.md §3.2): an account's requests sit at the
level its balance buys, less those its fanout limit sends to the free level, and an
account that may not run free work is left out when it can pay for nothing. This view
works that out per account and per throttled shape, not per request, and keeps what the
pass appends to the free level (`tail`) as shapes too.

A worker's match list at a level is, as upstream builds it: the level's unmatched
requests it can take that were examined no later than it last changed (the cut), most
specific first, in level order within a quality, the free level's tail after its sorted
part. Here it is walked shape by shape with early exit: a shape matches, fits and counts
against limits as one, so a shape the pass would pass over is dropped whole.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator

from mesh.schema import AccountId, AgentId
from scheduler.core.quota.model import MAX_SORTED_MATCHES, Request, Worker
from scheduler.core.quota.queue import AccountQueue, OrderKey, Queue, Shape
from scheduler.core.quota.vector import FREE_BUCKET

# The level of work a pass leaves out entirely: not matched, and not marked examined.
OUT = FREE_BUCKET + 1
# Shapes this many or fewer are looked through one by one rather than by label.
_SCAN = 32

# Whether a request, and every request alike, is to be passed over for the rest of a walk.
Skip = Callable[[Request], bool]


_NEVER = float("inf")


def _earliest(shape: Shape) -> float:
    """The earliest examined time in the shape (its fresh part is in that order)."""
    fresh = shape.fresh[0].own_examined if shape.fresh else _NEVER
    return min(fresh, shape.stamp) if shape.stamped else fresh


class _Shapes:
    """A few shapes, found by base label as `AccountQueue.compatible` finds them."""

    def __init__(self, shapes: list[Shape]) -> None:
        self.shapes = shapes
        self.by_label: dict[str | None, list[Shape]] = {}
        if len(shapes) > _SCAN:
            for shape in shapes:
                self.by_label.setdefault(shape.label, []).append(shape)

    def compatible(self, labels: frozenset[str]) -> Iterable[Shape]:
        if len(self.shapes) <= _SCAN:
            return [s for s in self.shapes if s.base <= labels]
        found = list(self.by_label.get(None, ()))
        for label in labels:
            found.extend(self.by_label.get(label, ()))
        return [s for s in found if s.base <= labels]


class LevelView:
    """The six levels of one pass over a queue that does not grow while the pass runs."""

    def __init__(self, queue: Queue, levels: dict[AccountId, int],
                 throttled: dict[Shape, None], no_free: set[AccountId],
                 indexed: Callable[[AccountQueue], bool]) -> None:
        """`levels`: every queued account's level (OUT when left out); `throttled`: shapes
        of accounts at paid levels whose fanout group has no paid slot left."""
        self.levels = levels
        self.throttled = throttled
        self.no_free = no_free
        self.indexed = indexed
        self.at: list[list[AccountQueue]] = [[] for _ in range(FREE_BUCKET + 1)]
        # Requests at each level (the free one's tail included once it is added).
        self.size = [0] * (FREE_BUCKET + 1)
        for account_id, account in queue.accounts.items():
            level = levels[account_id]
            if level != OUT:
                self.at[level].append(account)
                self.size[level] += account.size
        self.moved_free = [s for s in throttled if s.account.id not in no_free]
        for shape in throttled:
            self.size[levels[shape.account.id]] -= len(shape)
        self.size[FREE_BUCKET] += sum(len(s) for s in self.moved_free)
        # What the pass appends to the free level after each paid one, in order.
        self.tail: list[list[Shape]] = []
        self._extras: dict[int, _Shapes] = {}
        self._plans: dict[tuple[AgentId, int, bool, bool],
                          tuple[float, list[list[Shape]]]] = {}
        # Whether a worker's match list at a level is too long to sort, decided the first
        # time it is asked for, so that its provisioned part and its whole agree.
        self._unsorted: dict[tuple[AgentId, int, bool], bool] = {}
        self._floors: dict[int, float] = {}

    def level_of(self, shape: Shape) -> int:
        level = self.levels[shape.account.id]
        if level < FREE_BUCKET and shape in self.throttled:
            return OUT if shape.account.id in self.no_free else FREE_BUCKET
        return level

    def add_tail(self, shapes: list[Shape]) -> None:
        self.tail.append(shapes)
        self.size[FREE_BUCKET] += sum(len(s) for s in shapes)

    def matches(self, worker: Worker, p: int, cut: bool, skip: Skip,
                provisioned_only: bool = False) -> Iterator[Request]:
        """The worker's match list at level p, as `Pass` would build it at this moment
        (the cut and the order fixed the first time it is asked for in the pass), less
        the shapes `skip` passes over and, with `provisioned_only`, those whose
        provisionable labels the worker lacks; requests taken meanwhile are not met
        again. (Most shapes of a queue whose jobs prefer groups are another group's: a
        provisioned walk that leaves them out of its plan never looks at them.)"""
        key = (worker.id, p, cut, provisioned_only)
        plan = self._plans.get(key)
        if plan is None:
            since = worker.modified_time if cut else float("inf")
            runs = (self._plan(worker, p, cut, since, provisioned_only)
                    if since >= self._floor(p) else [])
            plan = self._plans[key] = (since, runs)
        return self._walk(*plan, skip) if plan[1] else iter(())

    @staticmethod
    def _walk(since: float, runs: list[list[Shape]], skip: Skip) -> Iterator[Request]:
        for run in runs:
            # Decided as each run starts: what `skip` passes over stays passed over.
            streams = [s.stream(since) for s in run if len(s) and not skip(s.any())]
            if len(streams) == 1:
                for _, request in streams[0]:
                    yield request
            elif streams:
                merged: Iterator[tuple[OrderKey, Request]] = heapq.merge(*streams)
                for _, request in merged:
                    yield request

    def _floor(self, p: int) -> float:
        """The earliest examined time at level p: a worker that last changed before it
        has nothing to look at there (most workers, most passes)."""
        floor = self._floors.get(p)
        if floor is None:
            # Accounts' stamps cover their stamped requests; their exceptions the rest.
            floor = min((a.stamp for a in self.at[p]), default=_NEVER)
            shapes = list(self._extras_at(p).shapes)
            if p == FREE_BUCKET:  # complete once the free level is first looked at
                shapes.extend(s for segment in self.tail for s in segment)
            floor = min([floor, *map(_earliest, shapes)])
            self._floors[p] = floor
        return floor

    def _plan(self, worker: Worker, p: int, cut: bool, since: float,
              provisioned_only: bool) -> list[list[Shape]]:
        """Shapes to walk, in runs: each run merged in level order, the runs in turn.

        Upstream sorts a match list by quality (stably), so the runs are, per quality
        from the highest: the level's shapes of that quality, then each tail segment's;
        a list of MAX_SORTED_MATCHES or more is left unsorted: the level, then the tail.

        Worked example, the free level: shapes A (base {x}) and B ({}) sit there, and
        the pass appended shape C ({x}) after level 1 and D ({}) after level 3. Upstream's
        list is A+B merged by (examined, enqueue, id), then C, then D; sorting it stably
        by quality gives [A, C] then [B, D], so the runs are [A], [C], [B], [D], and an
        old request of C still comes after a new one of A.
        """
        labels = worker.labels
        found = self._gather(labels, p, since)
        segments = ([[s for s in segment if s.base <= labels] for segment in self.tail]
                    if p == FREE_BUCKET else [])
        decided = (worker.id, p, cut)
        unsorted = self._unsorted.get(decided)
        if unsorted is None:
            unsorted = self._unsorted[decided] = self._at_least(
                MAX_SORTED_MATCHES, since, [found, *segments])
        if provisioned_only:
            found = [s for s in found if s.provisionable <= labels]
            segments = [[s for s in seg if s.provisionable <= labels] for seg in segments]
        if unsorted:
            runs = [found, *segments]
        else:
            qualities = {s.quality for s in found}
            qualities.update(s.quality for segment in segments for s in segment)
            runs = []
            for quality in sorted(qualities, reverse=True):
                runs.append([s for s in found if s.quality == quality])
                runs.extend([s for s in segment if s.quality == quality]
                            for segment in segments)
        return [run for run in runs if run]

    @staticmethod
    def _at_least(n: int, since: float, runs: list[list[Shape]]) -> bool:
        """Whether the shapes hold `n` or more requests examined no later than `since`:
        counted (by bisection, per shape) only when their sizes allow as many."""
        if sum(len(s) for run in runs for s in run) < n:
            return False
        return sum(s.count_upto(since) for run in runs for s in run) >= n

    def _gather(self, labels: frozenset[str], p: int, since: float) -> list[Shape]:
        """Every shape at level p the worker can take that may hold a request examined
        no later than `since` (a few more do no harm: their streams are empty).

        An account's stamped requests were all examined at its stamp, so when that is
        later than `since` only its exceptions (fresh or frozen shapes) can hold any.
        """
        found: dict[Shape, None] = {}
        for account in self.at[p]:
            if account.stamp <= since:
                for shape in account.compatible(labels, self.indexed(account)):
                    if self.level_of(shape) == p:
                        found[shape] = None
        found.update(dict.fromkeys(self._extras_at(p).compatible(labels)))
        return list(found)

    def _extras_at(self, p: int) -> _Shapes:
        extras = self._extras.get(p)
        if extras is None:
            shapes = [s for a in self.at[p] for s in a.exceptions if self.level_of(s) == p]
            if p == FREE_BUCKET:
                shapes.extend(self.moved_free)  # their stamp is not their level's
            extras = self._extras[p] = _Shapes(shapes)
        return extras
