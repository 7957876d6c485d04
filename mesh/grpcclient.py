"""A thin Python client of the gRPC gateway, for controllers that reach the mesh over the
network rather than as a Ray driver: its calls take and return actionmesh.v1 messages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from mesh.channels import channel
from mesh.v1 import bearer, method_path, serialize
from mesh.v1 import gateway_pb2 as gpb
from mesh.v1 import link_pb2 as pb

# The gateway's answers may carry whole listings; its stream chunks stay below 1 MiB.
MAX_RECEIVE = 64 * 1024 * 1024


def _unary(channel: grpc.Channel, name: str, answer: Any) -> Any:
    return channel.unary_unary(method_path("Gateway", name),
                               request_serializer=serialize,
                               response_deserializer=answer.FromString)


class GatewayClient:
    """Calls to one gateway with one token. Streams are iterators of `ActionEvent`; each
    call raises grpc.RpcError with the gateway's status code and message."""

    def __init__(self, address: str, token: str, root_certificate: bytes | None = None,
                 server_name: str | None = None) -> None:
        self.channel = channel(address, root_certificate, server_name or "",
                               [("grpc.max_receive_message_length", MAX_RECEIVE)])
        self.metadata = (bearer(token),)
        streaming = {"Submit": gpb.SubmitRequest, "Watch": gpb.WatchRequest}
        self._streams = {name: self.channel.unary_stream(
            method_path("Gateway", name), request_serializer=serialize,
            response_deserializer=gpb.ActionEvent.FromString) for name in streaming}
        self._calls = {name: _unary(self.channel, name, answer) for name, answer in {
            "Cancel": gpb.ActionStatus, "Get": gpb.ActionStatus, "List": gpb.ListResponse,
            "ListAgents": gpb.ListAgentsResponse, "CreateAccount": gpb.AccountStatus,
            "ModifyAccount": gpb.AccountStatus, "DeleteAccount": gpb.DeleteAccountResponse,
            "ListAccounts": gpb.ListAccountsResponse}.items()}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, action: pb.Action, allow_unplaceable: bool = False,
               without_logs: bool = False, timeout: float | None = None,
               ) -> Iterator[gpb.ActionEvent]:
        """Submit and follow: the stream's events, the last one the final status.
        Cancelling the returned iterator (`.cancel()`) ends the stream, not the action."""
        return self.stream("Submit", gpb.SubmitRequest(
            action=action, allow_unplaceable=allow_unplaceable, without_logs=without_logs),
            timeout)

    def watch(self, action_id: str, after_seq: int = 0, attempt: int = 0,
              from_offset: int = 0, without_logs: bool = False,
              timeout: float | None = None) -> Iterator[gpb.ActionEvent]:
        return self.stream("Watch", gpb.WatchRequest(
            action_id=action_id, after_seq=after_seq, attempt=attempt,
            from_offset=from_offset, without_logs=without_logs), timeout)

    def stream(self, name: str, request: Any, timeout: float | None = None,
               ) -> Iterator[gpb.ActionEvent]:
        """One streaming call by its method name (`Submit`, `Watch`)."""
        events: Iterator[gpb.ActionEvent] = self._streams[name](
            request, metadata=self.metadata, timeout=timeout)
        return events

    def call(self, name: str, request: Any, timeout: float | None = 60.0) -> Any:
        """One unary call by its method name (`Get`, `ListAgents`, ...)."""
        return self._calls[name](request, metadata=self.metadata, timeout=timeout)

    def get(self, action_id: str) -> gpb.ActionStatus:
        status: gpb.ActionStatus = self.call("Get", gpb.ActionRef(action_id=action_id))
        return status

    def cancel(self, action_id: str) -> gpb.ActionStatus:
        status: gpb.ActionStatus = self.call("Cancel", gpb.ActionRef(action_id=action_id))
        return status
