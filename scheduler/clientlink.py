"""The scheduler's end of the client link (mesh/v1/client.proto): `Run` and `Result`
answered on the scheduler's event loop, beside the agent link, for callers holding the token
that the scheduler hands out over Ray."""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from mesh.arrival import as_json
from mesh.errors import MeshError
from mesh.rpcerrors import error_trailer, status_code
from mesh.schema import ActionId, SubmitOutcome
from mesh.v1 import AUTHORIZATION_KEY, RESULT, RUN, serialize, split_path
from mesh.v1 import client_pb2 as cpb

log = logging.getLogger("actionmesh.scheduler.link")

# The scheduler actor's own calls, which check what they are given: submit one action (its
# JSON) and wait; wait for an action's end. Both answer JSON text, None while it runs.
RunCall = Callable[[str, bool, float], Awaitable[tuple[SubmitOutcome, str | None]]]
ResultCall = Callable[[ActionId, float], Awaitable[str | None]]


# The longest status message sent.
MAX_DETAILS = 4096


class ClientLinkService:
    """The service, and the token that admits a call. A new token with each scheduler
    process: a client granted by the one before asks again."""

    def __init__(self, run: RunCall, result: ResultCall) -> None:
        self.token = secrets.token_urlsafe(32)
        self._run = run
        self._result = result

    def handler(self) -> grpc.GenericRpcHandler:
        service, run = split_path(RUN)
        _, result = split_path(RESULT)
        return grpc.method_handlers_generic_handler(service, {
            run: grpc.unary_unary_rpc_method_handler(
                self.run, request_deserializer=cpb.RunRequest.FromString,
                response_serializer=serialize),
            result: grpc.unary_unary_rpc_method_handler(
                self.result, request_deserializer=cpb.ResultRequest.FromString,
                response_serializer=serialize)})

    async def run(self, request: cpb.RunRequest, context: aio.ServicerContext) -> Any:
        if not self._admitted(context):
            return cpb.RunReply()
        try:
            outcome, status = await self._run(request.action, request.reject_unplaceable,
                                              request.wait)
        except Exception as exc:
            _failed(context, exc)
            return cpb.RunReply()
        return cpb.RunReply(outcome=as_json(outcome), status=status)

    async def result(self, request: cpb.ResultRequest, context: aio.ServicerContext) -> Any:
        if not self._admitted(context):
            return cpb.ResultReply()
        try:
            status = await self._result(ActionId(request.action_id), request.wait)
        except Exception as exc:
            _failed(context, exc)
            return cpb.ResultReply()
        return cpb.ResultReply(status=status)

    def _admitted(self, context: aio.ServicerContext) -> bool:
        sent = str(dict(context.invocation_metadata() or ()).get(AUTHORIZATION_KEY, ""))
        scheme, _, token = sent.partition(" ")
        # The token is compared in constant time.
        if scheme == "Bearer" and hmac.compare_digest(token.encode(), self.token.encode()):
            return True
        context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        context.set_details("a token from this scheduler's client_grant is required")
        return False


def _failed(context: aio.ServicerContext, exc: Exception) -> None:
    """Set the call's status to our error's code and kind (gRPC then sends the status, not
    the reply); anything else is a bug of ours, logged here and shown as INTERNAL."""
    if isinstance(exc, MeshError):
        context.set_code(status_code(exc))
        # (Cut short: gRPC refuses metadata, the status's message included, past 8 KiB.)
        context.set_details((str(exc) or type(exc).__name__)[:MAX_DETAILS])
        context.set_trailing_metadata(error_trailer(exc))
        return
    log.exception("a client link call failed", exc_info=exc)
    context.set_code(grpc.StatusCode.INTERNAL)
    context.set_details(f"the scheduler failed: {type(exc).__name__}")
