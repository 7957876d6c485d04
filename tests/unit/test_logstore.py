"""LogStore: ordering, idempotence, close, spilling and reads from any offset."""

from __future__ import annotations

import errno
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mesh import logfiles
from mesh.logstore import ATTEMPT_OVERHEAD, LogStore, text_cost
from mesh.schema import ActionId, LogBatch, LogRead, Stream

A = "act-1"


def batch(offset: int, lines: list[str], stream: Stream = "stdout", action_id: str = A,
          attempt: int = 1) -> LogBatch:
    return LogBatch.of(ActionId(action_id), attempt, stream, offset, lines)


def lines_of(read: LogRead) -> list[tuple[int, Stream, str]]:
    """Flatten a read into (offset, stream, text) per line."""
    return [(b.offset + i, b.stream, text) for b in read.batches for i, text in enumerate(b.lines)]


def read_all(store: LogStore, action_id: str = A, attempt: int = 1, window: int = 7,
             ) -> list[tuple[int, Stream, str]]:
    out: list[tuple[int, Stream, str]] = []
    offset = 0
    while True:
        read = store.read(action_id, attempt, offset, window)
        out += lines_of(read)
        if not read.batches:
            return out
        offset = read.next_offset


# Three batches of one attempt: stdout 0-2, stderr 3-4, stdout 5-7.
SAMPLE = [
    batch(0, ["o0", "o1", "o2"]),
    batch(3, ["e3", "e4"], "stderr"),
    batch(5, ["o5", "o6", "o7"]),
]
EXPECTED = [(0, "stdout", "o0"), (1, "stdout", "o1"), (2, "stdout", "o2"),
            (3, "stderr", "e3"), (4, "stderr", "e4"),
            (5, "stdout", "o5"), (6, "stdout", "o6"), (7, "stdout", "o7")]


@pytest.fixture(params=["memory", "spilled"])
def sample_store(request: pytest.FixtureRequest, tmp_path: Path) -> LogStore:
    """The sample, held in memory or (budget 0) spilled to its file as soon as it arrives."""
    store = LogStore(tmp_path, 1 << 20 if request.param == "memory" else 0)
    for b in SAMPLE:
        store.append(b)
    if request.param == "spilled":
        assert store.stats()["memory_bytes"] == 0
        assert (tmp_path / A / "1.log").is_file()
    return store


@pytest.mark.parametrize(
    ("offset", "max_lines", "first", "last", "next_offset", "streams"),
    [
        (0, 100, 0, 8, 8, ["stdout", "stderr", "stdout"]),
        (1, 100, 1, 8, 8, ["stdout", "stderr", "stdout"]),
        (1, 1, 1, 2, 2, ["stdout"]),
        (4, 2, 4, 5, 5, ["stderr"]),
        (3, 2, 3, 5, 5, ["stderr"]),
        (0, 3, 0, 3, 3, ["stdout"]),
        (7, 100, 7, 8, 8, ["stdout"]),
        (8, 100, 8, 8, 8, []),
        (12, 100, 12, 12, 12, []),
        (2, 0, 2, 2, 2, []),
    ],
    ids=["from 0", "from the middle of a batch", "one line inside a batch",
         "window ends at a batch's edge, not inside the next", "window is exactly one batch",
         "max_lines exactly fits the first batch", "last line", "exactly at the end",
         "past the end", "zero lines"],
)
def test_read_windows(sample_store: LogStore, offset: int, max_lines: int, first: int,
                      last: int, next_offset: int, streams: list[str]) -> None:
    read = sample_store.read(A, 1, offset, max_lines)
    assert lines_of(read) == EXPECTED[first:last]
    assert [b.stream for b in read.batches] == streams
    assert read.next_offset == next_offset
    assert not read.closed


def test_interleaved_streams_keep_their_tags(sample_store: LogStore) -> None:
    assert read_all(sample_store, window=2) == EXPECTED


def test_unknown_attempt_reads_empty_and_open(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 1 << 20)
    store.append(batch(0, ["x"]))
    for action_id, attempt in [(A, 2), ("other", 1)]:
        read = store.read(action_id, attempt, 5, 10)
        assert (read.batches, read.next_offset, read.closed) == ([], 5, False)


