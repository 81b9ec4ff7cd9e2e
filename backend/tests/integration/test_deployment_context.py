"""A deployment's context (``services/deployments/context.py``): its target read and its secrets decrypted once,
the redactor masking that deployment's secrets and its target's credentials, the spec of its snapshot, the
target's policy as it is now, and no clear secret in its ``repr``."""

from __future__ import annotations

import pytest

from backend.app import database
from backend.app.core import security
from backend.app.core.exceptions import NotFound
from backend.app.engines.base import DeploySpec
from backend.app.engines.compose import ComposeEngine
from backend.app.models import Deployment, Target
from backend.app.models.base import new_id
from backend.app.services.deployments.context import load_context
from backend.app.services.targets import target_service
from backend.app.services.targets.compose_policy import PolicyViolation
from backend.tests.factories import make_deployment

PASSWORD = "Pw-Of-The-Stack-4417"
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nKeyLineOne0123456789\n-----END OPENSSH PRIVATE KEY-----"
URL_PASSWORD = "Url-Pass-9921"
COMPOSE = f'services:\n  app:\n    image: alpine:3\n    environment:\n      PW: "{PASSWORD}"\n'


async def _deployment(settings, compose: str = COMPOSE) -> str:
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(
            session,
            variables=security.EncryptedValues.encrypt(settings, {"pw": PASSWORD, "note": "plain"}, ["pw"]).stored,
            rendered_compose=security.encrypt_secret(settings, compose),
        )
        target = await session.get(Target, deployment.target_id)
        target.endpoint = f"ssh://deploy:{URL_PASSWORD}@203.0.113.7"
        target_service._store_credentials(target, settings, {"ssh_key": SSH_KEY})
        await session.commit()
        return deployment.id


async def test_the_context_holds_the_decrypted_inputs_and_a_redactor_for_them(db, monkeypatch) -> None:
    settings = db.settings
    deployment_id = await _deployment(settings)
    decrypted: list[str] = []
    real = security.decrypt_secret

    def counting(settings_, token):
        decrypted.append(token)
        return real(settings_, token)

    monkeypatch.setattr(security, "decrypt_secret", counting)
    monkeypatch.setattr(target_service, "decrypt_secret", counting)
    async with database.AsyncSessionLocal() as session:
        deployment = await session.get(Deployment, deployment_id)
        context = await load_context(session, settings=settings, deployment=deployment)

    # each stored secret read once: the target's credentials, the one secret value, the snapshot
    assert len(decrypted) == 3 and len(set(decrypted)) == 3, decrypted
    assert context.deployment_id == deployment_id and context.target_id == deployment.target_id
    assert dict(context.values) == {"pw": PASSWORD, "note": "plain"}
    assert context.secrets == (PASSWORD,)
    assert context.connection.ssh_key == SSH_KEY and context.connection.endpoint.startswith("ssh://")
    assert isinstance(context.spec, DeploySpec) and context.spec.compose == COMPOSE
    assert context.spec.workdir == settings.DEPLOYMENTS_WORKDIR / deployment_id
    assert isinstance(context.engine, ComposeEngine)

    said = (
        f"pw {PASSWORD} key KeyLineOne0123456789 url {URL_PASSWORD} app key {settings.SECRET_KEY} "
        f"in {settings.DEPLOYMENTS_WORKDIR / deployment_id}/compose.yaml"
    )
    masked = context.redactor(said)
    for secret in (PASSWORD, "KeyLineOne0123456789", URL_PASSWORD, settings.SECRET_KEY, str(settings.DEPLOYMENTS_WORKDIR)):
        assert secret not in masked, masked

    shown = repr(context)
    for secret in (PASSWORD, "KeyLineOne0123456789", URL_PASSWORD):
        assert secret not in shown, shown


async def test_the_policy_check_reads_the_targets_policy_as_it_is_now(db) -> None:
    settings = db.settings
    deployment_id = await _deployment(settings, "services:\n  app:\n    image: alpine:3\n    privileged: true\n")
    async with database.AsyncSessionLocal() as session:
        deployment = await session.get(Deployment, deployment_id)
        target = await session.get(Target, deployment.target_id)
        context = await load_context(session, settings=settings, deployment=deployment)
        with pytest.raises(PolicyViolation, match="privileged"):
            context.check_policy()  # the default policy refuses it
        target.compose_policy = {"allow_privileged": True}
        await session.commit()
        allowed = await load_context(session, settings=settings, deployment=deployment)
    allowed.check_policy()  # loaded after the change: allowed
    assert allowed.policy != context.policy


async def test_a_deployment_whose_target_is_gone_is_not_found(db) -> None:
    orphan = Deployment(id=new_id(), organization_id=new_id(), stack_id=new_id(), target_id=new_id(), name="x", variables={})
    async with database.AsyncSessionLocal() as session:
        with pytest.raises(NotFound) as caught:
            await load_context(session, settings=db.settings, deployment=orphan)
    assert caught.value.code == "target_not_found"
