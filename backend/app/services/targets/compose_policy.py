"""The compose policy: what a compose document may ask of the Docker host it runs on.

(Over 500 lines on purpose: the policy is one security boundary, read and reviewed as a whole — the table of
always-refused keys, the per-target rules and the walk that applies both to a document belong together.)

Two layers, both checked on the parsed document *before* any compose tool sees it, and again on the
document as compose will read it (after its ``${VAR}`` interpolation, with the variables a compose
process of WindFlow inherits):

* **Always refused** (:func:`host_file_violations`), whatever the role and the target: every key that
  makes WindFlow or the compose tool read a file, a directory or the environment of the WindFlow host,
  or run one of its programs: ``env_file``, ``label_file``, ``build``, ``extends.file``, ``include``,
  ``develop`` (watch), ``provider`` (runs a host plugin binary), ``use_api_socket`` (copies the host
  CLI's registry credentials into the container), ``credential_spec.file``, top-level ``configs`` /
  ``secrets`` read from ``file`` or ``environment``, and local volumes whose ``driver_opts`` mount a host
  path (``o: bind``, ``type: none``, a ``device`` path). Checked at stack create/update, catalogue sync,
  preview, deployment create, and by the runner.
* **Per target** (:class:`ComposePolicy`, stored on the target, all denied by default): privileged
  mode, host bind mounts (with an optional allow-list of path prefixes), the Docker engine socket, host
  namespaces, devices, added capabilities, ``security_opt``, ``sysctls``, containers that are not the
  deployment's own (``network_mode``/``pid``/``ipc: container:X``, ``volumes_from``,
  ``external_links``) and networks, volumes, configs and secrets that are not the deployment's own
  (``external`` or an explicit ``name``). Checked at deployment create, start/redeploy/retry and by
  the runner (a policy may be tightened after a deployment was created).

A refusal is a :class:`PolicyViolation` (422) whose message names the key, the rule and what to change,
e.g. ``services.app.privileged is not allowed on target "local": privileged mode gives the container
every device and capability of the host (compose policy option allow_privileged)``.

Pure logic: no database, no engine. Paths are judged as text; a symlink on the host under an allowed
prefix is not followed (see docs/security.md).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from backend.app.core.exceptions import ValidationFailed
from backend.app.core.logging import SecretMask
from backend.app.engines import compose_yaml
from backend.app.engines.base import EngineError
from backend.app.engines.compose_yaml import compose_bool
from backend.app.engines.connection import cli_base_environment
from backend.app.engines.document import interpolate
from backend.app.schemas.compose_policy import MAX_PREFIXES, ComposePolicy  # noqa: F401
from backend.app.schemas.compose_policy import normalise_host_path as _normalise

__all__ = [
    "HOST_FILE_RULES",
    "ComposePolicy",
    "PolicyViolation",
    "Violation",
    "check_host_files",
    "check_target",
    "host_file_violations",
    "is_host_endpoint",
    "load",
    "target_violations",
]


@dataclass(frozen=True)
class Violation:
    path: str  # services.app.privileged
    rule: str  # the policy option, or "host_files" for the always-refused layer
    reason: str

    def message(self, target_name: str | None) -> str:
        where = f' on target "{target_name}"' if target_name is not None else ""
        return f"{self.path} is not allowed{where}: {self.reason}"


class PolicyViolation(ValidationFailed):
    """A document refused by the compose policy (422); ``violations`` lists every refusal."""

    def __init__(self, violations: list[Violation], target_name: str | None, *, redact: Iterable[str] = ()) -> None:
        self.violations = violations
        detail = SecretMask(redact)("; ".join(v.message(target_name) for v in violations))
        code = "compose_forbidden" if target_name is None else "compose_policy_denied"
        super().__init__(detail, code=code)


# --- helpers -----------------------------------------------------------------------------------------


def load(text: str) -> dict:
    """A compose document (already validated as one) read for the policy checks, as the deployer reads it
    (:mod:`backend.app.engines.compose_yaml`)."""
    document = compose_yaml.load(text)
    if not isinstance(document, dict):
        raise ValidationFailed(
            "the compose document must be a mapping with a 'services' key", code="invalid_compose", params={"reason": "not_mapping"}
        )
    return document


def _truthy(value: Any) -> bool:
    """Whether compose reads ``value`` as true where it expects a boolean (``yes``, ``on``: true, as compose
    casts them). A value compose refuses there (``1``, ``maybe``) counts as true: the policy fails closed,
    and compose would refuse the document anyway."""
    return compose_bool(value) is not False


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list:
    """A list/mapping/scalar as a list of entries (compose accepts all three shapes in places)."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [f"{k}={v}" if v is not None else str(k) for k, v in value.items()]
    return [value]


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _lower_keys(value: Any) -> dict:
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, dict) else {}


