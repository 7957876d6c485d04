"""The store's schema, version by version, and the migrations that bring an older file up
to the current one."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from pydantic import ConfigDict, TypeAdapter, ValidationError

from mesh.errors import StateCorrupt
from mesh.schema import STORED, Action, ActionId, AttemptRecord
from scheduler.rows import ATTEMPT, ENDED, SHAPE_COLUMNS, attempt_row, parse_quota, shape_row

SCHEMA_VERSION = 7
# The accounts file of releases before this store, imported once by the first migration.
LEGACY_QUOTA_FILE = "quota.json"

# Built when a version-1 file is first migrated, not by every start (12 ms).
_ATTEMPT_LIST = TypeAdapter(list[AttemptRecord], config=ConfigDict(defer_build=True))

SCHEMA_1 = """
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
SCHEMA_2 = """
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

# Version 3: the fields that place an action are columns of their own (see `rows`).
SCHEMA_3 = ";".join(f"ALTER TABLE actions ADD COLUMN {name} {kind}" for name, kind in (
    ("account", "TEXT NOT NULL DEFAULT ''"), ("labels", "TEXT NOT NULL DEFAULT ''"),
    ("provisionable_labels", "TEXT NOT NULL DEFAULT ''"), ("cpus", "REAL NOT NULL DEFAULT 1"),
    ("memory", "INTEGER NOT NULL DEFAULT 0")))

# The shape columns version 3 added (the job came with version 4).
_SHAPE_3 = SHAPE_COLUMNS[:5]

# Version 4: what listings filter on and retention deletes by. Account and job are columns
# for every action (version 3 filled the account of unfinished ones only); actions are
# indexed by stage (a restart reads the unfinished ones) and by finish time (retention
# deletes the oldest); the ids of deleted actions are kept a while, so that asking for one
# says it expired.
SCHEMA_4 = """
ALTER TABLE actions ADD COLUMN job TEXT NOT NULL DEFAULT '';
UPDATE actions SET account = coalesce(json_extract(spec, '$.account'), ''),
    job = coalesce(json_extract(spec, '$.job'), '');
