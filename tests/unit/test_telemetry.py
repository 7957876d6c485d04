"""The scheduler's metrics from its event log and its state, and the dashboard that plots them."""

from __future__ import annotations

import json
import re
from collections import defaultdict

from mesh import dashboards
from mesh.metrics import BY_NAME, CATALOG, PREFIX
from mesh.protocol import AgentHoldings, HeldAttempt
from mesh.schema import AccountConfig, AccountId, Health
from scheduler.core.state import SchedulerState
from scheduler.telemetry import Telemetry
from tests.builders import action, agent, aid, load, nid, report

Tags = tuple[tuple[str, str], ...]


class Kept:
    """A sink that keeps the last value of each gauge, the total of each counter and every
    observation, by name and tags; it refuses names the catalog does not have."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, Tags], float] = {}
        self.observed: dict[tuple[str, Tags], list[float]] = defaultdict(list)

    def _key(self, name: str, kind: str, tags: dict[str, str]) -> tuple[str, Tags]:
        spec = BY_NAME[PREFIX + name]
        assert spec.kind == kind and set(tags) == set(spec.tags), (name, tags)
        return name, tuple(sorted(tags.items()))

    def set(self, name: str, value: float, **tags: str) -> None:
        self.values[self._key(name, "gauge", tags)] = value

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        key = self._key(name, "counter", tags)
        self.values[key] = self.values.get(key, 0.0) + value

    def observe(self, name: str, value: float, **tags: str) -> None:
        self.observed[self._key(name, "histogram", tags)].append(value)

    def get(self, name: str, **tags: str) -> float | None:
        return self.values.get((name, tuple(sorted(tags.items()))))


def written(core: SchedulerState, telemetry: Telemetry) -> None:
    with core.writing() as changes:
        telemetry.written(changes.events)


def test_the_log_as_written_counts_outcomes_requeues_and_times_waits_and_runs() -> None:
    kept = Kept()
    telemetry = Telemetry(kept, started_at=100.0)
    core = SchedulerState(stale_after=1e9)
    core.agent_joined(agent("n1", cpus=3), 0)
    core.load(nid("n1"), load(), 0)
    core.submit([action("ok"), action("bad"), action("lost")], 0)
    core.step(2)
    for name in ("ok", "bad", "lost"):
        core.report(report(name, 1, "n1", "running"), 3)
    core.report(report("ok", 1, "n1", "succeeded", exit_code=0), 10)
    core.report(report("bad", 1, "n1", "failed", exit_code=1), 4)
    written(core, telemetry)
    core.agent_left(nid("n1"), 20, "gone")  # "lost" goes back to the queue
    written(core, telemetry)
    assert kept.get("scheduler_started_seconds") == 100.0
    assert kept.get("scheduler_starts_total") == 1
    assert kept.get("actions_accepted_total") == 3
    assert kept.get("actions_finished_total", outcome="succeeded") == 1
    assert kept.get("actions_finished_total", outcome="failed") == 1
    assert kept.get("reschedules_total") == 1
    assert kept.get("agent_events_total", event="joined") == 1
    assert kept.get("agent_events_total", event="left") == 1
    assert kept.observed[("queue_wait_seconds", ())] == [2.0, 2.0, 2.0]
    assert kept.observed[("run_seconds", (("outcome", "succeeded"),))] == [7.0]
    assert kept.observed[("run_seconds", (("outcome", "failed"),))] == [1.0]


def test_a_sample_shows_the_queue_the_pool_and_zeroes_what_is_gone() -> None:
    kept = Kept()
    telemetry = Telemetry(kept, started_at=0.0)
    core = SchedulerState(stale_after=1e9, capacity_percent=50)
    core.accounts.create(AccountId("ci"), AccountConfig(charge_rate=[1.0],
                                                        max_charge_seconds=100), 0)
    core.agent_joined(agent("n1", cpus=4), 0)
    core.load(nid("n1"), load(cpu_percent=37.5), 0)
    core.submit([action("r", cpus=2)], 0)
    core.step(1)
    core.submit([action("q1", account="ci", cpus=4), action("q2", cpus=4)], 10)
    core.step(10)
    health = Health(serving=True)
    telemetry.sample(core.counts(), core.accounts.queue_depth(10), core.pool(10), health)
    assert kept.get("queue_depth", account="ci", priority="0") == 1
    assert kept.get("queue_depth", account="-", priority="free") == 1
    assert kept.get("actions", stage="assigned") == 1
    assert kept.get("agents", state="alive") == 1 and kept.get("agents", state="suspect") == 0
    assert kept.get("agent_capacity_cpus", agent="n1") == 2.0
    assert kept.get("agent_reserved_cpus", agent="n1") == 2.0
    assert kept.get("agent_cpu_percent", agent="n1") == 37.5
    assert kept.get("agent_running", agent="n1") == 1
    assert kept.get("store_read_only") == 0
    core.cancel(aid("q1"), 11)
    core.cancel(aid("q2"), 11)
    core.agent_left(nid("n1"), 12)
    telemetry.sample(core.counts(), core.accounts.queue_depth(12), core.pool(12),
                     Health(serving=True, store="read-only", reason="disk full"))
    assert kept.get("queue_depth", account="ci", priority="0") == 0, "a gauge of a gone queue"
    assert kept.get("agent_cpu_percent", agent="n1") == 0, "a gauge of a gone agent"
    assert kept.get("agents", state="alive") == 0
    assert kept.get("store_read_only") == 1


def test_reconciling_counts_what_an_agent_ran_was_told_to_stop_and_ended_unseen() -> None:
    kept = Kept()
    held = AgentHoldings(running=[HeldAttempt(action_id=aid("a"), attempt=1),
                                  HeldAttempt(action_id=aid("b"), attempt=1)],
                         ended=[report("c", 1, "n1", "succeeded", exit_code=0)])
    Telemetry(kept, 0.0).reconciled(held, stopped=1)
    assert [kept.get("reconciled_total", outcome=o) for o in ("kept", "stopped", "ended")] \
        == [1, 1, 1]


def test_the_dashboard_plots_every_series_the_mesh_exports_and_no_other() -> None:
    board = json.loads(dashboards.DASHBOARD.read_text())
    assert board["uid"] == "actionmesh"
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    plotted = {re.sub(r"_(bucket|sum|count)$", "", name) if not name.endswith("_total")
               else name for e in exprs for name in re.findall(r"ray_actionmesh_\w+", e)}
    exported = {m.exported for m in CATALOG}
    assert plotted - exported == set(), "a chart of a series nobody exports"
    assert exported - plotted == set(), "a series no chart shows"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