def _services(doc: Mapping[str, Any]) -> dict[str, dict]:
    return {str(name): _lower_keys(service) for name, service in _mapping(doc.get("services")).items()}


# --- always refused: reading the WindFlow host -----------------------------------------------------------

_HOST_FILE = "it makes the compose tool read a file of the WindFlow host"

#: Service keys refused outright, with what to do instead.
_SERVICE_HOST_KEYS = {
    "env_file": f"{_HOST_FILE}; put the variables under environment instead",
    "label_file": f"{_HOST_FILE}; put the labels under labels instead",
    "build": "building reads a build context from the WindFlow host; use a pre-built image",
    "develop": "develop (watch) syncs files of the WindFlow host into the container",
    "provider": "a provider service runs a plugin program on the WindFlow host",
    "use_api_socket": "it gives the container the engine socket and the WindFlow host's registry credentials",
}
_CONTENT_INSTEAD = f"{_HOST_FILE}; give the value with content: (or a secret variable)"
_ENVIRONMENT = "it reads an environment variable of the WindFlow host; give the value with content: instead"

#: The always-refused layer, key by key (``*``: any service, config, secret or volume name), with what to do
#: instead: what :func:`host_file_violations` refuses, with these reasons, and what the API lists
#: (``GET /targets/policy-rules``, shown beside each target's policy).
HOST_FILE_RULES: dict[str, str] = {
    "include": f"{_HOST_FILE}; put every service in this document",
    **{f"services.*.{key}": reason for key, reason in _SERVICE_HOST_KEYS.items()},
    "services.*.extends.file": f"{_HOST_FILE}; extend a service of this document (extends: {{service: ...}})",
    "services.*.credential_spec.file": _HOST_FILE,
    "configs.*.file": _CONTENT_INSTEAD,
    "configs.*.environment": _ENVIRONMENT,
    "secrets.*.file": _CONTENT_INSTEAD,
    "secrets.*.environment": _ENVIRONMENT,
    "volumes.*.driver_opts": "these driver options mount a path of the host; use a plain named volume",
}


def _volume_driver_binds(definition: dict) -> bool:
    """A top-level volume whose driver options mount a host path (the local driver's bind form)."""
    driver = definition.get("driver")
    if driver not in (None, "", "local"):
        return False
    opts = _lower_keys(definition.get("driver_opts"))
    if not opts:
        return False
    mount_type = str(opts.get("type", "")).strip().lower()
    options = {o.strip().lower() for o in str(opts.get("o", "")).split(",")}
    device = str(opts.get("device", "")).strip()
    return (
        mount_type in {"none", "bind", "rbind"}
        or bool(options & {"bind", "rbind"})
        or device.startswith(("/", ".", "~"))  # a host path or block device; an NFS device is ":/export"
    )