CREATE INDEX actions_by_stage ON actions (stage, seq);
CREATE INDEX actions_by_finish ON actions (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE expired (id TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX expired_by_time ON expired (at)
"""


# Version 5: the event log. Stage events become entries of one log with a mesh-wide order
# (`seq`, never reused, so a reader resumes after the last it saw), beside the entries that
# are not stage changes (agents joining and leaving, priority moves, restarts). An action's
# own order is kept as `action_seq`; its entries are found by the index. Older stage
# events are given the kind the core now names them by, from their stage and reason.
SCHEMA_5 = """
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    action_id TEXT,
    action_seq INTEGER,
    attempt INTEGER,
    stage TEXT,
    agent_id TEXT,
    exit_code INTEGER,
    priority INTEGER,
    reason TEXT NOT NULL
);
CREATE UNIQUE INDEX journal_by_action ON journal (action_id, action_seq);
CREATE INDEX journal_of_pool ON journal (time) WHERE action_id IS NULL;
INSERT INTO journal (time, kind, action_id, action_seq, attempt, stage, agent_id, exit_code,
                     reason)
    SELECT time, CASE
            WHEN seq = 1 THEN 'accepted'
            WHEN stage = 'assigned' THEN 'assigned'
            WHEN stage = 'queued' AND reason LIKE 'preempted by %' THEN 'preempted'
            WHEN stage = 'queued' AND attempt > 0 THEN 'rescheduled'
            WHEN stage = 'failed' AND reason LIKE 'quarantined:%' THEN 'quarantined'
            ELSE 'stage' END,
        action_id, seq, attempt, stage, agent_id, exit_code, reason
    FROM events ORDER BY time, action_id, seq;
DROP TABLE events
"""


# Version 6: the agents an operator drained.
SCHEMA_6 = "CREATE TABLE drained (agent_id TEXT PRIMARY KEY) WITHOUT ROWID"

# Version 7: the groups (`scheduler/poolrows.py`): the pool config in force with the groups
# an operator blocked and the last dispatch time, each job's group, and its load by day.
SCHEMA_7 = """
CREATE TABLE pool (id INTEGER PRIMARY KEY CHECK (id = 1), record TEXT NOT NULL);
CREATE TABLE homes (job TEXT PRIMARY KEY, grp TEXT NOT NULL, how TEXT NOT NULL,
                    pinned INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE job_load (job TEXT NOT NULL, day INTEGER NOT NULL, seconds REAL NOT NULL,
                       PRIMARY KEY (job, day)) WITHOUT ROWID;
CREATE INDEX job_load_by_day ON job_load (day)
"""


def _import_legacy_quota(db: sqlite3.Connection, directory: Path) -> None:
    legacy = directory / LEGACY_QUOTA_FILE
    try:
        text = legacy.read_text()
    except FileNotFoundError:
        return
    snapshot = parse_quota(text, str(legacy))
    db.execute("INSERT OR REPLACE INTO quota VALUES (1, ?)", (snapshot.model_dump_json(),))


def _execute_all(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)  # (executescript would commit the open transaction)


def _to_1(db: sqlite3.Connection, directory: Path) -> None:
    _execute_all(db, SCHEMA_1)
    _import_legacy_quota(db, directory)


def _to_2(db: sqlite3.Connection, directory: Path) -> None:
    _execute_all(db, SCHEMA_2)
    db.execute("""INSERT INTO actions_2 SELECT id, seq, spec, stage, attempt, submitted_at,
        finished_at, exit_code, reason, failures, losses, deaths, cancel_requested,
        unplaceable, 0, events FROM actions""")
    for action_id, text in db.execute("SELECT id, attempts FROM actions").fetchall():
        try:
            attempts = _ATTEMPT_LIST.validate_json(text)
        except ValidationError as exc:
            raise StateCorrupt(f"saved attempts of action {action_id!r} cannot be read: "
                               f"{exc}") from exc
        db.executemany(ATTEMPT, [attempt_row(ActionId(action_id), a) for a in attempts])
    db.execute("DROP TABLE actions")
    db.execute("ALTER TABLE actions_2 RENAME TO actions")
    db.execute("INSERT INTO events_2 SELECT * FROM events")
    db.execute("DROP TABLE events")
    db.execute("ALTER TABLE events_2 RENAME TO events")


def _to_3(db: sqlite3.Connection, directory: Path) -> None:
    _execute_all(db, SCHEMA_3)
    shapes = []
    # Only unfinished actions are queued again; a finished one keeps the defaults (and a
    # damaged finished row, which version 2 started with, does not stop this one).
    unfinished = db.execute(f"SELECT id, spec FROM actions WHERE stage NOT IN "
                            f"({', '.join('?' * len(ENDED))})", ENDED).fetchall()
    for action_id, text in unfinished:
        try:
            spec = Action.model_validate_json(text, context=STORED)
        except ValidationError as exc:
            raise StateCorrupt(f"saved action {action_id!r} cannot be read: {exc}") from exc
        shapes.append((*shape_row(spec)[:len(_SHAPE_3)], action_id))
    db.executemany(f"UPDATE actions SET {', '.join(f'{c}=?' for c in _SHAPE_3)} "
                   "WHERE id=?", shapes)


def _to_4(db: sqlite3.Connection, directory: Path) -> None:
    _execute_all(db, SCHEMA_4)


def _to_5(db: sqlite3.Connection, directory: Path) -> None:
    _execute_all(db, SCHEMA_5)


def _to_6(db: sqlite3.Connection, directory: Path) -> None:
    _execute_all(db, SCHEMA_6)


def _to_7(db: sqlite3.Connection, directory: Path) -> None:
    _execute_all(db, SCHEMA_7)


# Migration n takes a database at version n to n + 1, inside one transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection, Path], None]] = [
    _to_1, _to_2, _to_3, _to_4, _to_5, _to_6, _to_7]
assert len(MIGRATIONS) == SCHEMA_VERSION
