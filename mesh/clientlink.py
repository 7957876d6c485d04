"""The Python client's end of the client link (mesh/v1/client.proto): `run` and `result`
by gRPC straight to the scheduler, with the grant it hands out over Ray; `LinkDown` whenever
the link cannot carry a call, which the client then makes over Ray."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from mesh.arrival import arrived
from mesh.calls import CALL_TIMEOUT
from mesh.errors import SchedulerUnavailable
from mesh.protocol import LinkGrant
from mesh.rpcerrors import carried_error
from mesh.v1 import AUTHORIZATION_KEY, RESULT, RUN, serialize
from mesh.v1 import client_pb2 as cpb

log = logging.getLogger("actionmesh.client")

# A call waits this long for a new channel to connect (a few ms where the link's port can
# be reached), then goes over Ray while the channel goes on connecting in the background,
# for up to CONNECT_TIMEOUT in all: a client that cannot reach the port (outside the
# cluster's network, say) loses FIRST_CONNECT_WAIT once per grant, not a call's time.
FIRST_CONNECT_WAIT = 0.1
CONNECT_TIMEOUT = 10.0
# After the link failed (or was not granted), calls go over Ray this long before the link is
# tried again, doubling with each failure in a row: a client that cannot reach the link's
# port pays for the attempt rarely.
RETRY_FIRST, RETRY_MAX = 1.0, 60.0


class LinkDown(Exception):
    """The client link could not carry the call; nothing is known of its effect."""


class ClientLink:
    """Calls over the client link, opened at first use with the grant `ask_grant` gets
    (the scheduler's `client_grant`, over Ray). Safe to share between threads."""

    def __init__(self, ask_grant: Callable[[], Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ask_grant = ask_grant
        self.clock = clock
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._ready: grpc.Future | None = None
        self._connecting_since = 0.0
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._retry_at = 0.0
        self._pause = RETRY_FIRST

    @property
    def serving(self) -> bool:
        """Whether calls go over the link now (it was granted and connected)."""
        return self._channel is not None and self._ready is not None and self._ready.done()

    def run(self, action: str, reject_unplaceable: bool, wait: float,
            ) -> tuple[str, str | None]:
        """Submit one action (its JSON) and wait up to `wait` seconds for its end: the
        outcome's JSON, and the status's once it ended."""
        reply = self._call(RUN, cpb.RunRequest(action=action,
                                               reject_unplaceable=reject_unplaceable,
                                               wait=wait), cpb.RunReply, wait)
        return reply.outcome, reply.status if reply.HasField("status") else None

    def result(self, action_id: str, wait: float) -> str | None:
        """Wait up to `wait` seconds for the action's end: its status's JSON, or None."""
        reply = self._call(RESULT, cpb.ResultRequest(action_id=action_id, wait=wait),
                           cpb.ResultReply, wait)
        return reply.status if reply.HasField("status") else None

    def close(self) -> None:
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def _call(self, method: str, request: Any, reply: Any, wait: float) -> Any:
        channel, metadata = self._open()
        stub = channel.unary_unary(method, request_serializer=serialize,
                                   response_deserializer=reply.FromString)
        try:
            return stub(request, timeout=wait + CALL_TIMEOUT, metadata=metadata)
        except grpc.RpcError as exc:
            ours = carried_error(exc)
            if ours is not None:
                raise ours from None
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                # As a Ray call that long unanswered: asking again would wait as long.
                raise SchedulerUnavailable(f"no answer within {wait + CALL_TIMEOUT:g}s") \
                    from None
            why = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
            with self._lock:
                if channel is self._channel:  # (else another call dropped it already)
                    self._back_off(why)
            raise LinkDown(why) from None

    def _open(self) -> tuple[grpc.Channel, tuple[tuple[str, str], ...]]:
        with self._lock:
            if self._channel is None:
                self._grant()
            assert self._channel is not None and self._ready is not None
            if not self._ready.done():
                if self.clock() - self._connecting_since > CONNECT_TIMEOUT:
                    self._back_off(f"it did not connect within {CONNECT_TIMEOUT:g}s")
                    raise LinkDown("the client link did not connect")
                raise LinkDown("the client link is connecting")
            self._pause = RETRY_FIRST
            return self._channel, self._metadata

    def _grant(self) -> None:
        """(Holding the lock.) A new grant, and a channel connecting with it; waits up to
        FIRST_CONNECT_WAIT for it to connect."""
        if self.clock() < self._retry_at:
            raise LinkDown("the client link failed lately")
        # Asked while holding the lock: other threads wait for it rather than ask too.
        answer = self.ask_grant()
        if answer is None:
            self._back_off("the scheduler does not serve it")
            raise LinkDown("no client link")
        grant = arrived(LinkGrant, answer, "link grant")
        self._channel = _channel(grant)
        self._metadata = ((AUTHORIZATION_KEY, f"Bearer {grant.credential}"),)
        self._ready = grpc.channel_ready_future(self._channel)
        self._connecting_since = self.clock()
        with contextlib.suppress(grpc.FutureTimeoutError):
            self._ready.result(timeout=FIRST_CONNECT_WAIT)

    def _back_off(self, why: str) -> None:
        """(Holding the lock.) Calls go over Ray for a while; the next try asks for a new
        grant. A call still on the dropped channel ends with it."""
        log.info("client link unusable (%s): calls go over Ray for %gs", why, self._pause)
        if self._ready is not None:
            self._ready.cancel()
        if self._channel is not None:
            self._channel.close()
        self._channel, self._ready = None, None
        self._retry_at = self.clock() + self._pause
        self._pause = min(RETRY_MAX, self._pause * 2)


def _channel(grant: LinkGrant) -> grpc.Channel:
    target = f"{grant.host}:{grant.port}"
    if not grant.root_certificate:
        return grpc.insecure_channel(target)
    options = [("grpc.ssl_target_name_override", grant.server_name)] if grant.server_name else []
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(
        grant.root_certificate.encode()), options=options)
