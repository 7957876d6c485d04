"""The event log's readers: a page after a point, waiting for the next entries when asked."""

from __future__ import annotations

import asyncio

from mesh.schema import EventPage, EventQuery
from scheduler.store import Store

# The longest one read waits for new entries (a follower asks again after it).
MAX_WAIT = 60.0


class JournalReads:
    """Pages of the event log from the store. The log is only read back from the store,
    so what a reader is given has been written: after a restart it continues where it
    stopped, with nothing missed and nothing twice."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._grew = asyncio.Event()
        store.listeners.append(self._wake)

    def _wake(self, _: object) -> None:
        self._grew.set()
        self._grew = asyncio.Event()  # waiters hold the one that was set

    async def read(self, query: EventQuery, timeout: float = 0.0) -> EventPage:
        """The entries after `query.after`; when there are none yet, waits up to `timeout`
        seconds for the log to grow and reads again (a page may still come back empty:
        new entries that match nothing move `last` on)."""
        page = self.store.journal(query)
        wait = min(max(timeout, 0.0), MAX_WAIT)
        if page.events or wait == 0.0 or page.last < self.store.last_event:
            return page
        grew = self._grew
        try:
            await asyncio.wait_for(grew.wait(), wait)
        except TimeoutError:
            return page
        return self.store.journal(query.model_copy(update={"after": page.last}))
