"""The scheduler's body with a pool config file it follows and the dispatcher's HTTP endpoint,
driven in memory (no agents: neither needs one)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mesh.errors import InvalidInput
from mesh.poolconfig import PoolConfig
from mesh.schema import MeshConfig
from mesh.waiting import async_wait_until
from scheduler.agent_handle import AgentHandle
from scheduler.shell import Scheduler

pytestmark = pytest.mark.timeout(30)

BIG = "groups:\n  big: {match: {labels: ['pool:big']}}\n"
BIG_AND_SMALL = BIG + "  small: {match: {hostnames: ['s*']}, capacity: 50}\n"


def _unreachable(node: str, config: MeshConfig) -> AgentHandle:
    raise AssertionError("no node is listed, so no agent is made")


async def started(config: MeshConfig) -> Scheduler:
    scheduler = Scheduler(config, agent_factory=_unreachable, list_nodes=lambda: [])
    scheduler.ensure_started()
    return scheduler


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    path = tmp_path / "pool.yaml"
    path.write_text(BIG)
    return path


@pytest.fixture
async def watching(tmp_path: Path, pool_file: Path) -> AsyncIterator[Scheduler]:
    """A scheduler following `pool_file`, with the dispatcher's endpoint on a free port."""
    scheduler = await started(MeshConfig(state_dir=str(tmp_path / "state"), link="ray",
                                         pool_config=str(pool_file), http_port=0))
    yield scheduler
    await scheduler.shutdown()


def groups_of(s: Scheduler) -> list[str]:
    return list(s.core.groups.config.groups)


def edit(path: Path, text: str) -> None:
    """Write the file and move its time on, as an editor's save would (two saves within
    the file system's time resolution must still read as a change)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


async def test_the_file_is_applied_at_start_and_followed_and_a_bad_edit_is_refused(
        watching: Scheduler, pool_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    await async_wait_until(lambda: groups_of(watching), lambda g: g == ["big"], 10,
                           "the file applied at start")
    edit(pool_file, BIG_AND_SMALL)
    await async_wait_until(lambda: groups_of(watching), lambda g: g == ["big", "small"], 10,
                           "the edit applied")
    with caplog.at_level(logging.ERROR, logger="actionmesh.scheduler"):
        edit(pool_file, BIG_AND_SMALL.replace("capacity: 50", "capacity: 0"))
        await async_wait_until(lambda: caplog.text, lambda t: "refused" in t, 10,
                               "the bad edit refused in the log")
    assert "groups.small.capacity" in caplog.text, caplog.text
    assert groups_of(watching) == ["big", "small"], "the config in force stays"
    assert watching.core.groups.config.groups["small"].capacity == 50
    edit(pool_file, BIG)
    await async_wait_until(lambda: groups_of(watching), lambda g: g == ["big"], 10,
                           "a good edit after a bad one applied")


async def test_a_restart_keeps_the_config_applied_by_hand_until_the_file_changes(
        tmp_path: Path, pool_file: Path) -> None:
    config = MeshConfig(state_dir=str(tmp_path / "state"), link="ray",
                        pool_config=str(pool_file))
    first = await started(config)
    await async_wait_until(lambda: groups_of(first), lambda g: g == ["big"], 10,
                           "the file applied at start")
    first.pools.apply(PoolConfig.parse(BIG_AND_SMALL))
    with pytest.raises(InvalidInput, match=r"groups\.small\.capacity"):
        first.pools.apply(PoolConfig.parse(BIG_AND_SMALL.replace("50", "101")))
    await first.shutdown()
    first.store.close()
    again = await started(config)
    await async_wait_until(lambda: again.pools.looks, lambda n: n >= 2, 10,
                           "the pool loop's second look at the file")
    assert groups_of(again) == ["big", "small"], "the unchanged file is not applied again"
    assert again.core.groups.config.groups["small"].capacity == 50
    edit(pool_file, BIG + "  other: {match: {hostnames: ['o*']}}\n")
    await async_wait_until(lambda: groups_of(again), lambda g: g == ["big", "other"], 10,
                           "the file's edit applied over the config applied by hand")
    await again.shutdown()


async def test_the_http_endpoint_answers_assignments_and_dispatches(
        watching: Scheduler) -> None:
    await async_wait_until(lambda: watching.pools.http_port, bool, 10, "the endpoint serving")
    watching.pools.apply(PoolConfig.parse(BIG + "assignments: {docs: big}\n"))
    base = f"http://127.0.0.1:{watching.pools.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/assignment", params={"job": "docs"}) as answer:
            assert answer.status == 200
            assert await answer.json() == {"job": "docs", "group": "big", "how": "manual",
                                           "pinned": False, "load": 0.0}
        async with http.get(f"{base}/assignment", params={"job": "unknown"}) as answer:
            assert answer.status == 404
            assert "has no group" in (await answer.json())["error"]
        async with http.get(f"{base}/assignment") as answer:
            assert answer.status == 400
        before = watching.core.groups.dispatched_at
        async with http.get(f"{base}/event", params={"dispatch": "true"}) as answer:
            assert answer.status == 200
            body = await answer.json()
        assert body["groups"]["big"]["jobs"] == 1
        assert watching.core.groups.dispatched_at is not None
        assert before is None or watching.core.groups.dispatched_at >= before
        async with http.get(f"{base}/event") as answer:
            assert answer.status == 400
