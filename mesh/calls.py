"""Calls from a user's process to the mesh actors, with Ray's errors turned into ours."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, NoReturn

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from mesh.errors import ClusterUnavailable, MeshError, SchedulerUnavailable

CALL_TIMEOUT = 60.0


def send(method: Any, *args: Any) -> Any:
    """`method.remote(*args)`: the reference to wait on with `wait`."""
    try:
        return method.remote(*args)
    except RayError as exc:
        raise ClusterUnavailable(str(exc)) from exc


def call(method: Any, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
    """`method.remote(*args)` and wait for it; our own errors raised there pass through."""
    return wait(send(method, *args), timeout)


def wait(ref: Any, timeout: float = CALL_TIMEOUT) -> Any:
    """The answer behind `ref`, with Ray's errors translated."""
    try:
        return ray.get(ref, timeout=timeout)
    except RayError as exc:
        _raise(exc, timeout)


async def ask(method: Any, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
    """`call` for a coroutine: the answer of `method.remote(*args)`, awaited."""
    ref = send(method, *args)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
    except asyncio.CancelledError:
        # Whoever awaited is gone (a gateway client left): a parked wait must not go on
        # holding the actor's slot, nor its answer cross for nobody.
        with contextlib.suppress(Exception):
            ray.cancel(ref)
        raise
    except TimeoutError:
        raise SchedulerUnavailable(f"no answer within {timeout:g}s") from None
    except RayError as exc:
        _raise(exc, timeout)


def _raise(exc: RayError, timeout: float) -> NoReturn:
    """Raise our error for a Ray error of a call: ours raised in the actor as it was."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, MeshError):
            raise cause from None
        raise MeshError(f"the mesh failed a call: {cause!r}") from exc
    if isinstance(exc, GetTimeoutError):
        raise SchedulerUnavailable(f"no answer within {timeout:g}s") from exc
    if isinstance(exc, RayActorError):
        raise SchedulerUnavailable(f"the mesh actor is unavailable: {exc}") from exc
    raise ClusterUnavailable(str(exc)) from exc
