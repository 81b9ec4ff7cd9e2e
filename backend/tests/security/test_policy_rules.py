"""The compose policy checker as pure logic: one row per escape, the exact path and rule it is refused with."""

from __future__ import annotations

import pytest

from backend.app.core.exceptions import ValidationFailed
from backend.app.engines.compose_cli import check_document, find_compose_command
from backend.app.services.targets.compose_policy import (
    MAX_NODES,
    ComposePolicy,
    PolicyViolation,
    check_host_files,
    check_target,
    host_file_violations,
    load,
    target_violations,
)


def _doc(service: str, top: str = "") -> dict:
    """A document with the service ``app`` (``service``: its lines) and ``top`` after it: top-level keys, or
    more services when its lines are indented by two. Read as the deployer reads it (``compose_policy.load``)."""
    text = "services:\n  app:\n    image: busybox\n" + "".join(f"    {line}\n" for line in service.splitlines()) + top
    return load(text)


# --- always refused -----------------------------------------------------------------------------------

HOST_FILES = [
    ("env_file string", "env_file: /proc/self/environ", "", "services.app.env_file"),
    ("env_file list", "env_file: [/proc/self/environ]", "", "services.app.env_file"),
    ("env_file long", "env_file: [{path: /etc/shadow, required: false}]", "", "services.app.env_file"),
    ("label_file", "label_file: /etc/passwd", "", "services.app.label_file"),
    ("build string", "build: /", "", "services.app.build"),
    ("build context", "build: {context: ../.., dockerfile: x}", "", "services.app.build"),
    ("extends file", "extends: {file: /etc/compose.yml, service: x}", "", "services.app.extends.file"),
    ("develop watch", "develop: {watch: [{path: /, action: sync, target: /x}]}", "", "services.app.develop"),
    ("provider", "provider: {type: model}", "", "services.app.provider"),
    ("use_api_socket", "use_api_socket: true", "", "services.app.use_api_socket"),
    ("credential_spec file", "credential_spec: {file: spec.json}", "", "services.app.credential_spec.file"),
    ("include", "", "include: [/etc/other.yml]\n", "include"),
    ("config file", "", "configs:\n  c: {file: /etc/shadow}\n", "configs.c.file"),
    ("config environment", "", "configs:\n  c: {environment: SECRET_KEY}\n", "configs.c.environment"),
    ("secret file", "", "secrets:\n  s: {file: /proc/self/environ}\n", "secrets.s.file"),
    ("secret environment", "", "secrets:\n  s: {environment: DATABASE_URL}\n", "secrets.s.environment"),
    ("volume o=bind", "", "volumes:\n  v: {driver_opts: {type: none, o: bind, device: /etc}}\n", "volumes.v.driver_opts"),
    ("volume local device", "", "volumes:\n  v: {driver: local, driver_opts: {type: ext4, device: /dev/sda1}}\n", "volumes.v.driver_opts"),
    ("volume rbind", "", "volumes:\n  v: {driver_opts: {o: 'rbind,ro', device: srv}}\n", "volumes.v.driver_opts"),
    ("interpolated env_file", "env_file: ${HOME}/.env", "", "services.app.env_file"),
]


@pytest.mark.parametrize(("service", "top", "path"), [row[1:] for row in HOST_FILES], ids=[row[0] for row in HOST_FILES])
def test_host_file_keys_are_always_refused(service, top, path):
    doc = _doc(service, top)
    assert [v.path for v in host_file_violations(doc)] == [path]
    with pytest.raises(PolicyViolation) as refused:
        check_host_files(doc)
    assert refused.value.code == "compose_forbidden" and refused.value.status_code == 422
    assert refused.value.detail.startswith(f"{path} is not allowed: ")
    # Even a policy that allows everything per target does not allow these.
    everything = ComposePolicy(**{f: True for f in ComposePolicy.model_fields if f.startswith("allow_")})
    with pytest.raises(PolicyViolation):
        check_target(doc, everything, target_name="t", endpoint="tcp://h:2376")


