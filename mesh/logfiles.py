"""The relay's files: each attempt's spilled lines with an index of their runs, and a journal
of closed attempts, written so that a restarted relay finds every log it had spilled.

Per action, a directory (`logstore.file_name`) with, per attempt, `N.log` (the lines of each
run, newline-joined, one run after another) and `N.idx` (a header naming the action, then
one record per run: offset, stream, byte position, byte length, line count). A record is
written after its run, so a crash between the two loses that run only: its lines are a gap.
The journal (`closed.journal`) has one JSON line per closed attempt: the action, the
attempt, its line total and when it closed; it is compacted as retention deletes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mesh.schema import Stream

log = logging.getLogger(__name__)

JOURNAL = "closed.journal"
# The line total a journal record has when it says the action's logs were deleted.
FORGOTTEN = -1
_STREAMS: dict[str, Stream] = {"o": "stdout", "e": "stderr"}
_CODES = {stream: code for code, stream in _STREAMS.items()}


@dataclass(frozen=True)
class Run:
    """Where one spilled run of lines of one stream sits in its attempt's data file."""

    offset: int
    stream: Stream
    pos: int
    length: int
    count: int


@dataclass(frozen=True)
class Closed:
    action_id: str
    attempt: int
    total: int
    at: float


def append_run(data: Path, index: Path, action_id: str, block: bytes, count: int,
               offset: int, stream: Stream) -> Run:
    """Append a run (its `count` lines joined by newlines) to the data file, then its
    record to the index."""
    own_dir(data.parent)
    with _append(data) as f:
        pos = f.seek(0, os.SEEK_END)
        f.write(block)
        f.write(b"\n")
    run = Run(offset, stream, pos, len(block), count)
    fresh = not index.exists()
    with _append(index, text=True) as f:
        if fresh:
            f.write(json.dumps({"action": action_id}) + "\n")
        f.write(f"{run.offset} {_CODES[stream]} {run.pos} {run.length} {run.count}\n")
    return run


def own_dir(path: Path) -> None:
    """Make the directory (0700) or check it is one and not a symlink: a symlink planted
    where an action's logs go would send them elsewhere."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    if path.is_symlink() or not path.is_dir():
        raise OSError(errno.ELOOP, "not a directory of our own (a symlink?)", str(path))


def _append(path: Path, text: bool = False) -> IO[Any]:
    """Open for appending, made 0600 if new, never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    return os.fdopen(fd, "a", encoding="utf-8") if text else os.fdopen(fd, "ab")


def spilled(spill_dir: Path) -> Iterator[tuple[str, int, list[Run], float]]:
    """Every attempt's runs found under the spill dir: (action id, attempt, runs, when its
    index was last written)."""
    if not spill_dir.is_dir():
        return
    for action_dir in spill_dir.iterdir():
        if not action_dir.is_dir() or action_dir.is_symlink():
            continue
        for index in action_dir.glob("*.idx"):
            if not index.stem.isdigit():
                continue
            found = _read_index(index)
            if found is not None:
                yield found[0], int(index.stem), found[1], index.stat().st_mtime


def _whole_lines(path: Path) -> str:
    """The file's text up to its last newline. A record torn by a crash or a full disk is
    cut off the file too, so that the next record does not run on from it."""
    text = path.read_text(encoding="utf-8")  # ASCII: every record is written as JSON or digits
    whole = text[:text.rfind("\n") + 1]
    if len(whole) < len(text):
        log.warning("%s ends in a torn record; cutting it off", path)
        os.truncate(path, len(whole))
    return whole


def _read_index(index: Path) -> tuple[str, list[Run]] | None:
    try:
        text = _whole_lines(index)
    except OSError as exc:
        log.warning("cannot read the log index %s: %s", index, exc)
        return None
    lines = text.split("\n")
    try:
        action_id = str(json.loads(lines[0])["action"])
    except (ValueError, KeyError, TypeError):
        log.warning("the log index %s names no action; its log is left alone", index)
        return None
    runs: list[Run] = []
    # The last line is empty after a whole record, or a record torn by a crash: skipped.
    for line in lines[1:-1]:
        parts = line.split()
        try:
            offset, code, pos, length, count = parts
            runs.append(Run(int(offset), _STREAMS[code], int(pos), int(length), int(count)))
        except (ValueError, KeyError):
            log.warning("the log index %s is damaged after %d runs", index, len(runs))
            break
    return action_id, runs


class Journal:
    """The closed attempts, one JSON line each, appended as they close."""

    def __init__(self, spill_dir: Path) -> None:
        self.path = spill_dir / JOURNAL
        self.lines = 0

    def read(self) -> list[Closed]:
        """The closes still standing, in the order they were written (a deleted action's
        record, total -1, cancels its closes before it)."""
        found: dict[str, dict[int, Closed]] = {}
        try:
            text = _whole_lines(self.path)
        except FileNotFoundError:
            return []
        lines = 0
        for line in text.split("\n"):
            with contextlib.suppress(ValueError, TypeError, IndexError):
                action_id, attempt, total, at = json.loads(line)
                lines += 1
                if total == FORGOTTEN:
                    found.pop(str(action_id), None)
                    continue
                found.setdefault(str(action_id), {})[int(attempt)] = Closed(
                    str(action_id), int(attempt), int(total), float(at))
        self.lines = lines
        return sorted((c for closes in found.values() for c in closes.values()),
                      key=lambda c: c.at)

    def forget(self, action_ids: list[str], at: float) -> None:
        """Record that these actions' logs were deleted."""
        with _append(self.path, text=True) as f:
            f.writelines(json.dumps([a, 0, FORGOTTEN, at]) + "\n" for a in action_ids)
        self.lines += len(action_ids)

    def append(self, closed: Closed) -> None:
        with _append(self.path, text=True) as f:
            f.write(json.dumps([closed.action_id, closed.attempt, closed.total, closed.at])
                    + "\n")
        self.lines += 1

    def rewrite(self, entries: list[Closed]) -> None:
        """Replace the journal with these entries (atomically: a crash leaves either)."""
        fresh = self.path.with_suffix(".new")
        with contextlib.suppress(FileNotFoundError):
            fresh.unlink()  # a leftover (or a planted symlink) is replaced, never written through
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for c in entries:
                f.write(json.dumps([c.action_id, c.attempt, c.total, c.at]) + "\n")
        os.replace(fresh, self.path)
        self.lines = len(entries)


def clear_unindexed(spill_dir: Path) -> None:
    """Remove spill files without an index (a release before indexes were kept wrote
    them): they cannot be read."""
    if not spill_dir.is_dir():
        return
    for action_dir in spill_dir.iterdir():
        # Never through a symlink: it would delete files in whatever directory it names.
        if action_dir.is_symlink() or not action_dir.is_dir():
            continue
        for path in action_dir.glob("*.log"):
            if path.stem.isdigit() and not path.with_suffix(".idx").exists():
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # something else lives there; not ours to remove
            action_dir.rmdir()
