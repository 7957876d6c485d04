"""The pool as operators shape it, from the scheduler's side: the pool config (applied, or
followed from its file), blocks, jobs' dispatch when asked or due, and the dispatcher's HTTP
endpoint; each change written before it is answered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mesh.poolconfig import GroupStatus, PoolConfig, PoolStatus
from mesh.schema import MeshConfig
from scheduler.core.state import SchedulerState
from scheduler.durable import Writer
from scheduler.poolfile import PoolFile

if TYPE_CHECKING:
    from scheduler.http import DispatchHttp

log = logging.getLogger("actionmesh.scheduler")

# Seconds between looks at the pool config file and at whether a dispatch is due.
POOL_CHECK_INTERVAL = 2.0


class PoolKeeper:
    """Operators' pool changes, each refused while the store is read-only, then written,
    then followed by a pass (`kick`)."""

    def __init__(self, core: SchedulerState, writer: Writer, kick: Callable[[], None],
                 config: MeshConfig, clock: Callable[[], float]) -> None:
        self.core = core
        self.writer = writer
        self.kick = kick
        self.config = config
        self.clock = clock
        self.looks = 0  # turns of the loop following the file, for whoever waits on one
        self.http_port: int | None = None
        self._http: DispatchHttp | None = None

    def apply(self, config: PoolConfig, file_digest: str | None = None) -> PoolStatus:
        """Put a pool config in force, durably; `file_digest`: read from the pool config
        file, with that content."""
        self.writer.refuse_if_read_only("pool config changes")
        status = self.core.apply_pool(config, self.clock(), file_digest)
        self._written("the pool config")
        return status

    def block(self, group: str, blocked: bool) -> GroupStatus:
        self.writer.refuse_if_read_only("blocks")
        status = self.core.block_group(group, blocked, self.clock())
        self._written("the block" if blocked else "the unblock")
        return status

    def dispatch(self) -> PoolStatus:
        """Assign jobs to groups again now."""
        self.writer.refuse_if_read_only("dispatches")
        status = self.core.dispatch(self.clock())
        self._written("the dispatch")
        return status

    def _written(self, what: str) -> None:
        self.kick()
        self.writer.write_change(what)

    async def follow(self) -> None:
        """Follow the pool config file, if one was named, and dispatch jobs when due."""
        watched = (PoolFile(self.config.pool_config, self.core.groups.file_digest)
                   if self.config.pool_config else None)
        while True:
            try:
                if not self.writer.read_only:
                    self._look(watched)
            except Exception:
                log.exception("pool upkeep failed; will try again")
            await asyncio.sleep(POOL_CHECK_INTERVAL)

    def _look(self, watched: PoolFile | None) -> None:
        self.looks += 1
        edited = watched.changed() if watched is not None else None
        if edited is not None:
            config, digest = edited
            self.apply(config, digest)
            log.info("pool config %s applied: %d group(s)", watched and watched.path,
                     len(config.groups))
        elif self.core.dispatch_due(self.clock()):
            self.dispatch()

    async def serve_http(self, port: int) -> None:
        # Imported here: aiohttp takes ~0.25 s to import, which a scheduler without the
        # endpoint (most) would otherwise pay again at every restart.
        from scheduler.http import DispatchHttp

        http = DispatchHttp(self.config.http_host, port,
                            lambda job: self.core.job_home(job, self.clock()), self.dispatch)
        try:
            self.http_port = await http.start()
        except OSError as exc:
            log.error("the dispatcher's HTTP endpoint cannot serve on %s:%d: %s",
                      self.config.http_host, port, exc)
            return
        self._http = http
        log.info("dispatcher HTTP endpoint on %s:%d", self.config.http_host, self.http_port)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
