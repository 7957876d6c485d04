"""The gRPC gateway: actionmesh.v1.Gateway served on the head for controllers in any
language, with token authentication, TLS when configured, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import ray
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh import calls, gatewayconv, names
from mesh.arrival import arrived, as_json
from mesh.errors import (
    Busy,
    ClusterUnavailable,
    InvalidInput,
    MeshError,
    MeshNotRunning,
    SchedulerUnavailable,
    Unplaceable,
)
from mesh.metrics import METRICS_INTERVAL, Recorder
from mesh.rpcerrors import abort
from mesh.schema import (
    AccountStatus,
    FollowedEvents,
    GatewayConfig,
    MeshConfig,
    check_token,
)
from mesh.v1 import KEEPALIVE_OPTIONS, holds_token, serialize
from mesh.v1 import gateway_pb2 as gpb
from mesh.watch import LINGER, Cursor, Follower

log = logging.getLogger("actionmesh.gateway")

SERVICE = gpb.DESCRIPTOR.services_by_name["Gateway"].full_name
HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"
# How often health asks the scheduler whether it serves.
HEALTH_EVERY = 2.0
# The largest request taken: an action is at most about 1 MiB of command and environment.
MAX_REQUEST = 4 * 1024 * 1024
OPTIONS: list[tuple[str, int]] = [
    *KEEPALIVE_OPTIONS,
    ("grpc.max_receive_message_length", MAX_REQUEST),
    ("grpc.so_reuseport", 0),
]
START_TIMEOUT = 30.0

def gateway_options() -> dict[str, Any]:
    """`.options(...)` for the one gateway: detached, named, on the head, restarted forever."""
    return {**names.on_the_head(names.GATEWAY), "max_restarts": -1, "max_task_retries": -1}


class Gateway:
    """The service's methods: each takes a request message and the call's context, checks
    the request, asks the scheduler (or follows an action through it and the relay) and
    answers in messages. Our errors end a call with their status code and message."""

    def __init__(self, find: Callable[[str], Any], max_streams: int) -> None:
        self._find = find
        self._found: dict[str, Any] = {}
        self.max_streams = max_streams
        self.open_streams = 0  # counted from the check on, before any await
        self.followers: set[Follower] = set()  # one per stream following its action

    @property
    def scheduler(self) -> Any:
        return self._actor(names.SCHEDULER)

    @property
    def relay(self) -> Any:
        return self._actor(names.RELAY)

    def _actor(self, name: str) -> Any:
        """The named mesh actor's handle, looked up once and again after it failed: a
        scheduler made anew by a later `mesh up` is another actor than the one gone."""
        found = self._found.get(name)
        if found is None:
            try:
                found = self._found[name] = self._find(name)
            except ValueError:
                raise MeshNotRunning(f"no {name} on the cluster: is the mesh up?") from None
        return found

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, SchedulerUnavailable | MeshNotRunning):
            self._found.clear()

    async def watch_health(self, healthy: health.aio.HealthServicer) -> None:
        """Say SERVING while the scheduler answers and serves, NOT_SERVING otherwise."""
        serving = health_pb2.HealthCheckResponse.SERVING
        while True:
            try:
                state = await calls.ask(self.scheduler.health, timeout=HEALTH_EVERY * 2)
                ok = state.serving
            except Exception as exc:
                self._failed(exc)
                ok = False
            status = serving if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE):
                await healthy.set(name, status)
            await asyncio.sleep(HEALTH_EVERY)

    def handlers(self) -> grpc.GenericRpcHandler:
        unary: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "Cancel": self.cancel, "Get": self.get, "List": self.list_actions,
            "ListAgents": self.list_agents, "CreateAccount": self.create_account,
            "ModifyAccount": self.modify_account, "DeleteAccount": self.delete_account,
            "ListAccounts": self.list_accounts}
        streams: dict[str, Callable[[Any], AsyncIterator[Any]]] = {
            "Submit": self.submit, "Watch": self.watch}
        methods = gpb.DESCRIPTOR.services_by_name["Gateway"].methods_by_name
        table: dict[str, grpc.RpcMethodHandler] = {}
        for name, method in unary.items():
            table[name] = grpc.unary_unary_rpc_method_handler(
                _answering(method, self._failed), request_deserializer=_parser(methods[name]),
                response_serializer=serialize)
        for name, stream in streams.items():
            table[name] = grpc.unary_stream_rpc_method_handler(
                _streaming(stream, self._failed), request_deserializer=_parser(methods[name]),
                response_serializer=serialize)
        return grpc.method_handlers_generic_handler(SERVICE, table)

    # ---- following actions ---------------------------------------------------------------

    async def submit(self, request: gpb.SubmitRequest) -> AsyncIterator[gpb.ActionEvent]:
        action = gatewayconv.action(request).identified()
        with self._stream():  # before submitting: an accepted action is followed
            outcome, first = await calls.ask(self.scheduler.submit_and_follow,
                                             as_json(action), not request.allow_unplaceable,
                                             LINGER)
            if not outcome.accepted:
                raise Unplaceable(outcome.reason, [outcome.action_id])
            async for event in self._follow(Cursor(outcome.action_id), request.without_logs,
                                            first):
                yield event

    async def watch(self, request: gpb.WatchRequest) -> AsyncIterator[gpb.ActionEvent]:
        with self._stream():
            async for event in self._follow(Cursor(*gatewayconv.cursor(request)),
                                            request.without_logs):
                yield event

    @contextlib.contextmanager
    def _stream(self) -> Iterator[None]:
        """One of the streams this gateway keeps open at most (max_streams); Busy past
        them. Taken before the first await, so streams opened together count together."""
        if self.open_streams >= self.max_streams:
            raise Busy(f"{self.open_streams} streams are open, the most this gateway keeps "
                       "(max_streams); try again later")
        self.open_streams += 1
        try:
            yield
        finally:
            self.open_streams -= 1

    async def _follow(self, cursor: Cursor, without_logs: bool,
                      first: FollowedEvents | None = None) -> AsyncIterator[gpb.ActionEvent]:
        follower = Follower(self.scheduler, self.relay, cursor, not without_logs, first)
        self.followers.add(follower)
        try:
            # Closed here, not when the collector finds it: a client gone stops its calls now.
            async with contextlib.aclosing(follower.events()) as events:
                async for event in events:
                    yield event
        finally:
            self.followers.discard(follower)

    # ---- one answer each -----------------------------------------------------------------

    async def cancel(self, request: gpb.ActionRef) -> gpb.ActionStatus:
        status = await calls.ask(self.scheduler.cancel, gatewayconv.action_id(request.action_id))
        return gatewayconv.status_pb(status)

    async def get(self, request: gpb.ActionRef) -> gpb.ActionStatus:
        status = await calls.ask(self.scheduler.get, gatewayconv.action_id(request.action_id))
        return gatewayconv.status_pb(status)

    async def list_actions(self, request: gpb.ListRequest) -> gpb.ListResponse:
        page = await calls.ask(self.scheduler.page, gatewayconv.list_query(request))
        return gatewayconv.page_pb(page)

    async def list_agents(self, request: gpb.ListAgentsRequest) -> gpb.ListAgentsResponse:
        agents = await calls.ask(self.scheduler.pool)
        return gpb.ListAgentsResponse(agents=[gatewayconv.agent_pb(a) for a in agents])

    async def create_account(self, request: gpb.CreateAccountRequest) -> gpb.AccountStatus:
        account_id = gatewayconv.account_id(request.account_id)
        config = gatewayconv.new_account_config(request)
        status: AccountStatus = await calls.ask(self.scheduler.create_account, account_id,
                                                config)
        return gatewayconv.account_pb(status)

    async def modify_account(self, request: gpb.ModifyAccountRequest) -> gpb.AccountStatus:
        account_id = gatewayconv.account_id(request.account_id)
        changes = gatewayconv.account_changes(request)
        status: AccountStatus = await calls.ask(self.scheduler.modify_account, account_id,
                                                changes, request.reset_balance)
        return gatewayconv.account_pb(status)

    async def delete_account(self, request: gpb.AccountRef) -> gpb.DeleteAccountResponse:
        await calls.ask(self.scheduler.delete_account,
                        gatewayconv.account_id(request.account_id))
        return gpb.DeleteAccountResponse()

    async def list_accounts(self, request: gpb.ListAccountsRequest,
                            ) -> gpb.ListAccountsResponse:
        accounts: list[AccountStatus] = await calls.ask(self.scheduler.accounts)
        return gpb.ListAccountsResponse(accounts=[gatewayconv.account_pb(a) for a in accounts])


def _parser(method: Any) -> Callable[[bytes], Any]:
    return functools.partial(_parse, getattr(gpb, method.input_type.name))


def _parse(kind: Any, data: bytes) -> Any:
    return kind.FromString(data)


Failed = Callable[[Exception], None]


def _answering(method: Callable[[Any], Awaitable[Any]], failed: Failed,
               ) -> Callable[[Any, aio.ServicerContext], Awaitable[Any]]:
    async def answer(request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await method(request)
        except Exception as exc:
            failed(exc)
            await abort(context, exc, "gateway")
    return answer


def _streaming(method: Callable[[Any], AsyncIterator[Any]], failed: Failed,
               ) -> Callable[[Any, aio.ServicerContext], AsyncIterator[Any]]:
    async def stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for message in method(request):
                yield message
        except Exception as exc:
            failed(exc)
            await abort(context, exc, "gateway")
    return stream


class TokenCheck(aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses every call without `authorization: Bearer <token>` with UNAUTHENTICATED,
    before its handler runs; the health service answers anyone, as probes expect."""

    def __init__(self, token: str) -> None:
        self._expected = token

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        if holds_token(details.invocation_metadata, self._expected):
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses the call."""
    why = "a valid token is required: send `authorization: Bearer <token>` metadata"

    async def refuse(request: Any, context: aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    shape = {(False, False): grpc.unary_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler,
             (True, True): grpc.stream_stream_rpc_method_handler}
    make = shape[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def _token(config: GatewayConfig) -> str:
    if config.token is not None:
        return config.token.get_secret_value()
    assert config.token_file is not None
    try:
        return check_token(Path(config.token_file).read_text().strip(), "the token")
    except OSError as exc:
        raise InvalidInput(f"token_file: cannot read {config.token_file}: {exc.strerror}",
                           [("token_file", str(exc.strerror))]) from None
    except ValueError as exc:
        raise InvalidInput(f"token_file: {config.token_file}: {exc}",
                           [("token_file", str(exc))]) from None


async def serve(config: GatewayConfig, gateway: Gateway,
                ) -> tuple[aio.Server, int, health.aio.HealthServicer]:
    """Start the server; returns it, the port it listens on and its health servicer."""
    server = aio.server(options=OPTIONS, interceptors=[TokenCheck(_token(config))])
    server.add_generic_rpc_handlers([gateway.handlers()])
    healthy = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(healthy, server)
    reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME,
                                         reflection.SERVICE_NAME], server)
    address = f"{config.host}:{config.port}"
    try:
        if config.cert is None or config.key is None:
            port = server.add_insecure_port(address)
        else:
            pair = (Path(config.key).read_bytes(), Path(config.cert).read_bytes())
            port = server.add_secure_port(address, grpc.ssl_server_credentials([pair]))
        await server.start()
    except BaseException:
        await server.stop(grace=None)
        raise
    return server, port, healthy


def _named(name: str) -> Any:
    return ray.get_actor(name, namespace=names.NAMESPACE)


async def _record_streams(gateway: Gateway) -> None:
    metrics = Recorder()
    while True:
        metrics.set("gateway_streams", gateway.open_streams)
        await asyncio.sleep(METRICS_INTERVAL)


@ray.remote(num_cpus=0)
class GatewayActor:
    """Runs the server on a thread of its own event loop, from construction on: a gateway
    Ray restarts serves again without being asked."""

    def __init__(self, config: MeshConfig) -> None:
        logging.basicConfig(level=logging.INFO)
        mesh = arrived(MeshConfig, config, "config")
        if mesh.gateway is None:
            raise InvalidInput("gateway: not configured", [("gateway", "required")])
        self.config = mesh.gateway
        self._port: int | None = None
        self._gateway: Gateway | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        # The dashboard's actor list shows it by its role (the port is known once serving).
        return f"gateway {self.config.host}:{self._port or self.config.port}"

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        try:
            gateway = self._gateway = Gateway(_named, self.config.max_streams)
            server, self._port, healthy = await serve(self.config, self._gateway)
        except BaseException as exc:
            log.error("the gateway could not start: %r", exc)
            self._error = exc
            self._started.set()
            return
        log.info("gateway serving on %s:%d", self.config.host, self._port)
        self._started.set()
        try:
            await asyncio.gather(gateway.watch_health(healthy), server.wait_for_termination(),
                                 _record_streams(gateway))
        finally:
            # Serving is this actor's whole job: a process that stopped serving exits, so
            # that Ray starts it again.
            log.error("the gateway stopped serving; exiting to be restarted")
            os._exit(1)

    def port(self) -> int:
        """The port it listens on, once it does; its start's error otherwise."""
        if not self._started.wait(START_TIMEOUT):
            raise SchedulerUnavailable("the gateway did not start in time")
        if self._error is not None:
            if isinstance(self._error, MeshError):
                raise self._error
            raise ClusterUnavailable(f"the gateway could not start: {self._error!r}")
        assert self._port is not None
        return self._port

    def settings(self) -> GatewayConfig:
        """What it was started with (`mesh up` replaces a gateway started otherwise)."""
        return self.config

    def streams(self) -> int:
        """How many Submit and Watch streams are open."""
        return 0 if self._gateway is None else self._gateway.open_streams

    def backlog(self) -> int:
        """Events waiting in the open streams for their clients to read them."""
        return 0 if self._gateway is None else sum(f.backlog for f in self._gateway.followers)
