"""Our errors across gRPC: the status code each ends a call with, and, for the Python
client's own link, the same error raised again on the caller's side."""

from __future__ import annotations

import json
import logging
from typing import Any, NoReturn

import grpc
from grpc import aio

from mesh import errors
from mesh.v1 import ERROR_KEY

# Our errors as gRPC status codes; the most specific class first.
_CODES: list[tuple[type[errors.MeshError], grpc.StatusCode]] = [
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Busy, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unplaceable, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    # Another cluster's state dir, or one it may not use: an operator must act.
    (errors.StateDirRefused, grpc.StatusCode.FAILED_PRECONDITION),
    # State it cannot read yet (a full disk, a damaged file): it reads again by itself.
    (errors.StateCorrupt, grpc.StatusCode.UNAVAILABLE),
    (errors.StoreReadOnly, grpc.StatusCode.UNAVAILABLE),
    (errors.SchedulerUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.MeshNotRunning, grpc.StatusCode.UNAVAILABLE),
    (errors.ClusterUnavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_code(exc: errors.MeshError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


# The longest status message sent: gRPC refuses metadata, the message included, past 8 KiB.
MAX_DETAILS = 4096
# What a trailer carries of an error's fields or ids: gRPC refuses metadata past 8 KiB in
# all, and the status's message names them too.
TRAILER_ITEMS, TRAILER_TEXT = 20, 120


async def abort(context: aio.ServicerContext, exc: Exception, server: str) -> NoReturn:
    """End the call with our error's status code, message and kind (trailing metadata);
    anything else is a bug of the `server`'s, logged there and shown to the caller as
    INTERNAL without its traceback."""
    if isinstance(exc, errors.MeshError):
        await context.abort(status_code(exc), (str(exc) or type(exc).__name__)[:MAX_DETAILS],
                            trailing_metadata=error_trailer(exc))
    logging.getLogger(f"actionmesh.{server}").exception("a %s call failed", server,
                                                        exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"the {server} failed: {type(exc).__name__}")
    raise AssertionError("grpc's abort raises")  # (grpc's types do not say so)


def error_trailer(exc: errors.MeshError) -> tuple[tuple[str, str]]:
    """Trailing metadata naming the error's kind (and, for bad input, its first fields)."""
    told: dict[str, Any] = {"kind": type(exc).__name__}
    if isinstance(exc, errors.InvalidInput):
        told["fields"] = [(path[:TRAILER_TEXT], why[:TRAILER_TEXT])
                          for path, why in exc.errors[:TRAILER_ITEMS]]
    elif isinstance(exc, errors.Unplaceable):
        told["action_ids"] = [i[:TRAILER_TEXT] for i in exc.action_ids[:TRAILER_ITEMS]]
    return ((ERROR_KEY, json.dumps(told)),)


def carried_error(error: grpc.RpcError) -> errors.MeshError | None:
    """The error of ours that ended a call, as it was raised there; None when the call
    ended for another reason (the link or the server failed)."""
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    text = trailers.get(ERROR_KEY)
    if not isinstance(text, str):
        return None
    try:
        told = json.loads(text)
        kind = getattr(errors, str(told["kind"]), None)
        message = str(error.details())  # type: ignore[attr-defined]
    except (ValueError, KeyError, TypeError):
        return None
    if not (isinstance(kind, type) and issubclass(kind, errors.MeshError)):
        return errors.MeshError(message)
    if issubclass(kind, errors.InvalidInput):
        fields = told.get("fields") or []
        return kind(message, [(str(path), str(why)) for path, why in fields])
    if issubclass(kind, errors.Unplaceable):
        return kind(message, [str(i) for i in told.get("action_ids") or []])
    return kind(message)
