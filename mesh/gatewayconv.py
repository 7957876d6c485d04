"""The gateway's proto messages to and from the schema's models: what a controller sends is
validated here (InvalidInput naming the field), what it reads is built here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from mesh.arrival import arrived, arrived_count, arrived_id
from mesh.errors import InvalidInput
from mesh.protoconv import action_fields, action_pb, load_pb
from mesh.schema import (
    MAX_COUNT,
    MAX_PAGE,
    AccountConfig,
    AccountStatus,
    Action,
    ActionId,
    ActionPage,
    ActionStatus,
    AgentStatus,
    AttemptRecord,
    ListQuery,
    LogBatch,
    PendingReason,
    StageEvent,
)
from mesh.stages import Stage
from mesh.v1 import gateway_pb2 as gpb

_STAGES: dict[Stage, gpb.Stage] = {
    Stage.QUEUED: gpb.STAGE_QUEUED,
    Stage.ASSIGNED: gpb.STAGE_ASSIGNED,
    Stage.RUNNING: gpb.STAGE_RUNNING,
    Stage.SUCCEEDED: gpb.STAGE_SUCCEEDED,
    Stage.FAILED: gpb.STAGE_FAILED,
    Stage.TIMED_OUT: gpb.STAGE_TIMED_OUT,
    Stage.CANCELLED: gpb.STAGE_CANCELLED,
}
_STAGE_OF: dict[int, Stage] = {number: stage for stage, number in _STAGES.items()}
_OUTCOMES: dict[str, gpb.AttemptOutcome] = {
    "succeeded": gpb.ATTEMPT_OUTCOME_SUCCEEDED,
    "failed": gpb.ATTEMPT_OUTCOME_FAILED,
    "timed_out": gpb.ATTEMPT_OUTCOME_TIMED_OUT,
    "cancelled": gpb.ATTEMPT_OUTCOME_CANCELLED,
    "lost": gpb.ATTEMPT_OUTCOME_LOST,
    "preempted": gpb.ATTEMPT_OUTCOME_PREEMPTED,
}
_AGENT_STATES: dict[str, gpb.AgentState] = {
    "alive": gpb.AGENT_STATE_ALIVE,
    "suspect": gpb.AGENT_STATE_SUSPECT,
    "draining": gpb.AGENT_STATE_DRAINING,
    "drained": gpb.AGENT_STATE_DRAINED,
    "blocked": gpb.AGENT_STATE_BLOCKED,
    "dead": gpb.AGENT_STATE_DEAD,
}
_LINKS: dict[str, gpb.AgentLinkKind] = {
    "stream": gpb.AGENT_LINK_KIND_STREAM,
    "ray": gpb.AGENT_LINK_KIND_RAY,
}
_STREAMS: dict[str, gpb.LogStream] = {
    "stdout": gpb.LOG_STREAM_STDOUT,
    "stderr": gpb.LOG_STREAM_STDERR,
}
# A log chunk's lines take at most this many bytes, so that a chunk stays far below a
# client's default receive limit (4 MiB) whatever the relay hands over in one read.
CHUNK_BYTES = 1 << 20
# The actions a listing page holds when the request leaves it unset.
DEFAULT_PAGE = 100

# ---- what a controller sends -----------------------------------------------------------


def action(message: gpb.SubmitRequest) -> Action:
    """The submitted action, validated as the Python client validates one."""
    if not message.HasField("action"):
        raise InvalidInput("action: required", [("action", "required")])
    return arrived(Action, action_fields(message.action), "action")


def action_id(value: str) -> ActionId:
    return ActionId(arrived_id(value, "action_id"))


def account_id(value: str) -> str:
    return arrived_id(value, "account_id")


def cursor(message: gpb.WatchRequest) -> tuple[ActionId, int, int, int]:
    """(action id, events after this seq, log attempt, log offset) of a watch."""
    return (action_id(message.action_id), arrived_count(message.after_seq, "after_seq"),
            max(1, arrived_count(message.attempt, "attempt")),
            arrived_count(message.from_offset, "from_offset"))


def list_query(message: gpb.ListRequest) -> ListQuery:
    # Checked here, to name the proto's fields rather than the query's (limit, after).
    if message.page_size > MAX_PAGE:
        raise InvalidInput(f"page_size: at most {MAX_PAGE:,}, got {message.page_size}",
                           [("page_size", f"above {MAX_PAGE}")])
    if message.page_token > MAX_COUNT:
        raise InvalidInput("page_token: not one a listing gave", [("page_token", "too large")])
    fields: dict[str, Any] = {"tags": dict(message.tags), "after": message.page_token,
                              "limit": message.page_size or DEFAULT_PAGE}
    if message.stage != gpb.STAGE_UNSPECIFIED:
        fields["stage"] = _STAGE_OF.get(message.stage, f"stage number {message.stage}")
    for name in ("account", "job", "submitted_after", "submitted_before"):
        if message.HasField(name):
            fields[name] = getattr(message, name)
    return arrived(ListQuery, fields, "listing")


def account_changes(message: gpb.ModifyAccountRequest) -> dict[str, Any]:
    """The config fields the update mask names, with their new values (none for a reset
    of the balance alone); the scheduler validates them as changes to the config."""
    if not message.update_mask.paths and message.reset_balance:
        return {}
    return account_config(message.config, message.update_mask.paths)


def account_config(message: gpb.AccountConfig, only: Iterable[str] | None = None,
                   ) -> dict[str, Any]:
    """The config's fields as a controller set them (those in `only`, when given)."""
    fields: dict[str, Any] = {
        "charge_rate": list(message.charge_rate),
        "max_charge_seconds": message.max_charge_seconds,
        "max_fanout": message.max_fanout,
        "per_label_task_limits": dict(message.per_label_task_limits),
        "disable_free_tasks": message.disable_free_tasks,
        "description": message.description,
    }
    if only is None:
        return fields
    chosen = list(only)
    unknown = sorted(set(chosen) - set(fields))
    if unknown:
        raise InvalidInput(f"update_mask: {', '.join(unknown)} not fields of an account "
                           f"config ({', '.join(fields)})", [("update_mask", "unknown field")])
    if not chosen:
        raise InvalidInput("update_mask: names no field to change",
                           [("update_mask", "empty")])
    return {name: fields[name] for name in chosen}