ACCEPTED_EVERYWHERE = [
    ("named volume", "volumes: [data:/data]", "volumes:\n  data: {}\n"),
    ("anonymous volume", "volumes: [/data]", ""),
    ("tmpfs", "tmpfs: [/run]\nvolumes: [{type: tmpfs, target: /cache}]", ""),
    ("inline config", "configs: [c]", "configs:\n  c: {content: hello}\n"),
    ("nfs volume", "volumes: [v:/v]", "volumes:\n  v: {driver_opts: {type: nfs, o: 'addr=10.0.0.1', device: ':/export'}}\n"),
    ("no-new-privileges", "security_opt: ['no-new-privileges:true']", ""),
    ("privileged false", "privileged: false", ""),
    ("own service namespaces", "network_mode: service:db\npid: service:db", "  db: {image: busybox}\n"),
    ("own volumes_from", "volumes_from: [db, 'container:mydb:ro']", "  db: {image: busybox, container_name: mydb}\n"),
    ("extends same file", "extends: {service: base}", "  base: {image: busybox}\n"),
    ("ports and env", "ports: ['127.0.0.1:8080:80']\nenvironment: {A: b}\nextra_hosts: ['db:10.0.0.2']", ""),
]


@pytest.mark.parametrize(("service", "top"), [row[1:] for row in ACCEPTED_EVERYWHERE], ids=[row[0] for row in ACCEPTED_EVERYWHERE])
def test_ordinary_documents_pass_the_default_policy(service, top):
    doc = _doc(service, top)
    check_target(doc, ComposePolicy(), target_name="local", endpoint="unix:///var/run/docker.sock")


# --- per target -----------------------------------------------------------------------------------------

DENIED = [
    ("privileged", "privileged: true", "", "services.app.privileged", "allow_privileged"),
    ("privileged string", "privileged: 'true'", "", "services.app.privileged", "allow_privileged"),
    ("root bind", "volumes: ['/:/host']", "", "services.app.volumes[0]", "allow_docker_socket"),
    ("etc bind", "volumes: ['/etc:/x:ro']", "", "services.app.volumes[0]", "allow_host_binds"),
    ("long bind", "volumes: [{type: bind, source: /etc, target: /x}]", "", "services.app.volumes[0]", "allow_host_binds"),
    ("relative bind", "volumes: ['../../../../:/host']", "", "services.app.volumes[0]", "allow_host_binds"),
    ("home bind", "volumes: ['~/.ssh:/keys']", "", "services.app.volumes[0]", "allow_host_binds"),
    ("interpolated bind", "volumes: ['${HOME}:/x']", "", "services.app.volumes[0]", "allow_host_binds"),
    ("interpolated default", "volumes: ['${NOPE:-/etc}:/x']", "", "services.app.volumes[0]", "allow_host_binds"),
    ("socket", "volumes: ['/var/run/docker.sock:/var/run/docker.sock']", "", "services.app.volumes[0]", "allow_docker_socket"),
    ("socket via /run", "volumes: ['/run:/hostrun']", "", "services.app.volumes[0]", "allow_docker_socket"),
    ("socket via /var/run", "volumes: ['/var/run/:/hostrun']", "", "services.app.volumes[0]", "allow_docker_socket"),
    ("socket dotdot", "volumes: ['/tmp/../var/run/docker.sock:/s']", "", "services.app.volumes[0]", "allow_docker_socket"),
    (
        "containerd socket",
        "volumes: [{type: bind, source: /run/containerd/containerd.sock, target: /s}]",
        "",
        "services.app.volumes[0]",
        "allow_docker_socket",
    ),
    (
        "npipe",
        "volumes: [{type: npipe, source: '\\\\.\\pipe\\docker_engine', target: /p}]",
        "",
        "services.app.volumes[0]",
        "allow_host_binds",
    ),
    ("network host", "network_mode: host", "", "services.app.network_mode", "allow_host_namespaces"),
    ("pid host", "pid: host", "", "services.app.pid", "allow_host_namespaces"),
    ("ipc host", "ipc: host", "", "services.app.ipc", "allow_host_namespaces"),
    ("uts host", "uts: host", "", "services.app.uts", "allow_host_namespaces"),
    ("cgroup host", "cgroup: host", "", "services.app.cgroup", "allow_host_namespaces"),
    ("userns host", "userns_mode: host", "", "services.app.userns_mode", "allow_host_namespaces"),
    ("cgroup_parent", "cgroup_parent: /system.slice", "", "services.app.cgroup_parent", "allow_host_namespaces"),
    (
        "macvlan network",
        "networks: [lan]",
        "networks:\n  lan: {driver: macvlan, driver_opts: {parent: eth0}}\n",
        "networks.lan.driver",
        "allow_host_namespaces",
    ),
    ("devices", "devices: ['/dev/sda:/dev/sda']", "", "services.app.devices", "allow_devices"),
    ("device rules", "device_cgroup_rules: ['b *:* rwm']", "", "services.app.device_cgroup_rules", "allow_devices"),
    ("gpus", "gpus: all", "", "services.app.gpus", "allow_devices"),
    ("cap_add", "cap_add: [SYS_ADMIN]", "", "services.app.cap_add", "allow_capabilities"),
    ("cap_add all", "cap_add: [ALL]", "", "services.app.cap_add", "allow_capabilities"),
    ("seccomp", "security_opt: [seccomp=unconfined]", "", "services.app.security_opt", "allow_security_opt"),
    ("apparmor", "security_opt: ['apparmor:unconfined']", "", "services.app.security_opt", "allow_security_opt"),
    ("sysctls", "sysctls: {net.ipv4.ip_forward: 1}", "", "services.app.sysctls", "allow_sysctls"),
    ("foreign network_mode", "network_mode: container:windflow-backend", "", "services.app.network_mode", "allow_foreign_containers"),
    ("foreign pid", "pid: container:other", "", "services.app.pid", "allow_foreign_containers"),
    ("foreign service ref", "network_mode: service:ghost", "", "services.app.network_mode", "allow_foreign_containers"),
    ("foreign volumes_from", "volumes_from: ['container:postgres']", "", "services.app.volumes_from[0]", "allow_foreign_containers"),
    ("external_links", "external_links: [postgres]", "", "services.app.external_links", "allow_foreign_containers"),
    ("external network", "networks: [n]", "networks:\n  n: {external: true}\n", "networks.n.external", "allow_external_resources"),
    ("external volume", "volumes: [v:/v]", "volumes:\n  v: {external: true}\n", "volumes.v.external", "allow_external_resources"),
    ("named volume", "volumes: [v:/v]", "volumes:\n  v: {name: wf-other_data}\n", "volumes.v.name", "allow_external_resources"),
    ("external secret", "", "secrets:\n  s: {external: true}\n", "secrets.s.external", "allow_external_resources"),
]


