"""The Python client's end of the client link (mesh/v1/client.proto): `run` and `result` by
gRPC straight to the scheduler; `LinkDown` whenever the link cannot carry a call."""

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
from mesh.channels import channel
from mesh.errors import SchedulerUnavailable
from mesh.protocol import LinkGrant
from mesh.rpcerrors import carried_error
from mesh.v1 import KEEPALIVE_OPTIONS, MAX_DOWN, RESULT, RUN, bearer, serialize
from mesh.v1 import client_pb2 as cpb

log = logging.getLogger("actionmesh.client")

# A call waits this long for a new channel to connect (a few ms where the link's port can
# be reached), then goes over Ray while the channel goes on connecting in the background,
# for up to CONNECT_TIMEOUT in all: a client that cannot reach the port (outside the
# cluster's network, say) loses FIRST_CONNECT_WAIT once per grant, not a call's time.
FIRST_CONNECT_WAIT = 0.1
CONNECT_TIMEOUT = 10.0
# After the link failed (or was not granted), calls go over Ray this long before the link is
# tried again, doubling with each failure until a call gets through.
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
# Statuses that say the channel is of no more use: the server is gone, restarted (a new
# token), does not serve the link, or the channel was closed under the call.
_DEAD = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED,
                   grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.CANCELLED})
OPTIONS = [*KEEPALIVE_OPTIONS, ("grpc.max_receive_message_length", MAX_DOWN)]


class LinkDown(Exception):
    """The client link could not carry the call; nothing is known of its effect."""


class ClientLink:
    """Calls over the client link, opened at first use with the grant `ask_grant` gets
    (the scheduler's `client_grant`, over Ray). Safe to share between threads: while one
    asks for a grant, the others' calls go over Ray."""

    def __init__(self, ask_grant: Callable[[], Any],
                 clock: Callable[[], float] = time.monotonic,
                 connect_wait: float = FIRST_CONNECT_WAIT,
                 call_timeout: float = CALL_TIMEOUT) -> None:
        self.ask_grant = ask_grant
        self.clock = clock
        self.connect_wait = connect_wait
        self.call_timeout = call_timeout
        self._lock = threading.Lock()
        self._granting = False
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
        """Close the channel; a later call asks for a new grant."""
        with self._lock:
            self._drop()

    def _call(self, method: str, request: Any, reply: Any, wait: float) -> Any:
        channel, metadata = self._open()
        try:
            stub = channel.unary_unary(method, request_serializer=serialize,
                                       response_deserializer=reply.FromString)
            answer = stub(request, timeout=wait + self.call_timeout, metadata=metadata)
        except ValueError as exc:  # closed by another thread since `_open` handed it out
            raise LinkDown(str(exc)) from None
        except grpc.RpcError as exc:
            ours = carried_error(exc)
            if ours is not None:
                self._got_through()
                raise ours from None
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                # As a Ray call that long unanswered: asking again would wait as long.
                raise SchedulerUnavailable(
                    f"no answer within {wait + self.call_timeout:g}s") from None
            why = f"{code.name}: {exc.details()}"  # type: ignore[attr-defined]
            if code in _DEAD:
                with self._lock:
                    if channel is self._channel:  # (else another call dropped it already)
                        self._back_off(why)
            raise LinkDown(why) from None
        self._got_through()
        return answer

    def _open(self) -> tuple[grpc.Channel, tuple[tuple[str, str], ...]]:
        granting = False
        with self._lock:
            if self._channel is None:
                if self._granting:
                    raise LinkDown("the client link is being granted")
                if self.clock() < self._retry_at:
                    raise LinkDown("the client link failed lately")
                self._granting = granting = True
        if granting:
            self._grant()  # the Ray call, outside the lock
        with self._lock:
            if self._channel is None or self._ready is None:
                raise LinkDown("the client link was dropped")
            if not self._ready.done():
                if self.clock() - self._connecting_since > CONNECT_TIMEOUT:
                    self._back_off(f"it did not connect within {CONNECT_TIMEOUT:g}s")
                    raise LinkDown("the client link did not connect")
                raise LinkDown("the client link is connecting")
            return self._channel, self._metadata

    def _grant(self) -> None:
        """Ask for a grant and open a channel with it, waiting up to `connect_wait` for it
        to connect; LinkDown if there is none."""
        try:
            answer = self.ask_grant()
            grant = None if answer is None else arrived(LinkGrant, answer, "link grant")
        except Exception as exc:  # an older scheduler, one not answering: Ray it is
            with self._lock:
                self._granting = False
                self._back_off(f"no grant: {exc!r}")
            raise LinkDown("no client link") from None
        if grant is None:
            with self._lock:
                self._granting = False
                self._back_off("the scheduler does not serve it")
            raise LinkDown("no client link")
        made = channel(f"{grant.host}:{grant.port}", grant.root_certificate.encode() or None,
                       grant.server_name, OPTIONS)
        ready = grpc.channel_ready_future(made)
        with contextlib.suppress(grpc.FutureTimeoutError):
            ready.result(timeout=self.connect_wait)
        with self._lock:
            self._granting = False
            self._channel, self._ready = made, ready
            self._metadata = (bearer(grant.credential),)
            self._connecting_since = self.clock()

    def _got_through(self) -> None:
        self._pause = RETRY_FIRST

    def _back_off(self, why: str) -> None:
        """(Holding the lock.) Calls go over Ray for a while, the while doubling until one
        gets through; the next try asks for a new grant."""
        log.info("client link unusable (%s): calls go over Ray for %gs", why, self._pause)
        self._drop()
        self._retry_at = self.clock() + self._pause
        self._pause = min(RETRY_MAX, self._pause * 2)

    def _drop(self) -> None:
        """(Holding the lock.) Close the channel: calls still on it end (CANCELLED)."""
        if self._ready is not None:
            self._ready.cancel()
        if self._channel is not None:
            self._channel.close()
        self._channel, self._ready = None, None
