"""The core's durable form: what the store writes after each step and a restart reads back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from mesh.schema import (
    STORED,
    AccountId,
    Action,
    ActionId,
    AgentId,
    AttemptRecord,
    ListQuery,
    MeshEvent,
    StageEvent,
)
from mesh.stages import Stage
from scheduler.core.groups import PoolChanges, SavedPool
from scheduler.core.quota.snapshot import QuotaSnapshot

# The command a status shows in place of a saved spec that cannot be read.
UNREADABLE_SPEC = "(the saved spec of this action cannot be read)"


class SavedSpec(NamedTuple):
    """An accepted action's spec as the store keeps it: its JSON, parsed when first needed,
    and the fields that queue it. A restart takes back thousands of waiting actions and
    needs only these to queue them; parsing every spec was most of its time."""

    text: str
    account: AccountId
    labels: frozenset[str]
    provisionable_labels: frozenset[str]
    cpus: float
    memory: int
    job: str

    def parse(self) -> Action:
        # Checked when it was accepted: only types and bounds are checked again.
        return Action.model_validate_json(self.text, context=STORED)

    def stand_in(self, action_id: ActionId) -> Action:
        """What a status shows for an action whose saved spec cannot be read: the fields
        that placed it, and a command that says so."""
        return Action.model_validate({
            "id": action_id, "command": [UNREADABLE_SPEC], "cpus": self.cpus,
            "memory": self.memory, "labels": sorted(self.labels),
            "provisionable_labels": sorted(self.provisionable_labels),
            "account": self.account, "job": self.job}, context=STORED)


class ActionRecord(NamedTuple):
    """One accepted action's own state; its attempts and events are rows of their own.
    (A named tuple: a restart builds ten thousand of them, at a fifth of a frozen
    dataclass's cost each.)"""

    id: ActionId
    seq: int
    spec: Action | SavedSpec
    submitted_at: float
    stage: Stage
    attempt: int
    finished_at: float | None
    exit_code: int | None
    reason: str
    failures: int
    losses: int
    deaths_in_a_row: tuple[AgentId, ...]
    cancel_requested: bool
    unplaceable: bool
    floor: int
    events: int


@dataclass
class Changes:
    """What changed since the last write, written as one transaction: actions accepted
    since (with their spec), actions changed, attempts started or changed, and events."""

    created: list[ActionRecord] = field(default_factory=list)
    updated: list[ActionRecord] = field(default_factory=list)
    attempts: list[tuple[ActionId, AttemptRecord]] = field(default_factory=list)
    events: list[StageEvent | MeshEvent] = field(default_factory=list)
    accounts: QuotaSnapshot | None = None
    pool: PoolChanges = field(default_factory=PoolChanges)
    drained: set[AgentId] | None = None  # all drained agents, when that changed

    def __bool__(self) -> bool:
        return bool(self.created or self.updated or self.attempts or self.events
                    or self.accounts is not None or self.pool or self.drained is not None)


# An action as the store keeps it: its own state and its attempts, oldest first.
Kept = tuple[ActionRecord, list[AttemptRecord]]


@dataclass
class Saved:
    """What a restarting core begins from: unfinished actions with their attempts (finished
    ones, and every action's events, stay in the store, read when asked for), the highest
    sequence number handed out, and the accounts."""

    actions: list[Kept] = field(default_factory=list)  # in no particular order
    last_seq: int = 0
    # How many finished actions the store keeps, by stage (they are not in `actions`).
    finished: dict[Stage, int] = field(default_factory=dict)
    accounts: QuotaSnapshot | None = None
    drained: set[AgentId] = field(default_factory=set)
    pool: SavedPool = field(default_factory=SavedPool)


# An action retention deleted, and the stage it had ended in.
Expired = tuple[ActionId, Stage]


class Archive(Protocol):
    """Every accepted action as last written (the core keeps only unfinished ones, and the
    latest finished, in memory), and the ids of those deleted since."""

    def find(self, action_id: ActionId) -> Kept | None: ...

    def find_many(self, action_ids: Sequence[ActionId]) -> dict[ActionId, Kept]:
        """Those of the ids that are kept, by id."""
        ...

    def expired(self, action_id: ActionId) -> bool: ...

    def page(self, query: ListQuery) -> list[Kept]:
        """Up to `query.limit` actions past its cursor that match it as written, by seq."""
        ...


class NoArchive:
    """For a core with nothing saved before it and nothing written: it keeps all it has."""

    def find(self, action_id: ActionId) -> Kept | None:
        return None

    def find_many(self, action_ids: Sequence[ActionId]) -> dict[ActionId, Kept]:
        return {}

    def expired(self, action_id: ActionId) -> bool:
        return False

    def page(self, query: ListQuery) -> list[Kept]:
        return []