@pytest.mark.parametrize(
    "order",
    [[0, 2, 1], [2, 1, 0], [1, 2, 0], [2, 0, 1]],
    ids=["last ahead of middle", "reversed", "first comes last", "last first"],
)
def test_batches_ahead_of_a_gap_wait_for_it(tmp_path: Path, order: list[int]) -> None:
    store = LogStore(tmp_path, 1 << 20)
    for i in order:
        store.append(SAMPLE[i])
    assert read_all(store) == EXPECTED
    assert store.stats()["held_bytes"] == 0


def test_a_held_batch_is_invisible_until_the_gap_fills(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 1 << 20)
    store.append(SAMPLE[0])
    store.append(SAMPLE[2])
    read = store.read(A, 1, 0, 100)
    assert read.next_offset == 3
    assert store.read(A, 1, 3, 100).batches == []
    store.append(SAMPLE[1])
    assert lines_of(store.read(A, 1, 3, 100)) == EXPECTED[3:]


@pytest.mark.parametrize(
    "pushes",
    [
        [SAMPLE[0], SAMPLE[0], SAMPLE[1], SAMPLE[2]],
        [SAMPLE[0], SAMPLE[1], SAMPLE[2], SAMPLE[1], SAMPLE[0]],
        [SAMPLE[0], SAMPLE[2], SAMPLE[2], SAMPLE[1]],
        [SAMPLE[0], batch(0, ["o0", "o1", "o2", "e3"]), SAMPLE[1], SAMPLE[2]],
        [SAMPLE[0], batch(1, ["o1", "o2", "e3", "e4"], "stderr"), SAMPLE[2]],
    ],
    ids=["duplicate first batch", "whole log pushed again", "duplicate held batch",
         "overlapping push only adds its new line", "overlap starting inside a batch"],
)
def test_duplicates_are_ignored(tmp_path: Path, pushes: list[LogBatch]) -> None:
    store = LogStore(tmp_path, 1 << 20)
    for b in pushes:
        store.append(b)
    got = read_all(store)
    assert [(o, t) for o, _, t in got] == [(o, t) for o, _, t in EXPECTED]


@pytest.mark.parametrize(
    ("pushed", "total", "closed_at"),
    [
        ([0, 1, 2], 8, 8),
        ([0, 1], 8, None),
        ([0, 2], 8, None),
        ([], 0, 0),
        ([0], 3, 3),
    ],
    ids=["all lines present", "last batch missing", "middle batch missing",
         "attempt that printed nothing", "closed exactly at a batch end"],
)
def test_closed_only_once_every_line_is_present(tmp_path: Path, pushed: list[int], total: int,
                                                closed_at: int | None) -> None:
    store = LogStore(tmp_path, 1 << 20)
    for i in pushed:
        store.append(SAMPLE[i])
    store.close(A, 1, total)
    end = store.read(A, 1, 0, 100).next_offset
    read = store.read(A, 1, end, 100)
    assert read.closed is (closed_at is not None)
    assert read.next_offset == (closed_at if closed_at is not None else end)
    assert not store.read(A, 1, 0, 1).closed or total == 0


def test_close_before_the_last_lines_arrive(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 1 << 20)
    store.append(SAMPLE[0])
    store.close(A, 1, 8)
    assert not store.read(A, 1, 3, 100).closed
    store.append(SAMPLE[2])
    store.append(SAMPLE[1])
    assert read_all(store) == EXPECTED
    assert store.read(A, 1, 8, 100).closed
    # Reading the last lines already says closed: a follower needs no extra round trip.
    assert store.read(A, 1, 5, 100).closed
    assert not store.read(A, 1, 4, 1).closed


def test_lines_past_the_closed_total_are_dropped(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 1 << 20)
    store.close(A, 1, 4)
    for b in SAMPLE:
        store.append(b)
    assert read_all(store) == EXPECTED[:4]
    assert store.read(A, 1, 4, 10).closed