def host_file_violations(doc: Mapping[str, Any]) -> list[Violation]:
    """Every key of ``doc`` that would make WindFlow or the compose tool read the WindFlow host."""
    found: list[Violation] = []

    def refuse(path: str, rule: str) -> None:
        found.append(Violation(path, "host_files", HOST_FILE_RULES[rule]))

    top = _lower_keys(doc)
    if top.get("include") is not None:
        refuse("include", "include")
    for name, service in _services(doc).items():
        for key in _SERVICE_HOST_KEYS:
            if key in service and (key != "use_api_socket" or _truthy(service[key])):
                refuse(f"services.{name}.{key}", f"services.*.{key}")
        extends = service.get("extends")
        if isinstance(extends, dict) and "file" in extends:
            refuse(f"services.{name}.extends.file", "services.*.extends.file")
        credential_spec = _mapping(service.get("credential_spec"))
        if "file" in credential_spec:
            refuse(f"services.{name}.credential_spec.file", "services.*.credential_spec.file")
    for kind in ("configs", "secrets"):
        for key, definition in _mapping(top.get(kind)).items():
            definition = _lower_keys(definition)
            for source in ("file", "environment"):
                if source in definition:
                    refuse(f"{kind}.{key}.{source}", f"{kind}.*.{source}")
    for key, definition in _mapping(top.get("volumes")).items():
        if isinstance(definition, dict) and _volume_driver_binds(_lower_keys(definition)):
            refuse(f"volumes.{key}.driver_opts", "volumes.*.driver_opts")
    return found


# --- per target ---------------------------------------------------------------------------------------------

#: Engine sockets a bind must not reach unless ``allow_docker_socket`` (``/var/run`` is read as ``/run``).
_SOCKETS = ("/run/docker.sock", "/run/containerd/containerd.sock", "/run/podman/podman.sock", "/run/crio/crio.sock")
_SOCKET_NAMES = {"docker.sock", "containerd.sock", "podman.sock", "crio.sock", "dockershim.sock"}
_SOCKET_DIRS = ("/run/docker", "/run/containerd", "/run/user", "/run/podman", "/run/crio")


def is_host_endpoint(endpoint: str | None) -> bool:
    """A ``unix://`` endpoint reaches an engine through a socket of the WindFlow host itself."""
    return bool(endpoint) and endpoint.strip().lower().startswith("unix:")


def _socket_kind(source: str, extra_sockets: Iterable[str]) -> str | None:
    """``"socket"`` for a bind of an engine socket, ``"parent"`` for a directory holding one, else None."""
    sockets = (*_SOCKETS, *extra_sockets)
    # ``/var/run`` is usually a symlink to ``/run``, but not everywhere: ``/var`` may hold the socket too.
    sockets += tuple("/var" + s for s in sockets if s.startswith("/run/"))
    if posixpath.basename(source) in _SOCKET_NAMES or source in sockets:
        return "socket"
    if any(_under(source, d) for d in _SOCKET_DIRS):
        return "socket"
    if any(_under(s, source) for s in (*sockets, *_SOCKET_DIRS)):
        return "parent"
    return None


#: Network drivers that plug containers into the host's own interfaces.
_HOST_NETWORK_DRIVERS = {"host", "macvlan", "ipvlan"}


@dataclass(frozen=True)
class _Mount:
    index: int
    kind: str  # bind | volume | other
    source: str


def _mounts(service: dict) -> list[_Mount]:
    mounts = []
    for index, entry in enumerate(_items(service.get("volumes"))):
        if isinstance(entry, dict):
            entry = _lower_keys(entry)
            kind = str(entry.get("type", "volume")).lower()
            source = str(entry.get("source") or "")
            if kind in ("bind", "npipe"):
                mounts.append(_Mount(index, "bind", source))
            elif kind == "volume":
                mounts.append(_Mount(index, "volume", source))
            else:
                mounts.append(_Mount(index, "other", source))
            continue
        text = str(entry)
        if ":" not in text:
            continue  # an anonymous volume: only a container path
        source = text.split(":", 1)[0]
        # compose's rule: a source starting with /, . or ~ is a host path, anything else a named volume
        mounts.append(_Mount(index, "bind" if source.startswith(("/", ".", "~")) else "volume", source))
    return mounts


