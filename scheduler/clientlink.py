"""The scheduler's end of the client link (mesh/v1/client.proto): `Run` and `Result`
answered on the scheduler's event loop, beside the agent link, for callers holding the token
that the scheduler hands out over Ray."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from mesh.arrival import as_json
from mesh.rpcerrors import abort
from mesh.schema import ActionId, SubmitOutcome
from mesh.v1 import RESULT, RUN, holds_token, serialize, split_path
from mesh.v1 import client_pb2 as cpb

# The scheduler actor's own calls, which check what they are given: submit one action (its
# JSON) and wait; wait for an action's end. Both answer JSON text, None while it runs.
RunCall = Callable[[str, bool, float], Awaitable[tuple[SubmitOutcome, str | None]]]
ResultCall = Callable[[ActionId, float], Awaitable[str | None]]


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
        await self._admit(context)
        try:
            outcome, status = await self._run(request.action, request.reject_unplaceable,
                                              request.wait)
        except Exception as exc:
            await abort(context, exc, "scheduler")
        return cpb.RunReply(outcome=as_json(outcome), status=status)

    async def result(self, request: cpb.ResultRequest, context: aio.ServicerContext) -> Any:
        await self._admit(context)
        try:
            status = await self._result(ActionId(request.action_id), request.wait)
        except Exception as exc:
            await abort(context, exc, "scheduler")
        return cpb.ResultReply(status=status)

    async def _admit(self, context: aio.ServicerContext) -> None:
        if not holds_token(context.invocation_metadata(), self.token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "a token from this scheduler's client_grant is required")