@pytest.mark.parametrize(("service", "top", "path", "rule"), [row[1:] for row in DENIED], ids=[row[0] for row in DENIED])
def test_host_access_is_denied_by_default_and_allowed_by_its_option(service, top, path, rule):
    doc = _doc(service, top)
    assert host_file_violations(doc) == []
    with pytest.raises(PolicyViolation) as refused:
        check_target(doc, ComposePolicy(), target_name="local", endpoint="unix:///var/run/docker.sock")
    assert refused.value.code == "compose_policy_denied"
    assert (path, rule) in [(v.path, v.rule) for v in refused.value.violations]
    assert f'{path} is not allowed on target "local": ' in refused.value.detail
    assert f"(compose policy option {rule})" in refused.value.detail

    granted = {name: True for name in ComposePolicy.model_fields if name.startswith("allow_")}
    check_target(doc, ComposePolicy(**granted), target_name="local", endpoint="unix:///var/run/docker.sock")


def test_yaml_merge_keys_and_key_case_do_not_hide_a_key():
    text = (
        "x-base: &base {privileged: true, env_file: [/etc/shadow]}\n"
        "services:\n  app:\n    <<: *base\n    image: busybox\n  other:\n    image: busybox\n    Privileged: true\n"
    )
    doc = load(text)
    assert [v.path for v in host_file_violations(doc)] == ["services.app.env_file"]
    assert [(v.path, v.rule) for v in target_violations(doc, ComposePolicy())] == [
        ("services.app.privileged", "allow_privileged"),
        ("services.other.privileged", "allow_privileged"),
    ]


def test_an_interpolated_value_is_never_quoted():
    """``${HOME}`` is judged as compose reads it, but the message quotes what the tenant wrote."""
    import os

    doc = _doc("volumes: ['${HOME}:/x']")
    with pytest.raises(PolicyViolation) as refused:
        check_target(doc, ComposePolicy(), target_name="t", endpoint="tcp://h:1")
    assert "'${HOME}'" in refused.value.detail
    assert os.environ["HOME"] not in refused.value.detail


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("/srv/data", True),
        ("/srv/data/app", True),
        ("/srv/data/./app//x", True),
        ("/srv/data/../../etc", False),
        ("/srv/data/../database", False),
        ("/srv/database", False),
        ("/srv", False),
        ("./data", False),
        ("~/data", False),
        ("/srv/data/../../var/run/docker.sock", False),
    ],
)
def test_bind_prefixes_are_normalised(source, allowed):
    policy = ComposePolicy(allow_host_binds=True, host_bind_prefixes=["/srv/data/", "/srv/data"])
    assert policy.host_bind_prefixes == ["/srv/data"]
    doc = _doc(f"volumes: ['{source}:/x']")
    found = target_violations(doc, policy)
    assert (found == []) is allowed, found


