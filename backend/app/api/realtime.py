"""Real time: ``WS /api/v1/ws`` and ``GET /api/v1/deployments/{id}/events`` (Server-Sent Events).

Thin: the protocol's frames are parsed and checked here, the subscriptions, catch-up and backpressure
live in :mod:`backend.app.runtime.realtime`, container output in :mod:`backend.app.services.deployments.service_logs`.
The protocol is described in docs/api.md ("Real time") and typed in :mod:`backend.app.schemas.events`.

About 500 lines because the WebSocket protocol is here once for both servers that carry it (uvicorn's ASGI
route below and the listener of :mod:`backend.app.api.realtime_listener`), with the SSE stream beside it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

from backend.app import database
from backend.app.api.deployments import DeploymentDep
from backend.app.api.deps import CurrentUser, SessionDep, get_settings, resolve_token
from backend.app.config import Settings
from backend.app.core.events import iso_utc
from backend.app.core.exceptions import DatabaseUnavailable, NotAuthenticated, NotFound, ValidationFailed, WindFlowError
from backend.app.models import Deployment, Role, User
from backend.app.runtime import metrics
from backend.app.runtime.realtime.access import Access, credential_access, load_access
from backend.app.runtime.realtime.client import CLOSE_UNAUTHORIZED, HEARTBEAT_SECONDS, Client, monotonic_deadline
from backend.app.schemas.events import AuthFrame, ClientFrame, ServerFrame, SubscribeFrame, UnsubscribeFrame
from backend.app.services.deployments import service_logs
from backend.app.services.identity import organization_service

logger = logging.getLogger(__name__)
router = APIRouter(tags=["realtime"])

AUTH_TIMEOUT_SECONDS = 10.0
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455: "try again later" (the database is unreachable)
MAX_FRAME_CHARS = 16_384
_client_frame = TypeAdapter(ClientFrame)


# --- WebSocket ---------------------------------------------------------------------------------------
#
# One protocol, two servers: uvicorn's ASGI route below and the WebSocket listener of
# ``api/realtime_listener.py`` (picows, ``WS_PORT``). Each gives :func:`serve` a :class:`Connection` and a
# :class:`WebSocketClient` of its own; the authentication, frames, subscriptions and heartbeats are these.


class Connection(ABC):
    """One WebSocket connection as the protocol sees it, whichever server carries it."""

    peer: str = "unknown"

    @abstractmethod
    async def receive(self) -> str | bytes | None:
        """The next message: its text, its bytes (a binary frame), or None once the connection is gone."""

    @abstractmethod
    async def close(self, code: int, reason: str) -> None:
        """Close the connection (nothing when it is already closed or gone)."""

    @abstractmethod
    def client(self, access: Access, expires_at: datetime | None) -> WebSocketClient:
        """The real-time client that sends this connection's frames."""


class WebSocketClient(Client):
    """A WebSocket's real-time client; its server's subclass sends the frames (:meth:`Client.send_text`)."""

    def __init__(self, connection: Connection, access: Access, expires_at: datetime | None) -> None:
        super().__init__(access, "websocket")
        self.connection = connection
        self.expires_at = expires_at
        self.services: dict[str, service_logs.ServiceLogFollower] = {}
        self.direct = True  # the hub sends events itself from its delivery (Client.send_now)


class AsgiClient(WebSocketClient):
    def __init__(self, connection: AsgiConnection, access: Access, expires_at: datetime | None) -> None:
        super().__init__(connection, access, expires_at)
        self.asgi_send = connection.send  # the connection's ASGI send (see EventsSocket)
        self.event_send = connection.send  # the hub's events too: its shared message goes to the ASGI send as it is

    async def send_text(self, text: str, seq: int | None = None, kind: str | None = None) -> None:
        await self.asgi_send({"type": "websocket.send", "text": text})