def test_attempts_are_listed_in_order(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 1 << 20)
    store.append(batch(0, ["x"], attempt=3))
    store.append(batch(0, ["x"], attempt=1))
    store.close(A, 2, 0)
    assert store.attempts(A) == [1, 2, 3]
    assert store.attempts("nobody") == []
    assert store.stats()["attempts"] == 3


def numbered(n: int, start: int = 0) -> list[str]:
    return [f"line {i:06d} " + "x" * (i % 50) for i in range(start, start + n)]


def push_numbered(store: LogStore, total: int, size: int, action_id: str = A,
                  attempt: int = 1) -> Iterator[None]:
    """Push `total` lines in batches of `size`, alternating streams; yield after each."""
    for k, start in enumerate(range(0, total, size)):
        stream: Stream = "stderr" if k % 3 == 2 else "stdout"
        store.append(batch(start, numbered(min(size, total - start), start), stream,
                           action_id, attempt))
        yield


def test_tiny_budget_reads_back_like_memory(tmp_path: Path) -> None:
    budget = 4096
    small = LogStore(tmp_path / "small", budget)
    big = LogStore(tmp_path / "big", 1 << 30)
    for _ in push_numbered(small, 5000, 37):
        stats = small.stats()
        assert stats["memory_bytes"] + stats["held_bytes"] <= budget, stats
    for _ in push_numbered(big, 5000, 37):
        pass
    assert small.stats()["spilled_bytes"] > 0 and big.stats()["spilled_bytes"] == 0
    for offset, max_lines in [(0, 10_000), (0, 1), (36, 2), (37, 37), (1234, 500), (4999, 9),
                              (5000, 3), (4000, 10_000)]:
        # Spilled runs and chunks in memory are cut differently, and a window ends at the
        # edge of either: each read is a prefix of the lines from its offset.
        whole = lines_of(big.read(A, 1, offset, 10_000))
        for store in (small, big):
            read = store.read(A, 1, offset, max_lines)
            got = lines_of(read)
            assert got == whole[:len(got)] and (got or not whole), (offset, max_lines)
            assert len(got) <= max_lines and read.next_offset == offset + len(got)
    assert read_all(small, window=333) == read_all(big, window=333)


