"""The mesh's Grafana dashboard, and installing it where Ray's Grafana provisioning finds it."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("actionmesh")

DASHBOARD = Path(__file__).with_name("actionmesh_grafana_dashboard.json")
# Where, under a Ray session's directory, the Grafana that Ray's generated configuration
# provisions reads its dashboards (it shows them in its "Ray" folder).
RAY_DASHBOARDS = Path("metrics", "grafana", "dashboards")


def install(session_dir: Path) -> Path | None:
    """Copy the dashboard beside Ray's own for this session; the path, or None (logged)
    when the session's directory does not take it."""
    target = session_dir / RAY_DASHBOARDS / DASHBOARD.name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(DASHBOARD.read_bytes())
    except OSError as exc:
        log.warning("the Grafana dashboard was not installed in %s: %s", target.parent, exc)
        return None
    return target
