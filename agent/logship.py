"""An attempt's output on its way out: bytes cut into lines, lines batched and pushed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from agent.sinks import LogSink
from mesh.schema import SECRET_MASK, ActionId, LogBatch, Stream

log = logging.getLogger(__name__)

# A "line" that never ends (binary output, a progress bar without newlines) is cut here so
# the carried remainder cannot grow without bound.
MAX_LINE_BYTES = 1024 * 1024
# Longest an attempt's end waits for its log to be taken (a relay that is overfull or does
# not answer), and at least how long the close may take after it.
FINISH_WAIT = 30.0
CLOSE_WAIT = 5.0


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _ended(text: str) -> str:
    """Lines of text (each ended by a newline) with a carriage return before a newline dropped."""
    return text.replace("\r\n", "\n") if "\r" in text else text


class LineSplitter:
    """Cuts one stream's bytes into lines, carrying the unfinished last line to the next chunk.

    A chunk is decoded once up to its last newline (a newline byte never occurs inside a
    UTF-8 sequence, so the cut cannot split a character) and handed on as one string of
    newline-ended lines: it is never split into a string per line on the agent.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES, masked: Collection[str] = ()
                 ) -> None:
        self.max_line_bytes = max_line_bytes
        # A line cut short is masked here, before the cut: the shipper masks each piece, and
        # a secret the cut falls in would reach it as two harmless-looking halves.
        self._masks = [(m.encode(), SECRET_MASK.encode()) for m in masked]
        self._keep = max((len(m) for m, _ in self._masks), default=1) - 1
        self._carry = b""

    def feed(self, chunk: bytes) -> str:
        """The whole lines the chunk completes, each ended by a newline ("" if none)."""
        data = self._carry + chunk if self._carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._carry = data
            if len(data) >= self.max_line_bytes:
                return self._cut_short(data)
            return ""
        self._carry = data[cut + 1 :]
        return _ended(_decode(data[: cut + 1]))

    def _cut_short(self, data: bytes) -> str:
        """A line too long to carry on, handed on but for its last bytes, which a secret
        may continue past (masked first) and which are cut at a character's start."""
        for secret, mask in self._masks:
            data = data.replace(secret, mask)
        at = _character_start(data, max(len(data) - self._keep, len(data) // 2))
        self._carry = data[at:]
        return _ended(_decode(data[:at]) + "\n")

    def finish(self) -> str:
        """The stream ended: a last line without a newline is still a line."""
        data, self._carry = self._carry, b""
        return _ended(_decode(data) + "\n") if data else ""


def _character_start(data: bytes, at: int) -> int:
    """`at`, or the start of the UTF-8 character that a cut there would split (one that
    may go on in bytes not read yet, when `at` is the end)."""
    lead = at - 1
    while lead > 0 and at - lead < 4 and data[lead] & 0xC0 == 0x80:
        lead -= 1
    first = data[lead]
    size = 4 if first >= 0xF0 else 3 if first >= 0xE0 else 2 if first >= 0xC0 else 1
    return lead if lead > 0 and lead + size > at else at


def masks(secrets: Collection[str]) -> list[str]:
    """What is masked in an attempt's output: each secret, line by line (a log is cut into
    lines, and a line count must not change), longest first, so that a secret holding
    another is masked whole."""
    pieces = {line for value in secrets for line in value.splitlines() if line.strip()}
    return sorted(pieces, key=len, reverse=True)


class LogShipper:
    """Numbers an attempt's lines across both streams and pushes them in batches.

    Offsets go to lines in the order they were read. A batch holds consecutive lines of one
    stream, so a switch of stream closes the open batch. A batch is flushed when it holds
    `flush_bytes` or its first line has waited `flush_interval` seconds. Past `max_in_flight`
    unfinished pushes the shipper reports itself congested (the executor stops reading the
    pipes, so the process blocks on write) until pushes drain below half of that: a slow
    relay slows the action rather than filling the agent's memory.
    """

    def __init__(
        self,
        sink: LogSink,
        action_id: ActionId,
        attempt: int,
        flush_bytes: int,
        flush_interval: float,
        max_in_flight: int = 8,
        on_congestion: Callable[[bool], None] | None = None,
        secrets: Collection[str] = (),
    ) -> None:
        self.sink = sink
        self.masks = masks(secrets)
        self.action_id = action_id
        self.attempt = attempt
        self.flush_bytes = flush_bytes
        self.flush_interval = flush_interval
        self.max_in_flight = max_in_flight
        self.on_congestion = on_congestion
        self.next_offset = 0
        self.failed_pushes = 0
        self.congested = False
        self._stream: Stream = "stdout"
        self._pieces: list[str] = []
        self._first = 0
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    def add(self, stream: Stream, text: str) -> None:
        """Take lines just read from `stream`, each ended by a newline; never blocks (see
        `congested`)."""
        if not text:
            return
        for secret in self.masks:
            if secret in text:
                text = text.replace(secret, SECRET_MASK)
        if self._pieces and stream != self._stream:
            self.flush()
        if not self._pieces:
            self._stream = stream
            self._first = self.next_offset
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self.flush)
        self._pieces.append(text)
        self.next_offset += text.count("\n")
        # Characters: bytes for ASCII, close enough for the rest.
        self._bytes += len(text)
        if self._bytes >= self.flush_bytes:
            self.flush()

    def add_line(self, stream: Stream, line: str) -> None:
        """Add one line of the agent's own (a note to whoever reads the log)."""
        self.add(stream, line.replace("\n", " ") + "\n")

    def flush(self) -> None:
        """Push the open batch now, if there is one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pieces:
            return
        text = self._pieces[0] if len(self._pieces) == 1 else "".join(self._pieces)
        # Built from our own splitter's output, so the check of newlines can be skipped.
        batch = LogBatch.model_construct(action_id=self.action_id, attempt=self.attempt,
                                         stream=self._stream, offset=self._first, text=text,
                                         count=self.next_offset - self._first)
        self._pieces = []
        self._bytes = 0
        task = asyncio.get_running_loop().create_task(self.sink.push(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._pushed)
        if not self.congested and len(self._in_flight) > self.max_in_flight:
            self._set_congested(True)

    def _pushed(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed_pushes += 1
            log.warning(
                "log push for %s attempt %d failed: %r",
                self.action_id,
                self.attempt,
                task.exception(),
            )
        if self.congested and len(self._in_flight) <= self.max_in_flight // 2:
            self._set_congested(False)

    def _set_congested(self, congested: bool) -> None:
        self.congested = congested
        if self.on_congestion is not None:
            self.on_congestion(congested)

    async def finish(self, wait: float = FINISH_WAIT) -> int:
        """Flush, wait for every push, then close the attempt's log; return its line count.
        Pushes and the close not done within `wait` seconds are given up: the attempt's end
        must still be reported, and the relay counts lines it never got as lost."""
        self.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self._in_flight and loop.time() < deadline:
            await asyncio.wait(set(self._in_flight), timeout=deadline - loop.time())
        if self._in_flight:
            log.warning("the log of %s attempt %d: %d pushes not taken in %gs, given up",
                        self.action_id, self.attempt, len(self._in_flight), wait)
            for task in list(self._in_flight):
                task.cancel()
        try:
            await asyncio.wait_for(
                self.sink.close(self.action_id, self.attempt, self.next_offset),
                max(deadline - loop.time(), CLOSE_WAIT))
        except Exception as exc:  # the end report must still go out
            log.warning("closing the log of %s attempt %d failed: %r", self.action_id,
                        self.attempt, exc)
        return self.next_offset