def new_account_config(message: gpb.CreateAccountRequest) -> AccountConfig:
    return arrived(AccountConfig, account_config(message.config), "account config")


# ---- what a controller reads -----------------------------------------------------------


def stage_pb(stage: Stage) -> gpb.Stage:
    return _STAGES[stage]


def event_pb(event: StageEvent) -> gpb.ActionEvent:
    return gpb.ActionEvent(stage=gpb.StageChange(
        seq=event.seq, action_id=event.action_id, attempt=event.attempt,
        stage=_STAGES[event.stage], time=event.time, agent_id=event.agent_id or "",
        exit_code=event.exit_code, reason=event.reason))


def chunks_pb(batch: LogBatch) -> Iterator[gpb.ActionEvent]:
    """The batch as log chunks of at most CHUNK_BYTES of lines each."""
    lines = batch.lines
    start, size = 0, 0
    for i, line in enumerate(lines):
        # Bytes as they cross: a line of other than ASCII takes more than its length.
        cost = (len(line) if line.isascii() else len(line.encode())) + 1
        if size and size + cost > CHUNK_BYTES:
            yield _chunk(batch, start, lines[start:i])
            start, size = i, 0
        size += cost
    if start < len(lines):
        yield _chunk(batch, start, lines[start:])


def _chunk(batch: LogBatch, start: int, lines: list[str]) -> gpb.ActionEvent:
    return gpb.ActionEvent(log=gpb.LogChunk(
        action_id=batch.action_id, attempt=batch.attempt, stream=_STREAMS[batch.stream],
        offset=batch.offset + start, lines=lines))


def gap_pb(action: ActionId, attempt: int, start: int, end: int) -> gpb.ActionEvent:
    return gpb.ActionEvent(log=gpb.LogChunk(
        action_id=action, attempt=attempt, stream=gpb.LOG_STREAM_STDERR, offset=start,
        lost=end - start))


def result_pb(status: ActionStatus) -> gpb.ActionEvent:
    return gpb.ActionEvent(result=status_pb(status))


def status_pb(status: ActionStatus) -> gpb.ActionStatus:
    return gpb.ActionStatus(
        id=status.id, action=action_pb(status.action), stage=_STAGES[status.stage],
        attempt=status.attempt, agent_id=status.agent_id or "",
        submitted_at=status.submitted_at, finished_at=status.finished_at,
        exit_code=status.exit_code, reason=status.reason,
        pending=None if status.pending is None else _pending_pb(status.pending),
        attempts=[_attempt_pb(a) for a in status.attempts])


def _pending_pb(pending: PendingReason) -> gpb.PendingReason:
    return gpb.PendingReason(
        summary=pending.summary, unplaceable=pending.unplaceable, priority=pending.priority,
        quota=pending.quota, rejections=[gpb.Rejection(
            agent_id=r.agent_id, check=r.check, detail=r.detail, requested=r.requested,
            available=r.available) for r in pending.rejections])


def _attempt_pb(record: AttemptRecord) -> gpb.AttemptRecord:
    return gpb.AttemptRecord(
        number=record.number, agent_id=record.agent_id,
        agent_started_at=record.agent_started_at, assigned_at=record.assigned_at,
        started_at=record.started_at, finished_at=record.finished_at,
        outcome=_OUTCOMES.get(str(record.outcome), gpb.ATTEMPT_OUTCOME_UNSPECIFIED),
        priority=record.priority, exit_code=record.exit_code, reason=record.reason)


def page_pb(page: ActionPage) -> gpb.ListResponse:
    return gpb.ListResponse(actions=[status_pb(s) for s in page.actions],
                            next_page_token=page.cursor)


def agent_pb(status: AgentStatus) -> gpb.AgentStatus:
    info = status.info
    return gpb.AgentStatus(
        info=gpb.AgentInfo(
            agent_id=info.agent_id, node_id=info.node_id, hostname=info.hostname,
            address=info.address, labels=info.labels, cpus=info.cpus, memory=info.memory,
            pid=info.pid, started_at=info.started_at, runs_as=info.runs_as,
            containment=info.containment),
        state=_AGENT_STATES[status.state], capacity_percent=status.capacity_percent,
        load=None if status.load is None else load_pb(status.load), load_age=status.load_age,
        reserved_cpus=status.reserved_cpus, reserved_memory=status.reserved_memory,
        running=[gpb.RunningAttempt(action_id=r.action_id, attempt=r.attempt,
                                    stage=_STAGES[r.stage], cpus=r.cpus, memory=r.memory)
                 for r in status.running],
        link=_LINKS[status.link], link_since=status.link_since)


def account_pb(status: AccountStatus) -> gpb.AccountStatus:
    config = status.config
    return gpb.AccountStatus(
        id=status.id, balance=status.balance, running=status.running,
        running_cpus=status.running_cpus, running_by_priority=status.running_by_priority,
        queued_by_priority=status.queued_by_priority,
        config=gpb.AccountConfig(
            charge_rate=config.charge_rate, max_charge_seconds=config.max_charge_seconds,
            max_fanout=config.max_fanout, per_label_task_limits=config.per_label_task_limits,
            disable_free_tasks=config.disable_free_tasks, description=config.description))
