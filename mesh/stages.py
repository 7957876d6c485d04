"""The action stage machine: the stages, the table of allowed moves, and `transition()`."""

from __future__ import annotations

from enum import StrEnum

from mesh.errors import StageError


class Stage(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


TERMINAL: frozenset[Stage] = frozenset(
    {Stage.SUCCEEDED, Stage.FAILED, Stage.TIMED_OUT, Stage.CANCELLED}
)

# Moves back to QUEUED start a new attempt: the attempt was lost with its agent, or it
# failed and the action's failure budget allows another try. FAILED straight from QUEUED
# is a quarantine or a spec the agent refused; from ASSIGNED it is a process that could
# not start (no such command, bad cwd).
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.QUEUED: frozenset({Stage.ASSIGNED, Stage.CANCELLED, Stage.FAILED}),
    Stage.ASSIGNED: frozenset({Stage.RUNNING, Stage.QUEUED, Stage.CANCELLED, Stage.FAILED}),
    Stage.RUNNING: frozenset(
        {Stage.SUCCEEDED, Stage.FAILED, Stage.TIMED_OUT, Stage.CANCELLED, Stage.QUEUED}
    ),
    Stage.SUCCEEDED: frozenset(),
    Stage.FAILED: frozenset(),
    Stage.TIMED_OUT: frozenset(),
    Stage.CANCELLED: frozenset(),
}


def transition(current: Stage, target: Stage) -> Stage:
    """Return `target` if the table allows `current -> target`, else raise StageError."""
    if target not in TRANSITIONS[current]:
        raise StageError(f"stage {current.value} cannot move to {target.value}")
    return target
