"""The scheduler's durable state: one SQLite file on the head (WAL, one writer, versioned).

Everything a restarted scheduler needs comes from here: accepted actions with their stage
and results, their attempts and stage events as rows of their own, the quota accounts with
their balances, and the pool-wide quota options. The actor writes one transaction per
scheduling step (what the step changed, in the core's snapshot form, `Changes`), and makes
a submission durable (fsynced) before answering it. A restart loads only unfinished
actions; finished ones are read from here when asked for (the store is the core's
`Archive`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mesh.errors import StateCorrupt
from mesh.schema import STORED, AccountId, Action, ActionId, AgentId, AttemptRecord, StageEvent
from mesh.stages import TERMINAL, Stage
from scheduler.core.quota.snapshot import QuotaSnapshot
from scheduler.core.records import ActionRecord, Changes, Kept, Saved, SavedSpec

DB_FILE = "scheduler.db"
# The accounts file of releases before this store, imported once by the first migration.
LEGACY_QUOTA_FILE = "quota.json"
# "AMsh": tells our files from other SQLite databases.
APPLICATION_ID = 0x414D7368
SCHEMA_VERSION = 3

_ATTEMPT_LIST = TypeAdapter(list[AttemptRecord])
_TERMINAL = tuple(sorted(s.value for s in TERMINAL))

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

# Version 2: an action's attempts are rows of their own (appended, and updated when the
# attempt starts or ends) instead of a JSON list rewritten on every change; the attempt
# floor is kept; the current agent is the current attempt's, so it is not a column.
_SCHEMA_2 = """
CREATE TABLE actions_2 (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    stage TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    finished_at REAL,
    exit_code INTEGER,
    reason TEXT NOT NULL,
    failures INTEGER NOT NULL,
    losses INTEGER NOT NULL,
    deaths TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL,
    unplaceable INTEGER NOT NULL,
    floor INTEGER NOT NULL,
    events INTEGER NOT NULL
);
CREATE TABLE attempts (
    action_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    agent_started_at REAL,
    assigned_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    outcome TEXT,
    priority INTEGER NOT NULL,
    exit_code INTEGER,
    reason TEXT NOT NULL,
    PRIMARY KEY (action_id, number)
) WITHOUT ROWID;
CREATE TABLE events_2 (
    action_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    stage TEXT NOT NULL,
    time REAL NOT NULL,
    agent_id TEXT,
    exit_code INTEGER,
    reason TEXT NOT NULL,
    PRIMARY KEY (action_id, seq)
) WITHOUT ROWID
"""

# Version 3: the fields that queue an action are columns of their own, so a restart queues
# its waiting actions without parsing their specs. Label lists are kept space-separated
# (a label cannot hold a space).
_SHAPE_COLUMNS = ("account", "labels", "provisionable_labels", "cpus", "memory")
_SCHEMA_3 = ";".join(f"ALTER TABLE actions ADD COLUMN {name} {kind}" for name, kind in (
    ("account", "TEXT NOT NULL DEFAULT ''"), ("labels", "TEXT NOT NULL DEFAULT ''"),
    ("provisionable_labels", "TEXT NOT NULL DEFAULT ''"), ("cpus", "REAL NOT NULL DEFAULT 1"),
    ("memory", "INTEGER NOT NULL DEFAULT 0")))

_ACTION_COLUMNS = ("stage, attempt, finished_at, exit_code, reason, failures, losses, deaths, "
                   "cancel_requested, unplaceable, floor, events")
_UPDATE = """UPDATE actions SET stage=?, attempt=?, finished_at=?, exit_code=?, reason=?,
    failures=?, losses=?, deaths=?, cancel_requested=?, unplaceable=?, floor=?, events=?
    WHERE id=?"""
_INSERT = f"""INSERT INTO actions ({_ACTION_COLUMNS}, id, seq, spec, submitted_at,
    {", ".join(_SHAPE_COLUMNS)}) VALUES ({", ".join("?" * 21)})"""
_SELECT = (f"SELECT id, seq, spec, submitted_at, {_ACTION_COLUMNS}, "
           f"{', '.join(_SHAPE_COLUMNS)} FROM actions")
_ATTEMPT = """INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_INSERT_EVENT = "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# Ids per query when reading attempts for many actions (well under SQLite's limit of 32,766).
_CHUNK = 500


def _import_legacy_quota(db: sqlite3.Connection, directory: Path) -> None:
    legacy = directory / LEGACY_QUOTA_FILE
    try:
        text = legacy.read_text()
    except FileNotFoundError:
        return
    snapshot = _parse_quota(text, str(legacy))
    db.execute("INSERT OR REPLACE INTO quota VALUES (1, ?)", (snapshot.model_dump_json(),))


def _execute_all(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)  # (executescript would commit the open transaction)


def _to_1(db: sqlite3.Connection, directory: Path) -> None:
    _execute_all(db, _SCHEMA_1)
    _import_legacy_quota(db, directory)


