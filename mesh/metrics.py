"""The mesh's metrics: one catalog of names, kinds and tags, recorded through ray.util.metrics.

Ray exports them on every node's metrics endpoint (Prometheus text) with a `ray_` prefix
and labels of its own (node, session, worker); the Grafana dashboard in
`mesh/dashboards/` plots them. Tag keys are few and their values bounded: an account, a
priority, a stage or outcome, an agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ray.util import metrics as ray_metrics

Kind = Literal["gauge", "counter", "histogram"]
PREFIX = "actionmesh_"
# What Ray puts before every application metric it exports.
RAY_PREFIX = "ray_"
# Seconds between an actor's samples of what it shows (Ray exports every 10 s by default).
METRICS_INTERVAL = 5.0
# Seconds: from a tenth of a second to a day.
SECONDS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    description: str
    tags: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The series name a scrape shows (histograms add _bucket, _sum and _count)."""
        return RAY_PREFIX + self.name


def _m(name: str, kind: Kind, description: str, *tags: str,
       buckets: tuple[float, ...] = ()) -> Metric:
    return Metric(PREFIX + name, kind, description, tags, buckets)


CATALOG: tuple[Metric, ...] = (
    # The scheduler, sampled from its state.
    _m("queue_depth", "gauge", "Queued actions by account and the priority they would run at "
       "now (priority 'free' is the free bucket; account '-' is no account)",
       "account", "priority"),
    _m("actions", "gauge", "Actions the scheduler holds or has finished, by stage", "stage"),
    _m("agents", "gauge", "Agents in the pool by state", "state"),
    _m("agent_cpu_percent", "gauge", "An agent's machine CPU use, percent of all its CPUs",
       "agent"),
    _m("agent_memory_used_bytes", "gauge", "An agent's machine memory in use", "agent"),
    _m("agent_memory_total_bytes", "gauge", "An agent's machine memory", "agent"),
    _m("agent_reserved_cpus", "gauge", "CPUs reserved by the attempts on an agent", "agent"),
    _m("agent_capacity_cpus", "gauge", "CPUs an agent offers, after its capacity percent",
       "agent"),
    _m("agent_reserved_memory_bytes", "gauge", "Memory reserved by the attempts on an agent",
       "agent"),
    _m("agent_capacity_memory_bytes", "gauge", "Memory an agent offers, after its capacity "
       "percent", "agent"),
    _m("agent_running", "gauge", "Attempts running (or starting) on an agent", "agent"),
    _m("link_agents", "gauge", "Agents by how they report: their gRPC stream or Ray calls",
       "link"),
    _m("store_read_only", "gauge", "1 while the state store cannot be written"),
    _m("scheduler_started_seconds", "gauge", "When this scheduler process started (Unix "
       "time); it moves at each restart"),
    # The scheduler, counted from its event log as it is written.
    _m("actions_accepted_total", "counter", "Actions accepted"),
    _m("actions_finished_total", "counter", "Actions that ended, by outcome", "outcome"),
    _m("reschedules_total", "counter", "Attempts lost or failed whose action was queued again"),
    _m("preemptions_total", "counter", "Attempts stopped for higher-priority work"),
    _m("quarantines_total", "counter", "Actions failed for killing agents in a row"),
    _m("priority_moves_total", "counter", "Running attempts moved between priorities by the "
       "quota pass", "direction"),
    _m("agent_events_total", "counter", "Agents joining, leaving, going silent and coming "
       "back", "event"),
    _m("scheduler_starts_total", "counter", "Scheduler starts (1 per process: a restart "
       "shows as a new series start)"),
    _m("reconciled_total", "counter", "What agents said they ran when they registered: "
       "attempts kept, stopped (unknown or superseded), or ended while unseen", "outcome"),
    _m("queue_wait_seconds", "histogram", "From queued (accepted or queued again) to "
       "assigned", buckets=SECONDS),
    _m("run_seconds", "histogram", "From an attempt's start to the action's end, by outcome",
       "outcome", buckets=SECONDS),
    # The log relay.
    _m("relay_memory_bytes", "gauge", "Log text the relay holds in memory"),
    _m("relay_disk_bytes", "gauge", "Log text the relay has on disk"),
    _m("relay_attempts", "gauge", "Attempts whose logs the relay holds"),
    _m("relay_waiting_readers", "gauge", "Log readers parked in a long poll"),
    _m("relay_skipped_lines_total", "counter", "Lines the relay skipped (over a line or "
       "batch limit)"),
    # The gRPC gateway.
    _m("gateway_streams", "gauge", "Open Submit and Watch streams of the gRPC gateway"),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOG}


class Recorder:
    """The catalog's metrics as Ray metric objects, each made on its first use in the
    process that records it (an actor)."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}

    def _get(self, name: str) -> Any:
        made = self._made.get(name)
        if made is None:
            spec = BY_NAME[name]
            if spec.kind == "gauge":
                made = ray_metrics.Gauge(spec.name, spec.description, tag_keys=spec.tags)
            elif spec.kind == "counter":
                made = ray_metrics.Counter(spec.name, spec.description, tag_keys=spec.tags)
            else:
                made = ray_metrics.Histogram(spec.name, spec.description,
                                             boundaries=list(spec.buckets),
                                             tag_keys=spec.tags)
            self._made[name] = made
        return made

    def set(self, name: str, value: float, **tags: str) -> None:
        self._get(PREFIX + name).set(value, tags=tags or None)

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        if value > 0:
            self._get(PREFIX + name).inc(value, tags=tags or None)

    def observe(self, name: str, value: float, **tags: str) -> None:
        self._get(PREFIX + name).observe(value, tags=tags or None)
