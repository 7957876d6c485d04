"""Line splitting and log batching, without processes."""

from __future__ import annotations

import asyncio
import random

import pytest

from agent.logship import LineSplitter, LogShipper, masks
from mesh.schema import ActionId, LogBatch
from mesh.waiting import async_wait_until
from tests.agent_support import RecordingSinks

# A hang fails within 30 s instead of stalling the run.
pytestmark = pytest.mark.timeout(30)


def split_all(chunks: list[bytes], max_line_bytes: int = 1 << 20) -> list[str]:
    splitter = LineSplitter(max_line_bytes)
    text = "".join(map(splitter.feed, chunks)) + splitter.finish()
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def ended(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def test_lines_split_across_chunks_are_joined() -> None:
    assert split_all([b"alpha\nbe", b"ta\ngam", b"ma\n"]) == ["alpha", "beta", "gamma"]


def test_any_chunking_gives_the_same_lines() -> None:
    rng = random.Random(1234)
    expected = [f"line {i} {'é' * rng.randrange(5)}" for i in range(300)] + ["end"]
    data = "\r\n".join(expected).encode()
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randrange(1, 40)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        # Cuts land inside multi-byte characters too; whole lines are decoded intact.
        assert split_all(chunks) == expected


def test_empty_lines_are_kept_and_a_missing_final_newline_is_not_a_loss() -> None:
    assert split_all([b"\n\nx\n", b"", b"tail"]) == ["", "", "x", "tail"]
    assert split_all([b"done\n"]) == ["done"]


def test_only_a_trailing_carriage_return_is_stripped() -> None:
    assert split_all([b"a\r\nb\rc\n\r\n"]) == ["a", "b\rc", ""]


def test_a_line_without_end_is_cut_at_the_cap() -> None:
    assert split_all([b"x" * 1500, b"x" * 1500], max_line_bytes=2048) == ["x" * 3000]
    lines = split_all([b"x" * 1500] * 3, max_line_bytes=2048)
    assert lines == ["x" * 3000, "x" * 1500]


def test_a_secret_a_cut_falls_in_is_masked_whole() -> None:
    # A progress bar (carriage returns, no newline), then a URL holding the token.
    secret = "ghp_0123456789abcdefghij"
    splitter = LineSplitter(2048, masked=masks([secret]))
    data = b"\r" * 2030 + f"https://x:{secret}@host/".encode()
    text = "".join(splitter.feed(data[i:i + 700]) for i in range(0, len(data), 700))
    text += splitter.finish()
    assert "ghp_" not in text and "ghij" not in text and "x:***@host/" in text.replace("\n", "")


def test_a_cut_short_line_keeps_its_characters_whole() -> None:
    data = "é€".encode() * 1000  # 2 and 3 bytes: reads end inside characters
    lines = split_all([data[i:i + 1001] for i in range(0, len(data), 1001)],
                      max_line_bytes=2048)
    assert len(lines) > 1 and "".join(lines) == "é€" * 1000


def test_invalid_utf8_is_replaced() -> None:
    assert split_all([b"ok\xff\xfe\n"]) == ["ok\ufffd\ufffd"]


async def test_batches_are_one_stream_with_contiguous_offsets() -> None:
    sinks = RecordingSinks()
    shipper = LogShipper(sinks, ActionId("x"), 2, flush_bytes=1 << 20, flush_interval=60)
    shipper.add("stdout", ended(["a", "b"]))
    shipper.add("stderr", ended(["c"]))
    shipper.add("stdout", ended(["d"]))
    assert await shipper.finish() == 4
    got = [(b.stream, b.offset, b.lines, b.attempt) for b in sinks.batches]
    assert got == [("stdout", 0, ["a", "b"], 2), ("stderr", 2, ["c"], 2),
                   ("stdout", 3, ["d"], 2)]
    assert sinks.closed == {("x", 2): 4}


async def test_a_batch_is_flushed_at_the_byte_threshold() -> None:
    sinks = RecordingSinks()
    shipper = LogShipper(sinks, ActionId("x"), 1, flush_bytes=1024, flush_interval=60)
    shipper.add("stdout", ended(["y" * 99] * 10))  # 1000 bytes with newlines: below
    await asyncio.sleep(0)
    assert sinks.batches == []
    shipper.add("stdout", ended(["y" * 99]))  # 1100: at or over
    await async_wait_until(lambda: len(sinks.batches), lambda n: n == 1)
    assert len(sinks.batches[0].lines) == 11
    await shipper.finish()


async def test_a_batch_is_flushed_after_the_interval_without_more_lines() -> None:
    sinks = RecordingSinks()
    shipper = LogShipper(sinks, ActionId("x"), 1, flush_bytes=1 << 20, flush_interval=0.05)
    shipper.add("stdout", ended(["lonely"]))
    batches = await async_wait_until(lambda: sinks.batches, lambda b: len(b) == 1)
    assert batches[0].lines == ["lonely"]
    await shipper.finish()


async def test_too_many_pushes_in_flight_signal_congestion_until_they_drain() -> None:
    sinks = RecordingSinks(push_delay=0.05)
    signals: list[bool] = []
    shipper = LogShipper(sinks, ActionId("x"), 1, flush_bytes=1024, flush_interval=60,
                         max_in_flight=4, on_congestion=signals.append)
    for _ in range(5):
        shipper.add("stdout", ended(["z" * 2000]))
    assert shipper.congested and signals == [True]
    await async_wait_until(lambda: signals, lambda s: s == [True, False])
    await shipper.finish()
    assert [b.offset for b in sinks.batches] == [0, 1, 2, 3, 4]


async def test_a_failing_push_is_counted_and_the_log_still_closes() -> None:
    class Broken(RecordingSinks):
        async def push(self, batch: object) -> None:
            raise ConnectionError("relay gone")

    sinks = Broken()
    shipper = LogShipper(sinks, ActionId("x"), 1, flush_bytes=1024, flush_interval=60)
    shipper.add("stdout", ended(["a"]))
    assert await shipper.finish() == 1
    assert shipper.failed_pushes == 1
    assert sinks.closed == {("x", 1): 1}


async def test_secrets_are_masked_line_by_line_and_line_counts_kept() -> None:
    sinks = RecordingSinks()
    shipper = LogShipper(sinks, ActionId("a1"), 1, 1 << 20, 10.0,
                         secrets=["tok", "tok-longer", "first line\nsecond line", ""])
    shipper.add("stdout", ended(["using tok-longer and tok", "first line", "x second line y",
                                 "nothing here"]))
    await shipper.finish()
    assert [t for _, _, t in sinks.lines("a1")] == [
        "using *** and ***", "***", "x *** y", "nothing here"]
    assert sinks.closed[("a1", 1)] == 4


class StuckRelay:
    """A relay that takes no line (overfull on a full disk, or not answering), whose close
    goes through."""

    def __init__(self) -> None:
        self.closed: list[tuple[ActionId, int, int]] = []

    async def push(self, batch: LogBatch) -> None:
        await asyncio.Event().wait()

    async def close(self, action_id: ActionId, attempt: int, total_lines: int) -> None:
        self.closed.append((action_id, attempt, total_lines))


async def test_an_end_does_not_wait_for_ever_on_a_relay_that_takes_nothing() -> None:
    relay = StuckRelay()
    shipper = LogShipper(relay, ActionId("a1"), 1, 1 << 20, 10.0)
    shipper.add("stdout", "one\ntwo\n")
    assert await asyncio.wait_for(shipper.finish(wait=0.2), 10) == 2
    assert relay.closed == [("a1", 1, 2)], "closed saying how many lines there were"
