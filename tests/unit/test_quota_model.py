"""The quota port against a plain restatement of the spec (`quota_reference.py`), call by call.

Seeded random scripts interleave every core call for one-slot workers and one-CPU
requests (where the port claims upstream's behaviour), with the port's default
`Quirks()`. After every call the two must hold the same state, exactly: balances and
costs to the float32 bit, times, labels, queues and who runs where at which priority;
after every pass they must have made the same decisions, in order. A script on which
they part is cut down to the fewest calls that still part them, and printed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pprint import pformat
from typing import Any

import pytest

from mesh.schema import AccountConfig, QuotaOptions
from scheduler.core.quota.model import Quirks, QuotaAssignment, Request
from scheduler.core.quota.run import run_once
from scheduler.core.quota.scheduler import NotAssigned, QuotaScheduler
from tests.builders import aid, nid
from tests.unit.quota_reference import Decision, NotRunningThere, Reference, Req

SCRIPTS = 1500  # seeds 0..SCRIPTS-1, the same every run

ACCOUNTS = ["a", "b", "c"]
REQUEST_ACCOUNTS = ["", "a", "a", "b", "b", "c", "z"]  # "" and "z" never have a config
REQUESTS = [f"r{i}" for i in range(12)]
WORKERS = [f"w{i}" for i in range(6)]
# Few labels, so that requests often share them (and fanout groups) in either list.
BASE_LABELS = ["x", "y", "model:a"]
PROVISIONABLE_LABELS = ["x", "y"]
WORKER_LABELS = ["x", "y", "p", "model:a", "model:b", "os:l"]
RATES = [0.0, 0.5, 1.0, 1.1, 2.0, 3.0]
LABEL_LIMITS: list[dict[str, int]] = [{}, {}, {"model": 1}, {"model": 2, "os": 1},
                                      {"mod": 1, "model:a": 1}]
# Beyond +-600 a balance promotes or demotes running work.
BALANCES = [-700.0, -700.0, -1.0, 0.0, 0.5, 5.0, 50.0, 700.0, 700.0]
# Steps that are exact in float32, so that time itself adds no rounding; rarely long
# enough for idle workers to expire, or for an unassigned request to be 46 hours old.
STEPS = [0.0, 0.25, 1.0, 2.5, 7.75, 7.75, 60.0, 60.0, 250.0, 250.0, 400.0, 169_200.0]
# Notifications come a little stale, on time, or a little ahead of the scheduler's clock.
OFFSETS = [0.0, 0.0, 0.25, -0.5]

Call = tuple[Any, ...]
Pool = tuple[bool, float, list[tuple[AccountConfig, list[float]]], list[frozenset[str]]]


def _labels(rng: random.Random, labels: list[str], most: int) -> frozenset[str]:
    return frozenset(rng.sample(labels, rng.randint(0, most)))


def _config(rng: random.Random) -> AccountConfig:
    return AccountConfig(
        charge_rate=[rng.choice(RATES) for _ in range(rng.randint(0, 5))],
        max_charge_seconds=rng.choice([0.0, 10.0, 100.0, 400.0, 1000.0]),
        max_fanout=rng.choice([0, 1, 1, 2]), per_label_task_limits=rng.choice(LABEL_LIMITS),
        disable_free_tasks=rng.random() < 0.3)


def _balance(rng: random.Random) -> list[float]:
    return [rng.choice(BALANCES) for _ in range(rng.randint(0, 5))]


# Each kind of call: how often it comes, and how to make one.
CALLS: dict[str, tuple[int, Callable[[random.Random], Call]]] = {
    "add_request": (10, lambda rng: (
        "add_request", rng.choice(REQUESTS), rng.choice(REQUEST_ACCOUNTS),
        _labels(rng, BASE_LABELS, 2), _labels(rng, PROVISIONABLE_LABELS, 2),
        rng.choice(OFFSETS))),
    "mark_idle": (4, lambda rng: (
        "mark_idle", rng.choice(WORKERS), _labels(rng, WORKER_LABELS, 4),
        rng.choice(OFFSETS))),
    "tick": (5, lambda rng: ("tick", rng.choice(STEPS))),
    "run": (1, lambda rng: ("run",)),
    "update_time": (1, lambda rng: ("update_time", rng.choice(STEPS))),
    "time_goes_back": (1, lambda rng: ("time_goes_back", rng.choice([0.25, 3.0]))),
    "add_account": (1, lambda rng: (
        "add_account", rng.choice(ACCOUNTS), _config(rng), _balance(rng))),
    "modify_account": (1, lambda rng: ("modify_account", rng.choice(ACCOUNTS), _config(rng))),
    "delete_account": (1, lambda rng: ("delete_account", rng.choice(ACCOUNTS))),
    "reset_balance": (1, lambda rng: ("reset_balance", rng.choice(ACCOUNTS))),
    "notify_running": (1, lambda rng: (
        "notify_running", rng.choice(REQUESTS), rng.choice(WORKERS), rng.choice(OFFSETS))),
    "notify_absent": (1, lambda rng: (
        "notify_absent", rng.choice(REQUESTS), rng.choice(OFFSETS))),
    # Mostly (pick < 6) an assigned pair, else the pair given (usually an error for both).
    "unassign": (1, lambda rng: (
        "unassign", rng.randint(0, 7), rng.choice(REQUESTS), rng.choice(WORKERS),
        rng.choice(OFFSETS))),
    "finished": (1, lambda rng: ("finished", rng.choice(REQUESTS), rng.choice(OFFSETS))),
    "forget_worker": (1, lambda rng: (
        "forget_worker", rng.choice(WORKERS), rng.choice(OFFSETS))),
}


def random_script(seed: int) -> tuple[Pool, list[Call]]:
    """A pool with funded accounts and idle workers (so that most passes have paid work to
    place and limits to respect), then 20 to 80 calls."""
    rng = random.Random(seed)
    funded = []
    for _ in range(rng.randint(2, len(ACCOUNTS))):
        balance = _balance(rng)
        funded.append((_config(rng), balance if any(b > 0 for b in balance) else [50.0]))
    workers = [_labels(rng, WORKER_LABELS, 4) for _ in range(rng.randint(2, len(WORKERS)))]
    pool: Pool = (rng.random() < 0.7, rng.choice([30.0, 60.0, 300.0]), funded, workers)
    makers = [make for _, make in CALLS.values()]
    weights = [weight for weight, _ in CALLS.values()]
    script = [rng.choices(makers, weights)[0](rng) for _ in range(rng.randint(20, 80))]
    return pool, script


def port_state(qs: QuotaScheduler) -> dict[str, Any]:
    queued = {r.id: (r.account_id, sorted(r.base_labels), sorted(r.provisionable_labels),
                     r.enqueue_time, r.confirmed_time, r.examined_time)
              for r in qs.queued.values()}
    workers = {w.id: (sorted(w.labels), w.confirmed_time, w.modified_time,
                      [(run.request.id, run.priority, list(run.cost),
                        run.request.confirmed_time) for run in w.running.values()])
               for w in qs.workers.values()}
    return {"now": qs.last_update_time, "configs": qs.configs,
            "balances": {a: list(b) for a, b in qs.balances.items()},
            "queued": queued, "workers": workers}


def reference_state(ref: Reference) -> dict[str, Any]:
    queued = {r.id: (r.account, sorted(r.base), sorted(r.prov), r.enqueued, r.confirmed,
                     r.examined)
              for r in ref.queue.values()}
    workers = {b.id: (sorted(b.labels), b.confirmed, b.modified,
                      [] if b.task is None else [(b.task.req.id, b.task.priority,
                                                  b.task.cost, b.task.req.confirmed)])
               for b in ref.bots.values()}
    return {"now": ref.now, "configs": ref.configs, "balances": ref.balances,
            "queued": queued, "workers": workers}


def _decision(a: QuotaAssignment) -> Decision:
    return Decision(a.kind, a.worker_id, a.request_id, a.priority, a.task_to_abort,
                    a.provision_required, a.time)


class Twins:
    """The port and the reference, given the same calls."""

    def __init__(self, pool: Pool) -> None:
        preemption, expiry, funded, labels = pool
        options = QuotaOptions(disable_preemption=not preemption, agent_expiry=expiry)
        self.port = QuotaScheduler(0.0, options, Quirks())
        self.ref = Reference(0.0, expiry, preemption)
        for account, (config, balance) in zip(ACCOUNTS, funded, strict=False):
            self.call(("add_account", account, config, balance))
        for worker, worker_labels in zip(WORKERS, labels, strict=False):
            self.call(("mark_idle", worker, worker_labels, 0.0))

    def call(self, op: Call) -> None:
        port, ref, kind, args = self.port, self.ref, op[0], op[1:]
        now = ref.now
        if kind == "tick":  # what the mesh does: time moves on, then a pass
            self.call(("update_time", args[0]))
            self.call(("run",))
        elif kind == "run":
            made = [_decision(a) for a in run_once(port)]
            assert made == ref.run_once(), "different decisions"
        elif kind == "update_time":
            port.update_time(now + args[0])
            ref.update_time(now + args[0])
        elif kind == "time_goes_back":
            port.update_time(now - args[0])
            ref.update_time(now - args[0])
        elif kind == "add_account":
            port.add_account(*args)
            ref.add_account(*args)
        elif kind == "modify_account":
            if args[0] in ref.configs:
                port.set_account_config(*args)
                ref.modify_account(*args)
        elif kind == "delete_account":
            port.delete_account(*args)
            ref.delete_account(*args)
        elif kind == "reset_balance":
            port.reset_balance(*args)
            ref.reset_balance(*args)
        elif kind == "add_request":
            request, account, base, provisionable, offset = args
            port.add_request(Request(request, account, base, provisionable, now), now + offset)
            ref.add_request(Req(request, account, base, provisionable, now), now + offset)
        elif kind == "mark_idle":
            port.mark_idle(args[0], args[1], now + args[2])
            ref.mark_idle(args[0], args[1], now + args[2])
        elif kind == "notify_running":
            port.notify_running(args[0], args[1], now + args[2])
            ref.notify_running(args[0], args[1], now + args[2])
        elif kind == "notify_absent":
            port.notify_absent(args[0], now + args[1])
            ref.notify_absent(args[0], now + args[1])
        elif kind == "unassign":
            self.unassign(*args)
        elif kind == "finished":
            port.finished(args[0], now + args[1])
            ref.finished(args[0], now + args[1])
        elif kind == "forget_worker":
            port.forget_worker(args[0], now + args[1])
            ref.forget_worker(args[0], now + args[1])
        else:
            raise AssertionError(f"unknown call {op!r}")
        assert port_state(port) == reference_state(ref), "different states"

    def unassign(self, pick: int, request: str, worker: str, offset: float) -> None:
        running = [(b.task.req.id, b.id) for b in self.ref.bots_by_id() if b.task is not None]
        if running and pick < 6:
            request, worker = running[pick % len(running)]
        t = self.ref.now + offset
        port_refused = ref_refused = False
        try:
            self.port.unassign(aid(request), nid(worker), t)
        except NotAssigned:
            port_refused = True
        try:
            self.ref.unassign(request, worker, t)
        except NotRunningThere:
            ref_refused = True
        assert port_refused == ref_refused, "only one refused to unassign"


def replay(pool: Pool, script: list[Call]) -> None:
    twins = Twins(pool)
    for op in script:
        twins.call(op)


def _parts(pool: Pool, script: list[Call]) -> bool:
    try:
        replay(pool, script)
    except AssertionError:
        return True
    return False


def shortest_parting(pool: Pool, script: list[Call]) -> list[Call]:
    """The script with every run of calls removed that it still parts the two without:
    halves first, then smaller pieces, down to single calls (replays are cheap)."""
    size = len(script) // 2
    while size >= 1:
        start = 0
        while start < len(script):
            shorter = script[:start] + script[start + size:]
            if _parts(pool, shorter):
                script = shorter
            else:
                start += size
        size //= 2
    return script


def test_the_port_decides_and_charges_exactly_as_the_spec_says() -> None:
    for seed in range(SCRIPTS):
        pool, script = random_script(seed)
        if not _parts(pool, script):
            continue
        calls = shortest_parting(pool, script)
        try:
            replay(pool, calls)
        except AssertionError as exc:
            pytest.fail(f"seed {seed}: port and reference part after these calls\n"
                        f"{pformat(calls)}\nfrom the pool {pformat(pool)}:\n{exc}")
