"""Finding a worker's candidate requests in a level without looking at every request.

A request can only run on a worker that has all of its base labels, so it is filed under
one of them, its rarest in the level; a worker then looks only under its own labels. For
one worker and a short list a plain scan is cheaper, so the full pass (`reference.py`)
builds this only when many workers meet many requests; the incremental pass keeps its
shapes filed by label in the queue instead, and uses the threshold to decide whether
looking them up by label pays.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter

from scheduler.core.quota.model import Request

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
