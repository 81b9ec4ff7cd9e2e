"""The compose policy of a target: what a compose document may do on its Docker host (the typed model).

The rules that apply it are ``services/targets/compose_policy.py``; this model lives with the schemas because the
target API exposes it.
"""

from __future__ import annotations

import posixpath

from pydantic import BaseModel, ConfigDict, Field, field_validator


def normalise_host_path(path: str) -> str:
    """Collapse ``//``, ``.`` and ``..`` (``/srv/../etc`` is ``/etc``) and read ``/var/run`` as ``/run``."""
    normal = posixpath.normpath("/" + path.lstrip("/"))
    if normal == "/var/run" or normal.startswith("/var/run/"):
        normal = "/run" + normal[len("/var/run") :]
    return normal


MAX_PREFIXES = 50


class ComposePolicy(BaseModel):
    """What a target lets a compose document do on its Docker host. Everything is denied by default."""

    model_config = ConfigDict(extra="forbid")

    allow_privileged: bool = Field(default=False, description="services may set privileged: true")
    allow_host_binds: bool = Field(default=False, description="services may bind-mount host paths (limited to host_bind_prefixes when set)")
    host_bind_prefixes: list[str] = Field(
        default_factory=list,
        max_length=MAX_PREFIXES,
        description="absolute host paths under which binds are allowed; empty = any path (when allow_host_binds)",
    )
    allow_docker_socket: bool = Field(
        default=False, description="services may mount the Docker/containerd engine socket (root on the host)"
    )
    allow_host_namespaces: bool = Field(
        default=False,
        description="network_mode/pid/ipc/uts/cgroup: host, userns_mode, cgroup_parent, host/macvlan/ipvlan networks",
    )
    allow_devices: bool = Field(default=False, description="devices, device_cgroup_rules, gpus")
    allow_capabilities: bool = Field(default=False, description="cap_add")
    allow_security_opt: bool = Field(default=False, description="security_opt other than no-new-privileges (e.g. seccomp=unconfined)")
    allow_sysctls: bool = Field(default=False, description="sysctls")
    allow_foreign_containers: bool = Field(
        default=False,
        description="network_mode/pid/ipc: container:X, volumes_from and external_links of containers that are not the deployment's own",
    )
    allow_external_resources: bool = Field(
        default=False,
        description="external (or explicitly named) networks, volumes, configs and secrets, which may be other deployments'",
    )

    @field_validator("host_bind_prefixes")
    @classmethod
    def _absolute_prefixes(cls, prefixes: list[str]) -> list[str]:
        cleaned = []
        for prefix in prefixes:
            if not isinstance(prefix, str) or not prefix.startswith("/") or "\x00" in prefix or len(prefix) > 500:
                raise ValueError(f"host_bind_prefixes: {prefix!r} must be an absolute path such as /srv/data")
            cleaned.append(normalise_host_path(prefix))
        return sorted(set(cleaned))


class RefusedKey(BaseModel):
    key: str = Field(description="a compose key; * stands for any service, config, secret or volume name")
    reason: str = Field(description="why it is refused and what to write instead")


class ComposePolicyRules(BaseModel):
    """The rules every target applies whatever its policy (its own options are on the target)."""

    always_refused: list[RefusedKey] = Field(
        description="keys that make WindFlow or the compose tool read the WindFlow host: refused on every target"
    )
