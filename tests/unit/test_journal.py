"""The event log: what the core journals, how the store keeps and pages it, and waiting on it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from mesh.schema import AccountConfig, AccountId, EventPage, EventQuery, MeshEvent, RetryPolicy
from scheduler import store as store_module
from scheduler.core.state import SchedulerState
from scheduler.journal import JournalReads
from scheduler.migrations import SCHEMA_VERSION
from scheduler.store import DB_FILE, Store
from tests.builders import action, agent, aid, load, nid, report

A = AccountId("ci")


def written(core: SchedulerState, store: Store) -> None:
    with core.writing() as changes:
        store.write(changes)


def everything(store: Store, **query: object) -> list[MeshEvent]:
    return store.journal(EventQuery.model_validate(query)).events


def one_agent_written(tmp_path: Path) -> tuple[Store, SchedulerState]:
    """A store whose log holds one entry: agent n1 joined."""
    store = Store(tmp_path)
    core = SchedulerState(stale_after=1e9)
    core.agent_joined(agent("n1"), 0)
    written(core, store)
    return store, core


def summary(events: list[MeshEvent]) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind, e.action_id, e.agent_id) for e in events]


def test_the_log_holds_every_kind_of_change_in_the_order_it_happened(tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = SchedulerState(stale_after=1e9)
    core.agent_joined(agent("n1", cpus=1), 0)
    core.load(nid("n1"), load(), 0)
    core.submit([action("a", retry=RetryPolicy(on_lost=1, quarantine_after=1))], 0)
    core.step(0)
    core.report(report("a", 1, "n1", "running"), 1)
    core.agent_suspect(nid("n1"), 2)
    core.load(nid("n1"), load(), 3)
    core.agent_left(nid("n1"), 4, "its node is dead")
    written(core, store)
    events = everything(store)
    assert summary(events) == [
        ("agent_joined", None, "n1"),
        ("accepted", "a", None),
        ("assigned", "a", "n1"),
        ("stage", "a", "n1"),
        ("agent_suspect", None, "n1"),
        ("agent_back", None, "n1"),
        ("agent_left", None, "n1"),
        ("quarantined", "a", "n1"),
    ]
    assert [e.seq for e in events] == list(range(1, 9))
    assert events[0].reason == "host-n1: 1 CPUs, 8.0 GiB, labels [os:linux]"
    assert events[3].stage == "running" and events[3].attempt == 1
    assert events[6].reason == "its node is dead"
    assert events[7].stage == "failed" and events[7].reason.startswith("quarantined:")


def test_a_requeue_says_whether_it_was_a_preemption_or_a_reschedule(tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = SchedulerState(stale_after=1e9)
    core.agent_joined(agent("n1", cpus=1), 0)
    core.load(nid("n1"), load(), 0)
    core.submit([action("free")], 0)
    core.step(0)
    core.report(report("free", 1, "n1", "running"), 1)
    core.accounts.create(A, AccountConfig(charge_rate=[1.0], max_charge_seconds=100), 1)
    core.submit([action("paid", account=A)], 5)
    core.step(5)
    core.report(report("paid", 1, "n1", "running"), 6)
    core.report(report("paid", 1, "n1", "failed", exit_code=1), 7)  # no failure budget
    core.step(7)
    core.agent_left(nid("n1"), 8, "gone")
    written(core, store)
    free = everything(store, action_id="free")
    assert [e.kind for e in free] == ["accepted", "assigned", "stage", "preempted",
                                      "assigned", "rescheduled"]
    assert "preempted by action paid" in free[3].reason and free[3].stage == "queued"
    assert [e.kind for e in everything(store, action_id="paid")] == [
        "accepted", "assigned", "stage", "stage"]


def test_a_demotion_of_running_work_is_an_entry_naming_both_priorities(tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = SchedulerState(stale_after=1e9)
    core.agent_joined(agent("n1", cpus=4), 0)
    core.load(nid("n1"), load(), 0)
    core.accounts.create(A, AccountConfig(charge_rate=[1.0], max_charge_seconds=10), 0)
    core.step(5)
    core.submit([action(f"r{i}", account=A) for i in range(4)], 5)
    core.step(5)
    core.step(300)  # charged far below zero: three of the four move down a level
    written(core, store)
    moves = everything(store, kinds=["demoted", "promoted"])
    assert [e.kind for e in moves] == ["demoted"] * 3
    assert all(e.priority == 1 and e.attempt == 1 and e.agent_id == "n1" for e in moves)
    assert moves[0].reason == "demoted from priority 0 to 1 (account ci)"


def test_filters_and_pages_read_every_matching_entry_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SCAN_WINDOW", 7)
    store = Store(tmp_path)
    core = SchedulerState(stale_after=1e9)
    for i in range(3):
        core.agent_joined(agent(f"n{i}", cpus=4), i)
    core.submit([action(f"a{i}") for i in range(10)], 10)
    written(core, store)
    total = store.last_event
    assert total == 3 + 10

    def read_all(**query: object) -> list[MeshEvent]:
        found: list[MeshEvent] = []
        after = 0
        while True:
            page = store.journal(EventQuery.model_validate({**query, "after": after,
                                                            "limit": 2}))
            found += page.events
            assert page.last >= after, "a page never goes back"
            if page.last == after:
                return found
            after = page.last

    assert [e.seq for e in read_all()] == list(range(1, total + 1))
    assert [e.agent_id for e in read_all(kinds=["agent_joined"])] == ["n0", "n1", "n2"]
    assert [e.agent_id for e in read_all(agent_id="n2")] == ["n2"]
    assert [e.action_id for e in read_all(since=10)] == [f"a{i}" for i in range(10)]
    assert [e.time for e in read_all(since=1)] == [1, 2] + [10] * 10
    # A filtered read looks through a window, not the whole log, and says how far it got.
    page = store.journal(EventQuery(kinds=frozenset({"agent_left"})))
    assert page.events == [] and page.last == 7
    # By action the index finds them wherever they are.
    page = store.journal(EventQuery(action_id=aid("a9")))
    assert [e.action_id for e in page.events] == ["a9"] and page.last == total


def test_seqs_are_never_handed_out_twice_even_after_the_newest_entries_go(
        tmp_path: Path) -> None:
    store, core = one_agent_written(tmp_path)
    top = store.last_event
    store.db.execute("DELETE FROM journal")
    store.close()
    store = Store(tmp_path)
    core.agent_left(nid("n1"), 1)
    written(core, store)
    [entry] = everything(store)
    assert entry.seq == top + 1 and entry.kind == "agent_left"
    assert store.journal(EventQuery()).first == top + 1


def test_retention_deletes_old_entries_of_no_action_and_those_of_expired_actions(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = SchedulerState(stale_after=1e9)
    core.agent_joined(agent("n1"), 0)
    core.load(nid("n1"), load(), 0)
    core.submit([action("old")], 0)
    core.step(0)
    core.report(report("old", 1, "n1", "succeeded", exit_code=0), 1)
    core.agent_joined(agent("n2"), 50)
    written(core, store)
    store.expire(before=10, limit=100, forget_before=0)
    assert summary(everything(store)) == [("agent_joined", None, "n2")]
    assert store.journal(EventQuery()).first == store.last_event


def test_a_version_4_file_gets_its_stage_events_in_the_log_with_their_kinds(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.db.executescript("""
        DROP TABLE journal;
        DROP TABLE drained;
        DROP TABLE pool;
        DROP TABLE homes;
        DROP TABLE job_load;
        CREATE TABLE events (action_id TEXT NOT NULL, seq INTEGER NOT NULL,
            attempt INTEGER NOT NULL, stage TEXT NOT NULL, time REAL NOT NULL, agent_id TEXT,
            exit_code INTEGER, reason TEXT NOT NULL, PRIMARY KEY (action_id, seq))
            WITHOUT ROWID;
        INSERT INTO events VALUES ('a', 1, 0, 'queued', 1.0, NULL, NULL, 'accepted');
        INSERT INTO events VALUES ('a', 2, 1, 'assigned', 2.0, 'n1', NULL, '');
        INSERT INTO events VALUES ('a', 3, 1, 'queued', 3.0, NULL, NULL,
            'preempted by action b (account ci, priority 0)');
        INSERT INTO events VALUES ('b', 1, 0, 'queued', 2.5, NULL, NULL, 'accepted');
        INSERT INTO events VALUES ('a', 4, 2, 'assigned', 4.0, 'n1', NULL, '');
        INSERT INTO events VALUES ('a', 5, 2, 'queued', 5.0, NULL, NULL,
            'requeued after losing agent n1 (loss 1 of 3)');
        PRAGMA user_version = 4;
    """)
    store.close()
    store = Store(tmp_path)
    assert store.version == SCHEMA_VERSION
    events = everything(store)
    assert [(e.seq, e.action_id, e.kind) for e in events] == [
        (1, "a", "accepted"), (2, "a", "assigned"), (3, "b", "accepted"),
        (4, "a", "preempted"), (5, "a", "assigned"), (6, "a", "rescheduled")]
    assert [e.kind for e in store.events(aid("a"))] == [
        "accepted", "assigned", "preempted", "assigned", "rescheduled"]


def test_a_reader_waits_for_the_next_entry_and_wakes_when_it_is_written(
        tmp_path: Path) -> None:
    store, core = one_agent_written(tmp_path)
    reads = JournalReads(store)

    async def scenario() -> tuple[EventPage, EventPage]:
        seen = store.last_event
        # Nothing new: the wait ends empty at its timeout, having read through the end.
        quiet = await reads.read(EventQuery(after=seen), timeout=0.05)
        waiting = asyncio.ensure_future(reads.read(EventQuery(after=seen), timeout=30))
        await asyncio.sleep(0)
        assert not waiting.done()
        core.agent_left(nid("n1"), 1)
        written(core, store)
        return quiet, await asyncio.wait_for(waiting, 5)

    quiet, woken = asyncio.run(scenario())
    assert quiet.events == [] and quiet.last == 1
    assert summary(woken.events) == [("agent_left", None, "n1")]


def test_the_log_is_in_the_file_the_store_keeps(tmp_path: Path) -> None:
    store, _ = one_agent_written(tmp_path)
    store.close()
    db = sqlite3.connect(tmp_path / DB_FILE)
    assert db.execute("SELECT kind, agent_id FROM journal").fetchall() == [
        ("agent_joined", "n1")]


def test_a_failing_listener_neither_undoes_the_write_nor_silences_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    heard: list[int] = []

    def broken(_: object) -> None:
        raise RuntimeError("a metrics bug")

    store.listeners += [broken, lambda events: heard.append(len(events))]
    core = SchedulerState(stale_after=1e9)
    core.agent_joined(agent("n1"), 0)
    written(core, store)  # raises nothing: the write stands
    assert heard == [1]
    assert summary(everything(store)) == [("agent_joined", None, "n1")]
    assert "a listener of the event log failed" in caplog.text
