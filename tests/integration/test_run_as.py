"""`run_as` on a token-auth cluster (a local `ray.init`, as `mesh up` starts one): an action runs
as that user, and can neither read the Ray token nor join the cluster with it."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from mesh import Action, Stage, bootstrap, names
from mesh.client import Client
from mesh.schema import MeshConfig
from mesh.waiting import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")]
USER = "nobody"
TOKEN = Path.home() / ".ray" / "auth_token"


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with tempfile.TemporaryDirectory(prefix="mesh-runas-") as state:
        # A new local cluster: Ray turns token auth on for it and keeps the token in TOKEN.
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 namespace=names.NAMESPACE, log_to_driver=False)
        try:
            bootstrap.up(MeshConfig(state_dir=state, run_as=USER))
            found = Client()
            wait_until(found.pool, lambda p: bool(p) and all(a.load for a in p), timeout=60,
                       what="the agent reporting its load")
            yield found
        finally:
            bootstrap.down(stop_cluster=False)
            ray.shutdown()


def run(client: Client, script: str) -> list[str]:
    handle = client.submit(Action(command=[script], shell=True, timeout=120))
    lines = [line.text for line in handle.logs(follow=True)]
    assert handle.result(timeout=150).stage is Stage.SUCCEEDED, lines
    return lines


def test_actions_run_as_the_user_without_the_token(client: Client) -> None:
    assert TOKEN.exists(), "a local ray.init makes a token-auth cluster"
    assert [a.info.runs_as for a in client.pool()] == [USER]
    lines = run(client, f'id -un; env | grep -c "^RAY_" || true; '
                        f'cat {TOKEN} 2>/dev/null && echo READ-IT || echo refused')
    assert lines == [USER, "0", "refused"], lines


def test_an_action_cannot_join_the_cluster(client: Client) -> None:
    reachable = run(client, f"test -x {sys.executable} && echo yes || echo no")
    if reachable != ["yes"]:
        pytest.skip(f"this Python ({sys.executable}) is not executable by {USER}, so the "
                    "action cannot even try ray.init; the token test above still holds")
    lines = run(client, f"{sys.executable} -c \"import ray; ray.init(address='auto'); "
                        "print('JOINED')\" 2>&1 | tail -3; echo done")
    assert "JOINED" not in lines and lines[-1] == "done", lines
