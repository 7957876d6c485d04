"""The CLI run as a subprocess, and the README's Python example run step by step."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import pty
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from mesh import InvalidInput, Stage, bootstrap, calls, names
from mesh.errors import StateCorrupt
from mesh.protocol import AttemptReport
from mesh.schema import MeshConfig
from mesh.waiting import wait_until
from scheduler.actor import SchedulerActor
from scheduler.store import DB_FILE
from tests.integration.cluster import ROOT, Accounts, Mesh, mesh_cli, scheduler_pid

pytestmark = pytest.mark.integration


def test_submit_streams_output_and_exits_with_the_action_exit_code(mesh: Mesh) -> None:
    done = mesh_cli(mesh, "submit", "--label", "pool:small", "--", "sh", "-c",
                    "echo out-line; echo err-line >&2; exit 3")
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["out-line"]
    assert "err-line" in done.stderr and "failed" in done.stderr


def test_submit_success_exits_zero(mesh: Mesh) -> None:
    done = mesh_cli(mesh, "submit", "--cpus", "1", "--memory", "64M", "--timeout", "1m", "--",
                    "echo", "hello world")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello world\n"


def test_unplaceable_submit_is_refused_at_once(mesh: Mesh) -> None:
    done = mesh_cli(mesh, "submit", "--cpus", "512", "--", "true")
    assert done.returncode == 3
    assert "unplaceable" in done.stderr and "512 CPUs" in done.stderr


def test_a_mistyped_option_is_an_error_and_the_first_word_begins_the_command(
        mesh: Mesh) -> None:
    before = len(mesh.client.list())
    done = mesh_cli(mesh, "submit", "--secrte", "X=1", "--", "sh", "-c", "true")
    assert done.returncode == 2 and "No such option '--secrte'" in done.stderr, done.stderr
    assert len(mesh.client.list()) == before, "nothing was submitted"
    done = mesh_cli(mesh, "submit", "--label", "pool:small", "sh", "-c", "echo $0 -n", "x")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "x -n\n", "the options after the first word are the command's"


def test_a_command_prints_only_its_own_output(mesh: Mesh) -> None:
    # As a user runs it: the cluster found by `auto`, where Ray warns about its token.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    control = subprocess.run(
        [sys.executable, "-c", "import ray; ray.init(address='auto', logging_level='WARNING')"],
        capture_output=True, text=True, timeout=120, env=env, check=False)
    assert control.returncode == 0, control.stderr
    if not control.stderr:
        pytest.skip("Ray says nothing to a plain driver here (it warns only where a token "
                    "file exists): nothing to keep off the terminal")
    done = subprocess.run([sys.executable, "-m", "mesh.cli", "--address", "auto", "status"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "Ray's warnings and chatter stay off the user's terminal"


def test_bad_input_names_the_field(mesh: Mesh) -> None:
    done = mesh_cli(mesh, "submit", "--label", "bad label", "--", "true")
    assert done.returncode == 2
    assert "labels" in done.stderr and "'bad label'" in done.stderr
    assert "Traceback" not in done.stderr


def test_status_json_lists_actions_with_id_and_stage(mesh: Mesh) -> None:
    submitted = mesh_cli(mesh, "submit", "--detach", "--id", "cli-status-1", "--", "true")
    assert submitted.stdout.strip() == "cli-status-1"
    mesh.client.handle("cli-status-1").result(timeout=60)
    listing = json.loads(mesh_cli(mesh, "status", "--json", "--stage", "succeeded",
                                  "--limit", "10000").stdout)
    assert listing["cursor"] is None, "one page holds them all"
    assert {"id": "cli-status-1", "stage": "succeeded"}.items() <= \
        next(a for a in listing["actions"] if a["id"] == "cli-status-1").items()
    first = json.loads(mesh_cli(mesh, "status", "--json", "--limit", "1").stdout)
    second = json.loads(mesh_cli(mesh, "status", "--json", "--limit", "1", "--after",
                                 str(first["cursor"])).stdout)
    assert first["actions"][0]["id"] != second["actions"][0]["id"], "the cursor moves on"
    one = mesh_cli(mesh, "status", "cli-status-1")
    assert "succeeded" in one.stdout


def test_logs_from_an_offset_and_cancel(mesh: Mesh) -> None:
    mesh_cli(mesh, "submit", "--detach", "--id", "cli-logs-1", "--", "seq", "1", "10")
    mesh.client.handle("cli-logs-1").result(timeout=60)
    assert mesh_cli(mesh, "logs", "cli-logs-1", "--from", "7").stdout.split() == ["8", "9", "10"]
    mesh_cli(mesh, "submit", "--detach", "--id", "cli-cancel-1", "--", "sleep", "300")
    cancelled = mesh_cli(mesh, "cancel", "cli-cancel-1")
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    missing = mesh_cli(mesh, "logs", "no-such-action")
    assert missing.returncode == 2 and "no-such-action" in missing.stderr


def test_agents_and_up_on_a_running_cluster(mesh: Mesh) -> None:
    agents = json.loads(mesh_cli(mesh, "agents", "--json").stdout)
    assert {a["info"]["node_id"] for a in agents} == {mesh.big_id, mesh.small_id}
    assert all(a["link"] == "stream" and a["link_since"] for a in agents), agents
    table = mesh_cli(mesh, "agents").stdout
    assert "pool:big" in table and "LOAD" in table
    # Which way each agent talks, and for how long (e.g. `stream 12s`).
    assert len(re.findall(r"\bstream \d+[smhd]\b", table)) == 2, table
    again = mesh_cli(mesh, "up")
    assert again.returncode == 0 and "2 agent(s)" in again.stdout


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, "README has no python example"
    return match.group(1)


def test_readme_python_example_step_by_step(mesh: Mesh, accounts: Accounts) -> None:
    accounts.own("ci")  # the example creates it
    namespace: dict[str, Any] = {}
    out = io.StringIO()
    for statement in ast.parse(readme_example()).body:
        code = compile(ast.Module(body=[statement], type_ignores=[]), "README.md", "exec")
        with contextlib.redirect_stdout(out):
            exec(code, namespace)
    printed = out.getvalue().splitlines()
    assert "stdout hello" in printed and "stderr oops" in printed
    assert namespace["result"].stage is Stage.SUCCEEDED
    assert namespace["quick"].stage is Stage.SUCCEEDED
    assert [h.id for h in namespace["many"]] == ["build-0", "build-1", "build-2"]
    assert all(a.load is not None for a in namespace["client"].pool())


SECOND_CLUSTER = """
import sys
import ray
from mesh import bootstrap, names
from mesh.errors import StateDirInUse
from mesh.schema import MeshConfig
ray.init(address="local", num_cpus=1, include_dashboard=False, namespace=names.NAMESPACE,
         log_to_driver=False)
