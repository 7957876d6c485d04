"""Groups on a real multi-node cluster: the pool config file named at `mesh up`, blocking a
group mid-run, capacity 50, a job that sticks to its group, a bad config refused, the CLI,
the dispatcher's HTTP endpoint, and all of it across a scheduler restart."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh import Stage, bootstrap, calls
from mesh.client import Client
from mesh.waiting import wait_until
from tests.integration.cluster import (
    BIG,
    SMALL,
    Mesh,
    mesh_cli,
    scheduler_pid,
    start_mesh,
    stop_mesh,
)

pytestmark = pytest.mark.integration

CONFIG = """
groups:
  big: {match: {labels: ['pool:big']}}
  small: {match: {labels: ['pool:small']}}
"""


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Path]]:
    """The shared shape (big: 2 CPUs, small: 1), following a pool config file, with the
    dispatcher's HTTP endpoint on a free port."""
    tmp = tmp_path_factory.mktemp("groups")
    pool_file = tmp / "pool.yaml"
    pool_file.write_text(CONFIG)
    cluster, config, (big, small) = start_mesh(tmp / "state", BIG, SMALL,
                                               pool_config=str(pool_file), http_port=0)
    try:
        yield Mesh(cluster, Client(), config, big, small), pool_file
    finally:
        stop_mesh(cluster)


@pytest.fixture
def mesh(grouped: tuple[Mesh, Path]) -> Iterator[Mesh]:
    """The grouped mesh, its config and blocks as the file says again after the test."""
    yield grouped[0]
    client = grouped[0].client
    for group in client.pool_config().groups:
        if group.blocked_by == "operator":
            client.unblock(group.name)
    client.apply(CONFIG)


def group_of(client: Client, agent_id: str) -> tuple[str, str]:
    agent = next(a for a in client.pool() if a.info.agent_id == agent_id)
    return agent.group, agent.state


def test_the_file_named_at_up_is_in_force_and_its_edits_are_followed(
        grouped: tuple[Mesh, Path]) -> None:
    mesh, pool_file = grouped
    client = mesh.client
    assert list(client.pool_config().config.groups) == ["big", "small"]
    assert group_of(client, mesh.big_id) == ("big", "alive")
    assert group_of(client, mesh.small_id) == ("small", "alive")
    pool_file.write_text(CONFIG.replace("small: {match: {labels: ['pool:small']}}",
                                        "small: {match: {labels: ['pool:small']}, "
                                        "capacity: 50}"))
    wait_until(lambda: client.pool_config().config.groups["small"].capacity, lambda c: c == 50,
               timeout=30, what="the edit of the file applied")
    pool_file.write_text(CONFIG)
    wait_until(lambda: client.pool_config().config.groups["small"].capacity,
               lambda c: c == 100, timeout=30, what="the file's second edit applied")


def test_a_config_that_blocks_a_group_mid_run_lets_its_work_finish_and_sends_new_work_away(
        mesh: Mesh) -> None:
    client = mesh.client
    running = client.submit({"command": ["sleep", "3"], "labels": ["pool:small"]})
    wait_until(lambda: running.status().stage, lambda s: s is Stage.RUNNING, timeout=60,
               what="an action running on the small agent")
    client.apply(CONFIG.replace("small: {match: {labels: ['pool:small']}}",
                                "small: {match: {labels: ['pool:small']}, blocked: true}"))
    assert group_of(client, mesh.small_id) == ("small", "blocked")
    elsewhere = client.submit({"command": ["true"]})
    waits = client.submit({"command": ["true"], "labels": ["pool:small"]})
    assert elsewhere.result(timeout=60).agent_id == mesh.big_id, "new work goes elsewhere"
    pending = client.get(waits.id).pending
    assert pending is not None and "group `small`, which is blocked" in pending.summary
    assert running.result(timeout=60).ok, "its running work finished"
    assert client.get(waits.id).stage is Stage.QUEUED
    client.apply(CONFIG)
    assert waits.result(timeout=60).agent_id == mesh.small_id


def test_a_group_is_blocked_and_unblocked_from_the_cli(mesh: Mesh) -> None:
    done = mesh_cli(mesh, "groups", "block", "small")
    assert done.returncode == 0 and "blocked (operator)" in done.stdout, done
    groups = json.loads(mesh_cli(mesh, "groups", "--json").stdout)["groups"]
    assert [(g["name"], g["blocked_by"]) for g in groups] == [
        ("big", ""), ("small", "operator"), ("default", "")]
    assert group_of(mesh.client, mesh.small_id) == ("small", "blocked")
    done = mesh_cli(mesh, "groups", "unblock", "small")
    assert done.returncode == 0 and "small: open" in done.stdout, done
    assert mesh_cli(mesh, "groups", "block", "nowhere").returncode != 0


