"""The log relay actor: agents push attempts' log batches; controllers read and follow them."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import ray

from mesh.arrival import arrived, arrived_count, arrived_id, arrived_seconds
from mesh.errors import InvalidInput
from mesh.logstore import LogStore
from mesh.metrics import METRICS_INTERVAL, Recorder
from mesh.names import RELAY, on_the_head
from mesh.schema import LogBatch, LogRead, MeshConfig
from mesh.statedir import Owner, StateDirLock

log = logging.getLogger(__name__)

# A long-poll never outlives this, so a reader that went away frees its slot.
MAX_WAIT = 300.0
# An agent closes an attempt only after its last push landed, so a gap still open this long
# after the close is a push that failed for good: give up on it so followers reach the end.
CLOSE_GRACE = 10.0
# While the disk refuses spills and memory is full, how often appends try it again.
SPILL_RETRY = 0.5
# Caps one reply (~100k lines of 64 characters is ~7 MB through the object store).
MAX_READ_LINES = 100_000

_Key = tuple[str, int]
_P = ParamSpec("_P")
_T = TypeVar("_T")


def relay_options() -> dict[str, Any]:
    """`.options(...)` for the one relay: detached, named, on the head, restarted forever."""
    return {
        **on_the_head(RELAY),
        "max_restarts": -1,
        "max_task_retries": -1,
        # Followers park in `read`; Ray's default of 1000 concurrent calls would let them
        # starve the agents' appends, so the ceiling sits well above any fleet's readers.
        "max_concurrency": 10_000,
    }


def default_log_budget(spill: Path, held: int) -> int:
    """A quarter of the space free where the logs go, counting the `held` bytes of logs
    already there (the store took them back, so it knows them without a walk)."""
    return (shutil.disk_usage(spill).free + held) // 4


class _Waiters:
    """Readers parked on one attempt; `event` is replaced each time it fires."""

    __slots__ = ("count", "event")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.count = 0


def _check_attempt(action_id: Any, attempt: Any) -> None:
    arrived_id(action_id, "action id")
    arrived_count(attempt, "attempt", 1)


def _guard(what: str, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run one step; log what failed so the actor's log explains the caller's error.

    Ray hands the exception back to the caller and keeps the actor alive.
    """
    try:
        return fn(*args, **kwargs)
    except InvalidInput as exc:
        log.warning("%s refused: %s", what, exc)
        raise
    except Exception:
        log.exception("%s failed", what)
        raise


