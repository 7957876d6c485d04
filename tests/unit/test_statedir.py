"""The state dir: private to its user (made 0700, refused when it is not), never written or
cleaned through a symlink; its lock: one holder at a time, the refusal names the holder."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from mesh import logfiles, logstore
from mesh.errors import StateDirInUse, StateDirUnsafe
from mesh.logstore import LogStore
from mesh.schema import ActionId, LogBatch, MeshConfig, default_state_dir
from mesh.statedir import Owner, StateDirLock
from scheduler.store import Store


def owner(cluster: str) -> Owner:
    return Owner(cluster=cluster, host="head-1", pid=4242, since=time.time())


def test_a_second_claim_is_refused_naming_the_holder_until_it_lets_go(tmp_path: Path) -> None:
    first = StateDirLock(tmp_path, "scheduler")
    first.acquire(owner("10.0.0.1:6379"))
    began = time.monotonic()
    # Another descriptor, as another process has: flock tells them apart.
    with pytest.raises(StateDirInUse) as refused:
        StateDirLock(tmp_path, "scheduler").acquire(owner("10.0.0.2:6379"))
    assert time.monotonic() - began < 1.0, "another cluster's claim must not wait"
    message = str(refused.value)
    assert str(tmp_path) in message and "10.0.0.1:6379" in message and "4242" in message
    relay = StateDirLock(tmp_path, "relay")  # each role has a lock of its own
    relay.acquire(owner("10.0.0.1:6379"))
    assert relay.held
    first.release()
    second = StateDirLock(tmp_path, "scheduler")
    second.acquire(owner("10.0.0.2:6379"))
    assert second.held
    assert stat.S_IMODE(os.stat(second.path).st_mode) == 0o600


def test_a_claim_of_the_holders_own_cluster_waits_for_it_to_let_go(tmp_path: Path) -> None:
    # A restarted or re-created actor may start before its predecessor has exited.
    old = StateDirLock(tmp_path, "scheduler")
    old.acquire(owner("c"))
    releaser = threading.Timer(0.3, old.release)
    releaser.start()
    began = time.monotonic()
    new = StateDirLock(tmp_path, "scheduler")
    new.acquire(owner("c"))
    releaser.join()
    assert new.held and 0.25 <= time.monotonic() - began < 5.0


def test_a_lock_file_that_does_not_name_its_holder_is_still_a_lock(tmp_path: Path) -> None:
    held = StateDirLock(tmp_path, "scheduler")
    held.acquire(owner("c"))
    held.path.write_text("not json")
    with pytest.raises(StateDirInUse, match="does not say which"):
        StateDirLock(tmp_path, "scheduler").acquire(owner("c"))


def test_a_symlink_planted_at_the_lock_path_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    (tmp_path / "scheduler.lock").symlink_to(target)
    with pytest.raises(OSError):
        StateDirLock(tmp_path, "scheduler").acquire(owner("c"))
    assert target.read_text() == "keep me"


def test_a_holder_of_the_same_cluster_that_never_lets_go_is_refused_after_the_wait(
        tmp_path: Path) -> None:
    StateDirLock(tmp_path, "scheduler").acquire(owner("c"))
    with pytest.raises(StateDirInUse, match="cluster c"):
        StateDirLock(tmp_path, "scheduler").acquire(owner("c"), wait=0.3)


# ---- private: the state dir is this user's alone -------------------------------------------


def test_the_default_state_dir_is_per_user(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == str(tmp_path / "xdg" / "actionmesh")
    assert MeshConfig().state_dir == str(tmp_path / "xdg" / "actionmesh")
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the spec says: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == str(tmp_path / "home" / ".local" / "state" / "actionmesh")


def test_a_new_state_dir_is_made_0700_with_its_lock_and_database_0600(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    StateDirLock(state, "scheduler").acquire(owner("c"))
    store = Store(state)
    store.db.execute("CREATE TABLE IF NOT EXISTS probe(x)")  # a write makes the WAL
    try:
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        assert modes and all(mode == 0o600 for mode in modes.values()), modes
    finally:
        store.db.close()


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o757])
def test_a_state_dir_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "shared"
    state.mkdir()
    state.chmod(mode)
    with pytest.raises(StateDirUnsafe, match="writable by"):
        StateDirLock(state, "scheduler").acquire(owner("c"))
    assert list(state.iterdir()) == []  # nothing was written there


def test_a_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "state").symlink_to(target)
    with pytest.raises(StateDirUnsafe, match="symlink"):
        Store(tmp_path / "state")
    assert list(target.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_another_users_state_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "theirs"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    with pytest.raises(StateDirUnsafe, match="belongs to uid 65534"):
        StateDirLock(state, "relay").acquire(owner("c"))


def test_a_symlink_planted_where_a_spill_file_goes_is_not_written_through(
        tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    spill = tmp_path / "logs"
    store = LogStore(spill, memory_budget=0)  # everything goes to disk at once
    action_dir = spill / logstore.file_name("act-1")
    action_dir.mkdir()
    (action_dir / "1.log").symlink_to(victim)
    store.append(LogBatch.of(ActionId("act-1"), 1, "stdout", 0, ["ci output"]))
    assert victim.read_text() == "precious\n"


def test_clean_up_never_deletes_through_a_symlinked_directory(tmp_path: Path) -> None:
    victim_dir = tmp_path / "victims"
    victim_dir.mkdir()
    (victim_dir / "7.log").write_text("someone else's\n")
    spill = tmp_path / "logs"
    spill.mkdir(mode=0o700)
    (spill / "planted").symlink_to(victim_dir)
    logfiles.clear_unindexed(spill)
    assert (victim_dir / "7.log").exists()
