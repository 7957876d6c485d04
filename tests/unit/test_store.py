"""The SQLite state file: what is written comes back whole; a bad file is a clear error."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import InvalidInput, StateCorrupt
from mesh.schema import AccountConfig, AccountId, Action, ActionId, AgentId, ListQuery
from mesh.stages import Stage
from scheduler import store as store_module
from scheduler.core.decisions import Assign
from scheduler.core.events import ListSink
from scheduler.core.records import UNREADABLE_SPEC, Changes, SavedSpec
from scheduler.core.state import SchedulerState
from scheduler.migrations import SCHEMA_VERSION
from scheduler.store import DB_FILE, INCREMENTAL, Store
from tests.builders import acct, action, agent, aid, load, nid, report


def worked_core() -> tuple[SchedulerState, ListSink]:
    """Actions in every kind of state: succeeded after a loss, running, queued, cancelled."""
    sink = ListSink()
    core = SchedulerState(sink=sink)
    core.accounts.create(AccountId("ci"), AccountConfig(charge_rate=[1.0],
                                                        max_charge_seconds=60), 0)
    core.agent_joined(agent("n1", cpus=1), 0)
    core.load(nid("n1"), load(), 0)
    core.submit([action("a", account="ci", env={"K": "v"}, labels=["os:linux"])], 0)
    core.submit([action("b", cpus=1)], 0)
    core.submit([action("c")], 0)
    core.step(0)
    core.agent_left(nid("n1"), 1)  # a's first attempt is lost with its agent
    core.agent_joined(agent("n2", cpus=1), 2)
    core.load(nid("n2"), load(), 2)
    core.step(2)
    core.report(report("a", 2, "n2", "succeeded", exit_code=0), 3)
    core.step(3)
    core.report(report("b", 1, "n2", "running"), 4)
    core.cancel(aid("c"), 5)
    return core, sink


def write_all(core: SchedulerState, store: Store, now: float = 6.0) -> None:
    with core.writing() as changes:
        changes.accounts = core.accounts.snapshot(now)
        store.write(changes, durable=True)


def test_actions_attempts_events_and_accounts_come_back_exactly(tmp_path: Path) -> None:
    core, sink = worked_core()
    store = Store(tmp_path)
    write_all(core, store)
    # A later step's changes update the rows written before.
    core.report(report("b", 1, "n2", "failed", exit_code=2), 6)
    write_all(core, store, 7)
    core.submit([action("d")], 8)
    write_all(core, store, 8)
    store.close()

    store = Store(tmp_path)
    saved = store.load()
    # Only unfinished work is loaded; the rest is read when asked for.
    assert [record.id for record, _ in saved.actions] == ["d"]
    assert saved.last_seq == 4
    assert saved.finished == {Stage.SUCCEEDED: 1, Stage.FAILED: 1, Stage.CANCELLED: 1}
    for name in ("a", "b", "c", "d"):
        kept = store.find(aid(name))
        assert kept is not None
        record, attempts = kept
        assert record.id == name
        live = core.get(aid(name), 8)
        assert (record.stage, record.attempt, record.exit_code, record.reason) == (
            live.stage, live.attempt, live.exit_code, live.reason)
        assert attempts == live.attempts
        assert store.events(aid(name)) == [e for e in sink.events if e.action_id == name]
    a_record, a_attempts = store.find(aid("a")) or pytest.fail()
    assert [x.outcome for x in a_attempts] == ["lost", Stage.SUCCEEDED]
    assert isinstance(a_record.spec, SavedSpec) and a_record.spec.parse().env == {"K": "v"}
    def ids(**query: Any) -> list[str]:
        return [r.id for r, _ in store.page(ListQuery(**query))]

    assert ids() == ["a", "b", "c", "d"], "every action, unfinished ones too"
    assert ids(stage=Stage.FAILED) == ["b"]
    assert ids(after=1, limit=1) == ["b"]
    assert saved.accounts is not None and saved.accounts.balances[acct("ci")][0] > 0


def test_a_failed_write_leaves_the_previous_state_and_the_changes_for_the_next(
        tmp_path: Path) -> None:
    core, _ = worked_core()
    store = Store(tmp_path)
    write_all(core, store)
    core.report(report("b", 1, "n2", "succeeded", exit_code=0), 6)
    store.db.execute("CREATE TRIGGER no BEFORE INSERT ON journal BEGIN "
                     "SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.Error, match="disk full"), core.writing() as changes:
        store.write(changes)
    kept = store.find(aid("b"))
    assert kept is not None and kept[0].stage is Stage.RUNNING, "the batch is all or nothing"
    store.db.execute("DROP TRIGGER no")
    with core.writing() as changes:
        assert changes.events, "what failed to be written is written next time"
        store.write(changes)
    kept = store.find(aid("b"))
    assert kept is not None and kept[0].stage is Stage.SUCCEEDED


def test_a_version_1_file_is_migrated_with_its_attempts_as_rows_and_its_shape_as_columns(
        tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.executescript(V1_FILE)
    db.close()
    store = Store(tmp_path)
    assert store.version == SCHEMA_VERSION
    assert auto_vacuum(store) == INCREMENTAL, "rewritten so that deletes shrink it"
    saved = store.load()
    [(record, attempts)] = saved.actions
    assert (record.id, record.stage, record.attempt) == ("b", Stage.RUNNING, 2)
    assert [(x.number, x.agent_id, x.outcome) for x in attempts] == [
        (1, "n1", "lost"), (2, AgentId("n2"), None)]
    assert isinstance(record.spec, Action) and record.spec.command == ["sleep", "9"]
    shape = store.db.execute("SELECT account, labels, provisionable_labels, cpus, memory "
                             "FROM actions WHERE id = 'b'").fetchone()
    assert shape == ("ci", "gpu os:linux", "zone:b", 2.5, 1024)
    done = store.find(ActionId("a"))
    assert done is not None and done[0].stage is Stage.SUCCEEDED and done[1][0].exit_code == 0
    assert saved.last_seq == 2


def test_many_ids_are_looked_up_at_once_past_a_chunk_with_their_attempts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CHUNK", 2)  # a, b, c and an unknown id: two queries
    core, _ = worked_core()
    store = Store(tmp_path)
    write_all(core, store)
    found = store.find_many([aid("a"), aid("nobody"), aid("c"), aid("b")])
    assert sorted(found) == ["a", "b", "c"]
    assert [(x.number, x.outcome) for x in found[aid("a")][1]] == [
        (1, "lost"), (2, Stage.SUCCEEDED)]
    assert found[aid("c")][0].stage is Stage.CANCELLED
    assert store.find_many([]) == {}


def test_a_large_older_file_is_left_as_it_is_with_a_warning_saying_how_to_convert_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.executescript(V1_FILE)
    db.close()
    monkeypatch.setattr(store_module, "CONVERT_MAX", 0)  # every file counts as large
    store = Store(tmp_path)
    assert auto_vacuum(store) == 0, "not rewritten during start-up"
    assert "PRAGMA auto_vacuum=2; VACUUM" in caplog.text
    assert store.find(ActionId("a")) is not None


# A state file as the previous release wrote it: a finished, b running its second attempt.
V1_B_SPEC = ('{"command": ["sleep", "9"], "labels": ["gpu", "os:linux"], "cpus": 2.5, '
             '"provisionable_labels": ["zone:b"], "memory": 1024, "account": "ci"}')
V1_FILE = """
CREATE TABLE actions (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec TEXT NOT NULL,
    stage TEXT NOT NULL, attempt INTEGER NOT NULL, agent_id TEXT, submitted_at REAL NOT NULL,
    finished_at REAL, exit_code INTEGER, reason TEXT NOT NULL, failures INTEGER NOT NULL,
    losses INTEGER NOT NULL, deaths TEXT NOT NULL, cancel_requested INTEGER NOT NULL,
    unplaceable INTEGER NOT NULL, events INTEGER NOT NULL, attempts TEXT NOT NULL);
