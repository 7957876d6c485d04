"""The incremental pass decides exactly what the full pass (`quota_full_pass.py`) decides.

Two schedulers live through the same seeded random history of every quota call: accounts
created, changed, poked and deleted (rates, caps, fanout, per-label limits, no free work),
requests added (alone and in bulk, some alike), workers of 1-4 CPUs with random labels,
every notification, unassign, finish, time moving on (and back), snapshots, and passes
whose gate refuses some starts. One runs `run.Pass`, the other `FullPass`.
After every pass their assignments, events and gate calls must be equal; so must
their whole state (balances, running priorities and costs, examined times, modified
times); after every other call, their queues (order and examined times) and indexes.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from mesh.schema import AccountConfig, ActionId, AgentId, QuotaOptions
from scheduler.core.quota import queue as queue_module
from scheduler.core.quota import run as run_module
from scheduler.core.quota import view
from scheduler.core.quota.events import KeepEvents
from scheduler.core.quota.model import NO_ACTION, UPSTREAM, Quirks, Request, TaskRun, Worker
from scheduler.core.quota.scheduler import NotAssigned, QuotaScheduler
from scheduler.core.quota.snapshot import from_snapshot, to_snapshot
from scheduler.core.quota.vector import FREE_BUCKET, vector
from tests.builders import aid
from tests.unit import quota_full_pass as reference
from tests.unit.queue_checks import check_queue

LABELS = ["os:linux", "vpn", "model:a", "model:b", "gpu"]
ACCOUNTS = ["", "a", "b", "c", "x"]  # "x" is never created: an unknown account
REQUESTS = 40
WORKERS = 5
Op = tuple[Any, ...]


def _labels(rng: random.Random, most: int) -> list[str]:
    return rng.sample(LABELS, rng.randint(0, most))


def _op(rng: random.Random) -> Op:
    """One call, with arguments drawn so that names collide and limits bite."""
    n, w = rng.randrange(REQUESTS), f"w{rng.randrange(WORKERS)}"
    kind = rng.choices(
        ["submit", "bulk", "account", "config", "balance", "unconfig", "delete", "reset",
         "join", "time", "run", "running", "absent", "unassign", "finish", "lose",
         "confirm", "touch", "examine", "snapshot", "options"],
        weights=[14, 3, 3, 2, 2, 1, 1, 1, 5, 6, 14, 2, 2, 2, 4, 1, 1, 1, 1, 1, 1])[0]
    if kind == "submit":
        return (kind, n, rng.choice(ACCOUNTS), _labels(rng, 2), _labels(rng, 1),
                rng.choice([0.0, 0.5, 1.0, 1.0, 2.0]), rng.choice([0, 0, 100]))
    if kind == "bulk":  # many alike: deep shapes
        return (kind, n, rng.randint(3, 12), rng.choice(ACCOUNTS), _labels(rng, 1))
    if kind == "account":
        return (kind, rng.choice(ACCOUNTS[1:4]),
                [rng.choice([0, 0.5, 1, 2, 3]) for _ in range(rng.randint(0, 5))],
                rng.choice([0, 10, 100, 1000]), rng.choice([0, 0, 1, 2]),
                rng.random() < 0.3, rng.choice([{}, {}, {"model": 1}, {"os": 2}]),
                [rng.choice([-700, 0, 5, 50, 700]) for _ in range(rng.randint(0, 5))])
    if kind == "config":
        return (kind, rng.choice(ACCOUNTS[1:4]), rng.choice([0, 1, 2]), rng.random() < 0.4,
                rng.choice([{}, {"model": 1}]))
    if kind == "balance":  # as upstream's tests poke balances (even of config-less ones)
        return (kind, rng.choice(ACCOUNTS), [rng.choice([-700, 0, 1, 50, 700])
                                            for _ in range(rng.randint(1, 5))])
    if kind in ("unconfig", "delete", "reset"):
        return (kind, rng.choice(ACCOUNTS[1:4]))
    if kind == "join":
        return (kind, w, _labels(rng, 3), rng.choice([1.0, 2.0, 4.0]), rng.choice([0, 0, 150]))
    if kind == "time":
        return (kind, rng.choice([0, 0.25, 1, 1, 5, 60, 700, -3]))
    if kind == "run":
        return (kind, rng.choice(["all", "all", "some", "none"]))
    if kind in ("running", "unassign"):
        return (kind, n, w)
    if kind in ("absent", "finish"):
        return (kind, n)
    if kind in ("lose", "confirm", "touch"):
        return (kind, w)
    if kind == "examine":
        return (kind, n, rng.choice([0.0, 1.0, 50.0]))
    if kind == "options":
        return (kind, rng.random() < 0.3)
    return (kind,)


class Side:
    """One scheduler and the pass it runs, with what it was told and what it answered."""

    def __init__(self, quirks: Quirks, full: bool) -> None:
        self.events = KeepEvents()
        self.qs = QuotaScheduler(0.0, QuotaOptions(agent_expiry=100), quirks, self.events)
        self.full = full
        self.gate_calls: list[tuple[AgentId, ActionId, ActionId, bool]] = []  # in the last pass
        self.last: run_module.Pass | None = None

    def run(self, gate: Callable[[Worker, Request, TaskRun | None], bool]) -> list[Any]:
        self.gate_calls = []

        def logged(worker: Worker, request: Request, freed: TaskRun | None) -> bool:
            answer = gate(worker, request, freed)
            self.gate_calls.append((worker.id, request.id, freed.request.id if freed else NO_ACTION,
                                    answer))
            return answer

        kind = reference.FullPass if self.full else run_module.Pass
        self.last = kind(self.qs, logged)
        return self.last.run()


def _gate(mode: str, seed: int, passes: int) -> Callable[[Worker, Request, TaskRun | None],
                                                          bool]:
    """Refuses what does not fit, and some starts that do, as a pure function of its
    arguments (not of call order)."""
    def gate(worker: Worker, request: Request, freed: TaskRun | None) -> bool:
        if not run_module.reservations_fit(worker, request, freed):
            return False
        if mode == "all":
            return True
        if mode == "none":
            return False
        text = f"{seed}/{passes}/{worker.id}/{request.id}/{freed is None}"
        return zlib.crc32(text.encode()) % 3 != 0
    return gate


def _apply(side: Side, op: Op, now: float) -> None:
    qs, kind = side.qs, op[0]
    if kind == "submit":
        _, n, account, base, prov, cpus, memory = op
        qs.add_request(Request(aid(f"r{n}"), account, frozenset(base), frozenset(prov), now,
                               cpus, memory), now)
    elif kind == "bulk":
        _, n, count, account, base = op
        for i in range(n, n + count):
            qs.add_request(Request(aid(f"r{i % REQUESTS}"), account, frozenset(base),
                                   enqueue_time=now), now)
    elif kind == "account":
        _, account, rates, seconds, fanout, no_free, limits, balance = op
        qs.add_account(account, AccountConfig(
            charge_rate=rates, max_charge_seconds=seconds, max_fanout=fanout,
            disable_free_tasks=no_free, per_label_task_limits=limits), balance)
    elif kind == "config" and op[1] in qs.configs:
        _, account, fanout, no_free, limits = op
        qs.set_account_config(account, qs.configs[account].model_copy(update={
            "max_fanout": fanout, "disable_free_tasks": no_free,
            "per_label_task_limits": limits}))
    elif kind == "balance":
        qs.balances[op[1]] = vector(op[2])
    elif kind == "unconfig":
        qs.configs.pop(op[1], None)  # the balance stays until the next update_time
    elif kind == "delete":
        qs.delete_account(op[1])
    elif kind == "reset":
        qs.reset_balance(op[1])
    elif kind == "join":
        _, worker, labels, cpus, memory = op
        qs.mark_idle(worker, frozenset(labels), now, cpus, memory)
    elif kind == "time":
        qs.update_time(now)
    elif kind == "running":
        qs.notify_running(aid(f"r{op[1]}"), op[2], now)
    elif kind == "absent":
        qs.notify_absent(aid(f"r{op[1]}"), now)
    elif kind == "unassign":
        with contextlib.suppress(NotAssigned):  # both refuse alike
            qs.unassign(aid(f"r{op[1]}"), op[2], now)
    elif kind == "finish":
        qs.finished(aid(f"r{op[1]}"), now)
    elif kind == "lose":
        qs.forget_worker(op[1], now)
    elif kind == "confirm":
        qs.confirm_worker(op[1], now)
    elif kind == "touch":
        qs.touch_worker(op[1])
    elif kind == "examine" and f"r{op[1]}" in qs.queued:
        qs.queued[aid(f"r{op[1]}")].examined_time = op[2]
    elif kind == "snapshot":
        side.qs = from_snapshot(to_snapshot(qs), qs.quirks, side.events)
    elif kind == "options":
        qs.options = qs.options.model_copy(update={"disable_preemption": op[1]})


def _same_queue(ours: Side, full: Side, where: str) -> None:
    check_queue(ours.qs.queued)
    assert [(r.id, r.examined_time) for r in ours.qs.queued.values()] == \
        [(r.id, r.examined_time) for r in full.qs.queued.values()], where


def _same_state(ours: Side, full: Side, where: str) -> None:
    _same_queue(ours, full, where)
    check_queue(full.qs.queued)
    assert to_snapshot(ours.qs) == to_snapshot(full.qs), where


def drive(seed: int, quirks: Quirks, steps: int, seen: Counter[str]) -> None:
    rng = random.Random(seed)
    ours, full = Side(quirks, full=False), Side(quirks, full=True)
    now, passes = 0.0, 0
    history: list[Op] = []
    for step in range(steps):
        op = _op(rng)
        history.append(op)
        where = f"seed {seed}, step {step}: {op}; history {history[-12:]}"
        if op[0] == "time":
            now += op[1]
        if op[0] != "run":
            for side in (ours, full):
                _apply(side, op, now)
            _same_queue(ours, full, where)  # the rest is the same code on both sides
            continue
        passes += 1
        gate = _gate(op[1], seed, passes)
        mine, theirs = ours.run(gate), full.run(gate)
        assert mine == theirs, where
        assert ours.events.events == full.events.events, where
        assert ours.gate_calls == full.gate_calls, where
        _same_state(ours, full, where)
        _note(seen, ours, mine)
    seen["reprioritized"] += len(ours.events.of_type("reprioritized"))


def _note(seen: Counter[str], side: Side, assignments: list[Any]) -> None:
    """What the pass went through, so the test can show its histories reach every path."""
    assert side.last is not None
    pass_view = side.last.view
    seen["passes"] += 1
    seen["assigned"] += sum(a.kind == "idle" for a in assignments)
    seen["preempted"] += sum(a.kind == "preempt" for a in assignments)
    seen["paid"] += sum(a.priority < FREE_BUCKET for a in assignments)
    seen["free tail"] += bool(pass_view.tail)
    seen["throttled at start"] += bool(pass_view.throttled)
    seen["left out"] += any(level == view.OUT for level in pass_view.levels.values())
    seen["frozen"] += any(not s.follows for a in side.qs.queued.accounts.values()
                          for s in a.shapes.values())
    seen["gate refused"] += sum(not answer for *_, answer in side.gate_calls)


QUIRKS = {"ours": Quirks(), "upstream": UPSTREAM, "no limits": Quirks(enforce_limits=False),
          "cut, chained": Quirks(chained_preemption=True, examined_cut_in_preemption=True)}


@pytest.mark.parametrize("quirks", QUIRKS.values(), ids=QUIRKS.keys())
def test_every_pass_decides_as_the_full_pass(quirks: Quirks) -> None:
    seen: Counter[str] = Counter()
    for seed in range(30):
        drive(seed, quirks, 150, seen)
    for path in ("assigned", "paid", "left out", "gate refused"):
        assert seen[path] > 0, f"no history reached {path}: {seen}"
    if quirks.enforce_limits:
        assert seen["free tail"] and seen["throttled at start"] and seen["frozen"], seen
    assert seen["preempted"] and seen["reprioritized"], seen


def test_every_pass_decides_as_the_full_pass_with_every_shortcut_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Label indexes everywhere, tiny match lists left unsorted, batch merges of stamps."""
    monkeypatch.setattr(run_module, "WORTH_INDEXING", -1)
    monkeypatch.setattr(reference, "WORTH_INDEXING", -1)
    monkeypatch.setattr(view, "MAX_SORTED_MATCHES", 4)
    monkeypatch.setattr(reference, "MAX_SORTED_MATCHES", 4)
    monkeypatch.setattr(view, "_SCAN", 0)
    monkeypatch.setattr(queue_module, "_FEW", 0)
    seen: Counter[str] = Counter()
    for seed in range(100, 120):
        drive(seed, Quirks(), 150, seen)
    assert seen["assigned"] and seen["free tail"], seen
