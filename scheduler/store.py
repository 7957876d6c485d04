"""The scheduler's durable state: one SQLite file on the head (WAL, one writer, versioned).

Everything a restarted scheduler needs comes from here: accepted actions with their stage,
attempts and results, every stage event, the quota accounts with their balances, and the
pool-wide quota options. The actor writes one transaction per scheduling step (what the
step changed), and makes a submission durable (fsynced) before answering it.

Each changed action is written whole, as one row: a restart must never see an action
half-updated, and a row per action keeps a step's write to a few statements.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mesh.errors import MeshError
from mesh.schema import Action, ActionId, AgentId, AttemptRecord, StageEvent
from mesh.stages import Stage
from scheduler.core.quota.snapshot import QuotaSnapshot
from scheduler.core.state import ActionEntry

DB_FILE = "scheduler.db"
# The accounts file of releases before this store, imported once by the first migration.
LEGACY_QUOTA_FILE = "quota.json"
# "AMsh": tells our files from other SQLite databases.
APPLICATION_ID = 0x414D7368
SCHEMA_VERSION = 1

_ATTEMPTS = TypeAdapter(list[AttemptRecord])

_SCHEMA_1 = """
CREATE TABLE actions (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    spec TEXT NOT NULL,
    stage TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    agent_id TEXT,
    submitted_at REAL NOT NULL,
    finished_at REAL,
    exit_code INTEGER,
    reason TEXT NOT NULL,
    failures INTEGER NOT NULL,
    losses INTEGER NOT NULL,
    deaths TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL,
    unplaceable INTEGER NOT NULL,
    events INTEGER NOT NULL,
    attempts TEXT NOT NULL
);
CREATE INDEX actions_by_stage ON actions (stage);
CREATE TABLE events (
    action_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    stage TEXT NOT NULL,
    time REAL NOT NULL,
    agent_id TEXT,
    exit_code INTEGER,
    reason TEXT NOT NULL,
    PRIMARY KEY (action_id, seq)
);
CREATE TABLE quota (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot TEXT NOT NULL
);
"""

_UPDATE = """UPDATE actions SET stage=?, attempt=?, agent_id=?, finished_at=?, exit_code=?,
    reason=?, failures=?, losses=?, deaths=?, cancel_requested=?, unplaceable=?, events=?,
    attempts=? WHERE id=?"""
_INSERT = """INSERT INTO actions (stage, attempt, agent_id, finished_at, exit_code, reason,
    failures, losses, deaths, cancel_requested, unplaceable, events, attempts, id, seq, spec,
    submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_INSERT_EVENT = "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


class StateCorrupt(MeshError):
    """The saved state cannot be read: start-up stops rather than silently start empty."""


@dataclass
class Saved:
    """What a restarting scheduler begins from."""

    actions: list[ActionEntry] = field(default_factory=list)
    events: dict[ActionId, list[StageEvent]] = field(default_factory=dict)
    quota: QuotaSnapshot | None = None


@dataclass
class Batch:
    """One step's changes, written as one transaction."""

    actions: list[ActionEntry] = field(default_factory=list)
    events: list[StageEvent] = field(default_factory=list)
    quota: QuotaSnapshot | None = None

    def __bool__(self) -> bool:
        return bool(self.actions or self.events or self.quota)


def _import_legacy_quota(db: sqlite3.Connection, directory: Path) -> None:
    legacy = directory / LEGACY_QUOTA_FILE
    try:
        text = legacy.read_text()
    except FileNotFoundError:
        return
    snapshot = _parse_quota(text, str(legacy))
    db.execute("INSERT OR REPLACE INTO quota VALUES (1, ?)", (snapshot.model_dump_json(),))


def _to_1(db: sqlite3.Connection, directory: Path) -> None:
    for statement in _SCHEMA_1.split(";"):
        if statement.strip():
            db.execute(statement)  # (executescript would commit the open transaction)
    _import_legacy_quota(db, directory)


# Migration n takes a database at version n to n + 1, inside one transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection, Path], None]] = [_to_1]
assert len(MIGRATIONS) == SCHEMA_VERSION


class Store:
    """The state database. All calls come from one thread (the scheduler's event loop)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_FILE
        self.directory.mkdir(parents=True, exist_ok=True)
        self._known: set[str] = set()
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StateCorrupt(f"cannot open {self.path}: {exc}") from exc
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise self._unreadable(exc) from exc
        except BaseException:
            self.db.close()
            raise

    def _corrupt(self, what: str) -> StateCorrupt:
        return StateCorrupt(f"{self.path} cannot be used: {what}. Nothing was changed; move "
                            "it away to start with an empty state, or put back a copy")

    def _unreadable(self, exc: sqlite3.DatabaseError) -> StateCorrupt:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            return self._corrupt(str(exc))
        # Locked, read-only, I/O: the file may be fine; moving it away is not the answer.
        return StateCorrupt(f"{self.path} cannot be read: {exc}")

    def _open(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        app = self.db.execute("PRAGMA application_id").fetchone()[0]
        fresh = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if not fresh and app != APPLICATION_ID:
            raise self._corrupt("it is an SQLite database, but not an actionmesh state file")
        if version > SCHEMA_VERSION:
            raise self._corrupt(f"its schema is version {version}, written by a newer "
                                f"actionmesh; this one reads up to version {SCHEMA_VERSION}")
        if not fresh:
            problems = [row[0] for row in self.db.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise self._corrupt("the integrity check found: " + "; ".join(problems))
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StateCorrupt(f"{self.path} cannot be put in WAL mode (it stays {mode!r}); "
                               "is it on a network file system?")
        # A commit survives the scheduler's crash once written to the WAL; `durable` writes
        # (submissions) also survive the machine's.
        self.db.execute("PRAGMA synchronous=NORMAL")
        for step in range(version, SCHEMA_VERSION):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[step](self.db, self.directory)
                self.db.execute(f"PRAGMA user_version={step + 1}")
                self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    @property
    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    # ---- reading, at start-up ------------------------------------------------------------

    def load(self) -> Saved:
        try:
            return self._load()
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc

    def _load(self) -> Saved:
        saved = Saved()
        for row in self.db.execute("SELECT * FROM actions ORDER BY seq"):
            saved.actions.append(_entry(row))
            self._known.add(row[0])
        for row in self.db.execute("SELECT * FROM events ORDER BY action_id, seq"):
            event = _event(row)
            saved.events.setdefault(event.action_id, []).append(event)
        quota = self.db.execute("SELECT snapshot FROM quota").fetchone()
        if quota is not None:
            saved.quota = _parse_quota(quota[0], f"{self.path} (quota)")
        return saved

    # ---- writing, once per step ----------------------------------------------------------

    def write(self, batch: Batch, durable: bool = False) -> None:
        """Write the batch as one transaction; `durable`: fsynced before returning."""
        if not batch:
            return
        if durable:
            self.db.execute("PRAGMA synchronous=FULL")
        try:
            self.db.execute("BEGIN")
            try:
                self._write(batch)
                self.db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (disk full, I/O) may have rolled back already.
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            self._known.update(e.id for e in batch.actions)
        finally:
            if durable:
                self.db.execute("PRAGMA synchronous=NORMAL")

    def save_quota(self, snapshot: QuotaSnapshot) -> None:
        self.write(Batch(quota=snapshot))

    def _write(self, batch: Batch) -> None:
        updates, inserts = [], []
        for entry in batch.actions:
            row = _row(entry)
            if entry.id in self._known:
                updates.append(row)
            else:
                inserts.append((*row, entry.seq, entry.spec.model_dump_json(),
                                entry.submitted_at))
        self.db.executemany(_UPDATE, updates)
        self.db.executemany(_INSERT, inserts)
        self.db.executemany(_INSERT_EVENT, [
            (e.action_id, e.seq, e.attempt, e.stage.value, e.time, e.agent_id, e.exit_code,
             e.reason) for e in batch.events])
        if batch.quota is not None:
            self.db.execute("INSERT OR REPLACE INTO quota VALUES (1, ?)",
                            (batch.quota.model_dump_json(),))


def _row(e: ActionEntry) -> tuple[object, ...]:
    return (e.stage.value, e.attempt, e.agent_id, e.finished_at, e.exit_code, e.reason,
            e.failures, e.losses, json.dumps(e.deaths_in_a_row), int(e.cancel_requested),
            int(e.unplaceable), e.events, _ATTEMPTS.dump_json(e.attempts).decode(), e.id)


def _entry(row: Any) -> ActionEntry:
    (action_id, seq, spec, stage, attempt, agent_id, submitted_at, finished_at, exit_code,
     reason, failures, losses, deaths, cancel_requested, unplaceable, events, attempts) = row
    try:
        return ActionEntry(
            spec=Action.model_validate_json(spec), id=ActionId(action_id), seq=int(seq),
            submitted_at=float(submitted_at), stage=Stage(stage), attempt=int(attempt),
            agent_id=agent_id, finished_at=finished_at, exit_code=exit_code,
            reason=str(reason), failures=int(failures), losses=int(losses),
            deaths_in_a_row=[AgentId(a) for a in json.loads(deaths)],
            cancel_requested=bool(cancel_requested), unplaceable=bool(unplaceable),
            events=int(events), attempts=_ATTEMPTS.validate_json(attempts))
    except (ValueError, TypeError, ValidationError) as exc:
        raise StateCorrupt(f"saved action {action_id!r} cannot be read: {exc}") from exc


def _event(row: Any) -> StageEvent:
    action_id, seq, attempt, stage, time, agent_id, exit_code, reason = row
    try:
        return StageEvent.model_validate({
            "action_id": action_id, "seq": seq, "attempt": attempt, "stage": stage,
            "time": time, "agent_id": agent_id, "exit_code": exit_code, "reason": reason})
    except ValidationError as exc:
        raise StateCorrupt(f"saved event {seq} of action {action_id!r} cannot be read: "
                           f"{exc}") from exc


def _parse_quota(text: str, where: str) -> QuotaSnapshot:
    try:
        return QuotaSnapshot.model_validate_json(text)
    except ValidationError as exc:
        raise StateCorrupt(f"{where} is not a quota snapshot ({exc.error_count()} errors, "
                           f"first: {exc.errors()[0]['msg']}); move it away to start without "
                           "the saved accounts") from exc