def test_eviction_takes_the_oldest_lines_first(tmp_path: Path) -> None:
    one = text_cost(batch(0, numbered(20)).text)  # room for one chunk and a half
    store = LogStore(tmp_path, one + one // 2 + 2 * ATTEMPT_OVERHEAD)
    store.append(batch(0, numbered(20), action_id="old"))
    store.append(batch(0, numbered(20), action_id="new"))
    assert (tmp_path / "old" / "1.log").is_file()
    assert not (tmp_path / "new").exists()


def test_each_attempts_own_bookkeeping_counts_against_the_budget(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 1 << 20)
    store.append(batch(0, numbered(20), action_id="lines"))
    assert not (tmp_path / "lines").exists()
    for n in range((1 << 20) // ATTEMPT_OVERHEAD):  # closed, empty, yet not free
        store.close(f"empty{n}", 1, 0)
    assert (tmp_path / "lines" / "1.log").is_file(), "the budget ignored the attempts"
    assert store.stats()["attempt_bytes"] >= (1 << 20) - ATTEMPT_OVERHEAD
    store.expire(before=float("inf"))
    assert store.stats()["attempt_bytes"] == ATTEMPT_OVERHEAD, "only the open one is left"


@pytest.mark.parametrize("budget", [1 << 20, 0])
def test_one_read_is_capped_in_size_and_a_longer_line_still_comes_alone(
        tmp_path: Path, budget: int) -> None:
    store = LogStore(tmp_path, budget)
    big = "x" * 1000
    store.append(batch(0, [big] * 30))
    store.append(batch(30, ["y" * 5000, "z"], stream="stderr"))
    first = store.read(A, 1, 0, 1000, max_chars=10_500)
    assert [len(lines_of(first))] == [10] and first.next_offset == 10
    rest = store.read(A, 1, 10, 1000, max_chars=20_100)
    assert rest.next_offset == 30, "the next read goes on where the cap ended the last"
    alone = store.read(A, 1, 30, 1000, max_chars=100)
    assert [line for _, _, line in lines_of(alone)] == ["y" * 5000], "a long line comes alone"
    assert store.read(A, 1, 31, 1000, max_chars=100).next_offset == 32


def test_forget_drops_memory_and_files(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 4096)
    for _ in push_numbered(store, 1000, 50, attempt=1):
        pass
    for _ in push_numbered(store, 1000, 50, attempt=2):
        pass
    for _ in push_numbered(store, 100, 50, action_id="keep"):
        pass
    assert (tmp_path / A / "1.log").is_file()
    store.forget(A)
    assert not (tmp_path / A).exists()
    assert store.attempts(A) == []
    assert store.read(A, 1, 0, 10).batches == []
    assert len(read_all(store, action_id="keep")) == 100
    # Only "keep" is left: its 100 lines, in memory or spilled.
    stats = store.stats()
    assert stats["attempts"] == 1
    kept_file = tmp_path / "keep" / "1.log"
    assert stats["spilled_bytes"] == (kept_file.stat().st_size if kept_file.exists() else 0)


def test_a_batch_whose_count_is_not_its_newlines_is_refused() -> None:
    # Else a spilled log's offsets would shift from that line on.
    with pytest.raises(ValidationError, match="text must be 2 line"):
        batch(0, ["a\nb", "c"])
    with pytest.raises(ValidationError, match="text must be 1 line"):
        LogBatch(action_id=ActionId(A), attempt=1, stream="stdout", offset=0, text="no end",
                 count=1)


def test_odd_action_ids_stay_inside_the_spill_dir(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    store = LogStore(spill, 0)
    store.append(batch(0, ["x"], action_id="../escape"))
    assert [t for _, _, t in read_all(store, action_id="../escape")] == ["x"]
    assert [p.parent.parent for p in spill.glob("*/*.log")] == [spill]
    store.forget("../escape")
    assert [p.name for p in spill.iterdir()] == [logfiles.JOURNAL], "only the journal left"


def test_a_gap_that_never_fills_is_skipped_to_bound_memory(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 1 << 20, hold_limit=1000)
    store.append(batch(0, ["a"]))
    store.append(batch(10, ["b"] * 5))
    assert store.read(A, 1, 1, 100).batches == []
    store.append(batch(15, ["c" * 20] * 50))  # over the hold limit with the five before
    assert store.stats()["skipped_lines"] == 9
    assert store.stats()["held_bytes"] == 0
    read = store.read(A, 1, 1, 100)
    assert read.batches[0].offset == 10 and read.next_offset == 65
    # A late line for the skipped range is now a duplicate.
    store.append(batch(1, ["late"]))
    assert store.read(A, 1, 1, 100) == read


@pytest.mark.parametrize(
    ("pushed", "total", "skipped", "texts"),
    [
        ([0, 2], 8, 2, ["o0", "o1", "o2", "o5", "o6", "o7"]),
        ([0, 1], 8, 3, ["o0", "o1", "o2", "e3", "e4"]),
        ([1], 8, 6, ["e3", "e4"]),
        ([], 4, 4, []),
        ([0, 1, 2], 8, 0, [t for _, _, t in EXPECTED]),
    ],
    ids=["middle batch lost", "last batch lost", "first and last lost", "nothing arrived",
         "nothing missing"],
)
def test_skipping_the_gaps_of_a_closed_attempt_lets_it_read_to_the_end(
        tmp_path: Path, pushed: list[int], total: int, skipped: int, texts: list[str]) -> None:
    store = LogStore(tmp_path, 1 << 20)
    for i in pushed:
        store.append(SAMPLE[i])
    store.close(A, 1, total)
    assert store.skip_gaps(A, 1) == skipped
    assert [t for _, _, t in read_all(store, window=2)] == texts
    end = store.read(A, 1, 0, 100)
    assert (end.next_offset, end.closed) == (total, True)
    assert store.stats()["skipped_lines"] == skipped
    assert store.skip_gaps(A, 1) == 0


def test_gaps_of_an_open_attempt_are_kept(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 1 << 20)
    store.append(SAMPLE[2])
    assert store.skip_gaps(A, 1) == 0
    assert store.skip_gaps(A, 9) == 0
    store.append(SAMPLE[0])
    store.append(SAMPLE[1])
    assert read_all(store) == EXPECTED


def test_a_new_store_clears_spill_files_without_an_index(tmp_path: Path) -> None:
    (tmp_path / "old-release").mkdir()
    (tmp_path / "old-release" / "1.log").write_text("x\n")  # no index: unreadable
    (tmp_path / "notes.txt").write_text("not ours")
    LogStore(tmp_path, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_restarted_store_serves_every_spilled_line_and_says_where_lines_were_lost(
        tmp_path: Path) -> None:
    first = LogStore(tmp_path, 1 << 20)
    for _ in push_numbered(first, 300, 40, action_id="done"):
        pass
    first.close("done", 1, 300)  # a finished log goes to disk whole
    first.close("quiet", 1, 0)
    first.append(batch(0, numbered(10), action_id="cut"))
    first.close("cut", 1, 25)  # 15 lines never came before the relay died
    first.append(batch(0, numbered(50), action_id="running"))  # only in memory
    del first  # killed: nothing more is written

    again = LogStore(tmp_path, 1 << 20)
    done = read_all(again, "done")
    assert [text for _, _, text in done] == numbered(300)
    assert again.read("quiet", 1, 0, 10).closed
    cut = again.read("cut", 1, 0, 100)
    assert [line for b in cut.batches for line in b.lines] == numbered(10)
    assert cut.closed and cut.gaps == [(10, 25)], "the lost tail is named"
    assert again.read("running", 1, 0, 100).batches == [], "memory dies with the relay"
    again.append(batch(50, ["later"], action_id="running"))  # the agent goes on
    again.close("running", 1, 51)
    again.skip_gaps("running", 1)
    late = again.read("running", 1, 0, 100)
    assert late.gaps == [(0, 50)] and late.closed


def test_over_its_disk_budget_the_store_drops_the_logs_that_finished_first(
        tmp_path: Path) -> None:
    now = [0.0]
    store = LogStore(tmp_path, 0, clock=lambda: now[0], disk_budget=30_000)
    for n in range(5):
        now[0] = n
        store.append(batch(0, ["x" * 99] * 100, action_id=f"a{n}"))  # 10 kB each
        store.close(f"a{n}", 1, 100)
    assert store.stats()["spilled_bytes"] <= 30_000
    gone = store.read("a0", 1, 0, 10)
    assert gone.closed and gone.dropped.startswith("dropped"), "a dropped log says so"
    assert len(read_all(store, "a4")) == 100, "the latest is kept"
    assert not (tmp_path / "a0").exists()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=25),
    streams=st.lists(st.sampled_from(["stdout", "stderr"]), min_size=25, max_size=25),
    budget=st.sampled_from([0, 300, 2000, 1 << 20]),
    swaps=st.lists(st.integers(min_value=0, max_value=24), max_size=6),
    repeats=st.lists(st.integers(min_value=0, max_value=24), max_size=4),
    windows=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=10),
    start=st.integers(min_value=0, max_value=500),
    close_first=st.booleans(),
)
def test_any_batching_and_any_read_windows_reproduce_the_lines(
        sizes: list[int], streams: list[Stream], budget: int, swaps: list[int],
        repeats: list[int], windows: list[int], start: int, close_first: bool) -> None:
    original = numbered(sum(sizes))
    pushes: list[LogBatch] = []
    offset = 0
    for i, size in enumerate(sizes):
        pushes.append(batch(offset, original[offset : offset + size], streams[i]))
        offset += size
    # Pushes in flight can land swapped with their neighbour, and retries land twice.
    for i in swaps:
        if i + 1 < len(pushes):
            pushes[i], pushes[i + 1] = pushes[i + 1], pushes[i]
    pushes += [pushes[i] for i in repeats if i < len(pushes)]
    want_streams = [streams[i] for i, size in enumerate(sizes) for _ in range(size)]
    with tempfile.TemporaryDirectory() as spill:
        store = LogStore(Path(spill), budget)
        if close_first:
            store.close(A, 1, len(original))
        for b in pushes:
            store.append(b)
            stats = store.stats()
            assert stats["memory_bytes"] <= budget
        if not close_first:
            store.close(A, 1, len(original))
        got: list[tuple[int, Stream, str]] = []
        offset = min(start, len(original))
        k = 0
        while True:
            read = store.read(A, 1, offset, windows[k % len(windows)])
            k += 1
            got += lines_of(read)
            assert read.next_offset == offset + sum(len(b.lines) for b in read.batches)
            offset = read.next_offset
            if read.closed:
                break
            assert read.batches, "an open read with no lines before the end"
        first = min(start, len(original))
        assert [t for _, _, t in got] == original[first:]
        assert [o for o, _, _ in got] == list(range(first, len(original)))
        assert [s for _, s, _ in got] == want_streams[first:]
        assert store.stats()["skipped_lines"] == 0


@pytest.fixture
def full(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The spill disk is full while `full[0]` is true (it starts full)."""
    real = logfiles.append_run
    state = [True]

    def append_run(*args: Any) -> Any:
        if state[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(logfiles, "append_run", append_run)
    return state


def test_a_finished_log_the_full_disk_kept_in_memory_goes_to_disk_when_it_can(
        tmp_path: Path, full: list[bool]) -> None:
    store = LogStore(tmp_path, 1 << 20)
    store.append(batch(0, numbered(5), action_id="kept"))
    store.close("kept", 1, 5)
    assert store.stats()["memory_bytes"] > 0, "held in memory while the disk is full"
    full[0] = False
    store.append(batch(0, ["next"], action_id="other"))  # any append tries again
    assert (tmp_path / "kept" / "1.log").is_file(), "still only in memory"
    again = LogStore(tmp_path, 1 << 20)
    assert [t for _, _, t in read_all(again, "kept")] == numbered(5)
    assert again.read("kept", 1, 0, 10).closed


def test_a_store_whose_disk_refuses_spills_says_when_it_is_overfull(
        tmp_path: Path, full: list[bool]) -> None:
    store = LogStore(tmp_path, 1 << 20)
    pushed = 0
    while not store.overfull:  # the relay makes appends wait from here on
        store.append(batch(pushed, ["x" * 1000] * 100))
        pushed += 100
        assert pushed < 10_000, "memory grew past twice its budget without saying so"
    assert store.stats()["memory_bytes"] > 2 << 20
    full[0] = False
    store.retry_spill()
    assert not store.overfull and store.stats()["memory_bytes"] <= 1 << 20
    assert len(read_all(store, window=1000)) == pushed


def test_the_journal_of_closes_is_compacted_as_retention_forgets(tmp_path: Path) -> None:
    now = [0.0]
    store = LogStore(tmp_path, 1 << 20, clock=lambda: now[0])
    for n in range(3000):
        now[0] = float(n)
        store.close(f"q{n}", 1, 0)
    journal = tmp_path / logfiles.JOURNAL
    assert len(journal.read_text().splitlines()) == 3000
    store.expire(before=2500.0)  # 500 left
    assert len(journal.read_text().splitlines()) == 500, "not compacted"
    again = LogStore(tmp_path, 1 << 20)
    assert again.read("q2999", 1, 0, 10).closed and not again.read("q0", 1, 0, 10).closed


def test_a_restarted_store_keeps_what_was_deleted_deleted_and_cuts_off_torn_records(
        tmp_path: Path) -> None:
    first = LogStore(tmp_path, 0)
    for name in ("gone", "kept"):
        first.append(batch(0, ["x", "y"], action_id=name))
        first.close(name, 1, 2)
    first.forget("gone")
    first.append(batch(0, ["a"], action_id="torn"))
    with open(tmp_path / "torn" / "1.idx", "a") as index:
        index.write("1 o 99")  # a record cut short by a crash
    again = LogStore(tmp_path, 0)
    assert again.attempts("gone") == [], "a deleted log came back"
    assert [t for _, _, t in read_all(again, "kept")] == ["x", "y"]
    again.append(batch(1, ["b"], action_id="torn"))
    third = LogStore(tmp_path, 0)
    assert [t for _, _, t in read_all(third, "torn")] == ["a", "b"], "the torn record spread"


def test_an_attempt_that_never_closes_is_forgotten_once_idle_long_enough(
        tmp_path: Path) -> None:
    now = [0.0]
    store = LogStore(tmp_path, 1 << 20, clock=lambda: now[0])
    store.append(batch(0, ["x"], action_id="orphan"))  # its agent died with it
    store.append(batch(0, ["x"], action_id="busy"))
    now[0] = 100.0
    store.append(batch(1, ["y"], action_id="busy"))
    assert store.expire(before=150.0, idle_before=50.0) == 1
    assert store.attempts("orphan") == [] and store.attempts("busy") == [1]


def test_an_attempt_that_never_closes_goes_idle_across_relay_restarts(tmp_path: Path) -> None:
    # Each restart took the logs it found as heard of just then: with the relay restarted
    # more often than the idle time, an orphan's log was never forgotten.
    day = 86400.0
    now = [time.time()]  # wall time, as the spilled files' own times are
    store = LogStore(tmp_path, 0, clock=lambda: now[0])  # no memory: spilled at once
    store.append(batch(0, ["x"], action_id="orphan"))  # its agent died with it
    for _ in range(3):
        now[0] += 7 * day
        store = LogStore(tmp_path, 0, clock=lambda: now[0])  # the head restarts weekly
        store.append(batch(0, ["y"], action_id=f"week-{now[0]:.0f}"))
    assert store.expire(before=now[0] - 7 * day, idle_before=now[0] - 14 * day) >= 1
    assert store.attempts("orphan") == []


@pytest.mark.parametrize("memory", [256 << 20, 0], ids=["held-in-memory", "spilled"])
def test_lines_pushed_after_a_relay_restart_are_read_while_the_attempt_runs(
        tmp_path: Path, memory: int) -> None:
    before = LogStore(tmp_path, memory)
    assert before.append(batch(0, ["l0", "l1", "l2"])) is None  # taken, then the relay died
    after = LogStore(tmp_path, memory)
    waits_at = after.append(batch(3, ["l3", "l4"]))  # the running attempt pushes on
    after.append(batch(5, ["l5"]))
    if memory:  # nothing reached the disk: the restarted relay waits for lines 0-2
        assert waits_at == 0 and lines_of(after.read(A, 1, 3, 10)) == []
        assert after.give_up_gap(A, 1, waits_at) == 3  # a grace later, as the relay does
    read = after.read(A, 1, 0, 10)
    assert [t for _, _, t in lines_of(read)] == (["l3", "l4", "l5"] if memory
                                                 else ["l0", "l1", "l2", "l3", "l4", "l5"])
    assert after.give_up_gap(A, 1, 0) == 0, "only while it still waits there"


def test_a_log_the_disk_budget_drops_while_it_is_saved_is_simply_gone(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 1 << 20, disk_budget=100)
    store.append(batch(0, ["x" * 200], action_id="big"))
    store.close("big", 1, 1)  # its own flush puts the disk over budget: it goes
    assert store.read("big", 1, 0, 10).dropped
    store.append(batch(0, ["again"], action_id="big", attempt=2))  # a retry revives it
    assert store.read("big", 2, 0, 10).batches and not store.read("big", 2, 0, 10).dropped


def test_compacting_keeps_the_closes_of_an_action_still_running(tmp_path: Path) -> None:
    store = LogStore(tmp_path, 0)
    store.append(batch(0, ["first try"], action_id="retried"))
    store.close("retried", 1, 1)
    store.append(batch(0, ["second"], action_id="retried", attempt=2))  # still running
    for n in range(1200):
        store.close(f"q{n}", 1, 0)
    store.expire(before=float("inf"))  # the q's go, and the journal is rewritten
    assert LogStore(tmp_path, 0).read("retried", 1, 0, 10).closed
