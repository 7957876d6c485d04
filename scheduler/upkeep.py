"""Upkeep of the durable state, off the scheduling path: accounts written while balances
move, and finished actions deleted once past retention, a small batch at a time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from scheduler.core.state import SchedulerState
from scheduler.durable import Writer

log = logging.getLogger("actionmesh.scheduler")

# How often balances are written while they change; account changes are written at once.
ACCOUNT_SAVE_INTERVAL = 1.0
# Actions deleted per transaction: each batch is short, and a scheduling step may run
# between two of them.
EXPIRE_BATCH = 500


class Upkeep:
    def __init__(self, core: SchedulerState, writer: Writer, clock: Callable[[], float],
                 retention: float, every: float) -> None:
        self.core = core
        self.writer = writer
        self.clock = clock
        self.retention = retention
        self.every = every

    async def save_accounts(self) -> None:
        while True:
            await asyncio.sleep(ACCOUNT_SAVE_INTERVAL)
            try:
                self.writer.save_accounts()
            except Exception:
                log.exception("saving the quota accounts failed; will retry")

    async def expire(self) -> None:
        """Delete what finished longer ago than the retention period. An expired id is
        remembered for one more period, so that asking for it says it expired."""
        while True:
            await asyncio.sleep(self.every)
            try:
                while not self.writer.read_only:
                    now = self.clock()
                    gone = self.writer.expire(now - self.retention,
                                              now - 2 * self.retention, EXPIRE_BATCH)
                    self.core.expired(gone)
                    if len(gone) < EXPIRE_BATCH:
                        break
                    await asyncio.sleep(0)
            except Exception:
                log.exception("deleting expired actions failed; will retry")