def _to_2(db: sqlite3.Connection, directory: Path) -> None:
    _execute_all(db, _SCHEMA_2)
    db.execute("""INSERT INTO actions_2 SELECT id, seq, spec, stage, attempt, submitted_at,
        finished_at, exit_code, reason, failures, losses, deaths, cancel_requested,
        unplaceable, 0, events FROM actions""")
    for action_id, text in db.execute("SELECT id, attempts FROM actions").fetchall():
        try:
            attempts = _ATTEMPT_LIST.validate_json(text)
        except ValidationError as exc:
            raise StateCorrupt(f"saved attempts of action {action_id!r} cannot be read: "
                               f"{exc}") from exc
        db.executemany(_ATTEMPT, [_attempt_row(ActionId(action_id), a) for a in attempts])
    db.execute("DROP TABLE actions")
    db.execute("ALTER TABLE actions_2 RENAME TO actions")
    db.execute("INSERT INTO events_2 SELECT * FROM events")
    db.execute("DROP TABLE events")
    db.execute("ALTER TABLE events_2 RENAME TO events")


def _to_3(db: sqlite3.Connection, directory: Path) -> None:
    _execute_all(db, _SCHEMA_3)
    shapes = []
    for action_id, text in db.execute("SELECT id, spec FROM actions").fetchall():
        try:
            spec = Action.model_validate_json(text, context=STORED)
        except ValidationError as exc:
            raise StateCorrupt(f"saved action {action_id!r} cannot be read: {exc}") from exc
        shapes.append((*_shape_row(spec), action_id))
    db.executemany(f"UPDATE actions SET {', '.join(f'{c}=?' for c in _SHAPE_COLUMNS)} "
                   "WHERE id=?", shapes)


# Migration n takes a database at version n to n + 1, inside one transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection, Path], None]] = [_to_1, _to_2, _to_3]
assert len(MIGRATIONS) == SCHEMA_VERSION


