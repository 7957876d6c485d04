"""The scheduler's durable state: one SQLite file on the head (WAL, one writer, versioned).

Everything a restarted scheduler needs comes from here: accepted actions with their stage
and results, their attempts and stage events as rows of their own, the quota accounts with
their balances, and the pool-wide quota options. The actor writes one transaction per
scheduling step (what the step changed, in the core's snapshot form, `Changes`), and makes
a submission durable (fsynced) before answering it. A restart loads only unfinished
actions; finished ones are read from here when asked for (the store is the core's
`Archive`). The tables and their versions are in `scheduler/migrations.py`, a record's
row form in `scheduler/rows.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mesh.errors import StateCorrupt
from mesh.schema import (
    ActionId,
    AgentId,
    AttemptRecord,
    EventPage,
    EventQuery,
    ListQuery,
    MeshEvent,
    StageEvent,
)
from mesh.stages import Stage
from mesh.statedir import private_dir
from scheduler.core.quota.snapshot import QuotaSnapshot
from scheduler.core.records import Changes, Expired, Kept, Saved
from scheduler.migrations import MIGRATIONS, SCHEMA_VERSION
from scheduler.poolrows import read_pool, write_pool
from scheduler.rows import (
    ATTEMPT,
    CHUNK,
    ENDED,
    INSERT,
    INSERT_EVENT,
    SELECT,
    SELECT_JOURNAL,
    SELECT_STAGE_EVENTS,
    UNFINISHED,
    UPDATE,
    action_row,
    attempt_row,
    created_row,
    event_row,
    parse_quota,
    read_action,
    read_attempt,
    read_entry,
    read_event,
)
from scheduler.sealing import Sealer, SealError

log = logging.getLogger("actionmesh.scheduler")

DB_FILE = "scheduler.db"
WAL_LIMIT = 4 << 20
# Room for a few SQLite pages: what `probe` writes to tell whether writing can resume.
PROBE_BYTES = 64 * 1024
# "AMsh": tells our files from other SQLite databases.
APPLICATION_ID = 0x414D7368
# SQLite's `auto_vacuum` setting that lets `incremental_vacuum` hand free pages back.
INCREMENTAL = 2
# Free pages handed back to the file system per retention batch, at most (4 MiB of pages).
VACUUM_PAGES = 1024
# An older file is rewritten at start-up to use auto-vacuum only up to this size (a few
# seconds' work); a larger one is left as it is, with a warning saying how to do it.
CONVERT_MAX = 256 << 20
# Entries of the event log one read looks through at most when it filters on more than the
# action (which is indexed): the scheduler answers everyone from one thread, so a filtered
# read of a long log goes page by page, each saying how far it looked (`EventPage.last`).
SCAN_WINDOW = 50_000
# Log entries that belong to no action (agents', restarts) deleted by age per batch.
POOL_EVENTS_PER_BATCH = 5000

class Store:
    """The state database. All calls come from one thread (the scheduler's event loop)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_FILE
        private_dir(self.directory)
        # Made here, 0600 and never through a symlink; SQLite gives its -wal and -shm files
        # the mode of the database.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # one an older release made readable by others
        finally:
            os.close(fd)
        for journal in (f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self.directory / journal, 0o600, follow_symlinks=False)
        # The key that seals actions' secrets: without it the file does not give them away.
        try:
            self.sealer = Sealer.open(self.directory)
        except (SealError, OSError) as exc:
            raise StateCorrupt(f"the secrets key beside {self.path} cannot be used: {exc}; "
                               "put back the key file it was saved with") from None
        self._quota_text = ""  # the accounts as last read or written
        # Called with the entries after a commit that added them to the event log (readers
        # waiting for them, the metrics that count them).
        self.listeners: list[Callable[[list[StageEvent | MeshEvent]], None]] = []
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
        # Retention deletes as much as is written: without this, the file keeps the pages of
        # the most it ever held (after a burst, for good) and only grows with fragmentation.
        # Set in a new file only (an older one gets it with its VACUUM below): setting it
        # writes, and a restart must read a file on a full disk (it starts read-only then).
        if fresh:
            self.db.execute(f"PRAGMA auto_vacuum={INCREMENTAL}")
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StateCorrupt(f"{self.path} cannot be put in WAL mode (it stays {mode!r}); "
                               "is it on a network file system?")
        # A commit survives the scheduler's crash once written to the WAL; `durable` writes
        # (submissions) also survive the machine's.
        self.db.execute("PRAGMA synchronous=NORMAL")
        # After a checkpoint the WAL is cut back to this size: else it stays as large as the
        # most it ever held, and a long-running mesh's files only grow.
        self.db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
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
        if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
            self._convert()

    def _convert(self) -> None:
        """Rewrite a file made before incremental auto-vacuum, so that it can shrink. Only a
        small one: the rewrite blocks the start-up and needs its size again in free space."""
        size = self.path.stat().st_size
        if size > CONVERT_MAX:
            log.warning("%s (%d MiB) was made by an older release and will not shrink as "
                        "history is deleted; to let it, stop the mesh and run: sqlite3 %s "
                        "'PRAGMA auto_vacuum=2; VACUUM'", self.path, size >> 20, self.path)
            return
        began = time.monotonic()
        try:
            self.db.execute(f"PRAGMA auto_vacuum={INCREMENTAL}")
            self.db.execute("VACUUM")
        except sqlite3.OperationalError as exc:  # e.g. no room for the copy: next start
            log.warning("cannot rewrite %s (%s); its file will not shrink", self.path, exc)
            return
        log.info("rewrote %s (%d MiB) in %.1fs so that deleted history gives its space back",
                 self.path, size >> 20, time.monotonic() - began)

    def probe(self) -> None:
        """OSError unless the state dir's file system takes a few pages now."""
        probe = self.directory / ".write-probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(bytes(PROBE_BYTES))
                file.flush()
                os.fsync(file.fileno())
        finally:
            probe.unlink(missing_ok=True)

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
        unfinished = ", ".join("?" * len(UNFINISHED))
        # In no order: the core orders them as it takes them back, and an ORDER BY here
        # sorted ten thousand rows in a temporary B-tree first (a fifth of the query).
        rows = self.db.execute(f"{SELECT} WHERE stage IN ({unfinished})", UNFINISHED).fetchall()
        # One query for the attempts of every unfinished action, not one per few hundred.
        found = self.db.execute(
            f"SELECT attempts.* FROM attempts JOIN actions ON actions.id = attempts.action_id "
            f"WHERE actions.stage IN ({unfinished}) ORDER BY attempts.action_id, number",
            UNFINISHED)
        saved.actions = self._kept(rows, found)
        saved.last_seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM actions"
                                         ).fetchone()[0]
        ended = ", ".join("?" * len(ENDED))
        saved.finished = {Stage(stage): n for stage, n in self.db.execute(
            f"SELECT stage, count(*) FROM actions WHERE stage IN ({ended}) GROUP BY stage",
            ENDED)}
        saved.drained = {AgentId(a) for (a,) in self.db.execute("SELECT agent_id FROM drained")}
        saved.pool = read_pool(self.db, str(self.path))
        quota = self.db.execute("SELECT snapshot FROM quota").fetchone()
        if quota is not None:
            saved.accounts = parse_quota(quota[0], f"{self.path} (quota)")
            self._quota_text = saved.accounts.model_dump_json()
        return saved

    def find(self, action_id: ActionId) -> Kept | None:
        rows = self.db.execute(f"{SELECT} WHERE id = ?", (action_id,)).fetchall()
        kept = self._kept(rows)
        return kept[0] if kept else None

    def find_many(self, action_ids: Sequence[ActionId]) -> dict[ActionId, Kept]:
        """Those of the ids that are kept, by id: a query per CHUNK ids, not one each."""
        rows = list(self._among(f"{SELECT} WHERE id IN", action_ids))
        return {record.id: (record, attempts) for record, attempts in self._kept(rows)}

    def expired(self, action_id: ActionId) -> bool:
        return self.db.execute("SELECT 1 FROM expired WHERE id = ?",
                               (action_id,)).fetchone() is not None

    def page(self, query: ListQuery) -> list[Kept]:
        """Up to `query.limit` actions past its cursor that match it as saved, by seq."""
        where: list[str] = ["seq > ?"]
        args: list[object] = [query.after]
        if query.stage is not None:
            where.append("stage = ?")
            args.append(query.stage.value)
        for column, value in (("account", query.account), ("job", query.job)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        for key, value in query.tags.items():
            where.append("EXISTS (SELECT 1 FROM json_each(actions.spec, '$.tags') "
                         "WHERE key = ? AND value = ?)")
            args += [key, value]
        if query.submitted_after is not None:
            where.append("submitted_at >= ?")
            args.append(query.submitted_after)
        if query.submitted_before is not None:
            where.append("submitted_at < ?")
            args.append(query.submitted_before)
        rows = self.db.execute(f"{SELECT} WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                               (*args, query.limit)).fetchall()
        return self._kept(rows)

    def events(self, action_id: ActionId) -> list[StageEvent]:
        return [read_event(row) for row in self.db.execute(SELECT_STAGE_EVENTS, (action_id,))]

    @property
    def last_event(self) -> int:
        """The seq of the newest entry of the event log (0 when it never had one)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'journal'"
                              ).fetchone()
        return int(row[0]) if row is not None else 0

    def journal(self, query: EventQuery) -> EventPage:
        """Entries of the event log after `query.after` that match it, in log order. Without
        an action to look up by, one read looks through at most SCAN_WINDOW entries."""
        top = self.last_event
        first = self.db.execute("SELECT coalesce(min(seq), ?) FROM journal",
                                (top + 1,)).fetchone()[0]
        after = query.after
        if query.since is not None:
            after = max(after, self._seq_before(query.since, first, top))
        where: list[str] = ["seq > ?"]
        args: list[object] = [after]
        # How far this read looks: to the end when indexed by action, else a window.
        reach = top if query.action_id is not None else min(top, after + SCAN_WINDOW)
        where.append("seq <= ?")
        args.append(reach)
        for column, value in (("action_id", query.action_id), ("agent_id", query.agent_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.kinds:
            where.append(f"kind IN ({', '.join('?' * len(query.kinds))})")
            args.extend(sorted(query.kinds))
        if query.since is not None:
            where.append("time >= ?")
            args.append(query.since)
        rows = self.db.execute(f"{SELECT_JOURNAL} WHERE {' AND '.join(where)} ORDER BY seq "
                               "LIMIT ?", (*args, query.limit)).fetchall()
        events = [read_entry(row) for row in rows]
        last = events[-1].seq if len(events) == query.limit else max(reach, after)
        return EventPage(events=events, last=last, first=first)

    def _seq_before(self, since: float, first: int, top: int) -> int:
        """The seq just before the first entry at or after `since`, by bisecting the log
        (entries are written in time order, near enough: the filter on time stays)."""
        low, high = first, top + 1
        while low < high:
            mid = (low + high) // 2
            row = self.db.execute("SELECT seq, time FROM journal WHERE seq >= ? ORDER BY seq "
                                  "LIMIT 1", (mid,)).fetchone()
            if row is None or row[1] >= since:
                high = mid
            else:
                low = row[0] + 1
        return low - 1

    def _kept(self, rows: list[Any], found: Iterable[Any] | None = None) -> list[Kept]:
        """Actions from their rows, each with its attempts: from `found` (attempt rows,
        by action and number), else looked up."""
        attempts: dict[str, list[AttemptRecord]] = {row[0]: [] for row in rows}
        if found is None:
            found = self._among("SELECT * FROM attempts WHERE action_id IN", list(attempts),
                                "ORDER BY action_id, number")
        for row in found:
            attempts[row[0]].append(read_attempt(row))
        return [(read_action(row, self.sealer), attempts[row[0]]) for row in rows]

    def _among(self, query: str, ids: Sequence[str], then: str = "") -> Iterator[Any]:
        """The rows of `query` (ending in `IN`) over `ids`, then `then` (ordering holds
        within each CHUNK of ids, which is how attempts are read): a query per CHUNK."""
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            yield from self.db.execute(f"{query} ({', '.join('?' * len(chunk))}) {then}", chunk)

    # ---- writing, once per step ----------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction around the body: committed when it returns, rolled back when it
        raises (a failed COMMIT, say for a full disk, may have rolled back already)."""
        self.db.execute("BEGIN")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def write(self, changes: Changes, durable: bool = False) -> None:
        """Write the changes as one transaction; `durable`: fsynced before returning."""
        if not changes:
            return
        quota_text = changes.accounts.model_dump_json() if changes.accounts else None
        if durable:
            self.db.execute("PRAGMA synchronous=FULL")
        try:
            with self._transaction():
                self._write(changes, quota_text)
        finally:
            if durable:
                self.db.execute("PRAGMA synchronous=NORMAL")
        if quota_text is not None:
            self._quota_text = quota_text
        if changes.events:
            self._tell(changes.events)

    def _tell(self, events: list[StageEvent | MeshEvent]) -> None:
        """Hand written entries of the log to the listeners. They only watch: one that
        fails is logged, and neither the write nor the other listeners are undone."""
        for listener in self.listeners:
            try:
                listener(events)
            except Exception:
                log.exception("a listener of the event log failed on %d entries", len(events))

    def expire(self, before: float, limit: int, forget_before: float) -> list[Expired]:
        """Delete up to `limit` actions that finished before `before`, with their attempts
        and events, in one transaction; their ids are kept (to say they expired) until
        `forget_before`. Returns the deleted (id, stage)."""
        with self._transaction():
            gone = [(ActionId(i), Stage(stage)) for i, stage in self.db.execute(
                "SELECT id, stage FROM actions WHERE finished_at < ? ORDER BY finished_at "
                "LIMIT ?", (before, limit))]
            ids = [(action_id,) for action_id, _ in gone]
            for table, column in (("journal", "action_id"), ("attempts", "action_id"),
                                  ("actions", "id")):
                self.db.executemany(f"DELETE FROM {table} WHERE {column} = ?", ids)
            # The log's entries of no action (agents', restarts) age out with the same rule.
            self.db.execute("DELETE FROM journal WHERE seq IN (SELECT seq FROM journal WHERE "
                            "action_id IS NULL AND time < ? LIMIT ?)",
                            (before, POOL_EVENTS_PER_BATCH))
            self.db.executemany("INSERT OR REPLACE INTO expired VALUES (?, ?)",
                                [(action_id, before) for action_id, _ in gone])
            self.db.execute("DELETE FROM expired WHERE at < ?", (forget_before,))
        self._shrink()
        return gone

    def _shrink(self) -> None:
        """Hand free pages back to the file system, a bounded number at a time."""
        try:
            # As a script: `execute` steps a statement without result columns only once,
            # and this pragma frees one page per step.
            self.db.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES})")
        except sqlite3.Error as exc:  # the deletes stand; the space comes back next time
            log.warning("cannot give %s's free pages back: %s", self.path, exc)

    def save_quota(self, snapshot: QuotaSnapshot) -> None:
        """Write accounts, balances and options, unless they are what was last written (or
        there are none, and never were)."""
        if not (snapshot.accounts or self._quota_text):
            return
        if snapshot.model_dump_json() != self._quota_text:
            self.write(Changes(accounts=snapshot))

    def _write(self, changes: Changes, quota_text: str | None) -> None:
        self.db.executemany(INSERT, [created_row(r, self.sealer) for r in changes.created])
        self.db.executemany(UPDATE, [action_row(r) for r in changes.updated])
        self.db.executemany(ATTEMPT, [attempt_row(a, r) for a, r in changes.attempts])
        self.db.executemany(INSERT_EVENT, [event_row(e) for e in changes.events])
        if quota_text is not None:
            self.db.execute("INSERT OR REPLACE INTO quota VALUES (1, ?)", (quota_text,))
        if changes.pool:
            write_pool(self.db, changes.pool)
        if changes.drained is not None:
            self.db.execute("DELETE FROM drained")
            self.db.executemany("INSERT INTO drained VALUES (?)",
                                [(a,) for a in sorted(changes.drained)])