def _container_ref(value: Any) -> tuple[str, str] | None:
    """``("container"|"service", name)`` for ``container:X`` / ``service:X`` references."""
    text = str(value or "")
    for kind in ("container", "service"):
        if text.startswith(f"{kind}:"):
            return kind, text[len(kind) + 1 :]
    return None


class _TargetChecker:
    def __init__(self, doc: Mapping[str, Any], policy: ComposePolicy, extra_sockets: Iterable[str], written: Mapping[str, Any]) -> None:
        self.doc = doc
        #: the document as the tenant wrote it: messages quote its text, never a value interpolated from
        #: the WindFlow host's environment (``${HOME}`` stays ``${HOME}``)
        self.written = _services(written)
        self.policy = policy
        self.extra_sockets = tuple(extra_sockets)
        self.services = _services(doc)
        self.own_containers = {str(s["container_name"]) for s in self.services.values() if s.get("container_name")}
        self.found: list[Violation] = []

    def deny(self, allowed: bool, path: str, option: str, reason: str) -> None:
        if not allowed:
            self.found.append(Violation(path, option, f"{reason} (compose policy option {option})"))

    def own(self, kind: str, name: str) -> bool:
        if kind == "service":
            return name in self.services
        return name in self.own_containers

    def run(self) -> list[Violation]:
        p = self.policy
        for name, service in self.services.items():
            at = f"services.{name}"
            if _truthy(service.get("privileged")) and "privileged" in service:
                self.deny(
                    p.allow_privileged,
                    f"{at}.privileged",
                    "allow_privileged",
                    "privileged mode gives the container every device and capability of the host",
                )
            self.check_mounts(at, service, self.written.get(name, service))
            self.check_namespaces(at, service)
            for key in ("devices", "device_cgroup_rules", "gpus"):
                if service.get(key):
                    self.deny(p.allow_devices, f"{at}.{key}", "allow_devices", "it gives the container host devices")
            devices = _mapping(_mapping(_mapping(service.get("deploy")).get("resources")).get("reservations"))
            if devices.get("devices"):
                self.deny(
                    p.allow_devices, f"{at}.deploy.resources.reservations.devices", "allow_devices", "it gives the container host devices"
                )
            if service.get("cap_add"):
                self.deny(
                    p.allow_capabilities,
                    f"{at}.cap_add",
                    "allow_capabilities",
                    "added capabilities widen what the container may do to the host",
                )
            options = [str(o).strip().lower().replace("=", ":") for o in _items(service.get("security_opt"))]
            if any(o not in ("no-new-privileges", "no-new-privileges:true") for o in options):
                self.deny(
                    p.allow_security_opt,
                    f"{at}.security_opt",
                    "allow_security_opt",
                    "it can lift the container's confinement (seccomp, AppArmor, SELinux)",
                )
            if service.get("sysctls"):
                self.deny(p.allow_sysctls, f"{at}.sysctls", "allow_sysctls", "it changes kernel parameters")
            self.check_foreign(at, service, self.written.get(name, service))
        self.check_resources()
        return self.found

    def check_mounts(self, at: str, service: dict, written: dict) -> None:
        p = self.policy
        as_written = {m.index: m.source for m in _mounts(written)}
        for mount in _mounts(service):
            path = f"{at}.volumes[{mount.index}]"
            if mount.kind != "bind":
                continue
            raw = as_written.get(mount.index, mount.source)
            if not mount.source.startswith("/"):
                # Relative (./data, ../../) and home (~) paths resolve on the host against directories the
                # tenant does not see: only a policy allowing every host path accepts them.
                self.deny(
                    p.allow_host_binds and not p.host_bind_prefixes,
                    path,
                    "allow_host_binds",
                    f"{raw!r} is a bind mount of a relative host path; "
                    + (
                        f"use an absolute path under one of the allowed prefixes ({', '.join(p.host_bind_prefixes)})"
                        if p.allow_host_binds
                        else "use a named volume"
                    ),
                )
                continue
            source = _normalise(mount.source)
            socket_kind = _socket_kind(source, self.extra_sockets)
            if socket_kind is not None:
                self.deny(
                    p.allow_docker_socket,
                    path,
                    "allow_docker_socket",
                    f"{raw!r} reaches the Docker engine socket, which is root on the host",
                )
                if socket_kind == "socket":
                    continue  # the socket itself is judged by allow_docker_socket alone
            if not p.allow_host_binds:
                self.deny(False, path, "allow_host_binds", f"{raw!r} is a bind mount of a host path; use a named volume")
            elif p.host_bind_prefixes and not any(_under(source, prefix) for prefix in p.host_bind_prefixes):
                self.deny(
                    False, path, "host_bind_prefixes", f"{raw!r} is outside the allowed host paths ({', '.join(p.host_bind_prefixes)})"
                )

    def check_namespaces(self, at: str, service: dict) -> None:
        p = self.policy
        for key in ("network_mode", "pid", "ipc", "uts", "cgroup"):
            value = str(service.get(key) or "").strip().lower()
            if value == "host":
                self.deny(p.allow_host_namespaces, f"{at}.{key}", "allow_host_namespaces", f"{key}: host shares a namespace of the host")
        if service.get("userns_mode"):
            self.deny(
                p.allow_host_namespaces,
                f"{at}.userns_mode",
                "allow_host_namespaces",
                "userns_mode changes the container's user namespace (host disables remapping)",
            )
        if service.get("cgroup_parent"):
            self.deny(
                p.allow_host_namespaces,
                f"{at}.cgroup_parent",
                "allow_host_namespaces",
                "cgroup_parent places the container in a cgroup of the host",
            )

    def check_foreign(self, at: str, service: dict, written: dict) -> None:
        p = self.policy
        for key in ("network_mode", "pid", "ipc"):
            ref = _container_ref(service.get(key))
            if ref and not self.own(*ref):
                self.deny(
                    p.allow_foreign_containers,
                    f"{at}.{key}",
                    "allow_foreign_containers",
                    f"{str(written.get(key, ''))!r} is not a container of this deployment",
                )
        written_from = _items(written.get("volumes_from"))
        for index, entry in enumerate(_items(service.get("volumes_from"))):
            ref = _container_ref(entry) or ("service", str(entry).split(":", 1)[0])
            if ref[0] == "container":
                ref = ("container", ref[1].split(":", 1)[0])
            if not self.own(*ref):
                shown = written_from[index] if index < len(written_from) else entry
                self.deny(
                    p.allow_foreign_containers,
                    f"{at}.volumes_from[{index}]",
                    "allow_foreign_containers",
                    f"{str(shown)!r} is not a container of this deployment",
                )
        if service.get("external_links"):
            self.deny(
                p.allow_foreign_containers,
                f"{at}.external_links",
                "allow_foreign_containers",
                "it links containers that are not the deployment's own",
            )

    def check_resources(self) -> None:
        top = _lower_keys(self.doc)
        for key, definition in _mapping(top.get("networks")).items():
            driver = str(_lower_keys(definition).get("driver") or "").strip().lower()
            if driver in _HOST_NETWORK_DRIVERS:
                self.deny(
                    self.policy.allow_host_namespaces,
                    f"networks.{key}.driver",
                    "allow_host_namespaces",
                    f"a {driver} network attaches containers to the host's network interfaces",
                )
        for kind in ("networks", "volumes", "configs", "secrets"):
            for key, definition in _mapping(top.get(kind)).items():
                definition = _lower_keys(definition)
                external = definition.get("external")
                if external is not None and _truthy(external):
                    self.deny(
                        self.policy.allow_external_resources,
                        f"{kind}.{key}.external",
                        "allow_external_resources",
                        f"an external {kind[:-1]} may belong to another deployment; let the deployment create its own",
                    )
                elif definition.get("name"):
                    self.deny(
                        self.policy.allow_external_resources,
                        f"{kind}.{key}.name",
                        "allow_external_resources",
                        f"a fixed {kind[:-1]} name may be another deployment's; remove name: (the deployment prefixes its own)",
                    )


