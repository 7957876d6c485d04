"""One attempt's log as the relay holds it: chunks in memory and runs spilled to its file,
both in offset order, and the reader that cuts a window of lines out of them."""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import BinaryIO

from mesh.schema import ActionId, LogBatch, Stream

# Spilled chunks of one stream merge into one index entry up to these sizes, so an attempt
# that printed a line at a time keeps a small index, yet reading one line never reads more
# than this much of its file.
MERGE_LINES = 8192
MERGE_BYTES = 1 << 20
# One read returns at most about this many characters: 150 lines of 1 MiB once made one
# reply of 150 MiB. A line longer than this still comes, alone.
MAX_READ_CHARS = 8 << 20
# Spill files hold UTF-8; a lone surrogate (an undecodable byte the agent passed through)
# must survive the round trip rather than fail the write.
ENCODING = "utf-8"
ERRORS = "surrogatepass"


def cut(text: str, lo: int, hi: int) -> str:
    """Lines [lo, hi) of newline-ended `text`, newline-ended."""
    return "".join(line + "\n" for line in text.split("\n")[lo:hi])


class Chunk:
    """One stored batch (or its tail) held in memory: the agent's text of lines, unsplit."""

    __slots__ = ("cost", "count", "dead", "offset", "owner", "stream", "text")

    def __init__(self, owner: AttemptLog, offset: int, stream: Stream, text: str, count: int,
                 cost: int) -> None:
        self.owner = owner
        self.offset = offset
        self.stream: Stream = stream
        self.text = text
        self.count = count
        self.cost = cost
        self.dead = False


class Spilled:
    """Where a run of spilled lines of one stream sits in its attempt's file."""

    __slots__ = ("count", "length", "offset", "pos", "stream")

    def __init__(self, offset: int, stream: Stream, pos: int, length: int, count: int) -> None:
        self.offset = offset
        self.stream: Stream = stream
        self.pos = pos
        self.length = length
        self.count = count


class Held:
    """A batch that arrived ahead of a gap, waiting for the lines before it."""

    __slots__ = ("cost", "count", "stream", "text")

    def __init__(self, stream: Stream, text: str, count: int, cost: int) -> None:
        self.stream: Stream = stream
        self.text = text
        self.count = count
        self.cost = cost


class AttemptLog:
    """One attempt's log: spilled runs, then chunks in memory, both in offset order."""

    def __init__(self, action_id: str, attempt: int, path: Path) -> None:
        self.action_id = action_id
        self.attempt = attempt
        self.path = path
        self.spilled: list[Spilled] = []
        self.spilled_starts: list[int] = []
        # Evicted chunks leave from the front; `mem_head` skips them until a compaction, so
        # eviction stays O(1) and reads can still bisect.
        self.mem: list[Chunk] = []
        self.mem_starts: list[int] = []
        self.mem_head = 0
        self.end = 0
        # Below `end` unless the attempt's last lines were given up on (see skip_gaps).
        self.stored_end = 0
        self.total: int | None = None
        self.closed_at: float | None = None
        self.held: dict[int, Held] = {}
        # Ranges [start, end) of lines that will never come (lost pushes, or what a crashed
        # relay held in memory only): a read says where they were.
        self.gaps: list[tuple[int, int]] = []

    @property
    def index(self) -> Path:
        return self.path.with_suffix(".idx")

    @property
    def closed(self) -> bool:
        return self.total is not None and self.end >= self.total

    def limit(self) -> int:
        """Offset below which lines may be read."""
        return self.end if self.total is None else min(self.end, self.total)


class Reader:
    """Collects one read's window, first from the spilled runs, then from memory."""

    def __init__(self, a: AttemptLog, offset: int, max_lines: int, max_chars: int) -> None:
        self.a = a
        self.pos = offset
        self.stop: int | None = None
        self.max_lines = max_lines
        self.chars_left = max_chars
        self.limit = a.limit()
        self.batches: list[LogBatch] = []

    def _window(self, first: int, count: int) -> tuple[int, int] | None:
        """The part [lo, hi) of a run [first, first + count) this read takes, if any."""
        if first + count <= self.pos:
            return None
        if self.stop is None:
            # Lines skipped over a gap that never filled are gone; start after them.
            self.pos = max(self.pos, first)
            self.stop = min(self.pos + self.max_lines, self.limit)
        lo, hi = max(self.pos, first), min(first + count, self.stop)
        if hi < first + count and self.batches:
            # The window would end inside this run: end it before instead. A follower then
            # starts its next read at a run's edge, and the text goes out whole, not cut.
            self.stop = lo
            return None
        return (lo, hi) if lo < hi else None

    def _add(self, stream: Stream, offset: int, text: str, count: int) -> None:
        if len(text) > self.chars_left:
            # Past the size cap: the read ends inside these lines (after one, at least).
            keep = chars = 0
            for line in text.split("\n")[:-1]:
                if len(line) + 1 > self.chars_left and (keep or self.batches):
                    break
                self.chars_left -= len(line) + 1
                chars += len(line) + 1
                keep += 1
            self.stop = offset + keep
            if not keep:
                return
            text, count = text[:chars], keep
        else:
            self.chars_left -= len(text)
        self.batches.append(LogBatch.model_construct(
            action_id=ActionId(self.a.action_id), attempt=self.a.attempt, stream=stream,
            offset=offset, text=text, count=count))
        self.pos = offset + count

    def collect_spilled(self) -> None:
        a = self.a
        i = max(0, bisect.bisect_right(a.spilled_starts, self.pos) - 1)
        f: BinaryIO | None = None
        try:
            for run in a.spilled[i:]:
                window = self._window(run.offset, run.count)
                if window is None:
                    if self.stop is not None and run.offset >= self.stop:
                        break
                    continue
                if f is None:
                    f = open(a.path, "rb")  # noqa: SIM115 - closed below, opened only if needed
                text = read_run(f, run, a.path)
                lo, hi = window
                whole = lo == run.offset and hi == run.offset + run.count
                self._add(run.stream, lo,
                          text if whole else cut(text, lo - run.offset, hi - run.offset), hi - lo)
        finally:
            if f is not None:
                f.close()

    def collect_memory(self) -> None:
        a = self.a
        i = max(a.mem_head, bisect.bisect_right(a.mem_starts, self.pos, lo=a.mem_head) - 1)
        for chunk in a.mem[i:]:
            window = self._window(chunk.offset, chunk.count)
            if window is None:
                if self.stop is not None and chunk.offset >= self.stop:
                    break
                continue
            lo, hi = window
            whole = lo == chunk.offset and hi == chunk.offset + chunk.count
            self._add(chunk.stream, lo,
                      chunk.text if whole else cut(chunk.text, lo - chunk.offset,
                                                   hi - chunk.offset), hi - lo)


def read_run(f: BinaryIO, run: Spilled, path: Path) -> str:
    """A run's lines, each ended by a newline (the file has them newline-joined)."""
    f.seek(run.pos)
    data = f.read(run.length + 1)
    text = data.decode(ENCODING, ERRORS)
    if len(data) != run.length + 1 or text.count("\n") != run.count or text[-1:] != "\n":
        raise OSError(f"spill file {path} is damaged at byte {run.pos}: expected {run.count} "
                      f"lines in {run.length} bytes")
    return text
