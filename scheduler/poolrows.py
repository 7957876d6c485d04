"""How the store keeps the groups: the pool record, each job's group, and its load by day."""

from __future__ import annotations

import logging
import sqlite3

from pydantic import ValidationError

from mesh.poolconfig import PoolConfig
from mesh.schema import Model
from scheduler.core.groups import Home, PoolChanges, SavedPool

log = logging.getLogger("actionmesh.scheduler")


class PoolRecord(Model):
    """The one row of `pool`: what of the groups is not per job."""

    config: PoolConfig
    blocked: list[str]
    dispatched_at: float | None
    file_digest: str | None = None


UPSERT_LOAD = """INSERT INTO job_load VALUES (?, ?, ?)
    ON CONFLICT (job, day) DO UPDATE SET seconds = seconds + excluded.seconds"""


def write_pool(db: sqlite3.Connection, changes: PoolChanges) -> None:
    """Inside the caller's transaction."""
    if changes.pool is not None:
        pool = changes.pool
        record = PoolRecord(config=pool.config, blocked=sorted(pool.blocked),
                            dispatched_at=pool.dispatched_at, file_digest=pool.file_digest)
        db.execute("INSERT OR REPLACE INTO pool VALUES (1, ?)", (record.model_dump_json(),))
    gone = [(job,) for job, home in changes.homes.items() if home is None]
    db.executemany("DELETE FROM homes WHERE job = ?", gone)
    db.executemany("INSERT OR REPLACE INTO homes VALUES (?, ?, ?, ?)",
                   [(job, h.group, h.how, int(h.pinned)) for job, h in changes.homes.items()
                    if h is not None])
    db.executemany(UPSERT_LOAD, [(job, day, seconds)
                                 for (job, day), seconds in changes.load.items()])
    if changes.forget_before_day is not None:
        db.execute("DELETE FROM job_load WHERE day < ?", (changes.forget_before_day,))


def read_pool(db: sqlite3.Connection, where: str) -> SavedPool:
    saved = SavedPool()
    row = db.execute("SELECT record FROM pool").fetchone()
    if row is not None:
        try:
            record = PoolRecord.model_validate_json(row[0])
        except ValidationError as exc:
            # One damaged record must not keep the scheduler from starting: it starts with
            # every agent in the default group until a config is applied again.
            log.error("%s: the saved pool config cannot be read, so none is in force (apply "
                      "it again): %s", where, exc)
        else:
            saved.config, saved.blocked = record.config, set(record.blocked)
            saved.dispatched_at, saved.file_digest = record.dispatched_at, record.file_digest
    saved.homes = {job: Home(group, how, bool(pinned))
                   for job, group, how, pinned in db.execute("SELECT * FROM homes")}
    for job, day, seconds in db.execute("SELECT job, day, seconds FROM job_load"):
        saved.history.setdefault(job, {})[int(day)] = float(seconds)
    return saved
