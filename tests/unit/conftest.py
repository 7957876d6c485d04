"""Fixtures of the agent's unit tests: in-memory sinks, an executor reporting to them, and
this machine's control groups."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from agent import cgroups
from agent.cgroups import Cgroups
from agent.executor import Executor
from tests.agent_support import RecordingSinks, executor
from tests.conftest import IN_CI


@pytest.fixture
def sinks() -> RecordingSinks:
    return RecordingSinks()


@pytest.fixture
async def ex(sinks: RecordingSinks) -> AsyncIterator[Executor]:
    """An executor with CONFIG reporting to `sinks`, shut down after the test."""
    async with executor(sinks) as started:
        yield started


@pytest.fixture
def machine() -> Iterator[Cgroups]:
    """This machine's cgroups, as an agent of node `test-<random>` would have them (its
    process token `earlier`); skipped with the reason where there are none the tests may
    write, except in CI, where the build machine is known to have them."""
    found = cgroups.detect(f"actionmesh-test-{uuid.uuid4().hex[:8]}-earlier-{os.getpid()}")
    if found is None:
        if IN_CI:
            pytest.fail("no writable cgroup hierarchy on a CI machine")
        pytest.skip("this machine offers no cgroup hierarchy the tests may write")
    yield found
    for base in found.bases():
        cgroups.kill_tree(base)
        cgroups.remove(base, wait=2.0)
