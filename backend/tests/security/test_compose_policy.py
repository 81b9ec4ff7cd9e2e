"""The compose policy through the HTTP API, as a hostile operator would try it, and on the real engine.

Always-refused keys are refused at stack create/update/preview and at deployment create, before any
compose tool reads the document; per-target rules at deployment create, start/redeploy/retry and by the
runner. Every refusal is a 422 naming the key and the rule.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from sqlalchemy import select

from backend.app import database
from backend.app.models import Deployment, DeploymentStatus, ExecutorKind
from backend.app.services.deployment_service import DeploymentService
from backend.app.services.deployments.runner import run_deployment
from backend.tests.conftest import TEST_IMAGE
from backend.tests.deploy_helpers import all_logs, labelled, wait_status

HOST_FILE = "it makes the compose tool read a file of the WindFlow host"


def _service(*lines: str, top: str = "") -> str:
    body = "".join(f"    {line}\n" for line in lines)
    return f"services:\n  app:\n    image: {TEST_IMAGE}\n{body}{top}"


# --- always refused, at stack create -------------------------------------------------------------------

ALWAYS_REFUSED = [
    (
        "env_file",
        _service("env_file: [/proc/self/environ]"),
        f"services.app.env_file is not allowed: {HOST_FILE}; put the variables under environment instead",
    ),
    (
        "env_file long syntax",
        _service("env_file: [{path: /etc/shadow, required: false}]"),
        f"services.app.env_file is not allowed: {HOST_FILE}; put the variables under environment instead",
    ),
    (
        "label_file",
        _service("label_file: /etc/passwd"),
        f"services.app.label_file is not allowed: {HOST_FILE}; put the labels under labels instead",
    ),
    (
        "build",
        _service("build: {context: ../../}"),
        "services.app.build is not allowed: building reads a build context from the WindFlow host; use a pre-built image",
    ),
    (
        "extends file",
        _service("extends: {file: /etc/windflow/compose.yml, service: db}"),
        f"services.app.extends.file is not allowed: {HOST_FILE}; extend a service of this document (extends: {{service: ...}})",
    ),
    (
        "include",
        _service(top="include: [/etc/windflow/other.yml]\n"),
        f"include is not allowed: {HOST_FILE}; put every service in this document",
    ),
    (
        "develop watch",
        _service("develop: {watch: [{path: /, action: sync, target: /host}]}"),
        "services.app.develop is not allowed: develop (watch) syncs files of the WindFlow host into the container",
    ),
    (
        "provider",
        _service("provider: {type: awesomecloud}"),
        "services.app.provider is not allowed: a provider service runs a plugin program on the WindFlow host",
    ),
    (
        "use_api_socket",
        _service("use_api_socket: true"),
        "services.app.use_api_socket is not allowed: it gives the container the engine socket and the WindFlow host's registry credentials",
    ),
    (
        "config file",
        _service("configs: [c]", top="configs:\n  c: {file: /etc/shadow}\n"),
        f"configs.c.file is not allowed: {HOST_FILE}; give the value with content: (or a secret variable)",
    ),
    (
        "secret file",
        _service("secrets: [s]", top="secrets:\n  s: {file: /proc/self/environ}\n"),
        f"secrets.s.file is not allowed: {HOST_FILE}; give the value with content: (or a secret variable)",
    ),
    (
        "secret environment",
        _service("secrets: [s]", top="secrets:\n  s: {environment: SECRET_KEY}\n"),
        "secrets.s.environment is not allowed: it reads an environment variable of the WindFlow host; give the value with content: instead",
    ),
    (
        "bind driver_opts",
        _service("volumes: [v:/v]", top="volumes:\n  v: {driver_opts: {type: none, o: bind, device: /}}\n"),
        "volumes.v.driver_opts is not allowed: these driver options mount a path of the host; use a plain named volume",
    ),
]


@pytest.mark.parametrize(("template", "detail"), [r[1:] for r in ALWAYS_REFUSED], ids=[r[0] for r in ALWAYS_REFUSED])
async def test_host_file_keys_are_refused_at_stack_create(world, template, detail):
    response = await world.client.post("/api/v1/stacks", json={"name": "evil", "template": template}, headers=world.superuser.headers)
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["detail"], body["code"]) == (detail, "compose_forbidden")
    # the keys refused, for a client to name them in its own words (the bounded renderer passes them on)
    assert body["params"]["rules"] == ["host_files"] and body["params"]["paths"], body
    assert all(path in detail for path in body["params"]["paths"]), body


async def test_host_file_keys_are_refused_at_stack_update_and_preview(world):
    stack = await world.stack(_service())
    refused = await world.client.patch(
        f"/api/v1/stacks/{stack['id']}",
        json={"template": _service("env_file: [/etc/shadow]")},
        headers=world.operator.headers,
    )
    assert refused.status_code == 422 and refused.json()["code"] == "compose_forbidden", refused.text
    assert refused.json()["detail"].startswith("services.app.env_file is not allowed: ")

    # A template that only reaches env_file with a non-default value passes creation...
    sneaky = await world.stack(
        _service("{% if leak %}", "env_file: [/etc/shadow]", "{% endif %}"),
        [{"name": "leak", "type": "boolean", "default": False}],
        name="sneaky",
    )
    # ...but neither renders nor deploys with it.
    preview = await world.client.post(
        f"/api/v1/stacks/{sneaky['id']}/render", json={"variables": {"leak": True}}, headers=world.operator.headers
    )
    assert preview.status_code == 422 and preview.json()["code"] == "compose_forbidden", preview.text
    refused = await world.deploy(sneaky["id"], {"leak": True}, expect=422)
    assert refused["code"] == "compose_forbidden"
    assert refused["detail"] == (f"services.app.env_file is not allowed: {HOST_FILE}; put the variables under environment instead")


async def test_env_file_of_a_process_environment_is_never_read(world, db):
    """The issue's leak: ``env_file`` of a process's environ. Refused before compose could read it, and
    neither the canary in that environment nor SECRET_KEY appears in any response."""
    canary = "canary-" + os.urandom(8).hex()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={"SECRET_KEY": canary, "PATH": os.environ["PATH"]},
    )
    try:
        texts = []
        for path in ("/proc/self/environ", f"/proc/{holder.pid}/environ", f"/proc/{os.getpid()}/environ"):
            direct = await world.client.post(
                "/api/v1/stacks",
                json={"name": "leak", "template": _service(f"env_file: [{path}]")},
                headers=world.operator.headers,
            )
            assert direct.status_code == 422 and direct.json()["code"] == "compose_forbidden", direct.text
            texts.append(direct.text)
        stack = await world.stack(
            _service("{% if leak %}", "env_file: [{{ path }}]", "{% endif %}"),
            [{"name": "leak", "type": "boolean", "default": False}, {"name": "path", "type": "string", "default": "x"}],
            name="conditional",
        )
        refused = await world.client.post(
            "/api/v1/deployments",
            json={"stack_id": stack["id"], "target_id": world.local_id, "variables": {"leak": True, "path": f"/proc/{holder.pid}/environ"}},
            headers=world.operator.headers,
        )
        assert refused.status_code == 422, refused.text
        texts.append(refused.text)
        listing = await world.client.get("/api/v1/deployments", headers=world.operator.headers)
        assert listing.json()["total"] == 0  # nothing was created, so nothing ran
        texts.append(listing.text)
    finally:
        holder.kill()
        holder.wait()
    for text in texts:
        assert canary not in text
        assert db.settings.SECRET_KEY not in text and world.settings.SECRET_KEY not in text


# --- per target, at deployment create ------------------------------------------------------------------

LOCAL = 'on target "local"'

DENIED = [
    (
        "privileged",
        _service("privileged: true"),
        f"services.app.privileged is not allowed {LOCAL}: privileged mode gives the container every device and "
        "capability of the host (compose policy option allow_privileged)",
    ),
    (
        "root bind",
        _service("volumes: ['/:/host']"),
        f"services.app.volumes[0] is not allowed {LOCAL}: '/' reaches the Docker engine socket, which is root on the "
        f"host (compose policy option allow_docker_socket); services.app.volumes[0] is not allowed {LOCAL}: '/' is a "
        "bind mount of a host path; use a named volume (compose policy option allow_host_binds)",
    ),
    (
        "docker socket",
        _service("volumes: ['/var/run/docker.sock:/var/run/docker.sock']"),
        f"services.app.volumes[0] is not allowed {LOCAL}: '/var/run/docker.sock' reaches the Docker engine socket, "
        "which is root on the host (compose policy option allow_docker_socket)",
    ),
    (
        "long bind of /etc",
        _service("volumes: [{type: bind, source: /etc, target: /host-etc}]"),
        f"services.app.volumes[0] is not allowed {LOCAL}: '/etc' is a bind mount of a host path; use a named volume "
        "(compose policy option allow_host_binds)",
    ),
    (
        "relative escape",
        _service("volumes: ['../../../../:/host']"),
        f"services.app.volumes[0] is not allowed {LOCAL}: '../../../../' is a bind mount of a relative host path; "
        "use a named volume (compose policy option allow_host_binds)",
    ),
    (
        "interpolated home",
        _service("volumes: ['${HOME}:/host']"),
        f"services.app.volumes[0] is not allowed {LOCAL}: '${{HOME}}' is a bind mount of a host path; use a named "
        "volume (compose policy option allow_host_binds)",
    ),
    (
        "pid host",
        _service("pid: host"),
        f"services.app.pid is not allowed {LOCAL}: pid: host shares a namespace of the host (compose policy option allow_host_namespaces)",
    ),
    (
        "network host",
        _service("network_mode: host"),
        f"services.app.network_mode is not allowed {LOCAL}: network_mode: host shares a namespace of the host "
        "(compose policy option allow_host_namespaces)",
    ),
    (
        "ipc host",
        _service("ipc: host"),
        f"services.app.ipc is not allowed {LOCAL}: ipc: host shares a namespace of the host (compose policy option allow_host_namespaces)",
    ),
    (
        "userns host",
        _service("userns_mode: host"),
        f"services.app.userns_mode is not allowed {LOCAL}: userns_mode changes the container's user namespace (host "
        "disables remapping) (compose policy option allow_host_namespaces)",
    ),
    (
        "cap_add SYS_ADMIN",
        _service("cap_add: [SYS_ADMIN]"),
        f"services.app.cap_add is not allowed {LOCAL}: added capabilities widen what the container may do to the "
        "host (compose policy option allow_capabilities)",
    ),
    (
        "cap_add ALL",
        _service("cap_add: [ALL]"),
        f"services.app.cap_add is not allowed {LOCAL}: added capabilities widen what the container may do to the "
        "host (compose policy option allow_capabilities)",
    ),
    (
        "devices",
        _service("devices: ['/dev/mem:/dev/mem']"),
        f"services.app.devices is not allowed {LOCAL}: it gives the container host devices (compose policy option allow_devices)",
    ),
    (
        "seccomp unconfined",
        _service("security_opt: [seccomp=unconfined]"),
        f"services.app.security_opt is not allowed {LOCAL}: it can lift the container's confinement (seccomp, "
        "AppArmor, SELinux) (compose policy option allow_security_opt)",
    ),
    (
        "sysctls",
        _service("sysctls: {net.ipv4.ip_unprivileged_port_start: 0}"),
        f"services.app.sysctls is not allowed {LOCAL}: it changes kernel parameters (compose policy option allow_sysctls)",
    ),
    (
        "foreign container network",
        _service("network_mode: 'container:windflow-backend'"),
        f"services.app.network_mode is not allowed {LOCAL}: 'container:windflow-backend' is not a container of this "
        "deployment (compose policy option allow_foreign_containers)",
    ),
    (
        "foreign volumes_from",
        _service("volumes_from: ['container:postgres']"),
        f"services.app.volumes_from[0] is not allowed {LOCAL}: 'container:postgres' is not a container of this "
        "deployment (compose policy option allow_foreign_containers)",
    ),
    (
        "external network",
        _service("networks: [shared]", top="networks:\n  shared: {external: true}\n"),
        f"networks.shared.external is not allowed {LOCAL}: an external network may belong to another deployment; let "
        "the deployment create its own (compose policy option allow_external_resources)",
    ),
    (
        "another deployment's volume",
        _service("volumes: [data:/d]", top="volumes:\n  data: {name: wf-0123_data}\n"),
        f"volumes.data.name is not allowed {LOCAL}: a fixed volume name may be another deployment's; remove name: (the "
        "deployment prefixes its own) (compose policy option allow_external_resources)",
    ),
]


@pytest.mark.parametrize(("template", "detail"), [r[1:] for r in DENIED], ids=[r[0] for r in DENIED])
async def test_host_access_is_refused_on_local_by_default(world, template, detail):
    stack = await world.stack(template)  # no target yet: only the always-refused keys are judged
    refused = await world.deploy(stack["id"], expect=422)
    options = sorted(set(re.findall(r"compose policy option (\w+)", detail)))  # what would allow it
    assert refused == {
        "detail": detail,
        "code": "compose_policy_denied",
        "params": {"rules": options, "paths": [detail.split(" is not allowed")[0]]},
    }


async def test_a_value_cannot_inject_a_refused_key(world):
    """The policy judges the rendered document: a textarea value that adds YAML lines is caught too
    (string variables refuse line breaks already)."""
    stack = await world.stack("services:\n  app:\n    image: {{ image }}\n", [{"name": "image", "type": "textarea", "default": TEST_IMAGE}])
    refused = await world.deploy(stack["id"], {"image": f"{TEST_IMAGE}\n    privileged: true"}, expect=422)
    assert refused["code"] == "compose_policy_denied"
    assert refused["detail"].startswith(f"services.app.privileged is not allowed {LOCAL}: ")
    sneaky = await world.deploy(stack["id"], {"image": f"{TEST_IMAGE}\n    env_file: [/proc/self/environ]"}, expect=422)
    assert sneaky["code"] == "compose_forbidden"


async def test_the_policy_is_shown_and_only_a_superuser_sets_it_on_the_host_target(world):
    shown = (await world.client.get(f"/api/v1/targets/{world.local_id}", headers=world.operator.headers)).json()
    assert shown["compose_policy"] == {
        "allow_privileged": False,
        "allow_host_binds": False,
        "host_bind_prefixes": [],
        "allow_docker_socket": False,
        "allow_host_namespaces": False,
        "allow_devices": False,
        "allow_capabilities": False,
        "allow_security_opt": False,
        "allow_sysctls": False,
        "allow_foreign_containers": False,
        "allow_external_resources": False,
    }
    denied = await world.set_policy({"allow_privileged": True}, world.org_admin)
    assert denied.status_code == 403 and denied.json()["code"] == "host_target_forbidden", denied.text
    assert "only a platform superuser" in denied.json()["detail"]
    assert (await world.set_policy({"allow_privileged": True}, world.operator)).status_code == 403

    bad = await world.set_policy({"host_bind_prefixes": ["relative/dir"]})
    assert bad.status_code == 422 and "must be an absolute path" in bad.text
    unknown = await world.set_policy({"allow_everything": True})
    assert unknown.status_code == 422

    granted = await world.set_policy({"allow_capabilities": True, "host_bind_prefixes": ["/srv/data/../data/"]})
    assert granted.status_code == 200, granted.text
    assert granted.json()["compose_policy"]["allow_capabilities"] is True
    assert granted.json()["compose_policy"]["host_bind_prefixes"] == ["/srv/data"]
    stack = await world.stack(_service("cap_add: [NET_ADMIN]", "command: ['true']", "restart: 'no'"))
    # Allowed now: the deployment is accepted (what it does on the engine is the next test's business).
    accepted = await world.deploy(stack["id"])
    assert accepted["status"] in ("pending", "deploying"), accepted  # created (and claimed when it can start at once)

    # An organisation's admin owns the policy of the targets it registered on remote engines.
    remote = await world.client.post(
        "/api/v1/targets", json={"name": "remote", "endpoint": "tcp://192.0.2.10:2375"}, headers=world.org_admin.headers
    )
    assert remote.status_code == 201, remote.text
    mine = await world.set_policy({"allow_privileged": True}, world.org_admin, remote.json()["id"])
    assert mine.status_code == 200 and mine.json()["compose_policy"]["allow_privileged"] is True
    reset = await world.set_policy(None, world.org_admin, remote.json()["id"])
    assert reset.status_code == 200 and reset.json()["compose_policy"]["allow_privileged"] is False


@pytest.mark.docker
async def test_superuser_allowed_bind_and_capability_really_run_then_a_tightened_policy_stops_them(world, docker_engine, tmp_path):
    """A bind under an allowed prefix plus an added capability, really deployed. (Privileged mode is granted
    the same way, but this test engine itself runs unprivileged and cannot start privileged containers.)"""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("hello-from-the-host\n")
    shared.chmod(0o755)
    template = _service(
        "init: true",
        "cap_add: [NET_ADMIN]",
        "volumes: ['{{ directory }}:/data:ro']",
        "command: ['sh', '-c', 'cat /data/hello.txt && while true; do sleep 1; done']",
    )
    stack = await world.stack(template, [{"name": "directory", "type": "string", "default": str(shared)}])

    outside = await world.set_policy(
        {"allow_capabilities": True, "allow_host_binds": True, "host_bind_prefixes": [str(tmp_path / "elsewhere")]}
    )
    assert outside.status_code == 200, outside.text
    refused = await world.deploy(stack["id"], expect=422)
    assert refused["detail"] == (
        f"services.app.volumes[0] is not allowed {LOCAL}: '{shared}' is outside the allowed host paths "
        f"({tmp_path / 'elsewhere'}) (compose policy option host_bind_prefixes)"
    )
    escape = await world.deploy(stack["id"], {"directory": f"{tmp_path}/elsewhere/../shared"}, expect=422)
    assert "host_bind_prefixes" in escape["detail"]

    granted = await world.set_policy({"allow_capabilities": True, "allow_host_binds": True, "host_bind_prefixes": [str(shared)]})
    assert granted.status_code == 200, granted.text
    created = await world.deploy(stack["id"])
    running = await wait_status(world.client, world.operator.headers, created["id"], {"running", "failed"})
    assert running["status"] == "running", running["error_message"]
    (container,) = labelled("container", created["id"])
    inspected = json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, text=True, timeout=30, check=True).stdout)[
        0
    ]
    assert {c.removeprefix("CAP_") for c in inspected["HostConfig"]["CapAdd"]} == {"NET_ADMIN"}
    assert [(m["Type"], m["Source"], m["Destination"]) for m in inspected["Mounts"]] == [("bind", str(shared), "/data")]
    output = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=30)
    assert "hello-from-the-host" in output.stdout

    # The superuser tightens the policy: redeploy and start are refused up front...
    tightened = await world.set_policy(None)
    assert tightened.status_code == 200
    denied = await world.client.post(f"/api/v1/deployments/{created['id']}/redeploy", headers=world.operator.headers)
    assert denied.status_code == 422, denied.text
    assert denied.json() == {
        "detail": f"services.app.volumes[0] is not allowed {LOCAL}: '{shared}' is a bind mount of a host path; use a "
        f"named volume (compose policy option allow_host_binds); services.app.cap_add is not allowed {LOCAL}: added "
        "capabilities widen what the container may do to the host (compose policy option allow_capabilities)",
        "code": "compose_policy_denied",
        "params": {"rules": ["allow_capabilities", "allow_host_binds"], "paths": ["services.app.volumes[0]", "services.app.cap_add"]},
    }

    # ...and a deployment queued before the change is refused by the runner itself.
    async with database.AsyncSessionLocal() as session:
        deployment = await session.get(Deployment, created["id"])
        await DeploymentService.requeue(session, deployment=deployment, action="redeploy", actor="test")
        await session.commit()
    outcome = await run_deployment(created["id"], world.settings, executor=ExecutorKind.ASYNCIO)
    assert outcome.status == "failed", outcome
    failed = (await world.client.get(f"/api/v1/deployments/{created['id']}", headers=world.operator.headers)).json()
    assert failed["status"] == "failed"
    assert failed["error_message"] == ("refused by the compose policy: " + denied.json()["detail"])
    logs = await all_logs(world.client, world.operator.headers, created["id"])
    assert logs[-1]["level"] == "error" and logs[-1]["message"] == failed["error_message"]
    async with database.AsyncSessionLocal() as session:
        status = (await session.execute(select(Deployment.status).where(Deployment.id == created["id"]))).scalar_one()
    assert status is DeploymentStatus.FAILED
