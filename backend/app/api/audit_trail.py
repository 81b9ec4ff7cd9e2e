"""Every change asked through the API is recorded in the audit trail, whatever its outcome.

:class:`AuditMiddleware` watches each ``POST``/``PUT``/``PATCH``/``DELETE`` under ``/api/v1`` that reached a
route: it keeps a copy of the request's body (up to :data:`MAX_SUMMARISED_BODY` bytes) and, once the route
has answered, writes one :class:`~backend.app.models.AuditEntry` in a session of its own before the last
byte of the answer leaves, so a client that got its answer can read the entry. The entry names:

* the action and the object's type from :data:`ACTIONS` (one row per mutating route; a route missing there
  is recorded as ``<route name>`` with a warning, and ``test_audit_trail.py`` fails);
* the actor: what authenticated the request (``request.state.user_id`` / ``api_token_id``, set by
  ``deps.authenticate``; a user is named by the email that authentication read, ``user_email``), what a
  route named itself (``request.state.audit_actor``: a deploy hook), the email a login was tried with, the
  owner of the refresh token a refresh or logout presented;
* the object's id (the route's path parameter, else the ``id`` of the JSON answer: a creation; or what the route
  named, ``request.state.audit_object_id`` and ``audit_object_type``: a hook's deployment or stack) and its
  organisation (``request.state.audit_organization_id``, set by the loaders of owned rows and of
  organisations, else the answer's or the request's ``organization_id``);
* a summary of the request's fields (``services/audit/summary.py``: secrets only as ``"changed"``), the
  client's address, the outcome and the status code.

A request nobody could be named for is not recorded (anonymous traffic would fill the table), except the
first-run setup and logins. Recording never changes an answer: if
the database refuses the entry, the failure is logged and the answer goes out as it was.

**With the change.** A route on a hot path (``POST /deployments``) writes its success's entry in its own
transaction with :func:`write_with_change`, so the change and its entry take one commit (one transaction
instead of two before the last byte; on SQLite one write lock). The middleware still sees every answer: when
that transaction committed and the answer is the one the entry names, it writes nothing more; when it did not
commit (the entry went with it), it writes the entry of the answer as for any route; when it committed but
the answer that left differs (a failure after the commit), it corrects that entry's status and outcome.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.app import database
from backend.app.core import security
from backend.app.models import ApiToken, AuditEntry, User
from backend.app.services.audit import audit_service, summary

logger = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_SUMMARISED_BODY = 65_536
#: the answer of an unexpected error (main.py's last exception handler, which runs outside this middleware)
_INTERNAL_ERROR = b'{"code": "internal_error"}'
#: route (``module.function`` of its endpoint) -> (action, object type, path parameter naming the object)
ACTIONS: dict[str, tuple[str, str, str | None]] = {
    "auth.setup": ("auth.setup", "user", None),
    "auth.login": ("auth.login", "user", None),
    "auth.refresh": ("auth.refresh", "session", None),
    "auth.logout": ("auth.logout", "session", None),
    "auth.logout_everywhere": ("auth.logout_all", "user", None),
    "auth.change_password": ("auth.password_change", "user", None),
    "users.create_user": ("user.create", "user", None),
    "users.update_user": ("user.update", "user", "user_id"),
    "users.deactivate_user": ("user.deactivate", "user", "user_id"),
    "organizations.create_organization": ("organization.create", "organization", None),
    "organizations.update_organization": ("organization.update", "organization", "organization_id"),
    "organizations.delete_organization": ("organization.delete", "organization", "organization_id"),
    "organizations.add_member": ("member.add", "member", None),
    "organizations.change_member_role": ("member.role_change", "member", "user_id"),
    "organizations.remove_member": ("member.remove", "member", "user_id"),
    "tokens.create_token": ("token.create", "api_token", None),
    "tokens.revoke_token": ("token.revoke", "api_token", "token_id"),
    "targets.create_target": ("target.create", "target", None),
    "targets.update_target": ("target.update", "target", "target_id"),
    "targets.delete_target": ("target.delete", "target", "target_id"),
    "targets.test_target": ("target.test", "target", "target_id"),
    "registries.create_registry": ("registry.create", "registry", None),
    "registries.update_registry": ("registry.update", "registry", "registry_id"),
    "registries.delete_registry": ("registry.delete", "registry", "registry_id"),
    "registries.test_registry": ("registry.test", "registry", "registry_id"),
    "stacks.create_stack": ("stack.create", "stack", None),
    "stacks.update_stack": ("stack.update", "stack", "stack_id"),
    "stacks.delete_stack": ("stack.delete", "stack", "stack_id"),
    "stacks.render_stack": ("stack.render", "stack", "stack_id"),
    "deployments.create_deployment": ("deployment.create", "deployment", None),
    "deployments.delete": ("deployment.delete", "deployment", "deployment_id"),
    "deployments.update_settings": ("deployment.update", "deployment", "deployment_id"),
    "deployments.start_deployment": ("deployment.start", "deployment", "deployment_id"),
    "deployments.redeploy": ("deployment.redeploy", "deployment", "deployment_id"),
    "deployments.retry": ("deployment.retry", "deployment", "deployment_id"),
    "deployments.cancel": ("deployment.cancel", "deployment", "deployment_id"),
    "deployments.stop": ("deployment.stop", "deployment", "deployment_id"),
    "deployments.create_revision": ("deployment.change", "deployment", "deployment_id"),
    "deployments.rollback": ("deployment.rollback", "deployment", "deployment_id"),
    "system.run_recovery": ("system.recovery", "system", None),
    "hooks.create_hook": ("hook.create", "hook", None),
    "hooks.delete_hook": ("hook.delete", "hook", "hook_id"),
    "hooks.rotate_hook": ("hook.rotate", "hook", "hook_id"),
    "hooks.update_hook": ("hook.update", "hook", "hook_id"),
    "hooks.create_stack_hook": ("hook.create", "hook", None),
    "hooks.delete_stack_hook": ("hook.delete", "hook", "hook_id"),
    "hooks.rotate_stack_hook": ("hook.rotate", "hook", "hook_id"),
    "hooks.update_stack_hook": ("hook.update", "hook", "hook_id"),
    "hooks.call_hook": ("hook.call", "deployment", None),  # "stack" for a stack's hook (request.state.audit_object_type)
    "notifications.create_channel": ("notification_channel.create", "notification_channel", None),
    "notifications.update_channel": ("notification_channel.update", "notification_channel", "channel_id"),
    "notifications.delete_channel": ("notification_channel.delete", "notification_channel", "channel_id"),
    "notifications.test_channel": ("notification_channel.test", "notification_channel", "channel_id"),
}
#: routes recorded even when nobody could be named: the first-run setup and logins (a deploy hook names
#: itself once the hook exists; a call to an unknown hook, like any other anonymous request, is not recorded,
#: so that anonymous traffic cannot fill the table)
_RECORD_ANONYMOUS = frozenset({"auth.setup", "auth.login"})


def route_key(endpoint: Any) -> str:
    module = getattr(endpoint, "__module__", "") or ""
    return f"{module.rsplit('.', 1)[-1]}.{getattr(endpoint, '__name__', '?')}"


def _request_fields(scope: Scope, body: bytes, truncated: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        fields.update(dict(parse_qsl(query)))
    if not body:
        return fields
    if truncated:
        fields["body"] = "changed"
        return fields
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1").lower()
    if "json" in content_type:
        try:
            data = json.loads(body)
        except ValueError:
            return fields
        if isinstance(data, dict):
            fields.update(data)
    elif "form" in content_type:
        fields.update(dict(parse_qsl(body.decode("utf-8", "replace"))))
    return fields


class _Recording:
    """What the middleware knows of one mutating request, shared with the route through the request's state
    (``audit_recording``): the copy of its body and the entry a route wrote with its change."""

    __slots__ = ("body", "truncated", "staged", "staged_status")

    def __init__(self) -> None:
        self.body = bytearray()
        self.truncated = False
        self.staged: AuditEntry | None = None
        self.staged_status = 0


async def write_with_change(
    request: Request, session: AsyncSession, *, status_code: int, object_id: str | None, organization_id: str | None
) -> None:
    """Add this request's entry, as the entry of a ``status_code`` answer, to ``session``'s transaction: the
    change the route is about to commit (see the module's docstring). The route answers ``status_code`` only
    once that transaction committed. Outside the middleware (a route called by no HTTP request through it) it
    adds nothing."""
    recording = getattr(request.state, "audit_recording", None)
    route = request.scope.get("route")
    endpoint = getattr(route, "endpoint", None)
    if not isinstance(recording, _Recording) or endpoint is None:
        return
    state = request.scope.get("state") or {}
    fields = _request_fields(request.scope, bytes(recording.body), recording.truncated)
    answer = {"id": object_id, "organization_id": organization_id}
    entry = await _entry(session, request.scope, state, route_key(endpoint), getattr(route, "name", "?"), fields, answer, status_code)
    if entry is not None:
        recording.staged, recording.staged_status = entry, status_code


def _spec(key: str, name: str) -> tuple[str, str, str | None]:
    spec = ACTIONS.get(key)
    if spec is None:
        logger.warning("route %s has no audit action (api/audit_trail.py ACTIONS); recorded as %r", key, name)
        spec = (name, "unknown", None)
    return spec


async def _entry(
    session, scope: Scope, state: dict, key: str, name: str, fields: dict[str, Any], answer_data: dict[str, Any], status_code: int
) -> AuditEntry | None:
    """Add the entry of this request, answered ``status_code``, to ``session`` (None: nobody to name)."""
    action, object_type, id_param = _spec(key, name)
    object_type = state.get("audit_object_type") or object_type  # a route that names its object's type
    actor = await _actor(session, state, fields, key, scope.get("app"))
    if actor.kind == "anonymous" and key not in _RECORD_ANONYMOUS:
        return None
    object_id = state.get("audit_object_id")
    if object_id is None and id_param is not None:
        object_id = (scope.get("path_params") or {}).get(id_param)
    if object_id is None and status_code < 300:  # a creation: the new object's id (a membership's user)
        found = answer_data.get("user_id" if object_type == "member" else "id")
        object_id = found if isinstance(found, str) else None
    organization_id = state.get("audit_organization_id")
    if organization_id is None:
        for source in (answer_data, fields):
            if isinstance(source.get("organization_id"), str):
                organization_id = source["organization_id"][:36]
                break
    detail = summary.of_fields(fields)
    if status_code >= 400 and isinstance(answer_data.get("code"), str):
        detail["error"] = answer_data["code"][:64]
    detail.update(state.get("audit_summary") or {})
    return audit_service.record(
        session,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        organization_id=organization_id,
        summary=detail,
        client=(scope.get("client") or ("unknown",))[0],
        status_code=status_code,
    )


async def _actor(session, state: dict, fields: dict[str, Any], key: str, scope_app: Any) -> audit_service.Actor:
    named = state.get("audit_actor")
    if isinstance(named, audit_service.Actor):
        return named
    user_id, token_id = state.get("user_id"), state.get("api_token_id")
    if token_id:
        row = (
            await session.execute(select(ApiToken.name, User.email).join(User, User.id == ApiToken.user_id).where(ApiToken.id == token_id))
        ).first()
        return audit_service.Actor("token", token_id, f"{row.name} ({row.email})" if row else None)
    if user_id:
        email = state.get("user_email")  # as the authentication read it (deps.authenticate)
        if not isinstance(email, str):
            email = (await session.execute(select(User.email).where(User.id == user_id))).scalar_one_or_none()
        return audit_service.Actor("user", user_id, email)
    if key in ("auth.refresh", "auth.logout") and isinstance(fields.get("refresh_token"), str) and scope_app is not None:
        try:  # whose session it was (an expired or forged token names nobody)
            claims = security.decode_token(scope_app.state.settings, fields["refresh_token"], "refresh")
        except security.TokenError:
            claims = {}
        if isinstance(claims.get("sub"), str):
            email = (await session.execute(select(User.email).where(User.id == claims["sub"]))).scalar_one_or_none()
            if email is not None:
                return audit_service.Actor("user", claims["sub"], email)
    if key == "auth.login" and isinstance(fields.get("username"), str):
        email = summary.clean(fields["username"]).strip().lower()[:320]
        found = (await session.execute(select(User.id).where(User.email == email))).scalar_one_or_none()
        return audit_service.Actor("user" if found else "anonymous", found, email)
    return audit_service.Actor("anonymous")


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in MUTATING or not scope.get("path", "").startswith("/api/v1/"):
            await self.app(scope, receive, send)
            return
        recording = _Recording()
        scope.setdefault("state", {})["audit_recording"] = recording
        body = recording.body
        answer = bytearray()
        status: dict[str, Any] = {"code": 500}

        async def receive_copy() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not recording.truncated:
                chunk = message.get("body", b"")
                if len(body) + len(chunk) > MAX_SUMMARISED_BODY:
                    recording.truncated = True
                else:
                    body.extend(chunk)
            return message

        async def send_recorded(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body":
                if len(answer) < MAX_SUMMARISED_BODY:
                    answer.extend(message.get("body", b"")[: MAX_SUMMARISED_BODY - len(answer)])
                if not message.get("more_body", False):
                    status["recorded"] = True
                    await self._record(scope, bytes(body), recording.truncated, bytes(answer), status["code"])
            await send(message)

        try:
            await self.app(scope, receive_copy, send_recorded)
        except Exception:
            if not status.get("recorded"):
                # an unexpected error: the server's last handler (outside this middleware) answers it with a 500
                await self._record(scope, bytes(body), recording.truncated, _INTERNAL_ERROR, 500)
            raise

    async def _record(self, scope: Scope, body: bytes, truncated: bool, answer: bytes, status_code: int) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None:
            return  # no route matched (404/405 of the router): nothing was asked of any object
        try:
            await self._write(scope, route_key(endpoint), getattr(route, "name", "?"), body, truncated, answer, status_code)
        except Exception:
            logger.exception("could not record the audit entry of %s %s", scope.get("method"), scope.get("path"))

    async def _write(self, scope: Scope, key: str, name: str, body: bytes, truncated: bool, answer: bytes, status_code: int) -> None:
        state = scope.get("state") or {}
        recording = state.get("audit_recording")
        fields = _request_fields(scope, body, truncated)
        answer_data: dict[str, Any] = {}
        if answer[:1] == b"{":
            try:
                parsed = json.loads(answer)
                answer_data = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                pass
        route_session = state.get("db_session")
        if route_session is not None:
            # what the route left uncommitted is not meant to be kept (the route commits what it changed); its
            # session is reused so that, on SQLite, the entry does not wait for that session's write lock. The
            # route's dependency may have closed it already: whatever happens, its connection goes back.
            await route_session.rollback()
            try:
                await self._write_in(route_session, scope, state, key, name, fields, answer_data, status_code, recording)
            finally:
                await route_session.close()
            return
        async with database.AsyncSessionLocal() as session:
            await self._write_in(session, scope, state, key, name, fields, answer_data, status_code, recording)

    async def _write_in(
        self,
        session,
        scope: Scope,
        state: dict,
        key: str,
        name: str,
        fields: dict[str, Any],
        answer_data: dict[str, Any],
        status_code: int,
        recording: _Recording | None,
    ) -> None:
        staged = recording.staged if isinstance(recording, _Recording) else None
        if staged is not None:
            if recording.staged_status == status_code:
                return  # the route answers that status only once the entry committed with its change
            # another answer left: the change (and the entry) committed and the route failed after, or the
            # transaction failed and the entry went with it (nothing to correct: written below as for any route)
            detail = dict(staged.summary or {})
            if status_code >= 400 and isinstance(answer_data.get("code"), str):
                detail["error"] = answer_data["code"][:64]
            corrected = await session.execute(
                update(AuditEntry)
                .where(AuditEntry.id == staged.id)
                .values(status_code=status_code, outcome=audit_service.outcome_of(status_code), summary=detail)
            )
            if corrected.rowcount == 1:
                await session.commit()
                return
        if await _entry(session, scope, state, key, name, fields, answer_data, status_code) is None:
            await session.rollback()  # nothing to record; the lookups' transaction ends here
            return
        await session.commit()
