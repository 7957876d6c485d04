"""`mesh up` with no cluster starts a local one; `mesh submit` runs on it; `mesh down` stops it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from mesh import bootstrap

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env, check=False)


def test_up_starts_a_local_cluster_and_down_stops_it(tmp_path: Path) -> None:
    assert not ray.is_initialized()
    assert not bootstrap.cluster_running(), "another Ray cluster is running on this machine"
    env = {**os.environ, "ACTIONMESH_HOME": str(tmp_path / "home")}
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    try:
        refused = run(["up", "--state-dir", str(shared)], env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"state dir {shared} is writable by group and others" in refused.stderr
        assert list(shared.iterdir()) == []
        up = run(["up", "--state-dir", str(tmp_path / "state")], env)
        assert up.returncode == 0, up.stderr
        assert "mesh is up" in up.stdout and "1 agent(s)" in up.stdout
        assert bootstrap.cluster_running()
        submitted = run(["submit", "--", "echo", "from the local cluster"], env)
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout == "from the local cluster\n"
    finally:
        down = run(["down"], env)
    assert down.returncode == 0, down.stderr
    assert "stopped the local Ray cluster" in down.stdout
    assert not bootstrap.cluster_running()
