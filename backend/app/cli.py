"""The ``windflow`` command line.

    windflow serve                 serve the API and UI (same as ``python -m backend.app.main``)
    windflow db upgrade            apply database migrations
    windflow create-admin          create a superuser (and its organisation) from a script
    windflow recover               recover stuck deployments now (prints the statistics as JSON)
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
    from backend.app.services import auth_service, organization_service, provisioning, user_service

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
                session, UserCreate(email=email, password=password, full_name=full_name, is_superuser=True)
            )
            org = (await session.execute(select(Organization).where(Organization.name == organization))).scalar_one_or_none()
            if org is None:
                org = Organization(name=organization)
                session.add(org)
                await session.flush()
            session.add(Membership(user_id=user.id, organization_id=org.id, role=Role.OWNER))
        await session.flush()
        org_id = await organization_service.default_organization_id(session, user)
        if org_id is not None:
            await provisioning.provision_organization(session, settings, org_id, local_target=first_run)
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
    from backend.app import database
    from backend.app.services.deployment_service import DeploymentService

    try:
        async with database.AsyncSessionLocal() as session:
            return await DeploymentService.recover_pending_deployments(session, max_age_minutes, timeout_minutes)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