try:
    bootstrap.up(MeshConfig(state_dir=sys.argv[1]), timeout=60)
except StateDirInUse as exc:
    print(exc)
    sys.exit(3)
"""


def _pinged(actor: Any) -> float | StateCorrupt:
    try:
        answer: float = calls.call(actor.ping)
        return answer
    except StateCorrupt as exc:
        return exc


def test_a_scheduler_that_cannot_read_its_state_says_why_and_tries_again(
        mesh: Mesh, tmp_path: Path) -> None:
    # Ray does not restart an actor whose constructor raised: one that raised on a full
    # disk or a damaged file would leave the mesh down until someone stepped in.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / DB_FILE).write_bytes(b"not a state file " * 512)
    actor = SchedulerActor.remote(MeshConfig(state_dir=str(state)))  # type: ignore[attr-defined]
    try:
        assert "cannot be used" in str(_pinged(actor))
        assert "cannot be used" in str(_pinged(actor)), "still, before its next try"
        (state / DB_FILE).rename(tmp_path / "moved-away.db")  # what the error says to do
        wait_until(lambda: _pinged(actor), lambda answer: isinstance(answer, float),
                   timeout=30, what="the state read at a later try")
        assert calls.call(actor.health).store == "ok"
    finally:
        ray.kill(actor)


def test_a_second_cluster_on_a_state_dir_in_use_is_refused(mesh: Mesh) -> None:
    before = sorted(p.name for p in Path(mesh.config.state_dir).rglob("*"))
    second = subprocess.run([sys.executable, "-c", SECOND_CLUSTER, mesh.config.state_dir],
                            capture_output=True, text=True, timeout=180, cwd=ROOT, check=False)
    assert second.returncode == 3, second.stdout + second.stderr[-3000:]
    assert "in use by the scheduler of cluster" in second.stdout
    assert mesh.cluster.gcs_address in second.stdout, "the holder is not named"
    assert sorted(p.name for p in Path(mesh.config.state_dir).rglob("*")) == before
    handle = mesh.client.submit({"command": ["echo", "still mine"]})
    assert handle.result(timeout=60).stage is Stage.SUCCEEDED


def test_a_poison_report_and_an_infinite_quota_config_are_refused_without_a_restart(
        mesh: Mesh) -> None:
    pid = scheduler_pid()
    scheduler = bootstrap.scheduler_handle()
    poison: dict[str, Any] = {"action_id": "x", "attempt": 1, "agent_id": mesh.big_id,
                              "stage": "failed", "time": time.time(), "exit_code": 2**70}
    with pytest.raises(InvalidInput, match="exit_code"):
        calls.call(scheduler.report_attempt, poison)
    # A model made without validation and pickled across Ray is checked all the same.
    with pytest.raises(InvalidInput, match="exit_code"):
        calls.call(scheduler.report_attempt, AttemptReport.model_construct(**poison))
    with pytest.raises(InvalidInput, match="charge_rate"):
        mesh.client.create_account("infinite", charge_rate=[1e308], max_charge_seconds=1e8)
    assert "infinite" not in [a.id for a in mesh.client.accounts()]
    assert mesh.client.submit({"command": ["true"]}).result(timeout=60).ok
    assert scheduler_pid() == pid, "the scheduler restarted"


def test_a_secret_runs_masked_and_is_never_read_back(mesh: Mesh, tmp_path: Path) -> None:
    value = f"s3cr3t-{os.getpid()}-deploy"
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"# deploy credentials\nDEPLOY_TOKEN={value}\n")
    done = mesh_cli(mesh, "submit", "--id", "cli-secret-1", "--secret-file", str(secrets),
                    "--secret", "OTHER=two-words here", "--env", "PLAIN=visible", "--shell",
                    "--", 'echo "token $DEPLOY_TOKEN other $OTHER plain $PLAIN"; '
                    # The value must not be in the command, which is not secret.
                    'case "$DEPLOY_TOKEN" in s3cr3t-*-deploy) echo "it got the value";; esac')
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["token *** other *** plain visible", "it got the value"]
    shown = mesh_cli(mesh, "status", "--json", "cli-secret-1")
    assert value not in shown.stdout and "two-words" not in shown.stdout
    assert json.loads(shown.stdout)["action"]["secrets"] == {"DEPLOY_TOKEN": "***",
                                                             "OTHER": "***"}
    listed = mesh_cli(mesh, "status", "--json", "--limit", "10000")
    assert value not in listed.stdout and "cli-secret-1" in listed.stdout
    state = Path(mesh.config.state_dir)
    stored = b"".join(p.read_bytes() for p in state.rglob("*")
                      if p.is_file() and p.name != "secrets.key")
    assert value.encode() not in stored, "the secret is readable in the state dir"
    assert stat.S_IMODE((state / "secrets.key").stat().st_mode) == 0o600


def test_top_once_prints_a_frame_of_the_pool(mesh: Mesh) -> None:
    done = mesh_cli(mesh, "top", "--once")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "2 agent(s)" in done.stdout and "queue by account" in done.stdout
    rows = [line for line in done.stdout.splitlines() if " alive " in line]
    assert len(rows) == 2 and all("CPUs" in row for row in rows), done.stdout


def test_top_refreshes_in_place_on_a_terminal_and_q_quits(mesh: Mesh) -> None:
    leader, follower = pty.openpty()
    view = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "--address", mesh.cluster.address, "top",
         "--interval", "0.2"], stdin=follower, stdout=follower, stderr=follower, cwd=ROOT)
    os.close(follower)
    seen = bytearray()

    def frames() -> int:
        while select.select([leader], [], [], 0.05)[0]:
            seen.extend(os.read(leader, 65536))
        return seen.count(b"queue by account")

    try:
        wait_until(frames, lambda n: n >= 3, timeout=60, what="three frames drawn")
        os.write(leader, b"q")
        assert view.wait(timeout=15) == 0
    finally:
        if view.poll() is None:
            view.kill()
        os.close(leader)


def test_events_lists_an_actions_entries_and_refuses_a_bad_filter_by_name(mesh: Mesh) -> None:
    done_action = mesh.client.submit({"command": ["true"], "labels": ["pool:small"]})
    assert done_action.result(timeout=60).ok
    done = mesh_cli(mesh, "events", "--action", done_action.id)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    kinds = [line.split()[3] for line in lines]
    assert kinds == ["accepted", "assigned", "stage", "stage"], lines
    assert lines[-1].endswith(f"{done_action.id}#1 @{mesh.small_id}  succeeded: exit 0"), lines
    seqs = [int(line.split()[0]) for line in lines]
    assert seqs == sorted(seqs)
    done = mesh_cli(mesh, "events", "--json", "--kind", "agent_joined")
    joined = {json.loads(line)["agent_id"] for line in done.stdout.splitlines()}
    assert {mesh.big_id, mesh.small_id} <= joined, done.stdout
    done = mesh_cli(mesh, "events", "--since", "yesterday-ish")
    assert done.returncode == 2 and "--since" in done.stderr, done.stderr
    done = mesh_cli(mesh, "events", "--kind", "nonsense")
    assert done.returncode == 2 and "--kind" in done.stderr, done.stderr


def test_events_follow_goes_on_across_a_scheduler_restart_with_no_gap_or_repeat(
        mesh: Mesh) -> None:
    start = mesh.client.event_page().last
    follower = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "--address", mesh.cluster.address, "events",
         "--follow", "--json", "--after", str(start)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    printed: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: printed.extend(
        json.loads(line) for line in follower.stdout or ()), daemon=True)
    reader.start()
    try:
        def ended(action_id: str) -> bool:
            return any(e["action_id"] == action_id and e["stage"] == "succeeded"
                       for e in list(printed))

        first = mesh.client.submit({"command": ["true"], "labels": ["pool:small"]})
        wait_until(lambda: ended(first.id), bool, timeout=60, what="the follower printing "
                   "the first action's end")
        os.kill(scheduler_pid(), signal.SIGKILL)
        # The submission waits for the restarted scheduler.
        second = mesh.client.submit({"command": ["true"], "labels": ["pool:small"]})
        assert second.result(timeout=60).ok
        wait_until(lambda: ended(second.id), bool, timeout=60, what="the follower printing "
                   "the second action's end, after the restart")
    finally:
        follower.terminate()
        follower.wait(timeout=30)
        reader.join(timeout=30)
    seqs = [e["seq"] for e in printed]
    whole = [json.loads(line) for line in mesh_cli(
        mesh, "events", "--json", "--after", str(start)).stdout.splitlines()]
    assert seqs == [e["seq"] for e in whole][:len(seqs)], "the follower saw what the log has"
    assert seqs == list(range(start + 1, start + 1 + len(seqs))), "no gap, no repeat"
    kinds = [e["kind"] for e in printed]
    assert "scheduler_started" in kinds, kinds
    restarted = kinds.index("scheduler_started")
    assert any(e["kind"] == "agent_joined" for e in printed[restarted:]), kinds


def test_drain_lets_running_work_finish_gives_no_more_and_survives_a_restart(
        mesh: Mesh) -> None:
    client = mesh.client
    # On one machine every agent has the same hostname: it names none of them.
    done = mesh_cli(mesh, "agents", "drain", socket.gethostname())
    assert done.returncode == 2 and mesh.small_id in done.stderr, done.stderr
    running = client.submit({"command": ["sleep", "3"], "labels": ["pool:small"]})
    wait_until(lambda: running.status().stage, lambda s: s is Stage.RUNNING, timeout=60,
               what="the first action running on the small agent")
    done = mesh_cli(mesh, "agents", "drain", mesh.small_id)
    assert done.returncode == 0 and "draining, 1 attempt(s) running" in done.stdout, done
    waiting = client.submit({"command": ["true"], "labels": ["pool:small"]})

    def small() -> str:
        return next(a.state for a in client.pool() if a.info.agent_id == mesh.small_id)

    assert running.result(timeout=60).ok, "its running work finished"
    assert wait_until(small, lambda s: s == "drained", timeout=30, what="drained") == "drained"
    pending = client.get(waiting.id)
    assert pending.stage is Stage.QUEUED and pending.pending is not None
    assert "drained" in pending.pending.summary, pending.pending.summary
    os.kill(scheduler_pid(), signal.SIGKILL)
    assert small() == "drained", "the restarted scheduler keeps the drain"
    assert client.get(waiting.id).stage is Stage.QUEUED
    done = mesh_cli(mesh, "agents", "undrain", mesh.small_id)
    assert done.returncode == 0 and done.stdout.rstrip().endswith(": alive"), done
    assert waiting.result(timeout=60).ok
    kinds = [e.kind for e in client.events(agent_id=mesh.small_id,
                                           kinds=["agent_drained", "agent_undrained"])]
    assert kinds[-2:] == ["agent_drained", "agent_undrained"]


def test_health_says_healthy_then_degraded_without_the_relay_then_down(mesh: Mesh) -> None:
    # Last in the module: it stops the relay, then the mesh.
    done = mesh_cli(mesh, "health")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == "healthy" and "2 alive" in done.stdout
    ray.kill(ray.get_actor(names.RELAY, namespace=names.NAMESPACE), no_restart=True)
    done = wait_until(lambda: mesh_cli(mesh, "health", "--json"),
                      lambda d: d.returncode == 1, timeout=30, what="health degraded")
    report = json.loads(done.stdout)
    assert report["verdict"] == "degraded" and not report["relay"]
    assert report["problems"] == ["the log relay does not answer: output is not kept"]
    bootstrap.down(stop_cluster=False)
    done = mesh_cli(mesh, "health")
    assert done.returncode == 2 and done.stdout.startswith("down"), done.stdout