class AsgiConnection(Connection):
    def __init__(self, websocket: WebSocket, send: Send) -> None:
        self.websocket = websocket
        self.send = send
        self.peer = websocket.client.host if websocket.client else "unknown"

    async def receive(self) -> str | bytes | None:
        try:
            message = await self.websocket.receive()
        except (WebSocketDisconnect, RuntimeError):  # gone (receive after the disconnect message)
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        return text if text is not None else (message.get("bytes") or b"")

    async def close(self, code: int, reason: str) -> None:
        if self.websocket.client_state is WebSocketState.CONNECTED:
            try:
                await self.websocket.close(code, reason[:120])
            except (RuntimeError, OSError):
                pass

    def client(self, access: Access, expires_at: datetime | None) -> WebSocketClient:
        return AsgiClient(self, access, expires_at)


def _error(code: str, detail: str, **ids: str | None) -> dict:
    return {"type": "error", "code": code, "detail": detail, **{k: v for k, v in ids.items() if v}}


async def _resolve(settings: Settings, token: str):
    async with database.AsyncSessionLocal() as session:
        return await resolve_token(session, settings, token)


async def _first_auth(connection: Connection, settings: Settings):
    """The first frame must be ``auth`` within 10 s; anything else closes with 4401."""
    try:
        raw = await asyncio.wait_for(connection.receive(), AUTH_TIMEOUT_SECONDS)
    except TimeoutError:
        await connection.close(CLOSE_UNAUTHORIZED, "no auth frame within 10 s")
        return None
    if not isinstance(raw, str):  # gone, or a binary frame
        if raw is not None:
            await connection.close(CLOSE_UNAUTHORIZED, "the first frame must be a JSON auth frame")
        return None
    try:
        frame = AuthFrame.model_validate_json(raw[:MAX_FRAME_CHARS])
    except ValidationError:
        await connection.close(CLOSE_UNAUTHORIZED, 'the first frame must be {"type": "auth", "token": ...}')
        return None
    try:
        return await _resolve(settings, frame.token)
    except NotAuthenticated as exc:
        logger.info("WebSocket authentication refused from %s: %s", connection.peer, exc.code)
        await connection.close(CLOSE_UNAUTHORIZED, exc.detail[:120])
        return None


