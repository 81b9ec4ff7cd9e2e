"""The ``windflow`` command line.

windflow serve                 serve the API and UI (same as ``python -m backend.app.main``)
windflow db upgrade            apply database migrations
windflow create-admin          create a superuser (and its organisation) from a script
windflow recover               recover stuck deployments now (prints the statistics as JSON)
windflow logs [-f] <id>        print (and follow) a deployment's log, like ``docker logs -f``
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select

from backend.app.schemas.auth import SetupRequest


def _settings():
    from backend.app.config import get_settings

    return get_settings()


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    if args.host:
        os.environ["HOST"] = args.host
    if args.port:
        os.environ["PORT"] = str(args.port)
    from backend.app.config import get_settings

    get_settings.cache_clear()
    from backend.app.main import run

    run()
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from backend.app.migrate import upgrade_sync

    settings = _settings()
    upgrade_sync(settings, args.revision)
    print(f"database {settings.database_kind} upgraded to {args.revision}")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if args.password:
        return args.password
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise SystemExit("passwords do not match")
    return first


async def _create_admin(email: str, password: str, organization: str, full_name: str | None) -> str:
    from backend.app import database
    from backend.app.migrate import upgrade_database
    from backend.app.models import Membership, Organization, Role
    from backend.app.schemas.auth import UserCreate
    from backend.app.services import provisioning
    from backend.app.services.identity import auth_service, organization_service, user_service

    settings = _settings()
    await upgrade_database(database.get_engine(), settings)
    async with database.AsyncSessionLocal() as session:
        first_run = await auth_service.user_count(session) == 0
        if first_run:
            user = await auth_service.setup_first_admin(
                session, email=email, password=password, organization_name=organization, full_name=full_name
            )
        else:
            user = await user_service.create_user(
                session, data=UserCreate(email=email, password=password, full_name=full_name, is_superuser=True)
            )
            org = (await session.execute(select(Organization).where(Organization.name == organization))).scalar_one_or_none()
            if org is None:
                org = Organization(name=organization)
                session.add(org)
                await session.flush()
            session.add(Membership(user_id=user.id, organization_id=org.id, role=Role.OWNER))
        await session.flush()
        org_id = await organization_service.default_organization_id(session, user=user)
        if org_id is not None:
            await provisioning.provision_organization(session, settings=settings, organization_id=org_id, local_target=first_run)
        await session.commit()
        user_id = user.id
    await database.get_engine().dispose()
    return user_id


def cmd_create_admin(args: argparse.Namespace) -> int:
    from backend.app.core.exceptions import WindFlowError

    password = _read_password(args)
    try:
        data = TypeAdapter(SetupRequest).validate_python(
            {"email": args.email, "password": password, "organization_name": args.organization, "full_name": args.full_name}
        )
    except ValidationError as exc:
        for err in exc.errors():
            print(f"error: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2
    try:
        user_id = asyncio.run(_create_admin(data.email, data.password, data.organization_name, data.full_name))
    except WindFlowError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    print(f"superuser {data.email} created (id {user_id}), owner of organization {data.organization_name!r}")
    return 0


async def _recover(max_age_minutes: float, timeout_minutes: float) -> dict:
    """Retried deployments go to the Celery workers when any send heartbeats, else run in this process
    (waited for before the command exits)."""
    from backend.app import database
    from backend.app.config import get_settings
    from backend.app.runtime.dispatch import Dispatcher
    from backend.app.services.deployment_service import DeploymentService

    settings = get_settings()
    dispatcher = Dispatcher(settings)
    try:
        await dispatcher.probe()
        async with database.AsyncSessionLocal() as session:
            report = await DeploymentService.recover_pending_deployments(
                session, max_age_minutes=max_age_minutes, timeout_minutes=timeout_minutes, settings=settings, dispatch=dispatcher.dispatch
            )
        await dispatcher.wait_local()
        return report
    finally:
        await database.get_engine().dispose()


def cmd_recover(args: argparse.Namespace) -> int:
    import json

    from backend.app.core.logging import setup_logging

    settings = _settings()
    setup_logging(settings.LOG_LEVEL, settings.LOG_FILE)
    report = asyncio.run(_recover(args.max_age_minutes, args.timeout_minutes))
    print(json.dumps(report, indent=2))
    return 0 if report["statistics"]["errors"] == 0 else 1


SETTLED = {"running", "failed", "stopped", "cancelled"}


def _print_lines(lines: list[dict]) -> None:
    for line in lines:
        print(f"{line['timestamp']} {line['level'].upper():7} {line['message']}", flush=True)


def _follow(client, deployment_id: str, since: int) -> str | None:
    """Follow ``GET /deployments/{id}/events`` (SSE), resuming with Last-Event-ID after a dropped
    connection; returns the status the deployment settled in."""
    import json
    import time

    import httpx

    last_seq, retries = since, 0
    while True:
        try:
            with client.stream(
                "GET",
                f"/api/v1/deployments/{deployment_id}/events",
                headers={"Last-Event-ID": str(last_seq)},
                timeout=httpx.Timeout(10, read=60),
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise SystemExit(f"error: {response.status_code} {response.json().get('detail', response.text)}")
                retries = 0
                event: dict = {}
                for raw in response.iter_lines():
                    if raw:
                        key, _, value = raw.partition(": ")
                        event[key] = value
                        continue
                    if "data" in event:
                        frame = json.loads(event["data"])
                        if frame.get("type") == "DEPLOYMENT_LOGS_UPDATE":
                            _print_lines(frame["data"]["logs"])
                            last_seq = frame["data"]["logs"][-1]["seq"] if frame["data"]["logs"] else last_seq
                        elif frame.get("type") == "DEPLOYMENT_STATUS_CHANGED":
                            status = frame["data"]["new_status"]
                            print(
                                f"-- {frame['data']['old_status']} -> {status}"
                                + (f": {frame['data']['error_message']}" if frame["data"].get("error_message") else ""),
                                file=sys.stderr,
                                flush=True,
                            )
                            if status in SETTLED:
                                return status
                        elif frame.get("type") == "subscribed" and frame.get("status") in SETTLED:
                            # it settled between our first read and this stream: no change event will come
                            print(f"-- {frame['status']}", file=sys.stderr, flush=True)
                            return frame["status"]
                        elif frame.get("type") == "DEPLOYMENT_DELETED":
                            print("-- deleted", file=sys.stderr, flush=True)
                            return None
                    event = {}
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            retries += 1
            if retries > 5:
                raise SystemExit(f"error: lost the event stream ({exc})") from exc
            print(f"-- connection lost ({exc}); resuming after line {last_seq}", file=sys.stderr, flush=True)
            time.sleep(min(10, 0.5 * 2**retries))


def cmd_logs(args: argparse.Namespace) -> int:
    import os

    import httpx

    token = os.environ.get("WINDFLOW_TOKEN")
    if not token:
        print("error: set WINDFLOW_TOKEN to an API token (create one under /api/v1/tokens) or an access token", file=sys.stderr)
        return 2
    base = args.url or f"http://{_settings().HOST}:{_settings().PORT}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        try:
            deployment = client.get(f"/api/v1/deployments/{args.deployment_id}")
            if deployment.status_code != 200:
                print(f"error: {deployment.status_code} {deployment.json().get('detail', '')}", file=sys.stderr)
                return 1
            last = args.since
            while True:  # the persisted log so far
                page = client.get(f"/api/v1/deployments/{args.deployment_id}/logs", params={"since_seq": last, "limit": 5000}).json()[
                    "items"
                ]
                _print_lines(page)
                if len(page) < 5000:
                    break
                last = page[-1]["seq"]
            last = page[-1]["seq"] if page else last
            status = deployment.json()["status"]
            if not args.follow or status in SETTLED:
                if args.follow:
                    print(f"-- {status}", file=sys.stderr, flush=True)
                return 0 if status not in {"failed", "cancelled"} else 1
            settled = _follow(client, args.deployment_id, last)
        except httpx.HTTPError as exc:
            print(f"error: cannot reach {base}: {exc}", file=sys.stderr)
            return 1
    return 0 if settled in {"running", "stopped"} else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="windflow", description="WindFlow: deploy Docker stacks, watch them live.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API and the web UI")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply migrations")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(func=cmd_db_upgrade)

    admin = sub.add_parser("create-admin", help="create a superuser (first run or later)")
    admin.add_argument("--email", required=True)
    admin.add_argument("--organization", default="default", help="organisation the admin owns (created if missing)")
    admin.add_argument("--full-name")
    group = admin.add_mutually_exclusive_group()
    group.add_argument("--password", help="password (visible in the process list: prefer --password-stdin)")
    group.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    admin.set_defaults(func=cmd_create_admin)

    recover = sub.add_parser("recover", help="recover stuck deployments now")
    recover.add_argument("--max-age-minutes", type=float, default=0, help="retry pending deployments older than this")
    recover.add_argument("--timeout-minutes", type=float, default=60, help="fail pending deployments older than this")
    recover.set_defaults(func=cmd_recover)

    logs = sub.add_parser(
        "logs",
        help="print a deployment's log; -f follows it until the deployment settles",
        description="Print a deployment's log (WINDFLOW_TOKEN: an API or access token). With -f, "
        "follow it live (Server-Sent Events) until the deployment is running, failed, "
        "stopped or cancelled; exit status 0 for running/stopped, 1 otherwise.",
    )
    logs.add_argument("deployment_id")
    logs.add_argument("-f", "--follow", action="store_true", help="follow new lines until the deployment settles")
    logs.add_argument("--since", type=int, default=0, help="only lines after this sequence number")
    logs.add_argument("--url", help="the WindFlow server (default: http://HOST:PORT from the settings)")
    logs.set_defaults(func=cmd_logs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
