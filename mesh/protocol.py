"""The agent-scheduler wire protocol: what an agent and the scheduler say to each other
(starts, stage reports, holdings, the link's grant, which the Python client is handed too
for its own short path). Users never see these; the models users see are in
`mesh/schema.py`."""

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
    within_cpus: float | None = Field(None, ge=0, le=1 << 20, description=(
        "hold the start until the attempts running on the agent, with this one, reserve at "
        "most this many CPUs (the agent's capacity as the scheduler counts it): work handed "
        "over ahead of a free slot starts as soon as one frees. None: start at once"))


ReportStage = Literal["running", "succeeded", "failed", "timed_out", "cancelled"]
# What an agent says of a start it did not carry out: the attempt never ran. "refused": it
# could not (it is shutting down, or could not guard the attempt), and the attempt counts
# as lost, as a start refused by a Ray call does; "withdrawn": it dropped a start it held
# for a slot because the scheduler took it back, at no cost to the action.
NotRun = Literal["refused", "withdrawn"]
# An agent's answer to a stop: it stopped the attempt, the attempt had already ended, or
# the agent never ran it.
CancelOutcome = Literal["stopped", "finished", "unknown"]


class AttemptReport(Model):
    """An agent's word on one attempt: it started, or it ended and how, or it was refused."""

    action_id: ActionId
    attempt: AttemptNumber
    agent_id: AgentId
    stage: ReportStage | NotRun
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
    # Handed over ahead of a free slot and not started yet: in flight, but not running.
    waiting: list[HeldAttempt] = Field(default_factory=list)
    ended: list[AttemptReport] = Field(default_factory=list)


class LinkGrant(Model):
    """Where and how an agent opens its stream to the scheduler: handed to it by the
    scheduler over Ray, which authenticates both ends. The credential is the agent's own:
    it admits a stream that speaks for that agent alone. The Python client is handed one
    for the client link, whose credential admits its calls (mesh/v1/client.proto)."""

    host: str = Field(..., min_length=1, max_length=255)
    port: int = Field(..., ge=1, le=65535)
    credential: str = Field(..., min_length=32, max_length=256, repr=False)
    root_certificate: str = Field(
        "", max_length=1 << 20,
        description="PEM the scheduler's certificate is checked against; empty: no TLS")
    server_name: str = Field("", max_length=255,
                             description="the name in the certificate, when not the host")


class ReportAnswer(Model):
    """The scheduler's answer to one report: the reporting agent's next assignments, or why
    the report was refused."""

    assignments: list[Assignment] = Field(default_factory=list)
    error: str = ""
    # False unless said: an answer that claims a write which did not happen would make the
    # agent drop an end report a restarted scheduler still needs.
    recorded: bool = Field(False, description=(
        "what the report changed is in the state file (committed, not fsynced: it survives "
        "the scheduler's crash, not the head machine's): a restarted scheduler will not "
        "need it again, so the agent stops offering it in its holdings"))
