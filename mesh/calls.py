"""Calls from a user's process to the mesh actors, with Ray's errors turned into ours."""

from __future__ import annotations

from typing import Any

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
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, MeshError):
            raise cause from None
        raise MeshError(f"the mesh failed a call: {cause!r}") from exc
    except GetTimeoutError as exc:
        raise SchedulerUnavailable(f"no answer within {timeout:g}s") from exc
    except RayActorError as exc:
        raise SchedulerUnavailable(f"the mesh actor is unavailable: {exc}") from exc
    except RayError as exc:
        raise ClusterUnavailable(str(exc)) from exc
