"""gRPC channels to the mesh's servers: plain, or TLS trusting one given certificate."""

from __future__ import annotations

from types import ModuleType
from typing import Any, cast

import grpc
from grpc import aio

Options = list[tuple[str, Any]]


def channel(target: str, root_certificate: bytes | None, server_name: str = "",
            options: Options | None = None) -> grpc.Channel:
    """A blocking channel; TLS when a certificate is given, trusting only it."""
    return cast(grpc.Channel, _open(grpc, target, root_certificate, server_name, options))


def aio_channel(target: str, root_certificate: bytes | None, server_name: str = "",
                options: Options | None = None) -> aio.Channel:
    """`channel` for an event loop."""
    return cast(aio.Channel, _open(aio, target, root_certificate, server_name, options))


def _open(kind: ModuleType, target: str, root_certificate: bytes | None, server_name: str,
          options: Options | None) -> Any:
    # grpc and grpc.aio make channels with the same two calls.
    options = list(options or [])
    if root_certificate is None:
        return kind.insecure_channel(target, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return kind.secure_channel(target, grpc.ssl_channel_credentials(root_certificate),
                               options=options)
