"""The agent link on real multi-node clusters: streams cut mid-run, and a link port that
cannot be had, during which reports go by Ray calls until the agents return to the stream."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from mesh import Action, Stage
from mesh.client import ActionHandle, Client
from mesh.schema import AgentStatus
from mesh.waiting import wait_until
from tests.integration.cluster import runs, start_mesh, stop_mesh

pytestmark = pytest.mark.integration

WORKER = {"num_cpus": 2, "labels": {"pool": "link"}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def marked(n: int, log: Path, seconds: float) -> Action:
    """Sleeps, then appends its name to `log`: one line per run that got to its end."""
    return Action(id=f"l{n}", command=[f"sleep {seconds}; echo l{n} >> {log}; echo done"],
                  shell=True, labels=["pool:link"])


def on_streams(client: Client, agents: int, since: float = 0.0) -> list[AgentStatus]:
    return wait_until(client.pool, lambda p: len(p) == agents and all(
        a.link == "stream" and (a.link_since or 0) > since for a in p), timeout=60,
        what=f"{agents} agents on streams opened after {since}")


def each_ran_once(handles: list[ActionHandle], log: Path) -> None:
    results = [h.result(timeout=120) for h in handles]
    assert [r.stage for r in results] == [Stage.SUCCEEDED] * len(handles), [
        (r.id, r.stage, r.reason) for r in results if r.stage is not Stage.SUCCEEDED]
    # Nothing was lost on the way: no attempt had to run again.
    assert all(len(r.attempts) == 1 for r in results), [r.attempts for r in results]
    assert sorted(runs(log)) == sorted(h.id for h in handles)
    assert all([line.text for line in h.logs()] == ["done"] for h in handles)


def test_streams_cut_mid_run_lose_nothing_and_the_agents_reconnect(tmp_path: Path) -> None:
    port = free_port()
    cluster, _, _ = start_mesh(tmp_path / "state", WORKER, WORKER, link_port=port)
    log = tmp_path / "runs"
    try:
        client = Client()
        on_streams(client, 2)
        handles = client.submit_many([marked(n, log, 0.3 + (n % 3) * 0.2) for n in range(40)])
        cut_at = 0.0
        for done in (5, 15, 25):
            wait_until(lambda: client.counts().get("succeeded", 0), done.__le__,
                       what=f"{done} done")
            cut_at = time.time()
            # Both ends of every connection to the link's port, as a broken network would.
            subprocess.run(["ss", "-K", "(", "sport", "=", f":{port}", "or", "dport", "=",
                            f":{port}", ")"], check=True, capture_output=True)
        each_ran_once(handles, log)
        on_streams(client, 2, since=cut_at)
    finally:
        stop_mesh(cluster)


def test_while_the_link_port_is_taken_reports_go_by_ray_and_the_stream_comes_back(
        tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("", 0))
    taken.listen()
    port = taken.getsockname()[1]
    log = tmp_path / "runs"
    cluster, _, _ = start_mesh(tmp_path / "state", WORKER, link_port=port)
    try:
        client = Client()
        [agent] = wait_until(client.pool, lambda p: len(p) == 1 and p[0].load is not None,
                             what="the agent reporting its load")
        assert agent.link == "ray"
        each_ran_once(client.submit_many([marked(n, log, 0.1) for n in range(6)]), log)
        assert [a.link for a in client.pool()] == ["ray"]
        # No client link either: `run` goes over Ray.
        assert client.run(Action(command=["true"]), timeout=60).ok
        assert not client.link.serving
        freed_at = time.time()
        taken.close()
        # The scheduler tries the port again after 1, 2, 4 ... s; the agent then opens
        # its stream with the grant it is handed.
        [agent] = on_streams(client, 1, since=freed_at)
        handles = client.submit_many([marked(n, log, 0.1) for n in range(6, 12)])
        results = [h.result(timeout=60) for h in handles]
        assert all(r.stage is Stage.SUCCEEDED for r in results)
        assert [(a.link, a.link_since) for a in client.pool()] == [("stream", agent.link_since)]
        # The client link is granted once its pause is over (1 s, doubling from the first
        # time it found none).
        wait_until(lambda: client.run(Action(command=["true"]), timeout=60).ok
                   and client.link.serving, bool, what="`run` on the client link")
    finally:
        taken.close()
        stop_mesh(cluster)
