"""`run_as` on a token-auth cluster (a local `ray.init`, as `mesh up` starts one): an action runs
as that user, and can neither read the Ray token nor join the cluster with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
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


def test_actions_run_as_the_user_without_the_token(client: Client) -> None:
    assert TOKEN.exists(), "a local ray.init makes a token-auth cluster"
    assert [a.info.runs_as for a in client.pool()] == [USER]
    lines = run_action(client, shell(f'id -un; env | grep -c "^RAY_" || true; '
                                     f'cat {TOKEN} 2>/dev/null && echo READ-IT || echo refused'))
    assert lines == [USER, "0", "refused"], lines


def shell(script: str) -> Action:
    return Action(command=[script], shell=True, timeout=120)


@pytest.fixture(scope="module")
def readable_site() -> Iterator[str]:
    """Our installed packages where USER can read them: the checkout, and with it the
    virtualenv, may sit in a directory only root may enter (CI clones into a private
    temporary directory). Hard links, or a copy across file systems, in one anyone may."""
    root = tempfile.mkdtemp(prefix="mesh-runas-site-")
    try:
        os.chmod(root, 0o755)
        site, target = sysconfig.get_paths()["purelib"], os.path.join(root, "site")
        if subprocess.run(["cp", "-al", site, target], capture_output=True).returncode:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(site, target, symlinks=True)
        yield target
    finally:
        shutil.rmtree(root)


def joiner(client: Client, site: str) -> Action:
    """An action that tries to join the cluster as a driver and prints how far it got: the
    token file it could not open, the cluster refusing its token, or the connection made.
    It runs this Python when USER can, else the machine's own Python 3.11 (told to accept
    a patch-level mismatch), with our packages from `site`."""
    python = os.path.realpath(sys.executable)
    if run_action(client, shell(f"test -x {python} && echo yes || echo no")) != ["yes"]:
        python = shutil.which("python3.11", path="/usr/local/bin:/usr/bin:/bin") or ""
    assert python, f"no Python 3.11 that {USER} can run"
    code = (f"import sys; sys.path.insert(0, {site!r}); import ray; "
            "ray.init(address='auto', log_to_driver=False)")
    script = (f"{python} -c \"{code}\" 2>&1 "
              "| grep -o -m1 -E 'Connected to Ray cluster|InvalidAuthToken|file cannot be opened'; "
              "echo done")
    return shell(script).model_copy(
        # An attacker points Ray at the token where the agent's user keeps it.
        update={"env": {"RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "minor",
                        "RAY_AUTH_TOKEN_PATH": str(TOKEN)}})


def run_action(client: Client, action: Action) -> list[str]:
    handle = client.submit(action)
    lines = [line.text for line in handle.logs(follow=True)]
    assert handle.result(timeout=150).stage is Stage.SUCCEEDED, lines
    return lines


def test_an_action_cannot_join_the_cluster(client: Client, readable_site: str) -> None:
    lines = run_action(client, joiner(client, readable_site))
    # Ray cannot read the token file it was pointed at (or, had it none, the cluster
    # refuses the missing token).
    assert lines in (["file cannot be opened", "done"], ["InvalidAuthToken", "done"]), lines


def test_the_same_action_joins_when_given_the_token(client: Client,
                                                   readable_site: str) -> None:
    # The control: the same command does connect when handed the token, so the refusal
    # above comes from the token it cannot read, not from the way it runs.
    token = TOKEN.read_text().strip()
    action = joiner(client, readable_site).model_copy(update={"secrets": {"RAY_AUTH_TOKEN": token}})
    lines = run_action(client, action)
    # (The driver then aborts: as USER it cannot write its logs into root's session dir.)
    assert lines[0] == "Connected to Ray cluster" and lines[-1] == "done", lines