CREATE INDEX actions_by_stage ON actions (stage);
CREATE TABLE events (action_id TEXT NOT NULL, seq INTEGER NOT NULL, attempt INTEGER NOT NULL,
    stage TEXT NOT NULL, time REAL NOT NULL, agent_id TEXT, exit_code INTEGER,
    reason TEXT NOT NULL, PRIMARY KEY (action_id, seq));
CREATE TABLE quota (id INTEGER PRIMARY KEY CHECK (id = 1), snapshot TEXT NOT NULL);
INSERT INTO actions VALUES ('a', 1, '{"command": ["true"]}', 'succeeded', 1, 'n1', 0.0, 2.0,
    0, '', 0, 0, '[]', 0, 0, 4, '[{"number": 1, "agent_id": "n1", "assigned_at": 0.5,
    "started_at": 1.0, "finished_at": 2.0, "outcome": "succeeded", "exit_code": 0}]');
INSERT INTO actions VALUES ('b', 2, '@B_SPEC@', 'running', 2, 'n2', 0.0,
    NULL, NULL, '', 0, 1, '["n1"]', 0, 0, 5, '[{"number": 1, "agent_id": "n1",
    "assigned_at": 0.5, "finished_at": 3.0, "outcome": "lost", "reason": "agent n1 was lost"},
    {"number": 2, "agent_id": "n2", "assigned_at": 3.5, "started_at": 4.0}]');