def test_socket_needs_its_own_option_even_under_an_allowed_prefix():
    doc = _doc("volumes: ['/run/docker.sock:/s', '/var:/v']")
    binds_only = ComposePolicy(allow_host_binds=True)
    assert [(v.path, v.rule) for v in target_violations(doc, binds_only)] == [
        ("services.app.volumes[0]", "allow_docker_socket"),
        ("services.app.volumes[1]", "allow_docker_socket"),
    ]
    socket_only = ComposePolicy(allow_docker_socket=True)
    assert [(v.path, v.rule) for v in target_violations(doc, socket_only)] == [("services.app.volumes[1]", "allow_host_binds")]
    # The target's own unix socket counts as an engine socket wherever it is.
    custom = _doc("volumes: ['/opt/engine/api.sock:/s']")
    with pytest.raises(PolicyViolation, match="allow_docker_socket"):
        check_target(custom, binds_only, target_name="t", endpoint="unix:///opt/engine/api.sock")


def test_bad_prefixes_are_refused():
    for prefix in ("relative/path", "", "~/x"):
        with pytest.raises(ValueError, match="absolute path"):
            ComposePolicy(host_bind_prefixes=[prefix])
    with pytest.raises(ValueError):
        ComposePolicy(allow_everything=True)


def test_alias_bomb_fails_closed():
    lines = ["a0: &a0 ['$x']"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    text = "x-bomb:\n" + "".join(f"  {line}\n" for line in lines) + "services:\n  app:\n    image: busybox\n"
    # The reader refuses the text before anything expands it ...
    with pytest.raises(ValidationFailed) as refused:
        load(text)
    assert refused.value.code == "yaml_limit" and "YAML_MAX_NODES" in refused.value.detail
    # ... and the checks refuse such a graph handed to them as data (every list shared ten times over).
    bomb: list = ["$x"]
    for _ in range(7):
        bomb = [bomb] * 10
    with pytest.raises(ValidationFailed) as refused:
        check_host_files({"x-bomb": bomb, "services": {"app": {"image": "busybox"}}})
    assert refused.value.code == "compose_too_large" and str(MAX_NODES) in refused.value.detail


# --- booleans as compose reads them ----------------------------------------------------------------------

#: ``privileged:`` spellings and what compose makes of them. YAML 1.1 (PyYAML's default, which the policy
#: once read with) turns ``yes``/``on``/``no``/``off`` into booleans and leaves ``y``/``n`` strings; YAML 1.2
#: (compose's reading, and now the policy's) leaves all of them strings, and compose casts them itself.
#: ``n`` used to be refused as if true; compose reads it as false.
BOOLEAN_SPELLINGS = [
    ("yes", True),
    ("on", True),
    ("y", True),
    ("Y", True),
    ("YES", True),
    ("true", True),
    ("'yes'", True),
    ("no", False),
    ("off", False),
    ("n", False),
    ("N", False),
    ("Off", False),
    ("false", False),
    ("'no'", False),
]


@pytest.mark.parametrize(("spelling", "privileged"), BOOLEAN_SPELLINGS, ids=[row[0] for row in BOOLEAN_SPELLINGS])
async def test_a_boolean_is_decided_as_compose_decides_it(spelling, privileged):
    text = f"services:\n  app:\n    image: busybox\n    privileged: {spelling}\n"
    refused = [(v.path, v.rule) for v in target_violations(load(text), ComposePolicy())]
    assert refused == ([("services.app.privileged", "allow_privileged")] if privileged else [])

    command = find_compose_command()
    if command is None:
        pytest.skip("no compose tool installed to compare with")
    normalised = await check_document(text, command=command, timeout=30, normalised=True)
    assert normalised.ok, normalised.lines
    assert load(normalised.stdout)["services"]["app"].get("privileged", False) is privileged


@pytest.mark.parametrize("spelling", ["1", "0", "maybe", "''", "~"])
def test_a_value_compose_refuses_as_a_boolean_is_denied(spelling):
    """Compose refuses the document (``must be a boolean or string``, ``invalid boolean``); the policy, which
    judges it before compose runs, fails closed."""
    text = f"services:\n  app:\n    image: busybox\n    privileged: {spelling}\n"
    assert [v.path for v in target_violations(load(text), ComposePolicy())] == ["services.app.privileged"]
