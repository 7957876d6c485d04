"""The dispatcher's small HTTP endpoint on the head, for tools outside the cluster (as the
Prow dispatcher serves its own): where a job goes, and a dispatch on request."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from mesh.arrival import arrived_job
from mesh.errors import InvalidInput, MeshError, NotFound
from mesh.poolconfig import JobHome, PoolStatus

log = logging.getLogger("actionmesh.scheduler")


class DispatchHttp:
    """`GET /assignment?job=NAME` answers the job's group as JSON (404 for a job with none);
    `GET /event?dispatch=true` dispatches jobs now and answers the groups."""

    def __init__(self, host: str, port: int, home: Callable[[str], JobHome],
                 dispatch: Callable[[], PoolStatus]) -> None:
        self.host, self.port = host, port
        self._home, self._dispatch = home, dispatch
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Serve; returns the port (the one picked, for port 0)."""
        app = web.Application()
        app.router.add_get("/assignment", self._assignment)
        app.router.add_get("/event", self._event)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        port: int = self._runner.addresses[0][1]
        return port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _assignment(self, request: web.Request) -> web.Response:
        try:
            home = self._home(arrived_job(request.query.get("job", "")))
        except InvalidInput as exc:
            return _error(400, str(exc))
        except NotFound as exc:
            return _error(404, str(exc))
        return web.json_response(home.model_dump(mode="json"))

    async def _event(self, request: web.Request) -> web.Response:
        if request.query.get("dispatch", "").lower() != "true":
            return _error(400, "dispatch: the only event is dispatch=true")
        try:
            status = self._dispatch()
        except MeshError as exc:
            return _error(503, str(exc))
        return web.json_response({
            "dispatched_at": status.dispatched_at,
            "groups": {g.name: {"jobs": g.jobs, "load": g.load, "blocked": g.blocked}
                       for g in status.groups}})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