def test_capacity_50_halves_what_an_agent_takes(mesh: Mesh) -> None:
    client = mesh.client
    client.apply(CONFIG.replace("big: {match: {labels: ['pool:big']}}",
                                "big: {match: {labels: ['pool:big']}, capacity: 50}"))
    handles = client.submit_many([{"command": ["sleep", "2"], "labels": ["pool:big"]}] * 2)
    stages = wait_until(lambda: [h.status().stage for h in handles],
                        lambda s: Stage.RUNNING in s, timeout=60, what="one running")
    assert stages.count(Stage.QUEUED) == 1, stages
    later = handles[stages.index(Stage.QUEUED)]
    pending = client.get(later.id).pending
    assert pending is not None, "the other waits"
    assert "lacks 1 CPUs of headroom (0 free of 1)" in pending.summary, pending.summary
    a, b = sorted((h.result(timeout=60) for h in handles),
                  key=lambda r: r.attempts[-1].started_at or 0.0)
    assert a.ok and b.ok
    assert b.attempts[-1].started_at is not None and a.finished_at is not None
    assert b.attempts[-1].started_at >= a.finished_at, "one at a time on half of 2 CPUs"


def test_a_job_sticks_to_the_group_it_first_ran_in(mesh: Mesh) -> None:
    client = mesh.client
    first = client.submit({"command": ["true"], "job": "linux-build",
                           "labels": ["pool:big"]})
    assert first.result(timeout=60).agent_id == mesh.big_id
    shown = json.loads(mesh_cli(mesh, "assignment", "linux-build", "--json").stdout)
    assert (shown["group"], shown["how"], shown["pinned"]) == ("big", "first run", False)
    # The small agent is the best fit for a 1-CPU action; the job's warm group wins.
    for n in range(3):
        again = client.submit({"command": ["true"], "job": "linux-build"})
        assert again.result(timeout=60).agent_id == mesh.big_id, f"submission {n}"


def test_a_bad_config_is_refused_naming_the_field_and_nothing_changes(
        mesh: Mesh, tmp_path: Path) -> None:
    before = mesh_cli(mesh, "config", "--json").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("small: {match: {labels: ['pool:small']}}",
                                  "small: {match: {labels: ['pool:small']}, capacity: 0}"))
    done = mesh_cli(mesh, "apply", str(bad))
    assert done.returncode != 0 and "groups.small.capacity" in done.stderr, done
    assert mesh_cli(mesh, "config", "--json").stdout == before
    good = tmp_path / "good.yaml"
    good.write_text(CONFIG + "assignments: {docs: small}\n")
    done = mesh_cli(mesh, "apply", str(good))
    assert done.returncode == 0 and "1 manual assignment(s)" in done.stdout, done


def http_get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_groups_and_assignments_survive_a_scheduler_restart_and_http_answers_them(
        mesh: Mesh) -> None:
    client = mesh.client
    client.apply(CONFIG + "assignments: {docs: {group: small, pin: true}}\n")
    ran = client.submit({"command": ["true"], "job": "nightly", "labels": ["pool:big"]})
    assert ran.result(timeout=60).ok
    client.block("small")
    before = (client.pool_config().model_dump(exclude={"groups": {"__all__": {"cpus"}}}),
              client.assignment("docs"), client.assignment("nightly"))
    os.kill(scheduler_pid(), signal.SIGKILL)
    after = (client.pool_config().model_dump(exclude={"groups": {"__all__": {"cpus"}}}),
             client.assignment("docs"), client.assignment("nightly"))
    assert after == before
    assert group_of(client, mesh.small_id) == ("small", "blocked")
    port = calls.call(bootstrap.scheduler_handle().http_port)
    assert port, "the restarted scheduler serves the endpoint again"
    assert http_get(port, "/assignment?job=nightly") == (200, {
        "job": "nightly", "group": "big", "how": "first run", "pinned": False,
        "load": pytest.approx(before[2].load)})
    status, body = http_get(port, "/assignment?job=never-ran")
    assert status == 404 and "has no group" in body["error"]
    status, body = http_get(port, "/event?dispatch=true")
    assert status == 200 and body["groups"]["small"]["blocked"]
    # The blocked group's jobs moved, but the pinned one.
    assert client.assignment("docs").group == "small"
    assert client.get(ran.id).stage is Stage.SUCCEEDED