class Store:
    """The state database. All calls come from one thread (the scheduler's event loop)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_FILE
        self.directory.mkdir(parents=True, exist_ok=True)
        # Every id the file holds, read at the first `find`: most ids asked about are new
        # ones (a submit checks that its ids are unused), answered without a query.
        self._ids: set[str] | None = None
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

    # ---- reading ---------------------------------------------------------------------------

    def load(self) -> Saved:
        """What a restarting core needs: unfinished actions with their attempts."""
        try:
            return self._load()
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc

    def _load(self) -> Saved:
        saved = Saved()
        marks = ", ".join("?" * len(_TERMINAL))
        rows = self.db.execute(f"{_SELECT} WHERE stage NOT IN ({marks}) ORDER BY seq",
                               _TERMINAL).fetchall()
        # One query for the attempts of every unfinished action, not one per few hundred.
        found = self.db.execute(
            f"SELECT attempts.* FROM attempts JOIN actions ON actions.id = attempts.action_id "
            f"WHERE actions.stage NOT IN ({marks}) ORDER BY attempts.action_id, number",
            _TERMINAL)
        saved.actions = self._kept(rows, found)
        saved.last_seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM actions"
                                         ).fetchone()[0]
        saved.finished = {Stage(stage): n for stage, n in self.db.execute(
            f"SELECT stage, count(*) FROM actions WHERE stage IN ({marks}) GROUP BY stage",
            _TERMINAL)}
        quota = self.db.execute("SELECT snapshot FROM quota").fetchone()
        if quota is not None:
            saved.accounts = _parse_quota(quota[0], f"{self.path} (quota)")
        return saved

    def find(self, action_id: ActionId) -> Kept | None:
        if self._ids is None:
            self._ids = {row[0] for row in self.db.execute("SELECT id FROM actions")}
        if action_id not in self._ids:
            return None
        rows = self.db.execute(f"{_SELECT} WHERE id = ?", (action_id,)).fetchall()
        kept = self._kept(rows)
        return kept[0] if kept else None

    def finished(self, stage: Stage | None, after_seq: int, limit: int) -> list[Kept]:
        stages = _TERMINAL if stage is None else (stage.value,)
        marks = ", ".join("?" * len(stages))
        rows = self.db.execute(
            f"{_SELECT} WHERE stage IN ({marks}) AND seq > ? ORDER BY seq LIMIT ?",
            (*stages, after_seq, limit)).fetchall()
        return self._kept(rows)

    def events(self, action_id: ActionId) -> list[StageEvent]:
        rows = self.db.execute("SELECT * FROM events WHERE action_id = ? ORDER BY seq",
                               (action_id,))
        return [_event(row) for row in rows]

    def _kept(self, rows: list[Any], found: Iterable[Any] | None = None) -> list[Kept]:
        """Actions from their rows, each with its attempts: from `found` (attempt rows,
        by action and number), else looked up."""
        attempts: dict[str, list[AttemptRecord]] = {row[0]: [] for row in rows}
        if found is None:
            ids = list(attempts)
            found = (row for start in range(0, len(ids), _CHUNK) for row in self.db.execute(
                f"SELECT * FROM attempts WHERE action_id IN "
                f"({', '.join('?' * len(ids[start:start + _CHUNK]))}) ORDER BY action_id, number",
                ids[start:start + _CHUNK]))
        for row in found:
            attempts[row[0]].append(_attempt(row))
        return [(_record(row), attempts[row[0]]) for row in rows]

    # ---- writing, once per step ----------------------------------------------------------

    def write(self, changes: Changes, durable: bool = False) -> None:
        """Write the changes as one transaction; `durable`: fsynced before returning."""
        if not changes:
            return
        if durable:
            self.db.execute("PRAGMA synchronous=FULL")
        try:
            self.db.execute("BEGIN")
            try:
                self._write(changes)
                self.db.execute("COMMIT")
                if self._ids is not None:
                    self._ids.update(r.id for r in changes.created)
            except BaseException:
                # A failed COMMIT (disk full, I/O) may have rolled back already.
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        finally:
            if durable:
                self.db.execute("PRAGMA synchronous=NORMAL")

    def save_quota(self, snapshot: QuotaSnapshot) -> None:
        self.write(Changes(accounts=snapshot))

    def _write(self, changes: Changes) -> None:
        self.db.executemany(_INSERT, [
            (*_row(r), r.seq, _spec_text(r.spec), r.submitted_at, *_shape_row(r.spec))
            for r in changes.created])
        self.db.executemany(_UPDATE, [_row(r) for r in changes.updated])
        self.db.executemany(_ATTEMPT, [_attempt_row(a, r) for a, r in changes.attempts])
        self.db.executemany(_INSERT_EVENT, [
            (e.action_id, e.seq, e.attempt, e.stage.value, e.time, e.agent_id, e.exit_code,
             e.reason) for e in changes.events])
        if changes.accounts is not None:
            self.db.execute("INSERT OR REPLACE INTO quota VALUES (1, ?)",
                            (changes.accounts.model_dump_json(),))


def _row(r: ActionRecord) -> tuple[object, ...]:
    return (r.stage.value, r.attempt, r.finished_at, r.exit_code, r.reason, r.failures,
            r.losses, json.dumps(r.deaths_in_a_row), int(r.cancel_requested),
            int(r.unplaceable), r.floor, r.events, r.id)


def _spec_text(spec: Action | SavedSpec) -> str:
    return spec.text if isinstance(spec, SavedSpec) else spec.model_dump_json()


def _shape_row(spec: Action | SavedSpec) -> tuple[object, ...]:
    return (spec.account, " ".join(sorted(spec.labels)),
            " ".join(sorted(spec.provisionable_labels)), spec.cpus, spec.memory)


def _record(row: Any) -> ActionRecord:
    (action_id, seq, spec, submitted_at, stage, attempt, finished_at, exit_code, reason,
     failures, losses, deaths, cancel_requested, unplaceable, floor, events, account, labels,
     provisionable_labels, cpus, memory) = row
    # Per row of ten thousand at a restart: the common values are looked up, not parsed.
    try:
        saved = SavedSpec(str(spec), AccountId(account), _labels(labels),
                          _labels(provisionable_labels), float(cpus), int(memory))
        return ActionRecord(
            id=ActionId(action_id), seq=int(seq),
            # A waiting action's spec is parsed when first needed (see SavedSpec); one that
            # runs needs its retry policy for its reports, and is checked here and now.
            spec=saved if stage == "queued" else saved.parse(),
            submitted_at=float(submitted_at), stage=_STAGES[stage], attempt=int(attempt),
            finished_at=finished_at, exit_code=exit_code, reason=str(reason),
            failures=int(failures), losses=int(losses),
            deaths_in_a_row=() if deaths == "[]" else tuple(map(AgentId, json.loads(deaths))),
            cancel_requested=bool(cancel_requested), unplaceable=bool(unplaceable),
            floor=int(floor), events=int(events))
    except (ValueError, TypeError, KeyError, ValidationError) as exc:
        raise StateCorrupt(f"saved action {action_id!r} cannot be read: {exc!s}") from exc


_STAGES = {stage.value: stage for stage in Stage}
_NO_LABELS: frozenset[str] = frozenset()


def _labels(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else _NO_LABELS


def _attempt_row(action_id: ActionId, a: AttemptRecord) -> tuple[object, ...]:
    outcome = a.outcome.value if isinstance(a.outcome, Stage) else a.outcome
    return (action_id, a.number, a.agent_id, a.agent_started_at, a.assigned_at,
            a.started_at, a.finished_at, outcome, a.priority, a.exit_code, a.reason)


def _attempt(row: Any) -> AttemptRecord:
    (action_id, number, agent_id, agent_started_at, assigned_at, started_at, finished_at,
     outcome, priority, exit_code, reason) = row
    try:
        return AttemptRecord(number=number, agent_id=agent_id,
                             agent_started_at=agent_started_at, assigned_at=assigned_at,
                             started_at=started_at, finished_at=finished_at,
                             outcome=outcome, priority=priority, exit_code=exit_code,
                             reason=reason)
    except ValidationError as exc:
        raise StateCorrupt(f"saved attempt {number} of action {action_id!r} cannot be read: "
                           f"{exc}") from exc


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

