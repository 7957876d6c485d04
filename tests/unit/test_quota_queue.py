"""The quota queue keeps its indexes, its order and its bulk stamps in step with every change."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.schema import ActionId
from scheduler.core.quota.model import NO_ACCOUNT, Request
from scheduler.core.quota.queue import Queue, ShapeKey
from tests.builders import aid
from tests.unit.queue_checks import check_queue, order

IDS = st.integers(0, 11)
_add = st.tuples(st.just("add"), IDS, st.sampled_from(["", "a", "b"]),
                 st.sampled_from([(), ("x",), ("x", "y"), ("y",)]),
                 st.sampled_from([0.0, 1.0, 2.0]), st.sampled_from([0.0, 3.0, 7.0]),
                 st.sampled_from([0.0, 1.0, 2.0]))
ops = st.lists(st.one_of(
    _add, _add,
    st.tuples(st.just("del"), IDS),
    st.tuples(st.just("pop"), IDS),
    st.tuples(st.just("examine"), IDS, st.sampled_from([0.0, 3.0, 5.0, 9.0])),
    st.tuples(st.just("stamp"), st.sampled_from(["", "a", "b"]), st.sampled_from([4.0, 8.0]),
              st.lists(st.integers(0, 5), max_size=2)),
    st.tuples(st.just("walk"), st.sampled_from([-1.0, 0.0, 3.0, 4.0, 8.0, float("inf")])),
), max_size=60)


def _key(request: Request) -> ShapeKey:
    return (request.account_id, request.base_labels, request.provisionable_labels,
            request.cpus, request.memory)


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_every_change_keeps_the_indexes_order_and_examined_times_in_step(
        script: list[tuple[Any, ...]]) -> None:
    queue = Queue()
    model: dict[ActionId, float] = {}  # id -> examined time, kept the plain way
    gone: list[tuple[Request, float]] = []
    for op in script:
        kind = op[0]
        if kind == "add":
            _, n, account, labels, cpus, examined, enqueued = op
            request = Request(aid(f"r{n}"), account, frozenset(labels), frozenset(), enqueued,
                              cpus, examined_time=examined)
            if request.id in queue:
                gone.append((queue[request.id], model[request.id]))
            queue[request.id] = request  # a known id is replaced
            model[request.id] = examined
        elif kind in ("del", "pop") and f"r{op[1]}" in queue:
            request_id = aid(f"r{op[1]}")
            removed = queue[request_id]
            if kind == "del":
                del queue[request_id]
            else:
                assert queue.pop(request_id) is removed
            gone.append((removed, model.pop(request_id)))
        elif kind == "examine" and f"r{op[1]}" in queue:
            queue[aid(f"r{op[1]}")].examined_time = op[2]
            model[aid(f"r{op[1]}")] = op[2]
        elif kind == "stamp" and op[1] in queue.accounts:
            _, account_id, now, picks = op
            account = queue.accounts[account_id]
            shapes = list(account.shapes.values())
            left_out = {shapes[i % len(shapes)].key for i in picks}
            queue.stamp(account, now, [account.shapes[k] for k in left_out])
            for request in queue.values():
                if request.account_id == account_id and _key(request) not in left_out:
                    model[request.id] = now
        elif kind == "walk":
            since = op[1]
            for account in queue.accounts.values():
                for shape in account.shapes.values():
                    members = shape.fresh + shape.stamped
                    wanted = sorted((r for r in members if r.examined_time <= since), key=order)
                    assert [r for _, r in shape.stream(since)] == wanted
                    assert [k for k, _ in shape.stream(since)] == [order(r) for r in wanted]
                    assert shape.count_upto(since) == len(wanted)
        check_queue(queue)
        assert {i: r.examined_time for i, r in queue.items()} == model
        assert queue == {i: queue[i] for i in model}
        for request, examined in gone:  # a request leaving takes its examined time along
            assert request.home is None and request.examined_time == examined


def test_a_walk_survives_taking_the_request_it_just_met() -> None:
    queue = Queue(Request(aid(f"r{i}"), enqueue_time=float(i)) for i in range(6))
    queue.stamp(queue.accounts[NO_ACCOUNT], 1.0)
    queue[aid("r9")] = Request(aid("r9"), enqueue_time=9.0)  # fresh: examined 0, before the stamped
    [shape] = queue.accounts[NO_ACCOUNT].shapes.values()
    met = []
    for _, request in shape.stream(float("inf")):
        met.append(request.id)
        if request.id in ("r9", "r2", "r3"):
            del queue[request.id]
    assert met == ["r9", "r0", "r1", "r2", "r3", "r4", "r5"]
    assert list(queue) == ["r0", "r1", "r4", "r5"]
    check_queue(queue)
