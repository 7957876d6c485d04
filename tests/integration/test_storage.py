"""The state dir's disk fills up mid-run on a real cluster: the scheduler stays up read-only,
refuses submissions clearly, loses nothing it accepted, and carries on once space is freed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh import Stage, StoreReadOnly
from mesh.client import Client
from mesh.schema import Action
from mesh.waiting import wait_until
from tests.integration.cluster import (
    SMALL,
    fill,
    scheduler_pid,
    small_disk,
    start_mesh,
    stop_mesh,
)

pytestmark = pytest.mark.integration

def test_a_full_state_disk_makes_the_scheduler_read_only_and_nothing_accepted_is_lost(
        tmp_path: Path) -> None:
    with small_disk(tmp_path / "state", "24m") as disk:
        assert disk is not None
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
