"""The log relay actor on a real Ray instance: following with long-poll, wake-ups, bad input."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import ray

from mesh.errors import InvalidInput
from mesh.relay import LogRelay, relay_options
from mesh.schema import ActionId, LogBatch, LogRead, MeshConfig, Stream
from mesh.waiting import wait_until

pytestmark = pytest.mark.integration

T = TypeVar("T")
POLL_INTERVAL = 0.02
CALL_TIMEOUT = 60.0
NOT_STRINGS: Any = [1, 2]


def line(i: int) -> str:
    return f"{i:07d} " + "x" * (i % 64)


def stream_of(batch_index: int) -> Stream:
    return "stderr" if batch_index % 4 == 3 else "stdout"


@ray.remote(num_cpus=0)
def produce(relay: Any, action_id: str, total: int, size: int, in_flight: int) -> int:
    """Push `total` lines as an agent does: several appends in flight, then close."""
    pending: list[Any] = []
    for k, start in enumerate(range(0, total, size)):
        lines = [line(i) for i in range(start, min(start + size, total))]
        batch = LogBatch.of(ActionId(action_id), 1, stream_of(k), start, lines)
        pending.append(relay.append.remote(batch))
        if len(pending) >= in_flight:
            ray.get(pending.pop(0))
    ray.get(pending)
    ray.get(relay.close.remote(action_id, 1, total))
    return total


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    state_dir: Path = tmp_path_factory.mktemp("relay-state")
    # A session-wide cluster from conftest may already be connected; use it then, and leave
    # it as found. Otherwise start a Ray instance of our own ("local": even if another test
    # or `ray start` runs one on this machine) and shut it down afterwards.
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address="local", num_cpus=1, include_dashboard=False,
                 namespace="actionmesh-test-relay")
    try:
        # The smallest budget MeshConfig allows, so following also reads spilled lines.
        config = MeshConfig(state_dir=str(state_dir), relay_memory_bytes=1 << 20)
        # The production options, under a name of its own so a mesh's relay is not reused.
        options = {**relay_options(), "name": f"test-relay-{uuid.uuid4().hex[:8]}",
                   "namespace": "actionmesh-test-relay"}
        actor = LogRelay.options(**options).remote(config)  # type: ignore[attr-defined]
        try:
            assert ray.get(actor.ping.remote(), timeout=CALL_TIMEOUT)
            yield actor
        finally:
            ray.kill(actor, no_restart=True)
    finally:
        if owns_ray:
            ray.shutdown()


def call(ref: Any) -> Any:
    return ray.get(ref, timeout=CALL_TIMEOUT)


def waiting_readers(relay: Any) -> int:
    return int(call(relay.stats.remote())["waiting_readers"])


def test_a_follower_sees_every_line_in_order(relay: Any) -> None:
    total, size = 100_000, 1000
    producer = produce.remote(relay, "follow-1", total, size, 8)
    got: list[tuple[int, str, str]] = []
    offset, polls = 0, 0
    deadline = time.monotonic() + 120
    while True:
        read: LogRead = call(relay.read.remote("follow-1", 1, offset, 10_000, 5.0))
        polls += 1
        got += [(b.offset + i, b.stream, t) for b in read.batches for i, t in enumerate(b.lines)]
        assert read.next_offset == len(got), f"a read skipped or repeated lines at {offset}"
        offset = read.next_offset
        if read.closed:
            break
        assert time.monotonic() < deadline, f"not closed; last read ended at {offset}"
    assert call(producer) == total
    assert [o for o, _, _ in got] == list(range(total))
    assert [t for _, _, t in got] == [line(i) for i in range(total)]
    assert [s for _, s, _ in got] == [stream_of(i // size) for i in range(total)]
    stats = call(relay.stats.remote())
    assert stats["spilled_bytes"] > 0, stats
    assert stats["memory_bytes"] <= stats["memory_budget"], stats
    assert call(relay.attempts.remote("follow-1")) == [1]


def test_a_parked_read_returns_when_lines_arrive(relay: Any) -> None:
    # Waiting far longer than the call timeout: an answer at all means the append woke it.
    parked = relay.read.remote("wake-1", 1, 0, 100, 10 * CALL_TIMEOUT)
    wait_until(lambda: waiting_readers(relay), lambda n: n == 1, what="the read to park")
    call(relay.append.remote(LogBatch.of(ActionId("wake-1"), 1, "stdout", 0, ["hello"])))
    read: LogRead = call(parked)
    assert [b.lines for b in read.batches] == [["hello"]]
    assert (read.next_offset, read.closed) == (1, False)
    assert waiting_readers(relay) == 0


def test_a_parked_read_returns_when_the_attempt_closes(relay: Any) -> None:
    parked = relay.read.remote("wake-2", 1, 0, 100, 10 * CALL_TIMEOUT)
    wait_until(lambda: waiting_readers(relay), lambda n: n == 1, what="the read to park")
    call(relay.close.remote("wake-2", 1, 0))
    read: LogRead = call(parked)
    assert (read.batches, read.next_offset, read.closed) == ([], 0, True)


def test_a_read_behind_a_gap_keeps_waiting_until_the_gap_fills(relay: Any) -> None:
    parked = relay.read.remote("gap-1", 1, 0, 100, 10 * CALL_TIMEOUT)
    wait_until(lambda: waiting_readers(relay), lambda n: n == 1, what="the read to park")
    call(relay.append.remote(LogBatch.of(ActionId("gap-1"), 1, "stdout", 1, ["second"])))
    # The held line woke the reader, which found nothing readable and parked again.
    wait_until(lambda: (waiting_readers(relay), call(relay.stats.remote())["held_bytes"]),
               lambda seen: seen[0] == 1 and seen[1] > 0, what="the read to park behind the gap")
    call(relay.append.remote(LogBatch.of(ActionId("gap-1"), 1, "stderr", 0, ["first"])))
    read: LogRead = call(parked)
    assert [(b.stream, b.lines) for b in read.batches] == [("stderr", ["first"]),
                                                           ("stdout", ["second"])]


def test_a_quiet_read_returns_empty_after_its_wait(relay: Any) -> None:
    read: LogRead = call(relay.read.remote("quiet-1", 1, 0, 100, 0.05))
    assert (read.batches, read.next_offset, read.closed) == ([], 0, False)


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("append", ({"action_id": "bad", "attempt": 0, "stream": "stdout", "offset": 0,
                     "text": "x\n", "count": 1},)),
        ("append", ({"action_id": "bad", "attempt": 1, "stream": "stdin", "offset": 0,
                     "text": "x\n", "count": 1},)),
        ("append", ({"action_id": "bad", "attempt": 1, "stream": "stdout", "offset": 0,
                     "text": "x\ny\n", "count": 1},)),
        ("append", (LogBatch.model_construct(action_id=ActionId("bad"), attempt=1,
                                             stream="stdout", offset=0, text=NOT_STRINGS,
                                             count=2),)),
        ("append", ("not a batch",)),
        ("close", ("bad", 1, -1)),
        ("close", ("", 1, 0)),
        ("read", ("bad", 1, -1)),
        ("read", ("bad", 0, 0)),
        ("read", ("bad", 1, 0, 0)),
        ("read", ("bad", 1, 0, 10, float("nan"))),
        ("read", ("bad", 1, 0, 10, "soon")),
    ],
    ids=["attempt 0", "unknown stream", "count not the text's lines",
         "text not a string (unvalidated model)",
         "not a batch", "negative total", "empty action id", "negative offset",
         "read attempt 0", "max_lines 0", "wait NaN", "wait not a number"],
)
def test_bad_input_is_refused_and_the_relay_lives_on(relay: Any, method: str,
                                                     args: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidInput):
        call(getattr(relay, method).remote(*args))
    assert call(relay.ping.remote())
    assert call(relay.read.remote("bad", 1, 0)).batches == []


def test_lines_lost_for_good_are_skipped_after_the_close_grace(relay: Any,
                                                               tmp_path: Path) -> None:
    # A relay of its own with a short grace; the shared one keeps the production grace.
    quick = LogRelay.remote(MeshConfig(state_dir=str(tmp_path)),  # type: ignore[attr-defined]
                            close_grace=0.05)
    try:
        for offset, lines in [(0, ["a", "b"]), (4, ["e", "f"])]:
            call(quick.append.remote(LogBatch.of(ActionId("lost-1"), 1, "stdout", offset, lines)))
        call(quick.close.remote("lost-1", 1, 8))
        read: LogRead = wait_until(lambda: call(quick.read.remote("lost-1", 1, 0, 100, 1.0)),
                                   lambda r: r.closed, what="the lost lines to be given up on")
        assert [(b.offset, b.lines) for b in read.batches] == [(0, ["a", "b"]), (4, ["e", "f"])]
        assert read.next_offset == 8
        assert call(quick.stats.remote())["skipped_lines"] == 4
    finally:
        ray.kill(quick)


def test_forget_drops_an_actions_logs(relay: Any) -> None:
    for attempt in (1, 2):
        call(relay.append.remote(LogBatch.of(ActionId("gone-1"), attempt, "stdout", 0, ["x", "y"])))
    assert call(relay.attempts.remote("gone-1")) == [1, 2]
    call(relay.forget.remote("gone-1"))
    assert call(relay.attempts.remote("gone-1")) == []
    assert call(relay.read.remote("gone-1", 1, 0)).batches == []
