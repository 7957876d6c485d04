"""The relay's log store: each attempt's lines in order, within a memory and a disk budget,
spilled to files that outlive the relay (`mesh/logfiles.py`; an attempt's log is
`mesh/logattempt.py`)."""

from __future__ import annotations

import collections
import hashlib
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mesh import logfiles
from mesh.logattempt import (
    ENCODING,
    ERRORS,
    MAX_READ_CHARS,
    MERGE_BYTES,
    MERGE_LINES,
    AttemptLog,
    Chunk,
    Held,
    Reader,
    Spilled,
    cut,
)
from mesh.schema import ID_RE, LogBatch, LogRead, Stream
from mesh.statedir import private_dir

log = logging.getLogger(__name__)

# A stored chunk's own objects (chunk, index entries), counted against the budget besides
# its text (`sys.getsizeof`, so wide characters count what they take).
CHUNK_OVERHEAD = 200
# An attempt's own bookkeeping (its record, indexes and entries in the store's maps),
# counted against the budget too: 50,000 one-line attempts once took 60 MiB while their
# lines were counted as 16. Measured: 1,178 bytes an attempt with one line, 316 of them
# the line's chunk.
ATTEMPT_OVERHEAD = 860
# What a read of a log dropped for the disk budget says, and how many such actions are
# remembered to say it.
DROPPED = "dropped: the relay's log disk budget was full, and it finished before others"
REMEMBER_DROPPED = 100_000
# Batches ahead of a gap are held in memory up to at least this many bytes (see LogStore).
HOLD_FLOOR = 8 << 20
_Key = tuple[str, int]


def text_cost(text: str) -> int:
    """What holding a chunk of this text costs against the memory budget."""
    return sys.getsizeof(text) + CHUNK_OVERHEAD


def file_name(action_id: str) -> str:
    """A directory name for an action that cannot escape the spill directory."""
    if ID_RE.match(action_id):
        return action_id
    # Valid ids start with a letter or digit, so this form never collides with one.
    return "~" + hashlib.sha256(action_id.encode(ENCODING, ERRORS)).hexdigest()[:32]


