"""The agent's calls out to the mesh: named-actor look-ups and the relay's log sink."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError

from mesh.names import NAMESPACE
from mesh.schema import ActionId, LogBatch

log = logging.getLogger(__name__)

# How long a fire-and-forget call is watched for an actor failure; a slower answer is fine.
WATCH_SECONDS = 30.0
# How long closes of empty logs gather before they go to the relay in one call.
EMPTY_CLOSE_LINGER = 0.05


class NamedActor:
    """A handle to a named mesh actor, looked up on first use and again after a failure."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._handle: Any = None
        self._watches: set[asyncio.Task[None]] = set()

    async def get(self) -> Any:
        """The handle; ValueError when no such actor exists (yet)."""
        if self._handle is None:
            # get_actor blocks on the GCS: off the event loop, or every call of the agent waits.
            lookup = functools.partial(ray.get_actor, self.name, namespace=NAMESPACE)
            self._handle = await asyncio.get_running_loop().run_in_executor(None, lookup)
        return self._handle

    def forget(self) -> None:
        self._handle = None

    def watch(self, ref: Any, on_failure: Callable[[], None] | None = None,
              on_result: Callable[[Any], None] | None = None) -> None:
        """Follow a fire-and-forget call: on an actor failure, forget the handle and call
        `on_failure()`, so that the next call looks the actor up again; hand an answer to
        `on_result`."""
        task = asyncio.get_running_loop().create_task(self._check(ref, on_failure, on_result))
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)

    async def _check(self, ref: Any, on_failure: Callable[[], None] | None,
                     on_result: Callable[[Any], None] | None) -> None:
        try:
            result = await asyncio.wait_for(resolve(ref), WATCH_SECONDS)
            if on_result is not None:
                on_result(result)
        except TimeoutError:
            pass  # slow, not gone
        except RayActorError as exc:
            log.warning("call to %s failed: %s", self.name, exc)
            self.forget()
            if on_failure is not None:
                on_failure()
        except Exception as exc:
            log.warning("call to %s raised: %r", self.name, exc)


async def resolve(ref: Any) -> Any:
    return await ref


class RelayLogs:
    """LogSink: awaits `relay.append` / `relay.close`, looking the relay up again once after
    an actor failure (the relay keys lines by offset, so a repeated batch is harmless).

    The close of an attempt that printed nothing is not awaited: with no lines there is no
    incomplete log to see, so such closes gather for `EMPTY_CLOSE_LINGER` seconds and go
    in one `close_many` call (at hundreds of short attempts a second, one call each was a
    quarter of a core on the relay).
    """

    def __init__(self, relay: NamedActor) -> None:
        self.relay = relay
        self._empty: list[tuple[str, int, int]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def push(self, batch: LogBatch) -> None:
        await self._call("append", batch)

    async def close(self, action_id: ActionId, attempt: int, total_lines: int) -> None:
        if total_lines:
            await self._call("close", action_id, attempt, total_lines)
            return
        self._empty.append((str(action_id), attempt, 0))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_empty())

    async def _flush_empty(self) -> None:
        # Loop: closes that arrive while a batch is in flight go in the next one.
        while self._empty:
            await asyncio.sleep(EMPTY_CLOSE_LINGER)
            ends, self._empty = self._empty, []
            try:
                await self._call("close_many", ends)
            except Exception as exc:
                log.warning("closing %d empty logs failed: %r", len(ends), exc)

    async def _call(self, method: str, *args: Any) -> None:
        for retry in (False, True):
            handle = await self.relay.get()
            try:
                await getattr(handle, method).remote(*args)
                return
            except RayActorError:
                self.relay.forget()
                if retry:
                    raise
