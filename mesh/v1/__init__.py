"""The actionmesh.v1 protobuf contract (the `.proto` files here) and its generated Python.

Services are served and called by their method paths, read from the descriptors, so the
Python needs no generated service stubs (which would be untyped)."""

from __future__ import annotations

import hmac
from typing import Any

from google.protobuf import descriptor_pool

from mesh.v1 import client_pb2, gateway_pb2, link_pb2  # noqa: F401 (registers their descriptors)

# What one message of the agent link may take. Up, reports and load are small, so anything
# near the limit is a peer that does not speak the protocol; down, a message carries whole
# actions (each at most about 1 MiB of command and environment).
MAX_UP = 4 * 1024 * 1024
MAX_DOWN = 16 * 1024 * 1024
# gRPC keepalive on both ends: a peer that vanished without closing (its machine died, a
# partition) is noticed after about 35 s, not TCP's ~15 minutes; an idle stream costs a
# ping each way every 30 s.
KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

# The call metadata that opens an agent's stream: who it is, and its credential.
AGENT_KEY = "x-actionmesh-agent"
AUTHORIZATION_KEY = "authorization"
# The trailing metadata that names the kind of our error ending a client-link call.
ERROR_KEY = "x-actionmesh-error"


def serialize(message: Any) -> bytes:
    """A message's wire bytes (the serializer every call here is given)."""
    data: bytes = message.SerializeToString()
    return data


def method_path(service: str, method: str) -> str:
    """`/package.Service/Method`, as gRPC names a method on the wire."""
    found = descriptor_pool.Default().FindServiceByName(f"actionmesh.v1.{service}")\
        .methods_by_name[method]
    return f"/{found.containing_service.full_name}/{found.name}"


def bearer(token: str) -> tuple[str, str]:
    """The metadata entry that carries `token` to a server: `authorization: Bearer <token>`."""
    return AUTHORIZATION_KEY, f"Bearer {token}"


def bearer_token(metadata: Any) -> str:
    """The token of a call's `authorization: Bearer <token>` metadata, "" if it has none;
    the scheme is case-insensitive (RFC 7235)."""
    sent = dict(metadata or ()).get(AUTHORIZATION_KEY, "")
    if not isinstance(sent, str):
        return ""
    scheme, _, token = sent.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def holds_token(metadata: Any, expected: str) -> bool:
    """Whether a call's metadata carries `expected` as its bearer token, compared in
    constant time."""
    sent = bearer_token(metadata)
    return bool(sent) and hmac.compare_digest(sent.encode(), expected.encode())


def split_path(path: str) -> tuple[str, str]:
    """The service and the method of a method path, as a generic handler takes them."""
    service, _, method = path.strip("/").partition("/")
    return service, method


CONNECT = method_path("AgentLink", "Connect")
RUN = method_path("ClientLink", "Run")
RESULT = method_path("ClientLink", "Result")
