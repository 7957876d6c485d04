"""The state dir's disk fills up mid-run on a real cluster: the scheduler stays up read-only,
refuses submissions clearly, loses nothing it accepted, and carries on once space is freed."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh import Stage, StoreReadOnly
from mesh.client import Client
from mesh.schema import Action
from mesh.waiting import wait_until
from tests.integration.cluster import SMALL, scheduler_pid, start_mesh, stop_mesh

pytestmark = pytest.mark.integration

TMPFS_SIZE = "24m"


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    """A tmpfs of its own at `where` (mounting needs root; skipped, saying so, without)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the state dir needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                              str(where)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file; deleting it frees them."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * block):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_full_state_disk_makes_the_scheduler_read_only_and_nothing_accepted_is_lost(
        tmp_path: Path) -> None:
    with small_disk(tmp_path / "state") as disk:
        cluster, _, _ = start_mesh(disk, SMALL)
        try:
            client = Client()
            before = client.submit_many([Action(command=["true"])] * 5)
            wait_until(lambda: [client.get(h.id).stage for h in before],
                       lambda stages: all(s is Stage.SUCCEEDED for s in stages), timeout=60,
                       what="the first actions run")
            pid = scheduler_pid()
            filler = fill(disk)

            # Each batch either is accepted whole or refused as read-only, never anything
            # else; a write of a step or a batch finds the disk full soon enough.
            accepted: list[str] = []
            refused: list[str] = []
            big = Action(command=["true"], env={"PADDING": "x" * 4000})
            for _ in range(200):
                try:
                    accepted += [h.id for h in client.submit_many([big] * 50)]
                except StoreReadOnly as exc:
                    refused.append(str(exc))
                    break
            assert refused, "the store never turned read-only"
            assert "disk full" in refused[0] and "submission" in refused[0], refused[0]
            health = client.health()
            assert health.store == "read-only" and "disk full" in health.reason, health
            with pytest.raises(StoreReadOnly, match="submissions are refused"):
                client.submit(Action(command=["true"]))
            assert client.get(before[0].id).stage is Stage.SUCCEEDED, "reads answer"

            filler.unlink()
            wait_until(client.health, lambda h: h.store == "ok", timeout=60,
                       what="the store writing again once space was freed")
            after = client.submit(Action(command=["true"]))
            wait_until(lambda: [client.get(a).stage for a in [*accepted, after.id]],
                       lambda stages: all(s is Stage.SUCCEEDED for s in stages),
                       timeout=180, what="every accepted action run")
            assert scheduler_pid() == pid, "the scheduler restarted"
        finally:
            stop_mesh(cluster)
