"""The gRPC gateway on a real multi-node cluster, driven by a real gRPC client over a real
port: streams of stages and output, re-attaching, cancel, status codes, tokens, health,
reflection, TLS, many streams at once, backpressure, and a client in another language."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import ray
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from mesh import bootstrap, names
from mesh.bootstrap import actor_pid
from mesh.client import Client
from mesh.grpcclient import GatewayClient
from mesh.schema import GatewayConfig
from mesh.v1 import gateway_pb2 as gpb
from mesh.v1 import link_pb2 as pb
from mesh.waiting import wait_until
from mesh.watch import BACKLOG
from tests.integration.cluster import BIG, SMALL, Mesh, start_mesh, stop_mesh, survivors
from tests.tls_support import throwaway_certificate

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "gateway-test-token-0123456789"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@dataclass
class Served:
    mesh: Mesh
    address: str
    gateway: GatewayClient


def _gateway_actor() -> Any:
    return ray.get_actor(names.GATEWAY, namespace=names.NAMESPACE)


def _address() -> str:
    return f"127.0.0.1:{ray.get(_gateway_actor().port.remote())}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    gateway = GatewayConfig(port=0, host="127.0.0.1", token=TOKEN)  # type: ignore[arg-type]
    cluster, config, (big, small) = start_mesh(tmp_path_factory.mktemp("mesh"), BIG, SMALL,
                                               gateway=gateway)
    try:
        address = _address()
        with GatewayClient(address, TOKEN) as client:
            yield Served(Mesh(cluster, Client(), config, big, small), address, client)
    finally:
        stop_mesh(cluster)


def events(stream: Iterator[gpb.ActionEvent]) -> list[gpb.ActionEvent]:
    return list(stream)


def stages(found: list[gpb.ActionEvent]) -> list[str]:
    return [gpb.Stage.Name(e.stage.stage) for e in found if e.WhichOneof("event") == "stage"]


def lines(found: list[gpb.ActionEvent]) -> list[tuple[int, int, str, str]]:
    """(attempt, offset, stream, text) of every line the events carry, in stream order."""
    out: list[tuple[int, int, str, str]] = []
    for event in found:
        if event.WhichOneof("event") == "log":
            chunk = event.log
            stream = gpb.LogStream.Name(chunk.stream)
            out.extend((chunk.attempt, chunk.offset + i, stream, text)
                       for i, text in enumerate(chunk.lines))
    return out


def shell(script: str, **fields: Any) -> pb.Action:
    return pb.Action(command=["sh", "-c", script], **fields)


def test_submit_streams_every_stage_and_line_in_order_then_the_exit_code(
        served: Served) -> None:
    script = "i=0; while [ $i -lt 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done; exit 7"
    found = events(served.gateway.submit(shell(script), timeout=60))
    assert stages(found) == ["STAGE_QUEUED", "STAGE_ASSIGNED", "STAGE_RUNNING", "STAGE_FAILED"]
    seqs = [e.stage.seq for e in found if e.WhichOneof("event") == "stage"]
    assert seqs == [1, 2, 3, 4]
    got = lines(found)
    assert [offset for _, offset, _, _ in got] == list(range(600)), "every line, once, in order"
    assert sorted(text for _, _, stream, text in got if stream == "LOG_STREAM_STDOUT") == \
        sorted(f"out{i}" for i in range(300))
    assert [t for _, _, s, t in got if s == "LOG_STREAM_STDERR"] == [f"err{i}" for i in range(300)]
    kinds = [e.WhichOneof("event") for e in found]
    assert kinds[-1] == "result" and kinds.count("result") == 1
    assert kinds.index("log") > kinds.index("stage"), "output after the stage that started it"
    result = found[-1].result
    assert result.stage == gpb.STAGE_FAILED and result.exit_code == 7
    assert result.attempts[0].outcome == gpb.ATTEMPT_OUTCOME_FAILED


def test_watch_from_where_a_stream_stopped_gives_exactly_the_rest(served: Served) -> None:
    script = "i=0; while [ $i -lt 60 ]; do echo line$i; sleep 0.02; i=$((i+1)); done"
    stream: Any = served.gateway.submit(shell(script), timeout=60)
    first: list[gpb.ActionEvent] = []
    for event in stream:
        first.append(event)
        if len(lines(first)) >= 10:
            break
    stream.cancel()  # the client goes away mid-run
    action_id = next(e.stage.action_id for e in first if e.WhichOneof("event") == "stage")
    seen = [e.stage.seq for e in first if e.WhichOneof("event") == "stage"]
    last = lines(first)[-1]
    rest = events(served.gateway.watch(action_id, after_seq=seen[-1], attempt=last[0],
                                       from_offset=last[1] + 1, timeout=60))
    texts = [t for _, _, _, t in lines(first) + lines(rest)]
    assert texts == [f"line{i}" for i in range(60)], "none lost, none repeated"
    all_seqs = seen + [e.stage.seq for e in rest if e.WhichOneof("event") == "stage"]
    assert all_seqs == list(range(1, len(all_seqs) + 1))
    assert rest[-1].result.stage == gpb.STAGE_SUCCEEDED
    # And after the end, a watch from the middle still gives exactly the rest.
    again = events(served.gateway.watch(action_id, after_seq=2, from_offset=45, timeout=30))
    assert [t for _, _, _, t in lines(again)] == [f"line{i}" for i in range(45, 60)]
    assert next(e.stage.seq for e in again if e.WhichOneof("event") == "stage") == 3


def test_every_attempt_s_output_follows_its_stage_changes(served: Served) -> None:
    # The agent closes an attempt's log before it reports the attempt's end, so the stream
    # has read the first log to its end before it hears that a second attempt began.
    action = shell('echo "try $ACTIONMESH_ATTEMPT"; exit 1', retry=pb.RetryPolicy(on_failure=2))
    found = events(served.gateway.submit(action, timeout=60))
    assert [(attempt, offset, text) for attempt, offset, _, text in lines(found)] == \
        [(1, 0, "try 1"), (2, 0, "try 2"), (3, 0, "try 3")]
    assert [e.stage.attempt for e in found if e.WhichOneof("event") == "stage"
            and e.stage.stage == gpb.STAGE_RUNNING] == [1, 2, 3]
    result = found[-1].result
    assert result.stage == gpb.STAGE_FAILED and len(result.attempts) == 3
    # A watch from past the last change ends at once with the status.
    [only] = events(served.gateway.watch(result.id, after_seq=1000, attempt=4, timeout=30))
    assert only.result.stage == gpb.STAGE_FAILED


def test_an_attempt_lost_with_its_agent_holds_up_nothing_after_it(served: Served) -> None:
    # The lost attempt's log is never closed; the stream must move on to the next attempt
    # when it begins, not when a read of the dead one gives up (5 s).
    stream = served.gateway.submit(shell("echo started; sleep 1; echo finished"), timeout=90)
    found: list[gpb.ActionEvent] = []
    for event in stream:
        found.append(event)
        if lines(found):
            break
    agent_id = next(e.stage.agent_id for e in found if e.stage.stage == gpb.STAGE_RUNNING)
    [agent] = [a for a in served.mesh.client.pool() if a.info.agent_id == agent_id]
    os.kill(agent.info.pid, signal.SIGKILL)
    killed = time.monotonic()
    found.extend(stream)
    took = time.monotonic() - killed
    assert [(attempt, text) for attempt, _, _, text in lines(found)] == \
        [(1, "started"), (2, "started"), (2, "finished")]
    result = found[-1].result
    assert result.stage == gpb.STAGE_SUCCEEDED and result.attempt == 2
    assert result.attempts[0].outcome == gpb.ATTEMPT_OUTCOME_LOST
    assert took < 4.0, f"the stream ended {took:.1f}s after the kill"
    wait_until(served.mesh.client.pool, lambda p: len(p) == 2 and all(a.load for a in p),
               timeout=60, what="the killed agent replaced")


def test_cancel_through_grpc_kills_the_process_tree(served: Served) -> None:
    stream = served.gateway.submit(
        shell("sleep 300 & sleep 300 & echo started; wait"), timeout=60)
    action_id = ""
    for event in stream:
        if event.WhichOneof("event") == "stage":
            action_id = event.stage.action_id
        if lines([event]):
            break
    assert len(survivors(action_id)) >= 3
    served.gateway.cancel(action_id)
    rest = events(stream)
    assert rest[-1].result.stage == gpb.STAGE_CANCELLED
    wait_until(lambda: survivors(action_id), lambda pids: not pids, timeout=10,
               what="no process of the cancelled action")


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        result = call()
        if hasattr(result, "__next__"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    raise AssertionError("the call succeeded")


def _outcome(call: Callable[[], Any]) -> grpc.StatusCode:
    """The call's status code, OK when it succeeds."""
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


