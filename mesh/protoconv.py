"""The actionmesh.v1 proto messages to and from the schema's models: the only place either
side of a gRPC stream converts, and where what arrives is validated."""

from __future__ import annotations

from typing import Any

from mesh.arrival import arrived
from mesh.protocol import Assignment, AttemptReport, CancelOutcome, ReportAnswer
from mesh.schema import STORED, Action, AgentId, Load
from mesh.v1 import link_pb2 as pb

_STAGES: dict[str, pb.ReportStage] = {
    "running": pb.REPORT_STAGE_RUNNING,
    "succeeded": pb.REPORT_STAGE_SUCCEEDED,
    "failed": pb.REPORT_STAGE_FAILED,
    "timed_out": pb.REPORT_STAGE_TIMED_OUT,
    "cancelled": pb.REPORT_STAGE_CANCELLED,
    "refused": pb.REPORT_STAGE_REFUSED,
    "withdrawn": pb.REPORT_STAGE_WITHDRAWN,
}
_STAGE_NAMES: dict[int, str] = {number: name for name, number in _STAGES.items()}
_OUTCOMES: dict[str, pb.StopOutcome] = {
    "stopped": pb.STOP_OUTCOME_STOPPED,
    "finished": pb.STOP_OUTCOME_FINISHED,
    "unknown": pb.STOP_OUTCOME_UNKNOWN,
}
_OUTCOME_NAMES: dict[int, str] = {number: name for name, number in _OUTCOMES.items()}


def action_pb(action: Action) -> pb.Action:
    return pb.Action(
        id=action.id, command=action.command, shell=action.shell, env=action.env,
        secrets=action.secrets, cwd=action.cwd, cpus=action.cpus, memory=action.memory,
        labels=action.labels, provisionable_labels=action.provisionable_labels,
        account=action.account, job=action.job, timeout=action.timeout,
        retry=pb.RetryPolicy(on_failure=action.retry.on_failure, on_lost=action.retry.on_lost,
                             quarantine_after=action.retry.quarantine_after),
        tags=action.tags)


def action_fields(message: pb.Action) -> dict[str, Any]:
    """The fields of an Action, to be validated as one (alone or inside another model)."""
    fields: dict[str, Any] = {
        "command": list(message.command), "shell": message.shell, "env": dict(message.env),
        "secrets": dict(message.secrets), "memory": message.memory,
        "labels": list(message.labels),
        "provisionable_labels": list(message.provisionable_labels),
        "account": message.account, "job": message.job, "tags": dict(message.tags)}
    fields.update(_present(message, ("id", "cwd", "timeout", "cpus")))
    if message.HasField("retry"):
        fields["retry"] = _present(message.retry, ("on_failure", "on_lost", "quarantine_after"))
    return fields


def _present(message: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The optional fields that are set (the unset take the schema's defaults)."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def assignment_pb(assignment: Assignment) -> pb.Assignment:
    return pb.Assignment(action_id=assignment.action_id, attempt=assignment.attempt,
                         action=action_pb(assignment.action),
                         assigned_at=assignment.assigned_at,
                         within_cpus=assignment.within_cpus)


def assignment(message: pb.Assignment, agent_id: AgentId) -> Assignment:
    """An assignment that came down `agent_id`'s stream; validated as stored (the
    scheduler sends specs it accepted, some under older rules): types and bounds only."""
    return arrived(Assignment, {
        "action": action_fields(message.action), "action_id": message.action_id,
        "attempt": message.attempt, "agent_id": agent_id,
        "assigned_at": message.assigned_at, **_present(message, ("within_cpus",))},
        "assignment", STORED)


def report_pb(report: AttemptReport) -> pb.AttemptReport:
    return pb.AttemptReport(action_id=report.action_id, attempt=report.attempt,
                            stage=_STAGES[report.stage], time=report.time,
                            exit_code=report.exit_code, reason=report.reason)


def report(message: pb.AttemptReport, agent_id: AgentId) -> AttemptReport:
    """A report that came up `agent_id`'s stream: it speaks for that agent, whatever it
    claims (the message has no agent field to claim another)."""
    # A stage this version does not know fails validation, which names the field.
    stage = _STAGE_NAMES.get(message.stage, f"stage number {message.stage}")
    return arrived(AttemptReport, {
        "action_id": message.action_id, "attempt": message.attempt, "agent_id": agent_id,
        "stage": stage, "time": message.time,
        "exit_code": message.exit_code if message.HasField("exit_code") else None,
        "reason": message.reason}, "report")


def load_pb(load: Load) -> pb.Load:
    return pb.Load(cpu_percent=load.cpu_percent, mesh_cpu_percent=load.mesh_cpu_percent,
                   cpu_count=load.cpu_count, memory_total=load.memory_total,
                   memory_used=load.memory_used, memory_available=load.memory_available,
                   load_avg=load.load_avg, sampled_at=load.sampled_at)


def load(message: pb.Load) -> Load:
    return arrived(Load, {
        "cpu_percent": message.cpu_percent, "mesh_cpu_percent": message.mesh_cpu_percent,
        "cpu_count": message.cpu_count, "memory_total": message.memory_total,
        "memory_used": message.memory_used, "memory_available": message.memory_available,
        "load_avg": tuple(message.load_avg), "sampled_at": message.sampled_at}, "load")


def answer_pb(answer: ReportAnswer) -> pb.ReportAnswer:
    return pb.ReportAnswer(assignments=[assignment_pb(a) for a in answer.assignments],
                           error=answer.error, recorded=answer.recorded)


def outcome_pb(outcome: CancelOutcome) -> pb.StopOutcome:
    return _OUTCOMES[outcome]


def outcome(number: int) -> CancelOutcome:
    """ValueError for an outcome this version does not know."""
    try:
        found: Any = _OUTCOME_NAMES[number]
    except KeyError:
        raise ValueError(f"stop outcome {number} is not one of {sorted(_OUTCOMES)}") from None
    checked: CancelOutcome = found
    return checked