class LogStore:
    """Every attempt's log lines, readable from any offset, within a memory budget.

    Not thread-safe: the relay calls it from one event loop.
    """

    def __init__(self, spill_dir: Path, memory_budget: int, hold_limit: int | None = None,
                 clock: Callable[[], float] = time.time, disk_budget: int | None = None,
                 ) -> None:
        if memory_budget < 0:
            raise ValueError(f"memory_budget must not be negative, got {memory_budget!r}")
        self._spill_dir = Path(spill_dir)
        private_dir(self._spill_dir, "log dir")
        self._budget = memory_budget
        # Batches only arrive out of order when a push is retried, so this is generous;
        # past it, a gap is given up on rather than memory. It comes on top of the budget.
        self._hold_limit = max(memory_budget // 4, HOLD_FLOOR) if hold_limit is None else hold_limit
        self._actions: dict[str, dict[int, AttemptLog]] = {}
        self._queue: collections.deque[Chunk] = collections.deque()
        self._dead = 0
        self._memory = 0  # lines held in memory
        self._overhead = 0  # the attempts' own bookkeeping
        # Attempts closed and not forgotten: what a compacted journal holds (counted, not
        # summed over every attempt at each expiry: a week of them is millions).
        self._closed_attempts = 0
        self._held = 0
        self._spilled = 0
        self._skipped = 0
        self._spill_failed = False
        # Actions whose every attempt is closed, by when the last one closed (oldest first):
        # what retention deletes.
        self._closed: dict[str, float] = {}
        self._clock = clock
        # Bytes the spilled logs may take; None: no limit. The relay may set it once the
        # store has taken back what is on disk.
        self.disk_budget = disk_budget
        # Actions whose logs went to keep the disk budget, with why (the latest only).
        self._dropped: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._journal = logfiles.Journal(self._spill_dir)
        # Closed attempts not yet wholly on disk and journaled (the disk refused), oldest first.
        self._unsaved: dict[tuple[str, int], float] = {}
        # Every action, by when it last had an append or a close (oldest first): one whose
        # agent died never closes, and is forgotten once idle long enough.
        self._touched: dict[str, float] = {}
        self._recover()

    # -- writing -----------------------------------------------------------------------

    def append(self, batch: LogBatch) -> int | None:
        """Store a batch; hold it if it is ahead of a gap; ignore lines already stored.
        When the batch is the first held at a gap: the offset where its attempt waits,
        for `give_up_gap` later."""
        a = self._attempt(batch.action_id, batch.attempt)
        self._touch(batch.action_id, self._clock())
        start = batch.offset
        stop = start + batch.count
        if a.total is not None:
            stop = min(stop, a.total)
        if stop <= max(a.end, start):
            return None
        text = batch.text if stop == start + batch.count else cut(batch.text, 0, stop - start)
        waits_at = None
        if start > a.end:
            waits_at = a.end if not a.held else None
            self._hold(a, start, batch.stream, text, stop - start)
        else:
            self._store(a, start, batch.stream, text, stop - start)
            self._release(a)
            if a.total is not None:  # late lines of a closed attempt
                self._unsaved.setdefault((a.action_id, a.attempt), self._clock())
        self._save_closed()
        self._evict()
        return waits_at

    def give_up_gap(self, action_id: str, attempt: int, at: int) -> int:
        """Skip to the held lines of an attempt that still waits at `at` (where it waited
        when they came): lines lost with pushes that failed, or with the memory of a relay
        that died, never come, and later ones must not wait for the attempt's close.
        Returns how many lines were skipped."""
        a = self._actions.get(action_id, {}).get(attempt)
        if a is None or a.end != at or not a.held:
            return 0
        before = self._skipped
        while a.held:
            self._skip_to(a, min(a.held))
            self._release(a)
        return self._skipped - before

    def close(self, action_id: str, attempt: int, total_lines: int) -> None:
        """The attempt ended after `total_lines` lines; readers see it closed once all are here."""
        if total_lines < 0:
            raise ValueError(f"total_lines must not be negative, got {total_lines!r}")
        a = self._attempt(action_id, attempt)
        if a.total is not None:
            if a.total != total_lines:
                log.warning("attempt %s/%d closed again with %d lines (first said %d); "
                            "keeping %d", action_id, attempt, total_lines, a.total, a.total)
            return
        a.total = total_lines
        self._closed_attempts += 1
        for start in [s for s in a.held if s >= total_lines]:
            self._held -= a.held.pop(start).cost
        now = self._clock()
        a.closed_at = now
        self._touch(action_id, now)
        if all(other.total is not None for other in self._actions[action_id].values()):
            self._closed.pop(action_id, None)
            self._closed[action_id] = now
        self._unsaved[(action_id, attempt)] = now
        self._save_closed()
        self._evict()  # a close of an attempt that never printed adds one

    def _save_closed(self) -> None:
        """Put closed attempts' logs on disk whole, and journal their closes, so that they
        outlive the relay; what the disk refuses now is tried again at the next append."""
        while self._unsaved:
            (action_id, attempt), at = next(iter(self._unsaved.items()))
            a = self._actions.get(action_id, {}).get(attempt)
            if a is not None:
                if not self._flush(a):
                    return
                if (action_id, attempt) not in self._unsaved:
                    continue  # the disk budget dropped it while it was being saved
                try:
                    self._journal.append(logfiles.Closed(action_id, attempt, a.total or 0, at))
                except OSError as exc:
                    log.warning("cannot record the close of %s attempt %d: %s; will retry",
                                action_id, attempt, exc)
                    return
            self._unsaved.pop((action_id, attempt), None)

    def expire(self, before: float, idle_before: float | None = None) -> int:
        """Forget the actions whose attempts all closed before `before`, and those with an
        attempt never closed (its agent died with it) and nothing new since `idle_before`;
        how many."""
        gone: list[str] = []
        while self._closed:
            action_id, closed_at = next(iter(self._closed.items()))
            if closed_at >= before:
                break
            self._forget(action_id)
            gone.append(action_id)
        while idle_before is not None and self._touched:
            action_id, touched = next(iter(self._touched.items()))
            if touched >= idle_before:
                break
            self._forget(action_id)
            gone.append(action_id)
        if gone:
            self._journal_forgotten(gone)
        # Rewritten once a tenth of it is dead: it stays near what retention keeps, and a
        # week of it is rewritten rarely.
        if self._journal.lines > 1.1 * self._closed_attempts + 1000:
            self._compact_journal()
        return len(gone)

    def _compact_journal(self) -> None:
        kept = sorted((logfiles.Closed(action_id, n, a.total, a.closed_at or 0.0)
                       for action_id, attempts in self._actions.items()
                       for n, a in attempts.items() if a.total is not None),
                      key=lambda c: c.at)
        try:
            self._journal.rewrite(kept)
        except OSError as exc:
            log.warning("cannot compact the log journal: %s", exc)

    def _journal_forgotten(self, action_ids: list[str]) -> None:
        # Else a restarted relay would find their closes in the journal and bring them back.
        try:
            self._journal.forget(action_ids, self._clock())
        except OSError as exc:
            log.warning("cannot record that %d log(s) were deleted: %s", len(action_ids), exc)

    def _touch(self, action_id: str, now: float) -> None:
        self._touched.pop(action_id, None)
        self._touched[action_id] = now

    def skip_gaps(self, action_id: str, attempt: int) -> int:
        """Give up on the missing lines of a closed attempt, so it can read to its end.

        For when every push has landed that ever will; returns how many lines were lost.
        """
        a = self._actions.get(action_id, {}).get(attempt)
        if a is None or a.total is None or a.closed:
            return 0
        before = self._skipped
        while a.held:
            self._skip_to(a, min(a.held))
            self._release(a)
        if a.end < a.total:
            self._skip_to(a, a.total)
        if not self._flush(a):
            self._unsaved.setdefault((action_id, attempt), self._clock())
        self._evict()
        return self._skipped - before

    def forget(self, action_id: str) -> None:
        """Drop every attempt of an action, in memory and on disk."""
        self._forget(action_id)
        self._journal_forgotten([action_id])

    def _forget(self, action_id: str) -> None:
        self._closed.pop(action_id, None)
        self._touched.pop(action_id, None)
        attempts = self._actions.pop(action_id, None)
        if attempts is None:
            return
        for number in attempts:
            self._unsaved.pop((action_id, number), None)
        self._overhead -= ATTEMPT_OVERHEAD * len(attempts)
        self._closed_attempts -= sum(1 for a in attempts.values() if a.total is not None)
        for a in attempts.values():
            for chunk in a.mem[a.mem_head:]:
                chunk.dead = True
                chunk.text = ""
                self._memory -= chunk.cost
                self._dead += 1
            for held in a.held.values():
                self._held -= held.cost
            self._spilled -= sum(s.length + 1 for s in a.spilled)
        shutil.rmtree(self._spill_dir / file_name(action_id), ignore_errors=True)
        # Forgotten chunks wait in the eviction queue as tombstones; sweep them out once
        # they are most of it, so a store that never reaches its budget does not grow.
        if self._dead > 1024 and self._dead * 2 > len(self._queue):
            self._queue = collections.deque(c for c in self._queue if not c.dead)
            self._dead = 0

    def _attempt(self, action_id: str, attempt: int) -> AttemptLog:
        attempts = self._actions.setdefault(action_id, {})
        a = attempts.get(attempt)
        if a is None:
            path = self._spill_dir / file_name(action_id) / f"{attempt}.log"
            a = attempts[attempt] = AttemptLog(action_id, attempt, path)
            self._overhead += ATTEMPT_OVERHEAD
            self._closed.pop(action_id, None)  # a new attempt: open again
            self._dropped.pop(action_id, None)
        return a

    def _store(self, a: AttemptLog, start: int, stream: Stream, text: str, count: int) -> None:
        """Keep the lines from a.end on of the `count` lines of `text`, which start at
        `start` <= a.end."""
        stop = start + count
        if a.end > start:
            text = cut(text, a.end - start, count)
            start = a.end
        cost = text_cost(text)
        chunk = Chunk(a, start, stream, text, stop - start, cost)
        a.mem.append(chunk)
        a.mem_starts.append(start)
        a.end = a.stored_end = stop
        self._queue.append(chunk)
        self._memory += cost

    def _hold(self, a: AttemptLog, start: int, stream: Stream, text: str, count: int) -> None:
        held = a.held.get(start)
        if held is not None and held.count >= count:
            return
        if held is not None:
            self._held -= held.cost
        cost = text_cost(text)
        a.held[start] = Held(stream, text, count, cost)
        self._held += cost
        # Only this attempt's holdings grew, so skipping its gaps restores the bound.
        while self._held > self._hold_limit and a.held:
            self._skip_to(a, min(a.held))
            self._release(a)

    def _skip_to(self, a: AttemptLog, offset: int) -> None:
        log.warning("attempt %s/%d: lines %d..%d never arrived; skipping them",
                    a.action_id, a.attempt, a.end, offset - 1)
        self._skipped += offset - a.end
        a.gaps.append((a.end, offset))
        a.end = offset

    def _release(self, a: AttemptLog) -> None:
        """Store held batches that the lines stored so far have caught up with."""
        while a.held:
            first = min(a.held)
            if first > a.end:
                return
            held = a.held.pop(first)
            self._held -= held.cost
            count = held.count if a.total is None else min(held.count, a.total - first)
            if first + count > a.end:
                text = held.text if count == held.count else cut(held.text, 0, count)
                self._store(a, first, held.stream, text, count)

    # -- spilling ----------------------------------------------------------------------

    def _flush(self, a: AttemptLog) -> bool:
        """Spill what a closed attempt still has in memory: it is done growing. False if the
        disk refused (the rest stays in memory)."""
        while a.mem_head < len(a.mem):
            chunk = a.mem[a.mem_head]
            try:
                self._spill(chunk)
            except OSError:
                if not self._spill_failed:
                    log.exception("cannot spill logs to %s; holding them in memory", a.path)
                self._spill_failed = True
                return False
            chunk.dead = True  # its place in the eviction queue is a tombstone now
            self._dead += 1
        self._keep_disk_budget()
        return True

    def _keep_disk_budget(self) -> None:
        """Over the disk budget, drop the logs of the actions that finished first."""
        while (self.disk_budget is not None and self._spilled > self.disk_budget
               and self._closed):
            action_id = next(iter(self._closed))
            self.forget(action_id)
            self._dropped[action_id] = DROPPED
            while len(self._dropped) > REMEMBER_DROPPED:
                self._dropped.popitem(last=False)

    def _recover(self) -> None:
        """Take back the logs a previous relay left on disk: runs by their index, closes by
        the journal. A closed attempt whose lines did not all reach the disk (the relay
        died holding them in memory) has a gap at its end; a read says so."""
        logfiles.clear_unindexed(self._spill_dir)
        now = self._clock()
        # When each action was last heard of, as its files and closes say: taken as now, an
        # attempt never closed (its agent died) would never go idle long enough to expire
        # while the relay restarts more often than that.
        heard: dict[str, float] = {}
        for action_id, number, runs, written in logfiles.spilled(self._spill_dir):
            a = self._attempt(action_id, number)
            heard[action_id] = max(heard.get(action_id, 0.0), min(written, now))
            for run in sorted(runs, key=lambda r: r.offset):
                if run.offset > a.end:  # lines skipped before the crash
                    self._skip_to(a, run.offset)
                self._index_spilled(a, run)
                self._spilled += run.length + 1
                a.end = a.stored_end = max(a.end, run.offset + run.count)
        for closed in self._journal.read():
            a = self._attempt(closed.action_id, closed.attempt)
            heard[closed.action_id] = max(heard.get(closed.action_id, 0.0),
                                          min(closed.at, now))
            if a.total is not None:
                continue
            a.total, a.closed_at = closed.total, closed.at
            self._closed_attempts += 1
            if a.end < a.total:
                self._skip_to(a, a.total)
            if all(other.total is not None
                   for other in self._actions[closed.action_id].values()):
                self._closed.pop(closed.action_id, None)
                self._closed[closed.action_id] = closed.at
        for action_id, at in sorted(heard.items(), key=lambda item: item[1]):
            self._touch(action_id, at)  # oldest first, as expire reads them
        if self._actions:
            log.info("took back the logs of %d attempt(s) of %d action(s) from %s",
                     sum(len(a) for a in self._actions.values()), len(self._actions),
                     self._spill_dir)

    def _evict(self) -> None:
        """Spill the oldest chunks until memory is within budget."""
        while self._memory + self._overhead > self._budget and self._queue:
            chunk = self._queue.popleft()
            if chunk.dead:
                self._dead -= 1
                continue
            try:
                self._spill(chunk)
            except OSError:
                # Keep the lines rather than lose them; try again on the next append.
                self._queue.appendleft(chunk)
                if not self._spill_failed:
                    log.exception("cannot spill logs to %s; holding them in memory",
                                  chunk.owner.path)
                self._spill_failed = True
                return
            self._spill_failed = False
        self._keep_disk_budget()

    def _spill(self, chunk: Chunk) -> None:
        a = chunk.owner
        # Chunks of one attempt enter the queue in offset order, so the oldest live one
        # is always the first still in memory and its file grows in offset order too.
        assert a.mem[a.mem_head] is chunk, "eviction out of order"
        block = chunk.text[:-1].encode(ENCODING, ERRORS)
        run = logfiles.append_run(a.path, a.index, a.action_id, block, chunk.count,
                                  chunk.offset, chunk.stream)
        self._index_spilled(a, run)
        self._spilled += len(block) + 1
        self._memory -= chunk.cost
        chunk.text = ""
        a.mem_head += 1
        if a.mem_head > 64 and a.mem_head * 2 > len(a.mem):
            del a.mem[: a.mem_head]
            del a.mem_starts[: a.mem_head]
            a.mem_head = 0

    def _index_spilled(self, a: AttemptLog, run: logfiles.Run) -> None:
        last = a.spilled[-1] if a.spilled else None
        if (last is not None and last.stream == run.stream
                and last.offset + last.count == run.offset
                and last.pos + last.length + 1 == run.pos
                and last.count + run.count <= MERGE_LINES
                and last.length + run.length < MERGE_BYTES):
            last.count += run.count
            last.length += 1 + run.length
            return
        a.spilled.append(Spilled(run.offset, run.stream, run.pos, run.length, run.count))
        a.spilled_starts.append(run.offset)

    # -- reading -----------------------------------------------------------------------

    def read(self, action_id: str, attempt: int, offset: int, max_lines: int,
             max_chars: int = MAX_READ_CHARS) -> LogRead:
        """Lines [offset, offset + max_lines) as far as stored, in batches by stream, and
        no more than about `max_chars` characters (a single longer line still comes)."""
        attempts = self._actions.get(action_id)
        a = attempts.get(attempt) if attempts is not None else None
        if a is None:
            dropped = self._dropped.get(action_id)
            if dropped is not None:
                return LogRead(batches=[], next_offset=offset, closed=True, dropped=dropped)
            # The attempt may simply not have printed yet.
            return LogRead(batches=[], next_offset=offset, closed=False)
        reader = Reader(a, offset, max(0, max_lines), max_chars)
        reader.collect_spilled()
        reader.collect_memory()
        if reader.pos >= a.stored_end:
            # Past the last stored line only a given-up tail remains: step over it.
            reader.pos = max(reader.pos, a.limit())
        next_offset = reader.pos
        closed = a.closed and next_offset >= (a.total or 0)
        gaps = [g for g in a.gaps if g[1] > offset and g[0] < next_offset]
        return LogRead.model_construct(batches=reader.batches, next_offset=next_offset,
                                       closed=closed, gaps=gaps, dropped="")

    def attempts(self, action_id: str) -> list[int]:
        """The attempts of an action that have logged or closed, in order."""
        return sorted(self._actions.get(action_id, {}))

    @property
    def overfull(self) -> bool:
        """Memory past twice the budget because the disk refuses spills: appends should
        wait (the agent then stops reading its pipes, and the action its writes) rather
        than grow the relay without bound."""
        return self._spill_failed and self._memory + self._overhead > 2 * self._budget

    def retry_spill(self) -> None:
        """Try the disk again: closed attempts' logs first, then the oldest lines."""
        self._spill_failed = False
        self._save_closed()
        self._evict()

    def stats(self) -> dict[str, int]:
        return {
            "memory_bytes": self._memory,
            "attempt_bytes": self._overhead,
            "held_bytes": self._held,
            "spilled_bytes": self._spilled,
            "memory_budget": self._budget,
            "attempts": sum(len(a) for a in self._actions.values()),
            "skipped_lines": self._skipped,
        }