PRAGMA application_id = 1095594856;
PRAGMA user_version = 1;
""".replace("@B_SPEC@", V1_B_SPEC)


def test_changes_with_nothing_in_them_write_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write(Changes())
    assert store.load().actions == []


def test_a_new_file_gets_the_current_schema(tmp_path: Path) -> None:
    assert Store(tmp_path).version == SCHEMA_VERSION
    assert Store(tmp_path).load().actions == []
    assert auto_vacuum(Store(tmp_path)) == INCREMENTAL


def auto_vacuum(store: Store) -> int:
    return int(store.db.execute("PRAGMA auto_vacuum").fetchone()[0])


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(b"these are not the pages you are looking for" * 200)
    with pytest.raises(StateCorrupt, match=rf"{DB_FILE} cannot be used: .*not a database"):
        Store(tmp_path)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    core, _ = worked_core()
    store = Store(tmp_path)
    for i in range(200):  # enough rows for several pages
        core.submit([action(f"x{i}", command=["echo", "y" * 500])], 10)
    write_all(core, store)
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
    core, _ = worked_core()
    store = Store(tmp_path)
    write_all(core, store)
    store.db.execute("UPDATE actions SET spec = '{\"command\": []}' WHERE id = 'b'")
    with pytest.raises(StateCorrupt, match="saved action 'b' cannot be read"):
        store.load()


def test_a_waiting_action_whose_saved_spec_does_not_parse_fails_alone_when_its_turn_comes(
        tmp_path: Path) -> None:
    core = SchedulerState()
    core.submit([action("x", labels=["os:linux"]), action("y")], 0)
    store = Store(tmp_path)
    write_all(core, store)
    store.db.execute("UPDATE actions SET spec = '{\"command\": []}' WHERE id = 'x'")
    sink = ListSink()
    restarted = SchedulerState(sink=sink, archive=store)
    restarted.restore(store.load(), 1)  # waiting specs are not parsed yet: no error here
    restarted.agent_joined(agent("n1", cpus=2, labels=["os:linux"]), 1)
    restarted.load(nid("n1"), load(), 1)
    assert [d.action_id for d in restarted.step(1)] == ["y"]
    assert restarted.counts()["failed"] == 1
    [ended] = [e for e in sink.events if e.action_id == "x"]
    assert ended.stage is Stage.FAILED
    assert ended.reason.startswith("its saved spec cannot be read: saved action 'x' cannot be")
    # Everything else still answers, the damaged action with a stand-in for its spec.
    x = restarted.get(aid("x"), 1)
    assert x.action.command == [UNREADABLE_SPEC] and x.action.labels == ["os:linux"]
    assert {s.id for s in restarted.list_actions()} == {"x", "y"}
    with pytest.raises(InvalidInput, match="already used by a different action"):
        restarted.submit([action("x", labels=["os:linux"])], 1)
    write_all(restarted, store)
    again = SchedulerState(archive=store)
    again.restore(store.load(), 2)  # its row, now finished, is read when asked for
    assert [s.id for s in again.list_actions(Stage.FAILED)] == ["x"]


# ---- secrets at rest ------------------------------------------------------------------------

SECRET = "hunter2-S3CR3T-value"


def state_bytes(directory: Path) -> bytes:
    """Every byte the state dir holds but the key (the database, its WAL, the lock...)."""
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir())
                    if p.is_file() and p.name != "secrets.key")


def test_secrets_are_sealed_in_the_file_and_come_back_whole(tmp_path: Path) -> None:
    core = SchedulerState()
    core.submit([action("s", secrets={"API_TOKEN": SECRET}, env={"PLAIN": "visible"},
                        tags={"team": "infra"})], 0)
    store = Store(tmp_path)
    write_all(core, store)
    raw = state_bytes(tmp_path)
    assert SECRET.encode() not in raw and b"visible" in raw  # env is not secret
    kept = store.find(aid("s"))
    assert kept is not None
    spec = kept[0].spec
    assert isinstance(spec, SavedSpec) and spec.parse().secrets == {"API_TOKEN": SECRET}
    # The rest of a sealed spec is still JSON the store looks into.
    assert [k[0].id for k in store.page(ListQuery(tags={"team": "infra"}))] == ["s"]
    restarted = SchedulerState(archive=store)
    restarted.restore(store.load(), 1)
    assert restarted.get(aid("s"), 1).action.secrets == {"API_TOKEN": "***"}  # shown: names
    restarted.agent_joined(agent("n1"), 1)
    restarted.load(nid("n1"), load(), 1)
    [start] = restarted.step(1)
    assert isinstance(start, Assign)
    assert restarted.assignment(start).action.secrets == {"API_TOKEN": SECRET}  # sent: value


def test_without_its_key_a_sealed_spec_does_not_open(tmp_path: Path) -> None:
    core = SchedulerState()
    core.submit([action("s", secrets={"API_TOKEN": SECRET}), action("t")], 0)
    store = Store(tmp_path)
    write_all(core, store)
    store.close()
    (tmp_path / "secrets.key").unlink()  # lost: a new key is made, which cannot open it
    store = Store(tmp_path)
    restarted = SchedulerState(archive=store)
    restarted.restore(store.load(), 1)  # a waiting action: it fails alone, at its turn
    restarted.agent_joined(agent("n1"), 1)
    restarted.load(nid("n1"), load(), 1)
    assert [d.action_id for d in restarted.step(1)] == ["t"]
    assert restarted.get(aid("s"), 1).stage is Stage.FAILED
    assert SECRET not in restarted.get(aid("s"), 1).model_dump_json()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system of its own, 2 MiB, that a test can fill."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("no file system of its own can be mounted here (it takes root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def test_a_restart_on_a_full_disk_still_reads_the_saved_state(small_disk: Path) -> None:
    # The scheduler died with its state open (its -wal and -shm files left, as a crash
    # leaves them), then the disk filled: the new one must read it, to serve read-only.
    core, _ = worked_core()
    crashed = Store(small_disk / "state")
    write_all(core, crashed)
    with open(small_disk / "filler", "wb") as filler, pytest.raises(OSError, match="space"):
        while True:
            filler.write(bytes(1 << 16))
            filler.flush()
    restarted = Store(small_disk / "state")
    assert [record.id for record, _ in restarted.load().actions] == ["b"]
    assert restarted.find(aid("a")) is not None
    crashed.close()
    restarted.close()
