"""The full pass: the pass's requests worked out from the whole queue every time.

This is how `run.Pass` found its requests before it became incremental, kept as the
reference it must agree with (tests/unit/test_quota_incremental.py). Each pass sorts the
whole queue into its six levels, builds and sorts a worker's whole match list, scans the
queue for zero-CPU work, and stamps every request it examined; the decisions on top are
`Pass`'s own, shared.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

from scheduler.core.quota.index import WORTH_INDEXING, LevelIndex
from scheduler.core.quota.model import EPSILON, MAX_SORTED_MATCHES, QuotaAssignment, Request, Worker
from scheduler.core.quota.run import Gate, Pass, _admit_all
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.vector import FREE_BUCKET
from scheduler.core.quota.view import Skip

# Requests are taken least recently examined first; upstream leaves ties to map order.
_ORDER = attrgetter("examined_time", "enqueue_time", "id")
_QUALITY = attrgetter("quality")


def run_once(qs: QuotaScheduler, gate: Gate | None = None) -> list[QuotaAssignment]:
    """`run.run_once`, the long way."""
    return FullPass(qs, gate or _admit_all).run()


class FullPass(Pass):
    def __init__(self, qs: QuotaScheduler, gate: Gate) -> None:
        super().__init__(qs, gate)
        self.lists: list[list[Request]] = [[] for _ in range(FREE_BUCKET + 1)]
        # Match lists per (worker, level, cut), as upstream computes them once per level for
        # both idle steps; entries matched since are skipped where the list is used.
        self._match_cache: dict[tuple[str, int, bool], list[Request]] = {}
        self._indexes: dict[int, LevelIndex | None] = {}
        self.sorted_len: list[int] = []

    def _prioritize(self) -> None:
        qs, lists, fanout, no_free = self.qs, self.lists, self.fanout, self.no_free
        free = lists[FREE_BUCKET]
        levels: dict[str, int] = {}  # an account's level is the same for all its requests
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

    def _candidates(self, worker: Worker, p: int, cut: bool, skip: Skip) -> Iterable[Request]:
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
