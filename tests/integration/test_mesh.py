"""End to end on a real three-node Ray cluster: placement, queueing, logs, cancel, timeout."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import grpc
import pytest
import ray

from mesh import Action, ActionTimeout, InvalidInput, NotFound, RetryPolicy, Stage, Unplaceable
from mesh.calls import call
from mesh.client import Client
from mesh.names import NAMESPACE, agent_name
from mesh.protocol import Assignment, LinkGrant
from mesh.rpcerrors import carried_error
from mesh.schema import ActionId, ActionStatus, AgentId, LogBatch
from mesh.v1 import RUN, serialize
from mesh.v1 import client_pb2 as cpb
from mesh.waiting import wait_until
from tests.agent_support import exited
from tests.conftest import IN_CI
from tests.integration.cluster import Mesh, survivors

pytestmark = pytest.mark.integration


def test_pool_shows_both_workers_with_labels_and_live_load(mesh: Mesh) -> None:
    pool = wait_until(mesh.client.pool, lambda p: len(p) == 2 and all(a.load for a in p),
                    what="two agents reporting load")
    by_node = {a.info.node_id: a for a in pool}
    assert set(by_node) == {mesh.big_id, mesh.small_id}
    big, small = by_node[mesh.big_id], by_node[mesh.small_id]
    assert "vpn" in big.info.labels and "pool:big" in big.info.labels
    assert "pool:small" in small.info.labels and "vpn" not in small.info.labels
    assert (big.info.cpus, small.info.cpus) == (2, 1)
    assert big.load is not None and big.load.memory_available > 0


def test_actions_land_only_on_agents_with_their_labels(mesh: Mesh) -> None:
    handles = mesh.client.submit_many(
        [Action(command=["true"], labels=["vpn"]) for _ in range(3)]
        + [Action(command=["true"], labels=["pool:small"]) for _ in range(3)])
    results = [h.result(timeout=60) for h in handles]
    assert all(r.stage is Stage.SUCCEEDED for r in results), results
    assert {r.agent_id for r in results[:3]} == {mesh.big_id}
    assert {r.agent_id for r in results[3:]} == {mesh.small_id}


def test_actions_run_end_to_end_over_each_agents_stream(mesh: Mesh) -> None:
    before = wait_until(mesh.client.pool,
                        lambda p: len(p) == 2 and all(a.link == "stream" for a in p),
                        what="both agents on their streams")
    handles = mesh.client.submit_many([Action(command=["true"], labels=["vpn"]),
                                       Action(command=["true"], labels=["pool:small"])])
    assert [h.result(timeout=60).stage for h in handles] == [Stage.SUCCEEDED] * 2
    after = mesh.client.pool()
    # The same streams carried the starts and the reports throughout.
    assert [(a.link, a.link_since) for a in after] == [(a.link, a.link_since) for a in before]
    assert {a.info.node_id for a in after} == {mesh.big_id, mesh.small_id}


def test_more_actions_than_cpus_queue_and_all_finish(mesh: Mesh) -> None:
    handles = mesh.client.submit_many(
        [Action(command=["sleep", "0.5"], cpus=1) for _ in range(9)])
    results = [h.result(timeout=120) for h in handles]
    assert [r.stage for r in results] == [Stage.SUCCEEDED] * 9
    spans = [(r.attempts[-1].started_at, r.attempts[-1].finished_at) for r in results]
    edges = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans],
                   key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    assert 1 <= peak <= 3, f"{peak} actions ran at once on 3 CPUs"


def test_a_burst_of_short_actions_is_handed_over_ahead_of_a_free_slot_yet_runs_one_at_a_time(
        mesh: Mesh, tmp_path: Path) -> None:
    # Each action holds a lock while it runs: two at once on the 1-CPU agent would fail one.
    lock = tmp_path / "lock"
    handles = mesh.client.submit_many(
        [Action(command=[f"mkdir {lock} || exit 7; sleep 0.02; rmdir {lock}"], shell=True,
                labels=["pool:small"]) for _ in range(40)])
    results = [h.result(timeout=120) for h in handles]
    assert [r.stage for r in results] == [Stage.SUCCEEDED] * 40, [r.reason for r in results]
    assert all(len(r.attempts) == 1 for r in results)
    spans = [(r.attempts[-1].assigned_at, r.attempts[-1].finished_at) for r in results]
    # Once its slots were seen to turn over fast, the agent was handed an action before the
    # one it ran had ended (without the backlog, the next is assigned when the end arrives).
    ahead = sum(1 for assigned, _ in spans
                if any(a < assigned < f for a, f in spans if f is not None))
    assert ahead > 0, spans


def test_work_held_behind_an_attempt_that_proves_long_is_taken_back_and_runs_elsewhere(
        mesh: Mesh) -> None:
    client = mesh.client
    # Many short actions first: every agent's slots are seen to turn over fast.
    warm = client.submit_many([Action(command=["true"], labels=[f"pool:{pool}"])
                               for pool in ("big", "small") for _ in range(20)])
    assert all(h.result(timeout=60).ok for h in warm)
    # Every CPU taken by a long action, and one more short action: it is handed to an
    # agent ahead of a free slot, where it would wait for a minute.
    blockers = client.submit_many([Action(command=["sleep", "60"], labels=[f"pool:{pool}"])
                                   for pool in ("big", "big", "small")])
    try:
        held = client.submit(Action(command=["true"]))
        taken_back = wait_until(held.status, lambda s: bool(s.attempts)
                                and s.attempts[0].outcome == "lost", timeout=30,
                                interval=0.05, what="the held action taken back")
        assert taken_back.stage is Stage.QUEUED
        assert taken_back.attempts[0].reason.startswith("taken back from agent")
        blockers[2].cancel()  # a slot frees: it runs there, unharmed
        result = held.result(timeout=60)
        assert result.ok and len(result.attempts) == 2, result
    finally:
        for blocker in blockers:
            blocker.cancel()


def test_an_action_no_agent_could_ever_take_is_refused_as_unplaceable(mesh: Mesh) -> None:
    with pytest.raises(Unplaceable, match="64 CPUs"):
        mesh.client.submit(Action(command=["true"], cpus=64))
    with pytest.raises(Unplaceable, match="`gpu`"):
        mesh.client.submit(Action(command=["true"], labels=["gpu"]))
    assert mesh.client.submit(Action(command=["true"])).result(timeout=60).ok


def test_run_submits_and_waits_in_one_call_and_a_timeout_leaves_the_action_running(
        mesh: Mesh) -> None:
    status = mesh.client.run(Action(command=["sh", "-c", "exit 4"]), timeout=60)
    assert status.stage is Stage.FAILED and status.exit_code == 4
    assert mesh.client.get(status.id).stage is Stage.FAILED
    with pytest.raises(Unplaceable, match="64 CPUs"):
        mesh.client.run(Action(command=["true"], cpus=64))
    slow = Action(id="run-past-its-timeout", command=["sleep", "2"])
    with pytest.raises(ActionTimeout, match="run-past-its-timeout"):
        mesh.client.run(slow, timeout=0.5)
    # Accepted all the same: it runs on, and waiting for it again finds it.
    assert mesh.client.handle("run-past-its-timeout").result(timeout=60).ok
    # A wait the scheduler cannot take refuses the call before anything is accepted.
    spec = Action(id="run-never-accepted", command=["true"]).model_dump_json()
    with pytest.raises(InvalidInput, match="timeout"):
        call(mesh.client.scheduler.submit_and_wait, spec, True, "soon")
    with pytest.raises(NotFound):
        mesh.client.get("run-never-accepted")


def test_run_takes_the_client_link_which_admits_only_the_token_granted_over_ray(
        mesh: Mesh) -> None:
    client = Client()
    assert not client.link.serving
    assert client.run(Action(command=["true"]), timeout=60).ok
    assert client.link.serving
    grant = LinkGrant.model_validate(call(client.scheduler.client_grant))
    channel = grpc.insecure_channel(f"{grant.host}:{grant.port}")
    run = channel.unary_unary(RUN, request_serializer=serialize,
                              response_deserializer=cpb.RunReply.FromString)
    stranger = Action(id="run-by-a-stranger", command=["true"]).model_dump_json()
    with pytest.raises(grpc.RpcError) as refused:
        run(cpb.RunRequest(action=stranger, wait=1.0), timeout=30,
            metadata=[("authorization", "Bearer " + "x" * len(grant.credential))])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(NotFound):
        mesh.client.get("run-by-a-stranger")
    # What arrives by the link is checked as what arrives by Ray: the field is named.
    token = [("authorization", f"Bearer {grant.credential}")]
    with pytest.raises(grpc.RpcError) as bad:
        run(cpb.RunRequest(action='{"command": [], "id": "bad-by-link"}', wait=1.0),
            timeout=30, metadata=token)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = carried_error(bad.value)
    assert isinstance(error, InvalidInput) and [f for f, _ in error.errors] == ["command"]
    reply = run(cpb.RunRequest(action=stranger, wait=30.0), timeout=60, metadata=token)
    assert ActionStatus.model_validate_json(reply.status).stage is Stage.SUCCEEDED
    channel.close()
    client.link.close()


def test_bad_input_names_the_field_and_the_scheduler_keeps_going(mesh: Mesh) -> None:
    with pytest.raises(InvalidInput, match="cpus"):
        mesh.client.submit({"command": ["true"], "cpus": -2})
    with pytest.raises(InvalidInput, match="colour"):
        mesh.client.submit({"command": ["true"], "colour": "red"})
    assert mesh.client.submit(Action(command=["true"])).result(timeout=60).ok


def test_models_that_skip_validation_over_ray_are_refused_where_they_land(mesh: Mesh) -> None:
    # Ray unpickles a model without validating it; model_construct builds one the same way.
    bad = Action.model_construct(command=["true"], cpus=-100.0, id=ActionId("neg-cpus"))
    with pytest.raises(InvalidInput, match="cpus"):
        call(mesh.client.scheduler.submit, [bad])
    with pytest.raises(InvalidInput, match="NUL"):
        call(mesh.client.scheduler.submit, [{"command": ["echo", "a\0b"]}])
    agent = ray.get_actor(agent_name(mesh.small_id), namespace=NAMESPACE)
    with pytest.raises(InvalidInput, match="cpus"):
        call(agent.start, Assignment.model_construct(
            action=bad, action_id=ActionId("neg-cpus"), attempt=1, agent_id=AgentId(mesh.small_id),
            assigned_at=time.time()))
    with pytest.raises(InvalidInput, match="attempt"):
        call(mesh.client.relay.append, LogBatch.model_construct(
            action_id=ActionId("neg-cpus"), attempt=0, stream="stdout", offset=0, text="x\n",
            count=1))
    with pytest.raises(NotFound):
        mesh.client.get("neg-cpus")  # nothing of it was accepted anywhere
    assert mesh.client.submit(Action(command=["true"])).result(timeout=60).ok


def test_logs_of_a_100k_line_action_arrive_complete_and_in_order(mesh: Mesh) -> None:
    script = "import sys\nfor i in range(100000): print(f'line {i}')\nprint('err', file=sys.stderr)"
    handle = mesh.client.submit(Action(command=[sys.executable, "-c", script]))
    lines = list(handle.logs(follow=True))
    out = [line.text for line in lines if line.stream == "stdout"]
    assert out == [f"line {i}" for i in range(100000)]
    assert [line.text for line in lines if line.stream == "stderr"] == ["err"]
    assert [line.offset for line in lines] == list(range(len(lines)))
    assert handle.result(timeout=60).ok
    # Offsets count both streams in the order read: where "err" falls depends on when the
    # action's buffered stdout is flushed, so a read from an offset is held to the full one.
    tail = list(handle.logs(offset=99_990))
    assert [(x.offset, x.text) for x in tail] == [(x.offset, x.text) for x in lines[99_990:]]


def test_an_action_gets_none_of_the_agents_environment_nor_its_open_files(
        mesh: Mesh) -> None:
    script = ("import os\nfor k, v in os.environ.items(): print(f'{k}={v}')\n"
              "print('cwd', os.getcwd())\n"
              "print('fds', sorted(os.listdir('/proc/self/fd'), key=int))")
    handle = mesh.client.submit(Action(command=[sys.executable, "-c", script]))
    lines = [line.text for line in handle.logs(follow=True)]
    assert handle.result(timeout=60).ok
    seen = dict(t.split("=", 1) for t in lines if "=" in t)
    # The agent's own environment is full of RAY_* (and, on a token cluster, the token).
    assert [n for n in seen if n.startswith("RAY_") or "TOKEN" in n] == []
    assert set(seen) <= {"PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "SHELL", "PWD",
                         "ACTIONMESH_WORKSPACE", "ACTIONMESH_AGENT", "ACTIONMESH_ACTION_ID",
                         "ACTIONMESH_ATTEMPT", "LC_CTYPE"}, seen
    assert f"cwd {seen['ACTIONMESH_WORKSPACE']}" in lines
    # 0-2 are its pipes and /dev/null; the one after is listdir's own.
    assert "fds ['0', '1', '2', '3']" in lines


def contained(mesh: Mesh) -> bool:
    """Whether the agents run attempts in control groups (required of the CI machine)."""
    kinds = {a.info.containment.split(" (")[0] for a in mesh.client.pool()}
    assert kinds == {"cgroup"} or not IN_CI, kinds
    return kinds == {"cgroup"}


def test_an_escapee_from_its_process_group_dies_with_the_cancel(
        mesh: Mesh, tmp_path: Path) -> None:
    if not contained(mesh):
        pytest.skip("the agents have no control groups here: an escapee outlives its attempt")
    pidfile = tmp_path / "escapee"
    handle = mesh.client.submit(Action(command=[
        f"env -i setsid sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}; sleep 300"],
        shell=True))
    pid = int(wait_until(lambda: pidfile.read_text() if pidfile.exists() else "",
                         lambda text: text.endswith("\n"), what="the escapee's pid"))
    wait_until(lambda: os.getsid(pid), lambda sid: sid == pid, what="the escape")
    handle.cancel()
    assert handle.result(timeout=30).stage is Stage.CANCELLED
    wait_until(lambda: exited(pid), bool, timeout=10, what=f"escapee {pid} to die")


def test_an_action_over_its_memory_request_fails_out_of_memory(mesh: Mesh) -> None:
    if not contained(mesh):
        pytest.skip("the agents have no control groups here: memory is not limited")
    hog = "data = b'x' * (512 << 20); print(len(data))"
    handle = mesh.client.submit(Action(command=[sys.executable, "-c", hog], memory="64M"))
    result = handle.result(timeout=60)
    assert result.stage is Stage.FAILED, result
    assert result.reason.startswith("out of memory (limit 64.0MiB)"), result.reason


def test_stage_events_flow_while_it_runs(mesh: Mesh) -> None:
    handle = mesh.client.submit(Action(command=["sh", "-c", "exit 7"]))
    stages = [e.stage for e in handle.events()]
    assert stages == [Stage.QUEUED, Stage.ASSIGNED, Stage.RUNNING, Stage.FAILED]
    result = handle.result(timeout=30)
    assert result.exit_code == 7 and "code 7" in result.reason


def test_a_failing_action_runs_again_only_when_asked(mesh: Mesh) -> None:
    once = mesh.client.submit(Action(command=["sh", "-c", "exit 7"]))
    twice = mesh.client.submit(Action(command=["sh", "-c", "exit 7"],
                                      retry=RetryPolicy(on_failure=1)))
    assert [a.outcome for a in once.result(timeout=30).attempts] == [Stage.FAILED]
    result = twice.result(timeout=30)
    assert result.stage is Stage.FAILED
    assert [a.outcome for a in result.attempts] == [Stage.FAILED, Stage.FAILED]


def test_cancel_kills_the_whole_process_tree(mesh: Mesh) -> None:
    handle = mesh.client.submit(Action(
        command=["sleep 300 & sleep 300 & echo started; wait"], shell=True))
    first = next(iter(handle.logs(follow=True)))
    assert first.text == "started"
    assert len(survivors(handle.id)) >= 3
    handle.cancel()
    assert handle.result(timeout=30).stage is Stage.CANCELLED
    wait_until(lambda: survivors(handle.id), lambda pids: not pids, timeout=10,
             what="no process of the cancelled action")


def test_timeout_kills_the_tree_and_says_timed_out(mesh: Mesh) -> None:
    handle = mesh.client.submit(Action(command=["sleep 300 & wait"], shell=True, timeout=1))
    result = handle.result(timeout=30)
    assert result.stage is Stage.TIMED_OUT
    wait_until(lambda: survivors(handle.id), lambda pids: not pids, timeout=10,
             what="no process of the timed-out action")


def test_submit_is_idempotent_by_client_chosen_id(mesh: Mesh) -> None:
    action = Action(id="same-id-twice", command=["true"])
    first = mesh.client.submit(action)
    second = mesh.client.submit(action)
    assert first.id == second.id == "same-id-twice"
    assert first.result(timeout=30).ok
    assert len([a for a in mesh.client.list() if a.id == "same-id-twice"]) == 1
