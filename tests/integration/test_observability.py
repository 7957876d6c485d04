"""The mesh seen from outside: its metrics on Ray's endpoints and in Prometheus, its actors by
role in Ray's actor list, and its Grafana dashboard beside Ray's."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from mesh import bootstrap, dashboards, names
from mesh.client import Client
from mesh.metrics import CATALOG
from mesh.schema import GatewayConfig, MeshConfig
from mesh.waiting import wait_until
from tests.integration.cluster import HEAD, SMALL, stop_mesh, tear_down
from tests.integration.debian import needed

pytestmark = pytest.mark.integration
# Ray exports what actors record every this many milliseconds (10 s by default).
REPORT_MS = 1000
SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Client]]:
    """A head with Ray's dashboard and fast metric export, one worker, the mesh with its
    gateway, and a known workload run to its end: 3 actions that succeed, 1 that fails."""
    checks: dict[str, Any] = dict(HEAD["_system_config"])  # type: ignore[call-overload]
    head = {**HEAD, "include_dashboard": True,
            "_system_config": {**checks, "metrics_report_interval_ms": REPORT_MS}}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        cluster.add_node(**SMALL)  # type: ignore[arg-type]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=names.NAMESPACE, log_to_driver=False)
        gateway = GatewayConfig(port=0, host="127.0.0.1", token="t" * 32)  # type: ignore[arg-type]
        bootstrap.up(MeshConfig(state_dir=str(tmp_path_factory.mktemp("state")),
                                kill_grace=2.0, gateway=gateway))
    except BaseException:
        tear_down(cluster)
        raise
    client = Client()
    try:
        handles = client.submit_many([{"command": ["true"]} for _ in range(3)]
                                     + [{"command": ["false"]}])
        outcomes = [h.result(timeout=120).stage.value for h in handles]
        assert sorted(outcomes) == ["failed", "succeeded", "succeeded", "succeeded"]
        yield cluster, client
    finally:
        stop_mesh(cluster)


def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every `ray_actionmesh_` series on every node's metrics endpoint: name -> (labels,
    value) per series."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        for line in text.splitlines():
            match = SERIES.match(line)
            if match is None or not match["name"].startswith("ray_actionmesh_"):
                continue
            labels = dict(LABEL.findall(match["labels"] or ""))
            found.setdefault(match["name"], []).append((labels, float(match["value"])))
    return found


def session_dir() -> Path:
    """This cluster's Ray session directory (the driver's node is the head)."""
    node = ray._private.worker.global_worker.node
    assert node is not None, "not connected"
    return Path(node.get_session_dir_path())


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str,
          **tags: str) -> float | None:
    """The sum over series of `name` whose labels include `tags` (None when there is none)."""
    hits = [v for labels, v in found.get(name, [])
            if all(labels.get(k) == t for k, t in tags.items())]
    return sum(hits) if hits else None


def test_a_scrape_after_a_known_workload_has_every_series_with_its_values(
        watched: tuple[Cluster, Client]) -> None:
    _, client = watched
    [agent] = client.pool()
    agent_id = agent.info.agent_id

    # What the workload must show; sampled gauges may lag a sample (5 s) behind counters.
    expected: list[tuple[str, dict[str, str], float]] = [
        ("ray_actionmesh_actions_accepted_total", {}, 4),
        ("ray_actionmesh_actions_finished_total", {"outcome": "succeeded"}, 3),
        ("ray_actionmesh_actions_finished_total", {"outcome": "failed"}, 1),
        ("ray_actionmesh_actions", {"stage": "failed"}, 1),
        ("ray_actionmesh_queue_wait_seconds_count", {}, 4),
        ("ray_actionmesh_run_seconds_count", {"outcome": "succeeded"}, 3),
        ("ray_actionmesh_agents", {"state": "alive"}, 1),
        ("ray_actionmesh_agent_capacity_cpus", {"agent": agent_id}, 1.0),
        ("ray_actionmesh_agent_reserved_cpus", {"agent": agent_id}, 0.0),
        ("ray_actionmesh_agent_running", {"agent": agent_id}, 0),
        ("ray_actionmesh_agent_events_total", {"event": "joined"}, 1),
        ("ray_actionmesh_link_agents", {"link": "stream"}, 1),
        ("ray_actionmesh_scheduler_starts_total", {}, 1),
        ("ray_actionmesh_store_read_only", {}, 0),
        # The relay holds the 4 attempts' (empty) logs; nothing was ever spilled.
        ("ray_actionmesh_relay_attempts", {}, 4),
        ("ray_actionmesh_relay_disk_bytes", {}, 0),
        ("ray_actionmesh_gateway_streams", {}, 0),
    ]

    def wrong(found: dict[str, list[tuple[dict[str, str], float]]],
              ) -> list[tuple[str, dict[str, str], float | None]]:
        return [(name, tags, value(found, name, **tags)) for name, tags, want in expected
                if value(found, name, **tags) != want]

    wait_until(lambda: wrong(scrape()), lambda off: not off, timeout=60, interval=0.5,
               what="the workload's values on the metrics endpoints (these still differ)")
    found = scrape()
    assert (value(found, "ray_actionmesh_agent_memory_total_bytes", agent=agent_id) or 0) > 0
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in found}
    # Counters and histograms appear once something counted; these have not here.
    quiet = {"ray_actionmesh_reschedules_total", "ray_actionmesh_preemptions_total",
             "ray_actionmesh_quarantines_total", "ray_actionmesh_priority_moves_total",
             "ray_actionmesh_relay_skipped_lines_total", "ray_actionmesh_queue_depth",
             "ray_actionmesh_reconciled_total"}
    missing = {m.exported for m in CATALOG} - shown - quiet
    assert missing == set(), "series the mesh defines but did not export"


def test_prometheus_from_rays_generated_config_scrapes_a_mesh_series(
        watched: tuple[Cluster, Client], tmp_path: Path) -> None:
    binary = needed("prometheus", "prometheus")
    session = session_dir()
    config = session / "metrics" / "prometheus" / "prometheus.yml"
    assert config.exists(), f"Ray generated no Prometheus config at {config}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),  # noqa: SIM115
        cwd=tmp_path)

    def query() -> list[dict[str, object]]:
        url = (f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": 'sum(ray_actionmesh_actions_finished_total{outcome="succeeded"})'}))
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                result: list[dict[str, object]] = json.load(answer)["data"]["result"]
                return result
        except OSError:
            return []  # not listening yet

    try:
        result = wait_until(query, bool, timeout=90, interval=1.0,
                            what="Prometheus answering with the mesh's series")
        assert float(result[0]["value"][1]) == 3.0  # type: ignore[index]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_actor_reads_as_its_role_in_rays_actor_list(
        watched: tuple[Cluster, Client]) -> None:
    _, client = watched
    [agent] = client.pool()
    shown = {a.repr_name for a in list_actors(detail=True, filters=[("state", "=", "ALIVE")])}
    assert {"scheduler", "relay"} <= shown, shown
    assert f"agent {socket.gethostname()} (node {agent.info.node_id[:8]})" in shown, shown
    assert any((name or "").startswith("gateway 127.0.0.1:") for name in shown), shown


def test_the_dashboard_is_installed_where_rays_grafana_provisioning_reads(
        watched: tuple[Cluster, Client]) -> None:
    session = session_dir()
    installed = session / dashboards.RAY_DASHBOARDS / dashboards.DASHBOARD.name
    assert json.loads(installed.read_text())["uid"] == "actionmesh"
    provisioning = session / "metrics" / "grafana" / "provisioning" / "dashboards"
    assert any(str(installed.parent) in f.read_text() for f in provisioning.iterdir()), \
        "Ray's Grafana provisioning does not read the directory the dashboard is in"
    assert os.access(installed, os.R_OK)
