"""The core's durable side: taking back the saved state, then writing each change, and
turning read-only while storage fails.

A write that fails for lack of space or an I/O error does not stop the scheduler: it turns
read-only. It keeps answering reads and taking agents' reports (they wait in the core's
journal), refuses submissions and admin changes, starts nothing (a start it could not
record must never happen: the decisions it could not write are held), and tries again
with backoff; once a write succeeds it carries on. Any other write error is a bug or a
record the store cannot keep, and stops the process; Ray restarts it, and a restart that
follows such stops closely begins read-only for a while, saying why, rather than looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from pydantic_core import PydanticSerializationError

from mesh.errors import InvalidInput, StoreReadOnly
from mesh.schema import Health
from scheduler.core.decisions import Decision
from scheduler.core.records import Changes, Expired
from scheduler.core.state import SchedulerState
from scheduler.store import Store

log = logging.getLogger("actionmesh.scheduler")

# SQLite's primary result codes that mean the storage, not the data, is at fault.
_STORAGE_CODES = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_IOERR: "I/O error",
    sqlite3.SQLITE_READONLY: "the file is read-only",
    sqlite3.SQLITE_CANTOPEN: "the file cannot be opened",
    sqlite3.SQLITE_BUSY: "the file is locked by another process",
    sqlite3.SQLITE_LOCKED: "the file is locked",
}
_STORAGE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "I/O error",
    errno.EROFS: "read-only file system",
}
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
# Stops closer together than this count as one loop; the backoff doubles with each.
STOP_LOOP_WINDOW = 600.0
STOP_BACKOFF_FIRST = 5.0
STOP_BACKOFF_MAX = 300.0
STOPS_FILE = "scheduler-stops.json"


def storage_fault(exc: BaseException) -> str | None:
    """What is wrong with the storage, or None when the error is not about storage."""
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return _STORAGE_CODES.get(code & 0xFF)
        # Errors raised before SQLite ran carry no code; their text still says it.
        text = str(exc).lower()
        return "disk full" if "disk is full" in text else None
    if isinstance(exc, OSError):
        return _STORAGE_ERRNOS.get(exc.errno or 0)
    return None


class Writer:
    """The scheduler's one way to read back and write the core's state, and its read-only
    mode."""

    def __init__(self, core: SchedulerState, store: Store, clock: Callable[[], float],
                 on_fatal: Callable[[BaseException], None]) -> None:
        self.core = core
        self.store = store
        self.clock = clock
        self.on_fatal = on_fatal
        self.reason = ""  # why it is read-only; empty while it can write
        self.since: float | None = None
        self.retry_in = RETRY_FIRST
        self._held: list[Decision] = []
        self._spawn: Callable[[Coroutine[Any, Any, None]], Any] | None = None
        self._resume: Callable[[list[Decision]], None] | None = None
        self._recovering: Any = None
        self._stops = Path(store.directory) / STOPS_FILE
        self._after_stops()

    def restore(self) -> None:
        """Take back the saved state (a corrupt store stops the start-up, loudly). Attempts
        it has in flight stay unclaimed until their agents say what they run."""
        began = time.perf_counter()
        # Tens of thousands of objects are built here and all outlive the load: the cyclic
        # collector would scan them again and again as they pile up (a third of the time).
        gc.disable()
        try:
            saved = self.store.load()
            loaded = time.perf_counter()
            self.core.restore(saved, self.clock())
        finally:
            gc.enable()
        if saved.actions or saved.accounts is not None:
            log.info("restored %d unfinished action(s) and %d account(s): read in %.3fs, "
                     "taken back in %.3fs", len(saved.actions),
                     len(saved.accounts.accounts) if saved.accounts else 0, loaded - began,
                     time.perf_counter() - loaded)

    @property
    def read_only(self) -> bool:
        return bool(self.reason)

    def health(self, serving: bool) -> Health:
        return Health(serving=serving, store="read-only" if self.read_only else "ok",
                      reason=self.reason, since=self.since)

    def start(self, spawn: Callable[[Coroutine[Any, Any, None]], Any],
              resume: Callable[[list[Decision]], None]) -> None:
        """From the event loop: while read-only (now or later), try writing again with
        backoff, then hand what was held to `resume`."""
        self._spawn, self._resume = spawn, resume
        if self.read_only:
            self._recover()

    def write(self) -> bool:
        """Write the pending changes. A scheduler must not act on what it could not record
        (a restart would hand out the same attempt numbers again): False when they stay
        pending (read-only, where only the retries try the disk again)."""
        if self.read_only:
            return False
        return self._attempt(durable=False)

    def commit_durably(self, changes: Changes) -> None:
        """Write a submission's changes, fsynced; StoreReadOnly for a storage fault,
        InvalidInput for text the store cannot encode."""
        try:
            self.store.write(changes, durable=True)
        except (PydanticSerializationError, UnicodeEncodeError) as exc:
            # A lone surrogate (os.fsdecode of a name that is not UTF-8, sent by a bare Ray
            # call): the submission's fault, refused whole, not the store's.
            raise InvalidInput(f"submission: text that cannot be stored as UTF-8 ({exc})",
                               [("action", "not UTF-8")]) from None
        except Exception as exc:
            if self.failed(exc) is not None:
                raise self.refusal("the submission was not accepted") from None
            raise

    def save_accounts(self) -> None:
        """Write accounts, balances and options if they changed since the last write (when
        read-only, once it can write again)."""
        if self.read_only:
            return
        try:
            self.store.save_quota(self.core.accounts.snapshot(self.clock()))
        except Exception as exc:
            self.failed(exc)

    def retry(self) -> bool:
        """Try to write again; True once the store takes writes, ending read-only."""
        if not self._probe() or not self._attempt(durable=True):
            self.retry_in = min(self.retry_in * 2, RETRY_MAX)
            return False
        if self.read_only:
            log.warning("state store %s writes again after %.0fs read-only (%s)",
                        self.store.path, self.clock() - (self.since or 0.0), self.reason)
        # The record of stops is not cleared here: a restart writes at once whether or not
        # the next poison is coming; it ages out after STOP_LOOP_WINDOW of running instead.
        self.reason, self.since, self.retry_in = "", None, RETRY_FIRST
        return True

    def expire(self, before: float, forget_before: float, limit: int) -> list[Expired]:
        """Delete up to `limit` actions that finished before `before` (see Store.expire);
        nothing while read-only."""
        if self.read_only:
            return []
        try:
            return self.store.expire(before, limit, forget_before)
        except Exception as exc:
            self.failed(exc)
            return []

    def refuse_if_read_only(self, what: str) -> None:
        """StoreReadOnly for a change asked while writes fail; nothing was changed."""
        if self.read_only:
            raise self.refusal(f"{what} are refused until it can write again (nothing was "
                               "changed)")

    def write_change(self, what: str) -> None:
        """Write an operator's change just made; StoreReadOnly if it stays unwritten."""
        if not self.write():
            raise self.unwritten(what)

    def unwritten(self, what: str) -> StoreReadOnly:
        """The error for a change in force that could not be written."""
        return self.refusal(f"{what} is in force but not yet written (it will be once the "
                            "store can write, unless the scheduler restarts first)")

    def refusal(self, outcome: str) -> StoreReadOnly:
        """The error for a change asked while read-only, saying why and what became of it."""
        return StoreReadOnly(f"state store read-only: {self.reason}; {outcome}")

    def failed(self, exc: BaseException) -> str | None:
        """Judge a failed write: read-only for a storage fault (its reason returned),
        else the process stops (on_fatal)."""
        fault = storage_fault(exc)
        if fault is None:
            log.critical("writing the scheduler's state to %s failed: %r; stopping so the "
                         "restarted scheduler continues from the saved state",
                         self.store.path, exc)
            self._record_stop(exc)
            self.on_fatal(exc)
            return None
        self._enter(f"{fault} ({exc})")
        return fault

    def hold(self, decisions: Sequence[Decision]) -> None:
        """Decisions whose state could not be written: carried out once it is."""
        self._held.extend(decisions)

    def take_held(self) -> list[Decision]:
        held, self._held = self._held, []
        return held

    # ---- inside ------------------------------------------------------------------------

    def _attempt(self, durable: bool) -> bool:
        try:
            with self.core.writing() as changes:
                self.store.write(changes, durable)
        except Exception as exc:
            self.failed(exc)
            return False
        return True

    def _probe(self) -> bool:
        # With nothing pending a write succeeds without touching the disk, which would end
        # read-only too soon: the disk is asked first.
        try:
            self.store.probe()
            return True
        except OSError as exc:
            self.failed(exc)
            return False

    def _enter(self, reason: str) -> None:
        if not self.read_only:
            log.error("state store %s is read-only: %s; submissions and admin changes are "
                      "refused and nothing new starts until it can write again",
                      self.store.path, reason)
            self.since = self.clock()
        self.reason = reason
        self._recover()

    def _recover(self) -> None:
        if self._recovering is None and self._spawn is not None:
            self._recovering = self._spawn(self._recovery())

    async def _recovery(self) -> None:
        try:
            while self.read_only:
                await asyncio.sleep(self.retry_in)
                if self.retry():
                    self.save_accounts()
                    assert self._resume is not None
                    self._resume(self.take_held())
        finally:
            self._recovering = None

    def _record_stop(self, exc: BaseException) -> None:
        """Note the stop for the restarted scheduler (best effort: the disk may be why)."""
        count = self._recent_stops()[0] + 1
        with contextlib.suppress(OSError):
            self._stops.write_text(json.dumps({"count": count, "at": time.time(),
                                               "error": repr(exc)[:500]}))

    def _recent_stops(self) -> tuple[int, str]:
        try:
            saved = json.loads(self._stops.read_text())
            if time.time() - float(saved["at"]) < STOP_LOOP_WINDOW:
                return int(saved["count"]), str(saved["error"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return 0, ""

    def _after_stops(self) -> None:
        count, error = self._recent_stops()
        if count:
            self.retry_in = min(STOP_BACKOFF_FIRST * 2 ** (count - 1), STOP_BACKOFF_MAX)
            self._enter(f"restarted after {count} stop(s) in a row, the last by {error}; "
                        f"writing again in {self.retry_in:.0f}s")
