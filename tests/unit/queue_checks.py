"""The quota queue's indexes, checked against the requests they index (for tests)."""

from __future__ import annotations

from collections import Counter

from mesh.schema import EPSILON, ActionId
from scheduler.core.quota.model import Request
from scheduler.core.quota.queue import OrderKey, Queue, Shape


def order(request: Request) -> OrderKey:
    """Where a pass puts a request in its level (upstream's sort plus our tie-breakers)."""
    return request.examined_time, request.enqueue_time, request.id


def check_queue(queue: Queue) -> None:
    """Every index of the queue says what its requests say, and each shape is in order."""
    seen: dict[ActionId, Request] = {}
    groups: dict[tuple[str, ...], set[Shape]] = {}
    labels: Counter[str] = Counter()
    for account_id, account in queue.accounts.items():
        assert account.id == account_id and account.queue is queue
        assert account.size == sum(len(s) for s in account.shapes.values()) > 0
        filed = list(account.unlabelled)
        for label, bucket in account.by_label.items():
            assert bucket, f"empty label bucket {label!r}"
            assert all(s.label == label for s in bucket)
            filed.extend(bucket)
        assert len(filed) == len(set(filed)), "a shape filed twice"
        assert set(filed) == set(account.shapes.values()), "label index out of step"
        assert set(account.exceptions) <= set(filed)
        for key, shape in account.shapes.items():
            assert shape.key == key and shape.account is account and len(shape) > 0
            assert shape.label is None if not shape.base else shape.label in shape.base
            if shape.fresh or not shape.follows:
                assert shape in account.exceptions, "an exception is not listed"
            assert shape.fresh == sorted(shape.fresh, key=order), "fresh part out of order"
            assert shape.stamped == sorted(shape.stamped, key=order), "stamped out of order"
            for request in shape.fresh + shape.stamped:
                assert request.home is shape
                assert request.stamped is (request in shape.stamped)
                assert (request.account_id, request.base_labels, request.provisionable_labels,
                        request.cpus, request.memory) == key
                assert request.id not in seen, f"{request.id} twice"
                seen[request.id] = request
            groups.setdefault(shape.group, set()).add(shape)
            labels.update(shape.base)
    assert seen.keys() == set(queue) and all(queue[i] is r for i, r in seen.items())
    assert sum(map(len, queue.groups.values())) == sum(map(len, groups.values()))
    assert {g: set(s) for g, s in queue.groups.items()} == groups, "group index out of step"
    assert +queue._label_shapes == labels
    assert queue.zero_cpu == sum(r.cpus <= EPSILON for r in seen.values())
