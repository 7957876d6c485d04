"""The state dir lock: one holder at a time, the refusal names the holder, a waiter gets it."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from mesh.errors import StateDirInUse
from mesh.statedir import Owner, StateDirLock


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
