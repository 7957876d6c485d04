"""The SQLite state file: what is written comes back whole; a bad file is a clear error."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mesh.schema import AccountConfig, AccountId, AgentId
from mesh.stages import Stage
from scheduler.core.events import ListSink
from scheduler.core.quota.snapshot import accounts_snapshot
from scheduler.core.state import ActionEntry, SchedulerState
from scheduler.store import DB_FILE, SCHEMA_VERSION, Batch, StateCorrupt, Store
from tests.builders import action, agent, load, report


def worked_core() -> tuple[SchedulerState, ListSink]:
    """Actions in every kind of state: succeeded after a loss, running, queued, cancelled."""
    sink = ListSink()
    core = SchedulerState(sink=sink)
    core.create_account(AccountId("ci"), AccountConfig(charge_rate=[1.0],
                                                       max_charge_seconds=60), 0)
    core.register_agent(agent("n1", cpus=1), 0)
    core.report_load(AgentId("n1"), load(), 0)
    core.submit(action("a", account="ci", env={"K": "v"}, labels=["os:linux"]), 0)
    core.submit(action("b", cpus=1), 0)
    core.submit(action("c"), 0)
    core.step(0)
    core.remove_agent(AgentId("n1"), 1)  # a's first attempt is lost with its agent
    core.register_agent(agent("n2", cpus=1), 2)
    core.report_load(AgentId("n2"), load(), 2)
    core.step(2)
    core.report_attempt(report("a", 2, "n2", "succeeded", exit_code=0), 3)
    core.step(3)
    core.report_attempt(report("b", 1, "n2", "running"), 4)
    core.cancel("c", 5)  # type: ignore[arg-type]
    return core, sink


def fields(entry: ActionEntry) -> dict[str, object]:
    return {name: getattr(entry, name) for name in ActionEntry.__slots__}  # type: ignore[attr-defined]


def test_actions_events_and_accounts_come_back_exactly(tmp_path: Path) -> None:
    core, sink = worked_core()
    store = Store(tmp_path)
    quota = accounts_snapshot(core.quota)
    store.write(Batch(actions=core.take_changed(), events=sink.events, quota=quota),
                durable=True)
    # A later step's changes update the rows written before.
    core.report_attempt(report("b", 1, "n2", "failed", exit_code=2), 6)
    store.write(Batch(actions=core.take_changed(), events=sink.events[-1:]))
    store.close()

    saved = Store(tmp_path).load()
    assert [e.id for e in saved.actions] == ["a", "b", "c"]
    for entry in saved.actions:
        assert fields(entry) == fields(core.actions[entry.id])
    assert saved.actions[0].attempts[0].outcome == "lost"
    assert saved.actions[1].stage is Stage.FAILED and saved.actions[1].exit_code == 2
    for action_id, events in saved.events.items():
        assert events == [e for e in sink.events if e.action_id == action_id]
    assert saved.quota == quota and saved.quota.balances["ci"][0] > 0


def test_a_failed_write_leaves_the_previous_state(tmp_path: Path) -> None:
    core, sink = worked_core()
    store = Store(tmp_path)
    store.write(Batch(actions=core.take_changed(), events=sink.events))
    core.report_attempt(report("b", 1, "n2", "succeeded", exit_code=0), 6)
    broken = Batch(actions=core.take_changed(), events=[sink.events[0]] * 2)
    store.db.execute("CREATE TRIGGER no BEFORE INSERT ON events BEGIN "
                     "SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.Error, match="disk full"):
        store.write(broken)
    store.close()
    saved: dict[str, ActionEntry] = {e.id: e for e in Store(tmp_path).load().actions}
    assert saved["b"].stage is Stage.RUNNING, "the batch is all or nothing"


def test_a_new_file_gets_the_current_schema(tmp_path: Path) -> None:
    assert Store(tmp_path).version == SCHEMA_VERSION
    assert Store(tmp_path).load().actions == []


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(b"these are not the pages you are looking for" * 200)
    with pytest.raises(StateCorrupt, match=rf"{DB_FILE} cannot be used: .*not a database"):
        Store(tmp_path)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    core, sink = worked_core()
    store = Store(tmp_path)
    for i in range(200):  # enough rows for several pages
        core.submit(action(f"x{i}", command=["echo", "y" * 500]), 10)
    store.write(Batch(actions=core.take_changed(), events=sink.events))
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    path = tmp_path / DB_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateCorrupt, match="cannot be used"):
        Store(tmp_path).load()


def test_a_newer_schema_is_refused_by_name(tmp_path: Path) -> None:
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StateCorrupt, match=f"schema is version {SCHEMA_VERSION + 1}, written "
                                           "by a newer actionmesh"):
        Store(tmp_path)


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute("CREATE TABLE recipes (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StateCorrupt, match="not an actionmesh state file"):
        Store(tmp_path)


def test_a_row_that_does_not_parse_is_named(tmp_path: Path) -> None:
    core, sink = worked_core()
    store = Store(tmp_path)
    store.write(Batch(actions=core.take_changed(), events=sink.events))
    store.db.execute("UPDATE actions SET spec = '{\"command\": []}' WHERE id = 'b'")
    with pytest.raises(StateCorrupt, match="saved action 'b' cannot be read"):
        store.load()
