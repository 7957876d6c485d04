"""The full quota pass, the reference the incremental one is held to (for tests).

This is how `run.Pass` found its requests before it became incremental: each pass sorts
the whole queue into its six levels, builds and sorts a worker's whole match list (with
a label index, `LevelIndex`, when many workers meet many requests), scans the queue for
zero-CPU work, and stamps every request it examined. The decisions on top are `Pass`'s
own, shared, so a test comparing the two (test_quota_incremental.py) tests where the
passes find their requests.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from operator import attrgetter

from mesh.schema import EPSILON, AccountId, AgentId
from scheduler.core.quota.model import MAX_SORTED_MATCHES, QuotaAssignment, Request, Worker
from scheduler.core.quota.run import Gate, Pass, reservations_fit
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.vector import FREE_BUCKET
from scheduler.core.quota.view import Skip

# Workers with room times requests in the level above which an index pays for itself.
WORTH_INDEXING = 50_000


class LevelIndex:
    """Positions in a level's list, filed by each request's rarest base label."""

    def __init__(self, requests: list[Request], sorted_upto: int) -> None:
        """`requests[:sorted_upto]` are in examined-time order (the rest were appended)."""
        self.sorted_upto = sorted_upto
        self.has_tail = len(requests) > sorted_upto
        self.examined = [r.examined_time for r in requests[:sorted_upto]]
        counts = Counter(label for r in requests for label in r.base_labels)
        self.by_label: dict[str, list[int]] = {}
        self.unlabelled: list[int] = []
        for position, request in enumerate(requests):
            if not request.base_labels:
                self.unlabelled.append(position)
                continue
            rarest = min(request.base_labels, key=lambda label: (counts[label], label))
            self.by_label.setdefault(rarest, []).append(position)

    def candidates(self, labels: frozenset[str], since: float) -> list[int]:
        """Positions, in list order, of every request examined no later than `since` that
        a worker with `labels` might take (a superset: the caller checks base labels).

        The examined-time order of the sorted part makes the cut a prefix, so a worker
        that nothing new was examined for since it changed costs a bisect, not a scan.
        """
        limit = bisect_right(self.examined, since)
        if limit == 0 and not self.has_tail:
            return []
        found: list[int] = []
        for positions in self._buckets(labels):
            # Positions before `limit`, and any appended after the sorted part.
            found.extend(positions[:bisect_left(positions, limit)])
            found.extend(positions[bisect_left(positions, self.sorted_upto):])
        found.sort()
        return found

    def _buckets(self, labels: frozenset[str]) -> list[list[int]]:
        buckets = [self.unlabelled] if self.unlabelled else []
        if len(self.by_label) < len(labels):
            buckets.extend(b for label, b in self.by_label.items() if label in labels)
        else:
            buckets.extend(b for label in labels if (b := self.by_label.get(label)))
        return buckets


# Requests are taken least recently examined first; upstream leaves ties to map order.
_ORDER = attrgetter("examined_time", "enqueue_time", "id")
_QUALITY = attrgetter("quality")


def run_once(qs: QuotaScheduler, gate: Gate | None = None) -> list[QuotaAssignment]:
    """`run.run_once`, the long way."""
    return FullPass(qs, gate or reservations_fit).run()


class FullPass(Pass):
    def __init__(self, qs: QuotaScheduler, gate: Gate) -> None:
        super().__init__(qs, gate)
        self.lists: list[list[Request]] = [[] for _ in range(FREE_BUCKET + 1)]
        # Match lists per (worker, level, cut), as upstream computes them once per level for
        # both idle steps; entries matched since are skipped where the list is used.
        self._match_cache: dict[tuple[AgentId, int, bool], list[Request]] = {}
        self._indexes: dict[int, LevelIndex | None] = {}
        self.sorted_len: list[int] = []

    def _prioritize(self) -> None:
        qs, lists, fanout, no_free = self.qs, self.lists, self.fanout, self.no_free
        free = lists[FREE_BUCKET]
        levels: dict[AccountId, int] = {}  # an account's level is the same for all its requests
        for request in sorted(qs.queued.values(), key=_ORDER):
            account = request.account_id
            p = levels.get(account)
            if p is None:
                p = levels[account] = qs.priority_for(request)
            if p < FREE_BUCKET and (fanout is None or not fanout.throttled(request)):
                lists[p].append(request)
            elif account not in no_free:  # else left out: not matched, not marked examined
                free.append(request)
        # Each list is in examined-time order up to here; only the free list grows later.
        self.sorted_len = [len(requests) for requests in self.lists]

    def _unmatched(self, p: int) -> bool:
        matched = self.matched
        return any(r.id not in matched for r in self.lists[p])

    def _candidates(self, worker: Worker, p: int, cut: bool, skip: Skip,
                    provisioned_only: bool = False) -> Iterable[Request]:
        return self._matches(worker, p, cut)  # the caller checks each request in full

    def _matches(self, worker: Worker, p: int, cut: bool = True) -> list[Request]:
        key = (worker.id, p, cut)
        found = self._match_cache.get(key)
        if found is None:
            # (The free list only ever grows before the free pass, which is the first to
            # look at it, so its lists are complete when cached too.)
            matched, labels, requests = self.matched, worker.labels, self.lists[p]
            since = worker.modified_time if cut else float("inf")
            index = self._index(p)
            pool = requests if index is None else [
                requests[i] for i in index.candidates(labels, since)]
            found = [r for r in pool if r.id not in matched
                     and r.examined_time <= since and r.base_labels <= labels]
            if len(found) < MAX_SORTED_MATCHES:
                found.sort(key=_QUALITY, reverse=True)  # stable: list order within a quality
            self._match_cache[key] = found
        return found

    def _index(self, p: int) -> LevelIndex | None:
        """The level's label index, built on first use when it pays for itself. (The free
        list grows only before the free pass, the first to look at it.)"""
        if p not in self._indexes:
            # Every worker may be looked at: those with room, and busy ones for preemption.
            worth = len(self.qs.workers) * len(self.lists[p]) > WORTH_INDEXING
            self._indexes[p] = LevelIndex(self.lists[p], self.sorted_len[p]) if worth else None
        return self._indexes[p]

    def _throttled_to_free(self, p: int) -> None:
        assert self.fanout is not None
        matched, no_free = self.matched, self.no_free
        for request in self.lists[p]:
            if (request.id not in matched and request.account_id not in no_free
                    and self.fanout.throttled(request)):
                self.lists[FREE_BUCKET].append(request)

    def _mark_examined(self) -> None:
        matched, no_free, now = self.matched, self.no_free, self.now
        for requests in self.lists:
            for request in requests:
                if request.id in matched:
                    continue
                if (request.account_id in no_free and self.fanout is not None
                        and self.fanout.throttled(request)):
                    continue
                request.examined_time = now

    def _zero_cpu_waiting(self) -> bool:
        return any(r.cpus <= EPSILON for r in self.qs.queued.values())
