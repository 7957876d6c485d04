"""Retention on a real cluster with a short period: finished actions, their events and their
logs go; unfinished ones never do; an expired id says so; a listing pages through the rest
exactly once while actions are being added."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mesh import NotFound, Stage, bootstrap, calls
from mesh.client import Client
from mesh.schema import Action, ListQuery
from mesh.waiting import wait_until
from scheduler.store import DB_FILE
from tests.integration.cluster import SMALL, Mesh, start_mesh, stop_mesh

pytestmark = pytest.mark.integration

RETENTION = 3.0


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    cluster, config, (small,) = start_mesh(tmp_path_factory.mktemp("retention"), SMALL,
                                           retention=RETENTION)
    try:
        yield Mesh(cluster, Client(), config, small, small)
    finally:
        stop_mesh(cluster)


def rows(mesh: Mesh, table: str, ids: Sequence[str]) -> int:
    db = sqlite3.connect(f"file:{Path(mesh.config.state_dir) / DB_FILE}?mode=ro", uri=True)
    try:
        column = "id" if table == "actions" else "action_id"
        marks = ", ".join("?" * len(ids))
        return int(db.execute(f"SELECT count(*) FROM {table} WHERE {column} IN ({marks})",
                              ids).fetchone()[0])
    finally:
        db.close()


def test_finished_actions_events_and_logs_expire_and_unfinished_ones_stay(short: Mesh) -> None:
    client = short.client
    relay = bootstrap.relay_handle()
    long = client.submit(Action(command=["sleep", "60"], cpus=0))  # the worker has 1 CPU
    done = [h.id for h in client.submit_many(
        [Action(command=["sh", "-c", f"echo line {i}"]) for i in range(8)])]
    wait_until(lambda: [client.get(a).stage for a in done],
               lambda stages: all(s is Stage.SUCCEEDED for s in stages), timeout=60,
               what="the short actions run")
    assert [line.text for line in client.handle(done[0]).logs()] == ["line 0"]
    assert rows(short, "journal", done) > 0

    def expired(action_id: str) -> bool:
        try:
            client.get(action_id)
        except NotFound as exc:
            assert "expired" in str(exc), exc
            return True
        return False

    wait_until(lambda: [expired(a) for a in done], all, timeout=RETENTION * 10,
               interval=0.5, what="every finished action expired")
    for table in ("actions", "attempts", "journal"):
        assert rows(short, table, done) == 0, f"{table} rows left"
    wait_until(lambda: [calls.call(relay.attempts, a) for a in done],
               lambda found: not any(found), timeout=RETENTION * 10, interval=0.5,
               what="the relay forgetting their logs")
    with pytest.raises(NotFound, match="expired"):
        list(client.handle(done[0]).events(follow=False))
    assert client.get(long.id).stage is Stage.RUNNING, "an unfinished action was deleted"
    assert {s.id for s in client.list()}.isdisjoint(done)
    client.cancel(long.id)


def test_a_listing_pages_through_every_action_exactly_once_while_more_are_added(
        short: Mesh) -> None:
    client = short.client
    waits = Action(command=["sleep", "5"], cpus=64)  # queued: listed without running
    first = [h.id for h in client.submit_many([waits] * 12, reject_unplaceable=False)]
    query = ListQuery(limit=5)
    seen: list[str] = []
    added: list[str] = []
    while True:
        page = client.page(query)
        seen += [s.id for s in page.actions]
        if len(added) < 10:
            added += [h.id for h in client.submit_many([waits] * 5, reject_unplaceable=False)]
        if page.cursor is None:
            break
        query = query.model_copy(update={"after": page.cursor})
    mine = [a for a in seen if a in set(first) | set(added)]
    assert len(mine) == len(set(mine)), "an action was listed twice"
    assert mine == first + added, "an action was missed"
    for action_id in first + added:
        client.cancel(action_id)