def target_violations(
    doc: Mapping[str, Any],
    policy: ComposePolicy,
    *,
    extra_sockets: Iterable[str] = (),
    written: Mapping[str, Any] | None = None,
) -> list[Violation]:
    """Every per-target rule ``doc`` breaks under ``policy`` (the always-refused layer is separate).

    ``written`` is the document before interpolation, when ``doc`` is its interpolated form.
    """
    return _TargetChecker(doc, policy, extra_sockets, written if written is not None else doc).run()


# --- the document as compose reads it -------------------------------------------------------------------


def _compose_environment(endpoint: str | None) -> dict[str, str]:
    """The variables a compose process of WindFlow interpolates ``${VAR}`` from (see engines.connection)."""
    env = cli_base_environment()
    env.update({"DOCKER_HOST": endpoint or "", "DOCKER_CLI_HINTS": "false"})
    env.setdefault("DOCKER_CERT_PATH", "/tmp/windflow-engine")
    return env


#: Nodes :func:`_interpolated` visits at most: YAML aliases can make a small text a huge tree.
MAX_NODES = 200_000


def _interpolated(value: Any, env: Mapping[str, str], budget: list[int] | None = None) -> Any:
    """``interpolate`` leaf by leaf; a leaf compose would refuse (``${X:?}``) is kept as written.

    Fails closed (422) past :data:`MAX_NODES` nodes rather than walking an alias bomb.
    """
    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValidationFailed(
            f"the compose document expands to more than {MAX_NODES} values (YAML aliases?); it cannot be checked",
            code="compose_too_large",
        )
    if isinstance(value, dict):
        return {k: _interpolated(v, env, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolated(v, env, budget) for v in value]
    if isinstance(value, str) and "$" in value:
        try:
            return interpolate(value, env)
        except EngineError:
            return value
    return value


def _views(doc: Mapping[str, Any], endpoint: str | None) -> list[Mapping[str, Any]]:
    resolved = _interpolated(dict(doc), _compose_environment(endpoint))
    return [doc] if resolved == doc else [doc, resolved]


def _unique(violations: Iterable[Violation]) -> list[Violation]:
    seen: dict[tuple[str, str], Violation] = {}
    for violation in violations:
        seen.setdefault((violation.path, violation.rule), violation)
    return list(seen.values())


def check_host_files(doc: Mapping[str, Any], *, redact: Iterable[str] = ()) -> None:
    """Raise :class:`PolicyViolation` when ``doc`` would make WindFlow read its own host (every target)."""
    found = _unique(v for view in _views(doc, None) for v in host_file_violations(view))
    if found:
        raise PolicyViolation(found, None, redact=redact)


def check_target(
    doc: Mapping[str, Any],
    policy: ComposePolicy,
    *,
    target_name: str,
    endpoint: str | None,
    redact: Iterable[str] = (),
) -> None:
    """Raise :class:`PolicyViolation` when ``doc`` breaks the always-refused rules or the target's policy."""
    check_host_files(doc, redact=redact)
    sockets = []
    if is_host_endpoint(endpoint):
        sockets.append(_normalise(endpoint.split(":", 1)[1].lstrip("/")))
    found = _unique(v for view in _views(doc, endpoint) for v in target_violations(view, policy, extra_sockets=sockets, written=doc))
    if found:
        raise PolicyViolation(found, target_name, redact=redact)
