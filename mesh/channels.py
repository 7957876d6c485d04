"""gRPC channels to the mesh's servers: plain, or TLS trusting one given certificate."""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

Options = list[tuple[str, Any]]


def _secured(options: Options, server_name: str) -> Options:
    return [*options, ("grpc.ssl_target_name_override", server_name)] if server_name \
        else options


def channel(target: str, root_certificate: bytes | None, server_name: str = "",
            options: Options | None = None) -> grpc.Channel:
    """A blocking channel; TLS when a certificate is given, trusting only it."""
    if root_certificate is None:
        return grpc.insecure_channel(target, options=options or [])
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificate),
                               options=_secured(options or [], server_name))


def aio_channel(target: str, root_certificate: bytes | None, server_name: str = "",
                options: Options | None = None) -> aio.Channel:
    """`channel` for an event loop."""
    if root_certificate is None:
        return aio.insecure_channel(target, options=options or [])
    return aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificate),
                              options=_secured(options or [], server_name))