BAD: dict[str, tuple[Callable[[GatewayClient], Any], grpc.StatusCode, str]] = {
    "empty command": (lambda g: g.submit(pb.Action(command=[""])),
                      grpc.StatusCode.INVALID_ARGUMENT, "command"),
    "negative cpus": (lambda g: g.submit(pb.Action(command=["true"], cpus=-1)),
                      grpc.StatusCode.INVALID_ARGUMENT, "cpus"),
    "no action": (lambda g: g.stream("Submit", gpb.SubmitRequest()),
                  grpc.StatusCode.INVALID_ARGUMENT, "action"),
    "unplaceable": (lambda g: g.submit(pb.Action(command=["true"], labels=["gpu:h100"])),
                    grpc.StatusCode.FAILED_PRECONDITION, "gpu:h100"),
    "unknown action": (lambda g: g.get("no-such-action"), grpc.StatusCode.NOT_FOUND, ""),
    "malformed id": (lambda g: g.get("../etc"), grpc.StatusCode.INVALID_ARGUMENT, "action_id"),
    "watch unknown": (lambda g: g.watch("no-such-action"), grpc.StatusCode.NOT_FOUND, ""),
    "cancel unknown": (lambda g: g.cancel("no-such-action"), grpc.StatusCode.NOT_FOUND, ""),
    "page too large": (lambda g: g.call("List", gpb.ListRequest(page_size=20_000)),
                       grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
    "bad charge rate": (lambda g: g.call("CreateAccount", gpb.CreateAccountRequest(
        account_id="gw-bad", config=gpb.AccountConfig(charge_rate=[-1.0]))),
        grpc.StatusCode.INVALID_ARGUMENT, "charge_rate"),
    "unknown mask field": (lambda g: g.call("ModifyAccount", gpb.ModifyAccountRequest(
        account_id="gw-bad", update_mask=FieldMask(paths=["colour"]))),
        grpc.StatusCode.INVALID_ARGUMENT, "update_mask"),
    "modify unknown account": (lambda g: g.call("ModifyAccount", gpb.ModifyAccountRequest(
        account_id="gw-none", config=gpb.AccountConfig(max_fanout=2),
        update_mask=FieldMask(paths=["max_fanout"]))), grpc.StatusCode.NOT_FOUND, ""),
    "delete unknown account": (lambda g: g.call("DeleteAccount",
                                                gpb.AccountRef(account_id="gw-none")),
                               grpc.StatusCode.NOT_FOUND, ""),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_request_gets_its_status_code_naming_the_field(served: Served, name: str) -> None:
    call, expected, word = BAD[name]
    code, details = _code(lambda: call(served.gateway))
    assert code == expected, details
    assert word in details
    assert "Traceback" not in details


def test_accounts_and_the_pool_through_grpc(served: Served) -> None:
    gateway = served.gateway
    created = gateway.call("CreateAccount", gpb.CreateAccountRequest(
        account_id="gw-team", config=gpb.AccountConfig(charge_rate=[1.0], max_charge_seconds=60)))
    try:
        assert created.id == "gw-team" and list(created.config.charge_rate) == [1.0]
        code, _ = _code(lambda: gateway.call("CreateAccount", gpb.CreateAccountRequest(
            account_id="gw-team", config=gpb.AccountConfig(charge_rate=[2.0]))))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        changed = gateway.call("ModifyAccount", gpb.ModifyAccountRequest(
            account_id="gw-team", config=gpb.AccountConfig(max_fanout=3, description="x"),
            update_mask=FieldMask(paths=["max_fanout"])))
        assert changed.config.max_fanout == 3 and changed.config.description == ""
        assert list(changed.config.charge_rate) == [1.0], "fields outside the mask stay"
        listed = gateway.call("ListAccounts", gpb.ListAccountsRequest())
        assert "gw-team" in [a.id for a in listed.accounts]
        assert len(next(a for a in listed.accounts if a.id == "gw-team").balance) == 5
    finally:
        gateway.call("DeleteAccount", gpb.AccountRef(account_id="gw-team"))
    assert "gw-team" not in [a.id for a in gateway.call(
        "ListAccounts", gpb.ListAccountsRequest()).accounts]
    agents = gateway.call("ListAgents", gpb.ListAgentsRequest()).agents
    assert sorted(a.info.agent_id for a in agents) == sorted(
        [served.mesh.big_id, served.mesh.small_id])
    big = next(a for a in agents if a.info.agent_id == served.mesh.big_id)
    assert big.state == gpb.AGENT_STATE_ALIVE and big.info.cpus == 2
    assert "vpn" in big.info.labels and big.load.cpu_count >= 1


def test_list_pages_through_the_actions(served: Served) -> None:
    tag = {"gw-page": "yes"}
    ids = [events(served.gateway.submit(pb.Action(command=["true"], tags=tag),
                                        without_logs=True))[-1].result.id for _ in range(5)]
    seen: list[str] = []
    token = 0
    while True:
        page = served.gateway.call("List", gpb.ListRequest(tags=tag, page_size=2,
                                                           page_token=token))
        assert len(page.actions) <= 2
        seen.extend(a.id for a in page.actions)
        if not page.HasField("next_page_token"):
            break
        token = page.next_page_token
    assert seen == ids


def test_without_the_token_every_call_but_health_is_refused(served: Served) -> None:
    before = len(served.mesh.client.list())
    for token in ("", "wrong-token-0123456789"):
        with GatewayClient(served.address, token) as stranger:
            for call in (lambda: stranger.submit(pb.Action(command=["true"])),
                         lambda: stranger.get("anything"),
                         lambda: stranger.call("ListAgents", gpb.ListAgentsRequest())):
                code, _ = _code(call)
                assert code == grpc.StatusCode.UNAUTHENTICATED
            code, _ = _code(lambda: _services(stranger))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            check = health_pb2_grpc.HealthStub(stranger.channel).Check
            assert check(health_pb2.HealthCheckRequest(service="")).status == \
                health_pb2.HealthCheckResponse.SERVING
            assert check(health_pb2.HealthCheckRequest(service="actionmesh.v1.Gateway")) \
                .status == health_pb2.HealthCheckResponse.SERVING
    assert len(served.mesh.client.list()) == before, "a refused submit submitted nothing"
    assert "actionmesh.v1.Gateway" in _services(served.gateway)
    # The scheme is case-insensitive, as HTTP's are.
    lower = served.gateway.channel.unary_unary(
        "/actionmesh.v1.Gateway/ListAgents",
        request_serializer=gpb.ListAgentsRequest.SerializeToString,
        response_deserializer=gpb.ListAgentsResponse.FromString)
    assert lower(gpb.ListAgentsRequest(), metadata=(("authorization", f"bearer {TOKEN}"),),
                 timeout=30).agents


def _services(client: GatewayClient) -> list[str]:
    """What server reflection lists, asked with the client's token."""
    reflect = client.channel.stream_stream(
        REFLECTION, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    [answer] = list(reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                            metadata=client.metadata))
    return [s.name for s in answer.list_services_response.service]


def test_fifty_streaming_submits_at_once_all_complete(served: Served) -> None:
    def one(i: int) -> tuple[int, list[str], int]:
        found = events(served.gateway.submit(shell(f"echo job{i}", cpus=0.1), timeout=120))
        return found[-1].result.stage, [t for *_, t in lines(found)], found[-1].result.exit_code

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert results == [(gpb.STAGE_SUCCEEDED, [f"job{i}"], 0) for i in range(50)]


def _gateway_rss() -> int:
    return int(psutil.Process(actor_pid(names.GATEWAY)).memory_info().rss)


def test_a_slow_client_holds_back_the_stream_and_a_gone_one_frees_it(served: Served) -> None:
    # 60 MB of output: a gateway that buffered it for a client that does not read would
    # grow by more than that (as Python strings); one that waits on the client holds a few
    # MiB: one relay read and a few chunks.
    script = ("python3 -c \"import sys; line = 'x' * 99 + '\\n'; "
              "sys.stdout.write(line * 600_000)\"")
    rss = _gateway_rss()
    stream: Any = served.gateway.submit(shell(script), timeout=120)
    action_id = next(stream).stage.action_id
    served.mesh.client.handle(action_id).result(timeout=60)  # all of it is at the relay
    actor = _gateway_actor()
    # Its follower has read ahead as far as it will (a gateway without a bound reads on).
    wait_until(lambda: ray.get(actor.backlog.remote()), lambda n: n >= BACKLOG, timeout=30,
               what="the stream's backlog full while its client reads nothing")
    grown = _gateway_rss() - rss
    assert grown < 30 * 2**20, f"the gateway buffered for a client not reading: {grown}"
    assert ray.get(actor.streams.remote()) >= 1
    rest = 0
    for event in stream:
        rest += len(event.log.lines)
        if rest >= 100_000:
            break
    stream.cancel()
    wait_until(lambda: ray.get(actor.streams.remote()), lambda n: n == 0, timeout=15,
               what="the gateway's streams closed after the client left")
    tail = events(served.gateway.watch(action_id, from_offset=599_990, timeout=60))
    assert [offset for _, offset, _, _ in lines(tail)] == list(range(599_990, 600_000))


def test_tls_with_a_throwaway_certificate(served: Served, tmp_path: Path) -> None:
    cert, key = throwaway_certificate(tmp_path, "gateway.mesh.test")
    with gateway_with(served, cert=cert, key=key) as address:
        with GatewayClient(address, TOKEN, Path(cert).read_bytes(),
                           server_name="gateway.mesh.test") as secure:
            found = events(secure.submit(shell("echo over tls"), timeout=60))
            assert [t for *_, t in lines(found)] == ["over tls"]
        with GatewayClient(address, TOKEN) as cleartext:
            code, _ = _code(lambda: cleartext.get("anything"))
            assert code == grpc.StatusCode.UNAVAILABLE


def test_past_its_most_streams_a_submit_is_refused_and_submits_nothing(
        served: Served) -> None:
    with gateway_with(served, max_streams=2) as address, \
            GatewayClient(address, TOKEN) as gateway:
        held: list[Any] = [gateway.submit(shell("sleep 30", cpus=0.1), timeout=60)
                           for _ in range(2)]
        ids = [next(stream).stage.action_id for stream in held]
        before = len(served.mesh.client.list())
        code, details = _code(lambda: gateway.submit(shell("echo one too many", cpus=0.1)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams" in details
        assert len(served.mesh.client.list()) == before, "the refused action was not submitted"
        for stream, action_id in zip(held, ids, strict=True):
            stream.cancel()
            served.mesh.client.cancel(action_id)
        wait_until(lambda: ray.get(_gateway_actor().streams.remote()), lambda n: n == 0,
                   timeout=15, what="the held streams closed")
        assert events(gateway.submit(shell("echo room again", cpus=0.1), without_logs=True,
                                     timeout=60))[-1].result.stage == gpb.STAGE_SUCCEEDED


@contextmanager
def gateway_with(served: Served, **settings: Any) -> Iterator[str]:
    """The gateway started again with other settings, as `mesh up` replaces it; the
    module's own after. Yields its address."""
    config = served.mesh.config
    assert config.gateway is not None
    changed = config.model_copy(update={"gateway": config.gateway.model_copy(update=settings)})
    try:
        port = bootstrap.start_gateway(changed, 60)
        yield f"127.0.0.1:{port}"
    finally:
        served.gateway.close()
        served.address = f"127.0.0.1:{bootstrap.start_gateway(config, 60)}"
        served.gateway = GatewayClient(served.address, TOKEN)


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Node's gRPC packages, installed from the npm registry into a directory of the run."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the second-language client cannot run")
    where = tmp_path_factory.mktemp("node")
    shutil.copy(ROOT / "tests" / "clients" / "submit.js", where)
    try:
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent",
                               "@grpc/grpc-js@1", "@grpc/proto-loader@0"], cwd=where,
                              capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("npm could not reach its registry within 120 s")
    if done.returncode != 0:
        pytest.skip(f"npm could not install @grpc/grpc-js: {done.stderr[-500:]}")
    return where


def test_a_client_in_another_language_speaks_the_contract(served: Served,
                                                          node_client: Path) -> None:
    done = subprocess.run(
        ["node", "submit.js", served.address, TOKEN, str(ROOT), "--",
         "sh", "-c", "echo from node; exit 4"],
        cwd=node_client, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "NODE_NO_WARNINGS": "1"})
    assert done.returncode == 4, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["stage"]["stage"] for e in found if e["event"] == "stage"] == \
        ["STAGE_QUEUED", "STAGE_ASSIGNED", "STAGE_RUNNING", "STAGE_FAILED"]
    assert [e["log"]["lines"] for e in found if e["event"] == "log"] == [["from node"]]
    assert found[-1]["result"]["stage"] == "STAGE_FAILED"


def test_a_scheduler_gone_is_unavailable_then_a_new_one_is_found(served: Served) -> None:
    # Last in the module: it takes the scheduler down for good, then brings up another.
    known = events(served.gateway.submit(shell("echo before"), without_logs=True,
                                         timeout=60))[-1].result.id
    ray.kill(ray.get_actor(names.SCHEDULER, namespace=names.NAMESPACE), no_restart=True)
    wait_until(lambda: _outcome(lambda: served.gateway.get(known)),
               lambda code: code == grpc.StatusCode.UNAVAILABLE, timeout=30,
               what="a call answered UNAVAILABLE")
    check = health_pb2_grpc.HealthStub(served.gateway.channel).Check
    wait_until(lambda: check(health_pb2.HealthCheckRequest(service="")).status,
               lambda status: status == health_pb2.HealthCheckResponse.NOT_SERVING,
               timeout=30, what="health saying NOT_SERVING")
    bootstrap.up(served.mesh.config)  # a new scheduler, from the same state
    assert served.gateway.get(known).stage == gpb.STAGE_SUCCEEDED
    wait_until(lambda: check(health_pb2.HealthCheckRequest(service="")).status,
               lambda status: status == health_pb2.HealthCheckResponse.SERVING,
               timeout=30, what="health saying SERVING again")