class EventsSocket:
    """``WS /api/v1/ws`` as a plain ASGI endpoint (a decorated function would only see Starlette's
    ``WebSocket``): the frames of the connection, the hub's events above all, go straight to the ASGI ``send``
    it is called with. That spares each frame ``WebSocket.send``'s checks and the route's exception wrapper
    around ``send`` (on the benchmark machine a fifth of what the public path costs per client and event
    over writing pre-built frames, bench/README.md); accepting, reading and closing use the ``WebSocket``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        await serve(AsgiConnection(websocket, send), get_settings(websocket))


async def serve(connection: Connection, settings: Settings) -> None:
    """Real-time events over an accepted connection. First frame ``{"type": "auth", "token": ...}``; see docs/api.md."""
    try:
        credential = await _first_auth(connection, settings)
        if credential is None:
            return
        access, api_tokens = await load_access({credential.user.id}, {credential.api_token_id} - {None})
    except Exception as exc:
        if not database.is_unavailable(exc):
            raise
        # the client's usual reconnection (with backoff) succeeds once the database is back
        logger.warning(
            "WebSocket from %s refused: the database is unreachable (%s)",
            connection.peer,
            f"{type(exc).__name__}: {exc}".splitlines()[0][:200],
        )
        await connection.close(CLOSE_TRY_AGAIN_LATER, "database unavailable; retry in a few seconds")
        return
    client = connection.client(access[credential.user.id], credential.expires_at)
    client.access = credential_access(client.access, api_tokens, credential.api_token_id, credential.user.token_generation)
    await client.send(
        {
            "type": "authenticated",
            "user_id": credential.user.id,
            "expires_at": iso_utc(credential.expires_at) if credential.expires_at else None,
        }
    )
    client.start()
    metrics.WEBSOCKET_CONNECTIONS.inc()
    logger.info("WebSocket connected: user %s from %s", credential.user.id, connection.peer)
    reader = asyncio.create_task(_read_frames(client, settings), name="ws-reader")
    watchdog = asyncio.create_task(_watch(client, settings.WS_REAUTH_GRACE_SECONDS), name="ws-watchdog")
    try:
        await client.closed.wait()
    finally:
        for task in (reader, watchdog):
            task.cancel()
        await asyncio.gather(reader, watchdog, return_exceptions=True)
        for follower in client.services.values():
            await follower.stop()
        await client.stop()
        metrics.WEBSOCKET_CONNECTIONS.dec()
        logger.info("WebSocket closed: user %s (%s)", credential.user.id, client.close_reason or "closed")
        await connection.close(client.close_code, (client.close_reason or "")[:120])


router.add_websocket_route("/ws", EventsSocket(), name="events_socket")


async def _read_frames(client: WebSocketClient, settings: Settings) -> None:
    connection = client.connection
    try:
        while True:
            text = await connection.receive()
            if text is None:
                client.close("client disconnected")
                return
            if not isinstance(text, str):
                await client.send(_error("bad_frame", "frames are JSON text, not binary"))
                continue
            if len(text) > MAX_FRAME_CHARS:
                await client.send(_error("bad_frame", f"frame too large (max {MAX_FRAME_CHARS} characters)"))
                continue
            try:
                frame = _client_frame.validate_json(text)
            except ValidationError as exc:
                await client.send(_error("bad_frame", _describe(exc)))
                continue
            await _handle(client, frame, settings)
    except (WebSocketDisconnect, ConnectionError, RuntimeError, OSError) as exc:
        client.close(f"connection lost: {type(exc).__name__}")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if not str(p).endswith("Frame"))
        parts.append(f"{where or 'frame'}: {err.get('msg')}")
    return ('invalid frame (expected {"type": "auth"|"subscribe"|"unsubscribe"|"ping", ...}): ' + "; ".join(parts))[:500]


async def _handle(client: WebSocketClient, frame: Any, settings: Settings) -> None:
    try:
        if frame.type == "ping":
            await client.send({"type": "pong"})
        elif frame.type == "auth":
            await _reauthenticate(client, frame, settings)
        elif frame.type == "subscribe":
            await _subscribe(client, frame, settings)
        elif frame.type == "unsubscribe":
            await _unsubscribe(client, frame)
    except Exception as exc:
        # A frame that needs the database while it is unreachable: an error frame, and the connection (with
        # its subscriptions) stays; not a closed socket, as an OSError of the database would otherwise make it.
        if not database.is_unavailable(exc):
            raise
        ids = {"deployment_id": getattr(frame, "deployment_id", None), "organization_id": getattr(frame, "organization_id", None)}
        await client.send(_error("database_unavailable", DatabaseUnavailable().detail, **ids))


async def _reauthenticate(client: WebSocketClient, frame: AuthFrame, settings: Settings) -> None:
    try:
        credential = await _resolve(settings, frame.token)
    except NotAuthenticated as exc:
        client.close(exc.detail, CLOSE_UNAUTHORIZED)
        return
    if credential.user.id != client.access.user_id:
        client.close("a connection stays with the user it authenticated first", CLOSE_UNAUTHORIZED)
        return
    client.expires_at = credential.expires_at
    access, api_tokens = await load_access({credential.user.id}, {credential.api_token_id} - {None})
    fresh = access[credential.user.id]
    await client.set_access(credential_access(fresh, api_tokens, credential.api_token_id, credential.user.token_generation))
    await client.send(
        {
            "type": "authenticated",
            "user_id": credential.user.id,
            "expires_at": iso_utc(credential.expires_at) if credential.expires_at else None,
        }
    )


async def _subscribe(client: WebSocketClient, frame: SubscribeFrame, settings: Settings) -> None:
    ids = {"deployment_id": frame.deployment_id, "organization_id": frame.organization_id}
    if bool(frame.deployment_id) == bool(frame.organization_id):
        await client.send(_error("bad_frame", "subscribe to one deployment_id or one organization_id", **ids))
        return
    if frame.stream == "services" and not frame.deployment_id:
        await client.send(_error("bad_frame", 'the "services" stream is per deployment: give its deployment_id', **ids))
        return
    try:
        async with database.AsyncSessionLocal() as session:
            user = await session.get(User, client.access.user_id)
            if user is None:
                raise NotAuthenticated("the user of this connection no longer exists")
            if frame.deployment_id:
                deployment = await organization_service.get_owned(
                    session, user=user, model=Deployment, entity_id=frame.deployment_id, minimum=Role.VIEWER, noun="deployment"
                )
                if not client.access.allows_deployment(deployment.organization_id, deployment.stack_id):
                    # an API token limited to another organisation, or to other stacks (stack_ids)
                    raise ValidationFailed("deployment not found", code="deployment_not_found")
                if frame.stream == "services":
                    follower = await service_logs.prepare(session, settings=settings, deployment=deployment, tail=frame.tail)
            elif (
                not client.access.allows(frame.organization_id)
                or await organization_service.role_in(session, user=user, organization_id=frame.organization_id) is None
            ):
                raise ValidationFailed("organization not found", code="organization_not_found")
    except NotAuthenticated as exc:
        client.close(exc.detail, CLOSE_UNAUTHORIZED)
        return
    except WindFlowError as exc:
        await client.send(_error(exc.code, exc.detail, **ids))
        return
    if frame.organization_id:
        await client.subscribe_organization(frame.organization_id)
    elif frame.stream == "services":
        await _follow_services(client, deployment, follower)
    else:
        await client.subscribe_deployment(deployment.id, deployment.organization_id, frame.since_seq)


async def _follow_services(client: WebSocketClient, deployment: Deployment, follower) -> None:
    previous = client.services.pop(deployment.id, None)
    if previous is not None:
        await previous.stop()
    client.services[deployment.id] = follower

    async def send(frame: dict) -> None:
        if client.access.allows(deployment.organization_id):
            await client.send(frame)

    await client.send(
        {
            "type": "subscribed",
            "deployment_id": deployment.id,
            "organization_id": deployment.organization_id,
            "stream": "services",
            "last_seq": None,
        }
    )
    follower.start(send, on_end=lambda: client.services.pop(deployment.id, None))


async def _unsubscribe(client: WebSocketClient, frame: UnsubscribeFrame) -> None:
    if frame.stream == "services" and frame.deployment_id:
        follower = client.services.pop(frame.deployment_id, None)
        found = follower is not None
        if follower is not None:
            await follower.stop()
    elif frame.deployment_id:
        found = await client.unsubscribe_deployment(frame.deployment_id)
    elif frame.organization_id:
        found = await client.unsubscribe_organization(frame.organization_id)
    else:
        await client.send(_error("bad_frame", "unsubscribe needs a deployment_id or an organization_id"))
        return
    ids = {"deployment_id": frame.deployment_id, "organization_id": frame.organization_id}
    if not found:
        await client.send(_error("not_subscribed", "there was no such subscription", **ids))
        return
    await client.send({"type": "unsubscribed", "stream": frame.stream, **{k: v for k, v in ids.items() if v}})


async def _watch(client: WebSocketClient, grace: float) -> None:
    """Server heartbeats, and the end of an expired credential that was not renewed within ``grace`` seconds of
    the warning (``WS_REAUTH_GRACE_SECONDS``)."""
    next_beat = time.monotonic() + HEARTBEAT_SECONDS
    warned_for: datetime | None = None
    try:
        while True:
            expiry = monotonic_deadline(client.expires_at)
            if expiry is not None and warned_for == client.expires_at:
                expiry += grace
            wake = min(next_beat, expiry) if expiry is not None else next_beat
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            now = time.monotonic()
            if expiry is not None and now >= expiry:
                if warned_for == client.expires_at:
                    client.close("the token expired and no new auth frame came", CLOSE_UNAUTHORIZED)
                    return
                warned_for = client.expires_at
                await client.send(_error("token_expired", f"the token has expired: send a new auth frame within {grace:g} s"))
            if now >= next_beat:
                await client.send({"type": "heartbeat", "timestamp": iso_utc(datetime.now(UTC))})
                next_beat = now + HEARTBEAT_SECONDS
    except (ConnectionError, RuntimeError, OSError) as exc:
        client.close(f"send failed: {exc}", 1011)


# --- Server-Sent Events ------------------------------------------------------------------------------


class SSEClient(Client):
    def __init__(self, access: Access) -> None:
        super().__init__(access, "sse")
        self.out: asyncio.Queue[str] = asyncio.Queue(maxsize=64)

    async def send_text(self, text: str, seq: int | None = None, kind: str | None = None) -> None:
        head = (f"id: {seq}\n" if seq is not None else "") + (f"event: {kind}\n" if kind else "")
        await self.out.put(f"{head}data: {text}\n\n")
        if kind == "DEPLOYMENT_DELETED":
            self.close("the deployment was deleted")


def _since(last_event_id: str | None, since_seq: int | None) -> int:
    if last_event_id is not None and last_event_id.strip():
        try:
            value = int(last_event_id.strip())
        except ValueError:
            raise ValidationFailed(
                "Last-Event-ID must be the seq of the last line received (an integer)", code="invalid_last_event_id"
            ) from None
        if value < 0:
            raise ValidationFailed("Last-Event-ID must be 0 or more", code="invalid_last_event_id")
        return value
    return since_seq or 0


@router.get(
    "/deployments/{deployment_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "an event stream: one `ServerFrame` per `data:` line, its type in `event:`, the last log `seq` in `id:`",
            "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/ServerFrame"}}},
        }
    },
)
async def deployment_events(
    request: Request,
    deployment: DeploymentDep,
    user: CurrentUser,
    session: SessionDep,
    last_event_id: Annotated[str | None, Header(description="resume after this log seq")] = None,
    since_seq: Annotated[int | None, Query(ge=0, description="log lines after this seq (Last-Event-ID wins)")] = None,
) -> StreamingResponse:
    """Server-Sent Events of one deployment: its log lines after ``Last-Event-ID``, then everything live."""
    since = _since(last_event_id, since_seq)
    deployment_id, organization_id, stack_id = deployment.id, deployment.organization_id, deployment.stack_id
    user_id, generation = user.id, user.token_generation
    token_id = getattr(request.state, "api_token_id", None)
    # Before anything else reads the database: the stream may last hours, so it must not hold a pooled
    # connection, and on SQLite this session's transaction holds the write lock (BEGIN IMMEDIATE), which
    # the reads below, on their own connections, would wait for until the busy timeout.
    await session.close()
    access, api_tokens = await load_access({user_id}, {token_id} - {None})
    client = SSEClient(credential_access(access[user_id], api_tokens, token_id, generation))
    if not client.access.allows_deployment(organization_id, stack_id):  # a token limited to other stacks
        raise NotFound("deployment not found", code="deployment_not_found")
    return StreamingResponse(
        _sse_body(client, deployment_id, organization_id, since),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse_body(client: SSEClient, deployment_id: str, organization_id: str, since: int):
    client.start()
    metrics.SSE_STREAMS.inc()
    subscribe = asyncio.create_task(client.subscribe_deployment(deployment_id, organization_id, since))
    try:
        yield "retry: 2000\n\n"
        while not (client.closed.is_set() and client.out.empty()):
            try:
                chunk = await asyncio.wait_for(client.out.get(), 0.5 if client.closed.is_set() else HEARTBEAT_SECONDS)
            except TimeoutError:
                yield ": heartbeat\n\n"
                continue
            yield chunk
        yield f"event: end\ndata: {json.dumps(_error('closed', client.close_reason or 'closed'))}\n\n"
    finally:
        subscribe.cancel()
        await asyncio.gather(subscribe, return_exceptions=True)
        await client.stop()
        metrics.SSE_STREAMS.dec()


# --- OpenAPI -------------------------------------------------------------------------------------------


def install_openapi(app: FastAPI) -> None:
    """Add the real-time frames (``ServerFrame``, ``ClientFrame`` and every event) to ``components.schemas``."""

    base = app.openapi  # whatever the app installed before (the 422 body, for one): kept, then extended

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = base()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, union in (("ServerFrame", ServerFrame), ("ClientFrame", ClientFrame)):
                generated = TypeAdapter(union).json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
                for key, value in generated.pop("$defs", {}).items():
                    components.setdefault(key, value)
                components[name] = generated
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
