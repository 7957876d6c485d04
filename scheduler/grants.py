"""Agents' grants to the link: the link served (its port retried while it cannot be had),
and each agent handed its grant by a Ray call to its own actor, again when it seems lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from mesh.protocol import LinkGrant
from mesh.schema import AgentId, AgentInfo
from scheduler.agent_handle import AgentGone, AgentHandle, AgentUnreachable
from scheduler.link import LinkServer

log = logging.getLogger("actionmesh.scheduler")

# Pauses between attempts to serve the agent link while its port cannot be had.
LINK_RETRY_FIRST, LINK_RETRY_MAX = 1.0, 30.0
# An agent reporting by Ray calls this long after its last grant is handed another.
REGRANT_AFTER = 10.0


class Grants:
    """Hands the registered agents (`handles`, the shell's own) their grants."""

    def __init__(self, link: LinkServer, handles: dict[AgentId, AgentHandle],
                 identity: Callable[[AgentId], AgentInfo | None], clock: Callable[[], float],
                 spawn: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self.link = link
        self.handles = handles
        self.identity = identity
        self.clock = clock
        self.spawn = spawn
        self.granted_at: dict[AgentId, float] = {}

    async def serve(self) -> None:
        """Serve the agent link, trying again with a growing pause while its port cannot
        be had (agents report by Ray calls meanwhile: slower, but nothing is lost); then
        hand every agent its grant."""
        pause = LINK_RETRY_FIRST
        while True:
            try:
                port = await self.link.start()
                break
            except Exception as exc:
                log.error("agent link not served on %s:%d (%r); agents report by Ray calls; "
                          "trying again in %gs", self.link.host, self.link.port, exc, pause)
            await asyncio.sleep(pause)
            pause = min(LINK_RETRY_MAX, pause * 2)
        log.info("agent link on %s:%d%s", self.link.host, port,
                 " (TLS)" if self.link.tls else "")
        for agent_id in list(self.handles):
            self.send(agent_id)

    def send(self, agent_id: AgentId) -> None:
        """Hand the agent its grant (once the link serves), by a Ray call to the agent's
        own actor: only that actor learns its credential."""
        info = self.identity(agent_id)
        grant = None if info is None else self.link.grant(info)
        if grant is not None:
            self.granted_at[agent_id] = self.clock()
            self.spawn(self._grant(agent_id, self.handles[agent_id], grant))

    def by_ray_call(self, agent_id: AgentId) -> None:
        """An agent reported by Ray call: if the link serves and the agent has had no
        stream for a while, its grant may have been lost (or refused): hand it again."""
        if (agent_id in self.handles and not self.link.on_stream(agent_id)
                and self.clock() - self.granted_at.get(agent_id, 0.0) >= REGRANT_AFTER):
            self.send(agent_id)

    async def _grant(self, agent_id: AgentId, handle: AgentHandle, grant: LinkGrant) -> None:
        try:
            await handle.link(grant)
        except (AgentGone, AgentUnreachable):
            pass  # the watch on the agent sees to it; a new handle gets a new grant
        except Exception as exc:
            log.warning("agent %s refused its link grant: %r; it reports by Ray calls",
                        agent_id, exc)