@ray.remote(num_cpus=0)
class LogRelay:
    """Holds every attempt's log; one per cluster, on the head node.

    Every method runs on the actor's event loop and none awaits while touching the store,
    so appends, closes and reads never interleave halfway.
    """

    def __init__(self, config: MeshConfig, close_grace: float = CLOSE_GRACE) -> None:
        config = arrived(MeshConfig, config, "config")
        # Before its files are touched. Only a restart can be refused here (`mesh up`
        # makes the relay after the scheduler took the dir): then this relay dies, saying why.
        spill = Path(config.logs)
        self._lock = StateDirLock(spill, "relay")
        self._lock.acquire(Owner.here(ray.get_runtime_context().gcs_address))
        self._store = LogStore(spill, config.relay_memory_bytes, disk_budget=config.log_budget)
        if config.log_budget is None:
            self._store.disk_budget = default_log_budget(
                spill, self._store.stats()["spilled_bytes"])
        self._waiters: dict[_Key, _Waiters] = {}
        self._close_grace = close_grace
        self._retention = config.retention
        self._expire_every = config.expire_every
        self._expiring: asyncio.TimerHandle | None = None
        self._metrics = Recorder()
        self._skipped_shown = 0

    def __repr__(self) -> str:
        return "relay"  # the dashboard's actor list shows it by its role

    async def append(self, batch: LogBatch) -> None:
        """Store a batch (a LogBatch or its dict form) and wake the readers of its attempt.
        While the disk refuses spills and memory is past twice its budget, the answer
        waits: the agent's pushes back up and it stops reading the action's output."""
        self._start_timers()
        checked = _guard("append", arrived, LogBatch, batch, "log batch")
        while self._store.overfull:
            await asyncio.sleep(SPILL_RETRY)
            self._store.retry_spill()
        waits_at = _guard("append", self._store.append, checked)
        self._wake((checked.action_id, checked.attempt))
        if waits_at is not None:
            asyncio.get_running_loop().call_later(self._close_grace, self._give_up,
                                                  checked.action_id, checked.attempt, waits_at)

    def _give_up(self, action_id: str, attempt: int, at: int) -> None:
        """Lines an attempt still waits for a grace after later ones came will not come."""
        if self._store.give_up_gap(action_id, attempt, at):
            self._wake((action_id, attempt))

    async def close(self, action_id: str, attempt: int, total_lines: int) -> None:
        """The attempt ended after `total_lines` lines (both streams)."""
        self._close(action_id, attempt, total_lines)

    async def close_many(self, ends: list[tuple[str, int, int]]) -> None:
        """Several `close` calls in one, (action_id, attempt, total_lines) each; agents
        batch the closes of attempts that printed nothing, which are many and urgent to
        nobody."""
        for action_id, attempt, total_lines in ends:
            try:
                self._close(action_id, attempt, total_lines)
            except Exception:  # one bad entry must not keep the others open
                log.exception("close of %r attempt %r failed", action_id, attempt)

    def _close(self, action_id: str, attempt: int, total_lines: int) -> None:
        _guard("close", _check_attempt, action_id, attempt)
        _guard("close", arrived_count, total_lines, "total_lines")
        _guard("close", self._store.close, action_id, attempt, total_lines)
        self._wake((action_id, attempt))
        asyncio.get_running_loop().call_later(self._close_grace, self._settle, action_id,
                                              attempt)
        self._start_timers()

    def _start_timers(self) -> None:
        # From the first call on the event loop: a restarted relay holding old logs must
        # expire them even if no attempt ever closes again.
        if self._expiring is None:
            self._expiring = asyncio.get_running_loop().call_later(self._expire_every,
                                                                    self._expire)
            self._record()

    def _record(self) -> None:
        """Show the store's counters as metrics, now and every METRICS_INTERVAL."""
        try:
            stats = self._stats()
            for name, value in (("relay_memory_bytes", stats["memory_bytes"]),
                                ("relay_disk_bytes", stats["spilled_bytes"]),
                                ("relay_attempts", stats["attempts"]),
                                ("relay_waiting_readers", stats["waiting_readers"])):
                self._metrics.set(name, value)
            self._metrics.inc("relay_skipped_lines_total",
                              stats["skipped_lines"] - self._skipped_shown)
            self._skipped_shown = stats["skipped_lines"]
        except Exception:
            log.exception("recording the relay's metrics failed; will record again")
        asyncio.get_running_loop().call_later(METRICS_INTERVAL, self._record)

    def _expire(self) -> None:
        """Forget the logs of actions that finished longer ago than the retention period
        (the scheduler deletes the actions themselves by then)."""
        try:
            now = time.time()
            # An attempt whose agent died never closes: its action goes once idle twice as long.
            self._store.expire(now - self._retention, now - 2 * self._retention)
        except Exception:
            log.exception("deleting expired logs failed; will retry")
        self._expiring = asyncio.get_running_loop().call_later(self._expire_every,
                                                                self._expire)

    async def read(self, action_id: str, attempt: int, offset: int, max_lines: int = 10_000,
                   wait: float = 0.0) -> LogRead:
        """Lines from `offset`; when there are none yet, wait up to `wait` s for some or the end."""
        self._start_timers()
        _guard("read", _check_attempt, action_id, attempt)
        _guard("read", arrived_count, offset, "offset")
        _guard("read", arrived_count, max_lines, "max_lines", 1)
        _guard("read", arrived_seconds, wait, "wait")
        max_lines = min(max_lines, MAX_READ_LINES)
        key = (action_id, attempt)
        result = _guard("read", self._store.read, action_id, attempt, offset, max_lines)
        if result.batches or result.closed or wait <= 0:
            return result
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(float(wait), MAX_WAIT)
        # A wake-up may be for lines still held behind a gap, so look again and keep waiting.
        while (remaining := deadline - loop.time()) > 0:
            await self._changed(key, remaining)
            result = _guard("read", self._store.read, action_id, attempt, offset, max_lines)
            if result.batches or result.closed:
                break
        return result

    async def forget(self, action_id: str) -> None:
        """Drop an action's logs; its followers see no more lines."""
        _guard("forget", _check_attempt, action_id, 1)
        _guard("forget", self._store.forget, action_id)
        for key in [k for k in self._waiters if k[0] == action_id]:
            self._wake(key)

    async def attempts(self, action_id: str) -> list[int]:
        return self._store.attempts(action_id)

    async def stats(self) -> dict[str, int]:
        return self._stats()

    def _stats(self) -> dict[str, int]:
        """The store's counters, plus how many readers are parked in a long-poll."""
        stats = self._store.stats()
        stats["waiting_readers"] = sum(w.count for w in self._waiters.values())
        return stats

    async def ping(self) -> bool:
        self._start_timers()
        return True

    async def _changed(self, key: _Key, timeout: float) -> None:
        waiters = self._waiters.get(key)
        if waiters is None:
            waiters = self._waiters[key] = _Waiters()
        event = waiters.event
        waiters.count += 1
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            waiters.count -= 1
            if waiters.count == 0 and self._waiters.get(key) is waiters:
                del self._waiters[key]

    def _settle(self, action_id: str, attempt: int) -> None:
        try:
            lost = self._store.skip_gaps(action_id, attempt)
        except Exception:
            log.exception("settling the log of %s attempt %d failed", action_id, attempt)
            return
        if lost:
            log.warning("%s attempt %d closed with %d lines that never arrived",
                        action_id, attempt, lost)
            self._wake((action_id, attempt))

    def _wake(self, key: _Key) -> None:
        waiters = self._waiters.get(key)
        if waiters is not None:
            # Readers parked so far hold the old event; later ones park on a fresh one.
            waiters.event.set()
            waiters.event = asyncio.Event()
