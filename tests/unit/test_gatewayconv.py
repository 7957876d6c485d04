"""The gateway's edge: what a controller sends is validated naming the field, what it reads
carries the models' values, output is cut into chunks a client can take, and each of our
errors has its status code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from pydantic import ValidationError

from mesh import gatewayconv
from mesh.errors import (
    AlreadyExists,
    ClusterUnavailable,
    Conflict,
    InvalidInput,
    MeshError,
    NotFound,
    SchedulerUnavailable,
    StateCorrupt,
    StateDirInUse,
    StoreReadOnly,
    Unplaceable,
)
from mesh.rpcerrors import status_code
from mesh.schema import (
    ActionStatus,
    AgentState,
    AgentStatus,
    AttemptRecord,
    GatewayConfig,
    LogBatch,
    PendingReason,
    StageEvent,
)
from mesh.stages import Stage
from mesh.v1 import gateway_pb2 as gpb
from mesh.v1 import link_pb2 as pb
from tests.builders import action, agent, aid, nid

TOKEN = "a-token-of-twenty-chars"


@pytest.mark.parametrize(("fields", "error"), [
    ({"port": 50051, "token": TOKEN}, None),
    ({"port": 0, "token_file": "/etc/mesh/token"}, None),
    ({"port": 50051, "token": TOKEN, "cert": "/c.crt", "key": "/c.key"}, None),
    ({"port": 50051}, "give exactly one"),
    ({"port": 50051, "token": TOKEN, "token_file": "/t"}, "give exactly one"),
    ({"port": 50051, "token": TOKEN, "cert": "/c.crt"}, "cert and key: give both"),
    ({"port": 50051, "token_file": "token"}, "token_file"),
    ({"port": 65536, "token": TOKEN}, "port"),
    ({"port": 50051, "token": "x" * 15}, "16 to 4096 characters"),
    ({"port": 50051, "token": "has a space in it ok"}, "printable ASCII without spaces"),
], ids=["token", "token file", "tls", "no token", "two tokens", "cert alone",
        "relative token file", "port too high", "short token", "spaced token"])
def test_the_gateway_config(fields: dict[str, Any], error: str | None) -> None:
    if error is None:
        GatewayConfig(**fields)
        return
    with pytest.raises(ValidationError, match=error):
        GatewayConfig(**fields)


def test_the_token_never_shows_in_the_config() -> None:
    config = GatewayConfig(port=1, token=TOKEN)  # type: ignore[arg-type]
    assert TOKEN not in repr(config) and TOKEN not in config.model_dump_json()


@pytest.mark.parametrize(("error", "code"), [
    (InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound("x"), grpc.StatusCode.NOT_FOUND),
    (Unplaceable("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (AlreadyExists("account 'a' already exists with another config"),
     grpc.StatusCode.ALREADY_EXISTS),
    (Conflict("account 'a' is used by 2 unfinished actions"),
     grpc.StatusCode.FAILED_PRECONDITION),
    (StoreReadOnly("x"), grpc.StatusCode.UNAVAILABLE),
    (StateDirInUse("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (StateCorrupt("x"), grpc.StatusCode.UNAVAILABLE),
    (SchedulerUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (ClusterUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (MeshError("x"), grpc.StatusCode.INTERNAL),
])
def test_each_error_has_its_status_code(error: MeshError, code: grpc.StatusCode) -> None:
    assert status_code(error) == code


def test_an_unset_field_takes_the_schema_default() -> None:
    sent = gatewayconv.action(gpb.SubmitRequest(action=pb.Action(
        command=["make"], retry=pb.RetryPolicy(on_failure=2))))
    assert sent.cpus == 1.0 and sent.retry.on_failure == 2 and sent.retry.on_lost == 3
    zero = gatewayconv.action(gpb.SubmitRequest(action=pb.Action(
        command=["make"], cpus=0, retry=pb.RetryPolicy(on_lost=0))))
    assert zero.cpus == 0.0 and zero.retry.on_lost == 0, "an explicit zero is kept"


@pytest.mark.parametrize(("request_", "field"), [
    (gpb.SubmitRequest(), "action"),
    (gpb.SubmitRequest(action=pb.Action(command=["true"], memory=2**63)), "memory"),
    (gpb.SubmitRequest(action=pb.Action(command=["true"], id="../x")), "id"),
    (gpb.SubmitRequest(action=pb.Action(command=["true"], timeout=-1)), "timeout"),
])
def test_a_bad_action_names_its_field(request_: gpb.SubmitRequest, field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        gatewayconv.action(request_)


def test_a_listing_request() -> None:
    query = gatewayconv.list_query(gpb.ListRequest(stage=gpb.STAGE_RUNNING, job="nightly",
                                                   page_token=40))
    assert (query.stage, query.job, query.after, query.limit, query.account) == \
        (Stage.RUNNING, "nightly", 40, gatewayconv.DEFAULT_PAGE, None)
    with pytest.raises(InvalidInput, match="stage"):
        gatewayconv.list_query(gpb.ListRequest(stage=99))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="page_size"):
        gatewayconv.list_query(gpb.ListRequest(page_size=10_001))
    gatewayconv.list_query(gpb.ListRequest(page_size=10_000))  # the most, exactly


def test_account_changes_follow_the_update_mask() -> None:
    config = gpb.AccountConfig(max_fanout=4, description="team")
    assert gatewayconv.account_changes(gpb.ModifyAccountRequest(
        config=config, update_mask=FieldMask(paths=["max_fanout"]))) == {"max_fanout": 4}
    assert gatewayconv.account_changes(gpb.ModifyAccountRequest(reset_balance=True)) == {}
    with pytest.raises(InvalidInput, match="update_mask: colour"):
        gatewayconv.account_changes(gpb.ModifyAccountRequest(
            update_mask=FieldMask(paths=["colour"])))
    with pytest.raises(InvalidInput, match="update_mask: names no field"):
        gatewayconv.account_changes(gpb.ModifyAccountRequest())


def test_a_watch_from_attempt_zero_starts_at_the_first() -> None:
    assert gatewayconv.cursor(gpb.WatchRequest(action_id="a1", after_seq=3, from_offset=9)) \
        == ("a1", 3, 1, 9)
    with pytest.raises(InvalidInput, match="action_id"):
        gatewayconv.cursor(gpb.WatchRequest(action_id=""))


def test_output_is_cut_into_chunks_a_client_can_take(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gatewayconv, "CHUNK_BYTES", 100)
    lines = [f"{i:03d}" + "x" * 26 for i in range(10)]  # 30 bytes each with its newline
    batch = LogBatch.of(aid("a1"), 2, "stderr", 50, lines)
    chunks = [e.log for e in gatewayconv.chunks_pb(batch)]
    assert [list(c.lines) for c in chunks] == [lines[0:3], lines[3:6], lines[6:9], lines[9:]]
    assert [c.offset for c in chunks] == [50, 53, 56, 59]
    assert {(c.attempt, c.stream, c.action_id) for c in chunks} == \
        {(2, gpb.LOG_STREAM_STDERR, "a1")}
    wide = LogBatch.of(aid("a1"), 1, "stdout", 0, ["é" * 20] * 4)  # 41 bytes each
    assert [len(e.log.lines) for e in gatewayconv.chunks_pb(wide)] == [2, 2]
    long = LogBatch.of(aid("a1"), 1, "stdout", 0, ["y" * 500])
    assert [list(e.log.lines) for e in gatewayconv.chunks_pb(long)] == [["y" * 500]], \
        "a line longer than a chunk goes whole"


def test_a_status_reads_as_the_model_says(tmp_path: Path) -> None:
    status = ActionStatus(
        action=action("a1", secrets={"TOKEN": "***"}), id=aid("a1"), stage=Stage.QUEUED,
        attempt=2, submitted_at=5.0,
        pending=PendingReason(summary="waiting", priority=5),
        attempts=[AttemptRecord(number=1, agent_id=nid("n1"), assigned_at=6.0,
                                outcome="lost", reason="node died")])
    shown = gatewayconv.status_pb(status)
    assert (shown.stage, shown.attempt, shown.pending.priority, shown.action.secrets["TOKEN"]) \
        == (gpb.STAGE_QUEUED, 2, 5, "***")
    assert not shown.HasField("finished_at") and not shown.HasField("exit_code")
    assert shown.attempts[0].outcome == gpb.ATTEMPT_OUTCOME_LOST
    event = gatewayconv.event_pb(StageEvent(seq=4, action_id=aid("a1"), attempt=1,
                                            stage=Stage.FAILED, time=9.0, exit_code=-9))
    assert (event.stage.stage, event.stage.exit_code, event.stage.agent_id) == \
        (gpb.STAGE_FAILED, -9, "")


def test_every_agent_state_has_its_own_value_on_the_wire() -> None:
    # A state the gateway cannot show would fail every ListAgents while one agent is in it.
    shown = [gatewayconv.agent_pb(AgentStatus(
        info=agent("n1"), state=state, capacity_percent=100.0, load=None, reserved_cpus=0,
        reserved_memory=0, running=[])).state for state in get_args(AgentState)]
    assert gpb.AGENT_STATE_UNSPECIFIED not in shown
    assert len(set(shown)) == len(shown)
