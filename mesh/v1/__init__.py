"""The actionmesh.v1 protobuf contract (the `.proto` files here) and its generated Python.

Services are served and called by their method paths, read from the descriptors, so the
Python needs no generated service stubs (which would be untyped)."""

from __future__ import annotations

from mesh.v1 import link_pb2

# The call metadata that opens an agent's stream: who it is, and its credential.
AGENT_KEY = "x-actionmesh-agent"
AUTHORIZATION_KEY = "authorization"


def method_path(service: str, method: str) -> str:
    """`/package.Service/Method`, as gRPC names a method on the wire."""
    found = link_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    return f"/{found.containing_service.full_name}/{found.name}"


CONNECT = method_path("AgentLink", "Connect")
