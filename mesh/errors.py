"""The one error tree users of actionmesh catch; Ray and gRPC errors are translated into it.

    MeshError
     ├── InvalidInput            bad input from outside; names the field
     ├── NotFound                unknown action, agent or account id
     ├── Conflict                contradicts the state (an account still used)
 │    └── AlreadyExists       an account that exists with another config
     ├── Unplaceable             no agent in the pool could ever take the action
     ├── StageError              a stage move the transition table forbids (a bug)
     ├── StateCorrupt            the scheduler's saved state cannot be read
     ├── StateDirRefused         the state dir cannot be used
 │    ├── StateDirInUse       another cluster's mesh holds it
 │    └── StateDirUnsafe      a symlink, another user's, or writable by others
     ├── StoreReadOnly           the state store cannot be written: changes are refused
     ├── ClusterUnavailable      no Ray cluster to connect to, or it went away
     ├── MeshNotRunning          the cluster is up but the mesh actors are not
     ├── SchedulerUnavailable    the scheduler did not answer (restarting, gone)
     ├── ActionTimeout           waiting for a result took longer than asked
     ├── Busy                    too much of this is under way already; try again later
     └── WaitTimeout             a condition polled with `mesh.waiting` never held
"""

from __future__ import annotations

from typing import Any


class MeshError(Exception):
    """Root of every error actionmesh raises to its users."""


class InvalidInput(MeshError):
    """Input from a client, the CLI, gRPC or a config file failed validation.

    `errors` holds one entry per bad field: (field path, message).
    """

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    @classmethod
    def from_validation(cls, what: str, exc: Any) -> InvalidInput:
        """Build from a pydantic ValidationError, keeping each field's path and message."""
        errors: list[tuple[str, str]] = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err.get("loc", ())) or what
            errors.append((path, str(err.get("msg", "invalid"))))
        detail = "; ".join(f"{path}: {msg}" for path, msg in errors)
        return cls(f"invalid {what}: {detail}", errors)


class NotFound(MeshError):
    """An id (action, agent, account) that the scheduler does not know."""


class Conflict(MeshError):
    """The request contradicts the scheduler's state (an account that already exists, or
    one still used by actions)."""


class AlreadyExists(Conflict):
    """What is to be created exists already, and differently (an account with another
    config)."""


class Unplaceable(MeshError):
    """No agent in the pool could ever run the action, so it was refused."""

    def __init__(self, message: str, action_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.action_ids = action_ids or []


class StageError(MeshError):
    """A stage change the transition table does not allow: a broken invariant."""


class StateCorrupt(MeshError):
    """The saved state cannot be read. At start-up the scheduler answers every call with
    it, and reads again now and then, rather than silently start empty; a damaged record
    found later costs only its action."""


class StateDirRefused(MeshError):
    """The state dir cannot be used; the message says why and what to do."""


class StateDirInUse(StateDirRefused):
    """The state dir is held by another running mesh; the message names its cluster."""


class StateDirUnsafe(StateDirRefused):
    """The state dir is a symlink, belongs to another user or is writable by others: what
    is kept there (actions' environments, logs) would not be private."""


class StoreReadOnly(MeshError):
    """The scheduler cannot write its state (disk full, I/O error): it answers reads but
    refuses submissions and admin changes until it can write again."""


class ClusterUnavailable(MeshError):
    """There is no Ray cluster at the address, or the connection was lost."""


class MeshNotRunning(MeshError):
    """The Ray cluster is up, but `mesh up` has not been run on it."""


class SchedulerUnavailable(MeshError):
    """The scheduler actor did not answer; it may be restarting."""


class Busy(MeshError):
    """Refused for now: too much of the same is under way (the gateway's open streams)."""


class ActionTimeout(MeshError):
    """An action did not reach the awaited stage within the caller's timeout."""


class WaitTimeout(MeshError, TimeoutError):
    """`mesh.waiting.wait_until` gave up: the condition never held within its timeout.

    `last` is the last observation, which the message also quotes.
    """

    def __init__(self, message: str, last: object = None) -> None:
        super().__init__(message)
        self.last = last
