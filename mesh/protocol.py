"""The agent-scheduler wire protocol: what an agent and the scheduler say to each other
(starts, stage reports, holdings, the report channel's frames). Users never see these;
the models users see are in `mesh/schema.py`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mesh.schema import Action, ActionId, AgentId, AttemptNumber, ExitCode, Instant, Model


class Assignment(Model):
    """What the scheduler hands an agent: run this attempt of this action."""

    action: Action
    action_id: ActionId
    attempt: AttemptNumber
    agent_id: AgentId
    # When the scheduler made the attempt (its clock): the same for every re-send of it, so
    # an agent can refuse a start older than the attempts it has forgotten.
    assigned_at: Instant


ReportStage = Literal["running", "succeeded", "failed", "timed_out", "cancelled"]
# What an agent says of a start it did not carry out (it is shutting down, or could not
# guard the attempt): the attempt never ran, and counts as lost, as a start refused by a
# Ray call does.
Refused = Literal["refused"]
# An agent's answer to a stop: it stopped the attempt, the attempt had already ended, or
# the agent never ran it.
CancelOutcome = Literal["stopped", "finished", "unknown"]


class AttemptReport(Model):
    """An agent's word on one attempt: it started, or it ended and how, or it was refused."""

    action_id: ActionId
    attempt: AttemptNumber
    agent_id: AgentId
    stage: ReportStage | Refused
    time: Instant
    exit_code: ExitCode | None = None
    reason: str = ""


class HeldAttempt(Model):
    action_id: ActionId
    attempt: AttemptNumber


class AgentHoldings(Model):
    """What an agent tells a scheduler that (re)registers it: the attempts it runs, and
    the end reports of attempts that ended lately (some may never have been delivered)."""

    running: list[HeldAttempt] = Field(default_factory=list)
    ended: list[AttemptReport] = Field(default_factory=list)


class ReportChannel(Model):
    """Where an agent sends its stage reports without a Ray call per report, and the secret
    that admits it; handed out by the scheduler over Ray, which authenticates the caller."""

    host: str
    port: int = Field(..., ge=1, le=65535)
    secret: str = Field(..., min_length=16)


class ChannelHello(Model):
    """The first frame on a report channel: who connects, and the secret."""

    agent_id: AgentId
    secret: str


class ReportAnswer(Model):
    """What the scheduler sends down a report channel. The answer to one report frame, in
    order: the reporting agent's next assignments, or why the report was refused. Or, with
    `unasked`, assignments sent without a report to answer (starts of new work)."""

    assignments: list[Assignment] = Field(default_factory=list)
    error: str = ""
    unasked: bool = False
    # False unless said: an answer that claims a write which did not happen would make the
    # agent drop an end report a restarted scheduler still needs.
    recorded: bool = Field(False, description=(
        "what the report changed is in the state file (committed, not fsynced: it survives "
        "the scheduler's crash, not the head machine's): a restarted scheduler will not "
        "need it again, so the agent stops offering it in its holdings"))
