"""Fanout and per-label limits for one pass (the 2019-2022 semantics, §3.9 of QSCHEDULER.md).

Upstream's newest code accepts both settings and ignores them; we enforce them, as the
versions that introduced them did, unless `Quirks.enforce_limits` is off.
"""

from __future__ import annotations

from collections.abc import Mapping

from mesh.poolconfig import GROUP_LABEL_PREFIX
from mesh.schema import AccountConfig, AccountId
from scheduler.core.quota.model import Request, Worker

UNLIMITED = 2**31 - 1

Group = tuple[str, ...]


def fanout_group(request: Request) -> Group:
    """Account plus every label, provisionable and base merged into one sorted set:
    requests of one group count against one limit, whichever list names a label. Work
    with no account shares one group (upstream's group 0), which is always throttled.

    Upstream hashes the sorted concatenation of its two label lists; ours are sets, so a
    label named in both lists counts once (swarming's two lists never overlap). Group
    labels (`mesh-group:big`, which a job's assignment adds) are left out: where the mesh
    sends a job's work must not split its account's fanout into one limit per group.
    """
    if request.group is None:
        labels = request.provisionable_labels | request.base_labels
        request.group = ("",) if not request.account_id else (
            request.account_id,
            *sorted(label for label in labels if not label.startswith(GROUP_LABEL_PREFIX)))
    return request.group


class FanoutCounter:
    """Paid slots left per group in this pass: MaxFanout less what runs or was assigned."""

    def __init__(self, configs: Mapping[AccountId, AccountConfig]) -> None:
        self.configs = configs
        self.remaining: dict[Group, int] = {}

    def _left(self, request: Request) -> tuple[Group, int]:
        group = fanout_group(request)
        left = self.remaining.get(group)
        if left is None:
            config = self.configs.get(request.account_id)
            # No account: no paid slots, as it has no balance either.
            left = 0 if config is None else config.max_fanout or UNLIMITED
            self.remaining[group] = left
        return group, left

    def throttled(self, request: Request) -> bool:
        left = self.remaining.get(request.group if request.group is not None
                                  else fanout_group(request))
        if left is None:
            left = self._left(request)[1]
        return left <= 0

    def count(self, request: Request) -> None:
        group, left = self._left(request)
        self.remaining[group] = left - 1


class LabelCounter:
    """Per account, how much runs on agents with each value of a limited label prefix."""

    def __init__(self, configs: Mapping[AccountId, AccountConfig]) -> None:
        self.configs = configs
        self.counts: dict[tuple[AccountId, str], int] = {}

    @staticmethod
    def keyval(worker: Worker, prefix: str) -> str | None:
        """The worker's label for this prefix: the first in sorted order that starts with
        it (upstream takes the first in set order, which is arbitrary)."""
        for label in sorted(worker.labels):
            if label.startswith(prefix):
                return label
        return None

    def at_limit(self, request: Request, worker: Worker) -> bool:
        config = self.configs.get(request.account_id)
        if config is None:
            return False
        for prefix, limit in config.per_label_task_limits.items():
            value = self.keyval(worker, prefix)
            if value is not None and self.counts.get((request.account_id, value), 0) >= limit:
                return True
        return False

    def count(self, request: Request, worker: Worker) -> None:
        config = self.configs.get(request.account_id)
        if config is None:
            return
        for prefix in config.per_label_task_limits:
            value = self.keyval(worker, prefix)
            if value is not None:
                key = (request.account_id, value)
                self.counts[key] = self.counts.get(key, 0) + 1
