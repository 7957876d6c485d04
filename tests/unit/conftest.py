"""Fixtures of the agent's unit tests: in-memory sinks, and an executor reporting to them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent.executor import Executor
from tests.agent_support import RecordingSinks, executor


@pytest.fixture
def sinks() -> RecordingSinks:
    return RecordingSinks()


@pytest.fixture
async def ex(sinks: RecordingSinks) -> AsyncIterator[Executor]:
    """An executor with CONFIG reporting to `sinks`, shut down after the test."""
    async with executor(sinks) as started:
        yield started
