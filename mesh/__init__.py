"""actionmesh: submit CI actions to a mesh of agents on Ray (the user-facing package)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mesh.errors import (
    ActionTimeout,
    ClusterUnavailable,
    Conflict,
    InvalidInput,
    MeshError,
    MeshNotRunning,
    NotFound,
    SchedulerUnavailable,
    StageError,
    StateDirInUse,
    StateDirRefused,
    StateDirUnsafe,
    StoreReadOnly,
    Unplaceable,
)
from mesh.schema import (
    AccountConfig,
    AccountStatus,
    Action,
    ActionStatus,
    Health,
    LogLine,
    LogSource,
    QuotaOptions,
    RetryPolicy,
    StageEvent,
)
from mesh.stages import Stage

if TYPE_CHECKING:
    from mesh.client import ActionHandle, Client, connect

__all__ = [
    "AccountConfig",
    "AccountStatus",
    "Action",
    "ActionHandle",
    "ActionStatus",
    "ActionTimeout",
    "Client",
    "ClusterUnavailable",
    "Conflict",
    "Health",
    "InvalidInput",
    "LogLine",
    "LogSource",
    "MeshError",
    "MeshNotRunning",
    "NotFound",
    "QuotaOptions",
    "RetryPolicy",
    "SchedulerUnavailable",
    "Stage",
    "StageError",
    "StageEvent",
    "StateDirInUse",
    "StateDirRefused",
    "StateDirUnsafe",
    "StoreReadOnly",
    "Unplaceable",
    "connect",
]


def __getattr__(name: str) -> Any:
    # The client imports Ray; loading it lazily keeps `mesh.schema` importable by the pure
    # scheduling core without dragging Ray in.
    if name in ("connect", "Client", "ActionHandle"):
        from mesh import client

        return getattr(client, name)
    raise AttributeError(name)
