"""The functions a generator default may call, e.g. ``"{{ generate_password(24) }}"``.

They run once, when a deployment is created (:func:`backend.app.services.stacks.templating.resolve_values`); the
deployment stores the result, so a redeploy reuses the same password and port. A bad argument is a
:class:`~backend.app.schemas.stack_variables.ValueProblem` naming the function and the rule.
"""

from __future__ import annotations

import secrets
import socket
import string
import uuid as uuid_module
from typing import Any

from backend.app.schemas.stack_variables import ValueProblem

#: Generator functions a default may call.
GENERATORS = ("generate_password", "random_port", "uuid", "random_hex")
RANDOM_PORT_RANGE = (20000, 40000)

# Letters and digits only: no character that YAML, shells, URLs (postgres://user:pw@host) or compose
# interpolation would treat specially. 24 of them carry ~142 bits.
_PASSWORD_ALPHABET = string.ascii_letters + string.digits


class Generators:
    """One instance per resolution of a deployment's values, so two ``random_port()`` defaults of one
    deployment never get the same port."""

    def __init__(self) -> None:
        self.ports: set[int] = set()

    def generate_password(self, length: int = 24) -> str:
        if isinstance(length, bool) or not isinstance(length, int) or not 8 <= length <= 256:
            raise ValueProblem(
                "generate_password(length): length must be an integer between 8 and 256",
                "generator_argument",
                function="generate_password",
                min=8,
                max=256,
            )
        return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))

    def random_hex(self, length: int = 32) -> str:
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 256:
            raise ValueProblem(
                "random_hex(length): length must be an integer between 1 and 256",
                "generator_argument",
                function="random_hex",
                min=1,
                max=256,
            )
        return secrets.token_hex((length + 1) // 2)[:length]

    def uuid(self) -> str:
        return str(uuid_module.uuid4())

    def random_port(self, low: int = RANDOM_PORT_RANGE[0], high: int = RANDOM_PORT_RANGE[1]) -> int:
        """A TCP port free on this host right now, in ``[low, high]``.

        Best effort: the port is free where WindFlow runs (the local engine's host); nothing reserves it
        until the deployment binds it, and a remote target may differ.
        """
        for bound in (low, high):
            if isinstance(bound, bool) or not isinstance(bound, int) or not 1024 <= bound <= 65535:
                raise ValueProblem(
                    "random_port(low, high): bounds must be integers between 1024 and 65535",
                    "generator_argument",
                    function="random_port",
                    min=1024,
                    max=65535,
                )
        if low > high:
            raise ValueProblem("random_port(low, high): low is greater than high", "generator_bounds_reversed", function="random_port")
        # 200 distinct ports drawn at random (what shuffling the whole range would try first): one random draw
        # per port tried, where a shuffle of 20,001 ports made 20,000 getrandom system calls (77 ms)
        candidates = secrets.SystemRandom().sample(range(low, high + 1), min(200, high - low + 1))
        for port in candidates:
            if port in self.ports:
                continue
            if _port_is_free(port):
                self.ports.add(port)
                return port
        raise ValueProblem(f"random_port(): found no free TCP port between {low} and {high}", "no_free_port", min=low, max=high)

    def namespace(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in GENERATORS}


def _port_is_free(port: int) -> bool:
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind((address, port))
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 on this host
                continue
            return False
    return True
