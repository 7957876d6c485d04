"""Accepted actions by id and by stage, their stage moves and events, and what changed since
the last write (the journal the store takes)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice

from pydantic import ValidationError

from mesh.errors import NotFound, StateCorrupt
from mesh.schema import (
    Action,
    ActionId,
    ActionStatus,
    AgentId,
    AttemptRecord,
    MeshEvent,
    PendingReason,
    StageEvent,
    StageKind,
)
from mesh.stages import TERMINAL, Stage, transition
from scheduler.core.events import EventSink, NullSink
from scheduler.core.records import ActionRecord, Changes, SavedSpec


@dataclass(slots=True)
class ActionEntry:
    # The spec, or as the store saved it until something needs more than its shape.
    source: Action | SavedSpec
    id: ActionId
    seq: int
    submitted_at: float
    stage: Stage = Stage.QUEUED
    attempt: int = 0
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    failures: int = 0
    losses: int = 0
    # Agents whose death took this action's attempts, since its last attempt that ended.
    deaths_in_a_row: list[AgentId] = field(default_factory=list)
    cancel_requested: bool = False
    unplaceable: bool = False
    # Attempt numbers up to here were seen on agents after a restart though the saved state
    # never made them (a write lost with the head machine): the next attempt goes above.
    floor: int = 0
    events: int = 0
    attempts: list[AttemptRecord] = field(default_factory=list)

    @property
    def spec(self) -> Action:
        if isinstance(self.source, SavedSpec):
            try:
                self.source = self.source.parse()
            except ValidationError as exc:
                raise StateCorrupt(f"saved action {self.id!r} cannot be read: {exc}") from exc
        return self.source

    @property
    def in_flight(self) -> bool:
        return self.stage in (Stage.ASSIGNED, Stage.RUNNING)

    @property
    def agent_id(self) -> AgentId | None:
        """The agent its latest attempt was given to (as that attempt's record says), unless
        it waits for another."""
        if self.stage is Stage.QUEUED or not self.attempts:
            return None
        return self.attempts[-1].agent_id

    @property
    def shown_spec(self) -> Action:
        """The spec, or for a saved one that cannot be read, a stand-in saying so: one
        damaged row must not break listing, resubmitting or cancelling the others."""
        try:
            return self.spec
        except StateCorrupt:
            assert isinstance(self.source, SavedSpec)
            return self.source.stand_in(self.id)

    def status(self, pending: PendingReason | None = None) -> ActionStatus:
        return ActionStatus(
            action=self.shown_spec.masked(), id=self.id, stage=self.stage,
            attempt=self.attempt,
            agent_id=self.agent_id, submitted_at=self.submitted_at,
            finished_at=self.finished_at, exit_code=self.exit_code, reason=self.reason,
            pending=pending, attempts=list(self.attempts),
        )

    def record(self) -> ActionRecord:
        return ActionRecord(
            id=self.id, seq=self.seq, spec=self.source, submitted_at=self.submitted_at,
            stage=self.stage, attempt=self.attempt, finished_at=self.finished_at,
            exit_code=self.exit_code, reason=self.reason, failures=self.failures,
            losses=self.losses, deaths_in_a_row=tuple(self.deaths_in_a_row),
            cancel_requested=self.cancel_requested, unplaceable=self.unplaceable,
            floor=self.floor, events=self.events)

    @classmethod
    def from_record(cls, r: ActionRecord, attempts: list[AttemptRecord]) -> ActionEntry:
        return cls(source=r.spec, id=r.id, seq=r.seq, submitted_at=r.submitted_at,
                   stage=r.stage, attempt=r.attempt, finished_at=r.finished_at,
                   exit_code=r.exit_code, reason=r.reason, failures=r.failures,
                   losses=r.losses, deaths_in_a_row=list(r.deaths_in_a_row),
                   cancel_requested=r.cancel_requested, unplaceable=r.unplaceable,
                   floor=r.floor, events=r.events, attempts=list(attempts))


@dataclass
class _Journal:
    """What changed since the store last took it: whole action rows, attempt rows by
    number, and events in the order they happened."""

    actions: set[ActionId] = field(default_factory=set)
    created: set[ActionId] = field(default_factory=set)
    attempts: set[tuple[ActionId, int]] = field(default_factory=set)
    events: list[StageEvent | MeshEvent] = field(default_factory=list)


class Ledger:
    """Every accepted action, indexed by stage; each stage move goes through the stage
    table, emits a stage event and is journaled for the next write."""

    def __init__(self, sink: EventSink | None = None) -> None:
        self.sink: EventSink = sink or NullSink()
        self.actions: dict[ActionId, ActionEntry] = {}
        # The queue keeps submission order (dicts are ordered); so do the other stages.
        self.by_stage: dict[Stage, dict[ActionId, ActionEntry]] = {s: {} for s in Stage}
        self.last_seq = 0
        self._journal = _Journal()

    # ---- reading ---------------------------------------------------------------------------

    def find(self, action_id: ActionId) -> ActionEntry | None:
        return self.actions.get(action_id)

    def get(self, action_id: ActionId) -> ActionEntry:
        entry = self.actions.get(action_id)
        if entry is None:
            raise NotFound(f"no action with id {action_id!r}")
        return entry

    def attempt_of(self, action_id: ActionId) -> int | None:
        entry = self.actions.get(action_id)
        return None if entry is None else entry.attempt

    def in_stage(self, *stages: Stage) -> list[ActionEntry]:
        return [e for stage in stages for e in self.by_stage[stage].values()]

    def counts(self) -> dict[str, int]:
        return {stage.value: len(entries) for stage, entries in self.by_stage.items()}

    # ---- forgetting ------------------------------------------------------------------------

    def evict_finished(self, keep: int) -> list[ActionEntry]:
        """Drop all but the `keep` latest finished entries, oldest first, leaving any whose
        changes are not written yet; the dropped entries."""
        excess = sum(len(self.by_stage[stage]) for stage in TERMINAL) - keep
        if excess <= 0:
            return []
        # Each stage's entries are in the order they finished: the oldest `excess` of all
        # are among the first `excess` of each.
        oldest = heapq.merge(*(islice(self.by_stage[stage].values(), excess)
                               for stage in TERMINAL),
                             key=lambda e: (e.finished_at or 0.0, e.seq))
        journal = self._journal.actions
        evicted = [e for e in islice(oldest, excess) if e.id not in journal]
        for entry in evicted:
            self.forget(entry.id)
        return evicted

    def forget(self, action_id: ActionId) -> ActionEntry | None:
        """Drop an entry (its events with it, from the sink's memory); None if not here."""
        entry = self.actions.pop(action_id, None)
        if entry is not None:
            del self.by_stage[entry.stage][action_id]
            self.sink.forget(action_id)
        return entry

    # ---- changing --------------------------------------------------------------------------

    def admit(self, entry: ActionEntry) -> None:
        """Index an entry in its stage (a restored one, or one `accept` took)."""
        self.actions[entry.id] = entry
        self.by_stage[entry.stage][entry.id] = entry
        self.last_seq = max(self.last_seq, entry.seq)

    def move(self, entry: ActionEntry, stage: Stage, now: float, reason: str,
             kind: StageKind | None = None) -> None:
        """Move the entry to `stage` if the stage table allows it (StageError if not);
        `kind` names the move in the event log (else `assigned` or a plain `stage`)."""
        new = transition(entry.stage, stage)
        del self.by_stage[entry.stage][entry.id]
        entry.stage = new
        self.by_stage[new][entry.id] = entry
        if new is Stage.QUEUED:
            entry.exit_code = None
        elif new in TERMINAL:
            entry.cancel_requested = False
        entry.reason = reason
        self.emit(entry, now, reason, kind or ("assigned" if new is Stage.ASSIGNED
                                               else "stage"))

    def emit(self, entry: ActionEntry, now: float, reason: str,
             kind: StageKind = "stage") -> None:
        event = _next_event(entry, now, reason, kind)
        self._journal.actions.add(entry.id)
        self._journal.events.append(event)
        self.sink.emit(event)

    def note(self, event: MeshEvent) -> None:
        """Journal an event of the log that is not a stage change (an agent's, a
        priority move) for the next write."""
        self._journal.events.append(event)

    def accept(self, entries: list[tuple[ActionEntry, str]], now: float,
               commit: Callable[[Changes], None] | None = None) -> None:
        """Admit newly accepted entries, each with its "accepted" event and, when it was
        judged unplaceable (a non-empty reason), a second event saying why.

        With `commit`, they are handed to it first and admitted only if it returns: what
        could not be stored is not accepted, and nothing is left to undo.
        """
        events: list[StageEvent] = []
        for entry, unplaceable in entries:
            events.append(_next_event(entry, now, "accepted", "accepted"))
            if unplaceable:
                entry.unplaceable, entry.reason = True, unplaceable
                events.append(_next_event(entry, now, unplaceable, "stage"))
        if commit is not None:
            commit(Changes(created=[e.record() for e, _ in entries], events=[*events]))
        else:
            self._journal.created.update(e.id for e, _ in entries)
            self._journal.actions.update(e.id for e, _ in entries)
            self._journal.events.extend(events)
        for entry, _ in entries:
            self.admit(entry)
        for event in events:
            self.sink.emit(event)

    def touch(self, entry: ActionEntry) -> None:
        """Journal a change to the entry's own fields that no stage event announces."""
        self._journal.actions.add(entry.id)

    def add_attempt(self, entry: ActionEntry, record: AttemptRecord) -> None:
        entry.attempts.append(record)
        entry.attempt = record.number
        self._journal.attempts.add((entry.id, record.number))
        self._journal.actions.add(entry.id)

    def update_attempt(self, entry: ActionEntry, **fields: object) -> AttemptRecord:
        """Change the current attempt's record (its start, its end)."""
        record = entry.attempts[-1].model_copy(update=fields)
        entry.attempts[-1] = record
        self._journal.attempts.add((entry.id, record.number))
        return record

    # ---- the journal -----------------------------------------------------------------------

    def take_changes(self) -> Changes:
        """What changed since the last call, in the snapshot form the store writes."""
        journal, self._journal = self._journal, _Journal()
        actions: list[ActionRecord] = []
        created: list[ActionRecord] = []
        for action_id in sorted(journal.actions, key=lambda a: self.actions[a].seq):
            record = self.actions[action_id].record()
            (created if action_id in journal.created else actions).append(record)
        attempts: list[tuple[ActionId, AttemptRecord]] = []
        for action_id, number in sorted(journal.attempts):
            entry = self.actions[action_id]
            attempts.extend((entry.id, r) for r in entry.attempts if r.number == number)
        return Changes(created=created, updated=actions, attempts=attempts,
                       events=journal.events)

    def give_back(self, changes: Changes) -> None:
        """Changes a write failed to store: journaled again, before anything newer."""
        journal = self._journal
        journal.created.update(r.id for r in changes.created)
        journal.actions.update(r.id for r in [*changes.created, *changes.updated])
        journal.attempts.update((a, r.number) for a, r in changes.attempts)
        journal.events[:0] = changes.events

    @contextmanager
    def writing(self) -> Iterator[Changes]:
        """The pending changes, given back for the next write if the body raises."""
        changes = self.take_changes()
        try:
            yield changes
        except BaseException:
            self.give_back(changes)
            raise


def _next_event(entry: ActionEntry, now: float, reason: str, kind: StageKind) -> StageEvent:
    entry.events += 1
    return StageEvent(seq=entry.events, action_id=entry.id, attempt=entry.attempt,
                      stage=entry.stage, time=now, agent_id=entry.agent_id,
                      exit_code=entry.exit_code, reason=reason, kind=kind)
