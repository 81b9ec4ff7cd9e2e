"""The sender's aiohttp connector that connects only to addresses ``egress`` checked (see ``egress.py``).

A module of its own so that aiohttp is imported by the first delivery over HTTP, not by every process that
imports ``egress`` (the backend, the workers, the CLI).
"""

from __future__ import annotations

import socket
import ssl
import typing

import aiohttp
import certifi

from backend.app.config import Settings
from backend.app.services.notifications.egress import Network, allowed_networks, check_addresses


class GuardedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, connecting only to checked addresses: its one way from a host to addresses
    (``_resolve_host``, which aiohttp calls for every new connection, literal addresses included) is replaced
    by :func:`check_addresses`, so a connection goes to an address that was just resolved and checked (TLS
    keeps the URL's host for SNI and the certificate). Never a Unix socket (a ``TCPConnector`` has none), no
    DNS cache (each new connection resolves and checks again)."""

    def __init__(self, allowed: tuple[Network, ...], resolve_timeout: float, **kwargs: typing.Any) -> None:
        super().__init__(use_dns_cache=False, **kwargs)
        self._allowed = allowed
        self._resolve_timeout = resolve_timeout

    async def _resolve_host(self, host: str, port: int, traces: typing.Any = None) -> list[typing.Any]:
        try:
            addresses = await check_addresses(host, port, allowed=self._allowed, timeout=self._resolve_timeout)
        except (OSError, TimeoutError, UnicodeError) as exc:  # aiohttp reports an OSError here as a DNS error
            raise OSError(f"{host} does not resolve: {type(exc).__name__}") from exc
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                "proto": socket.IPPROTO_TCP,
                "flags": socket.AI_NUMERICHOST,
            }
            for ip in addresses
        ]


def connector(settings: Settings) -> GuardedConnector:
    """The connector of a sender's HTTP session: every connection checked by :class:`GuardedConnector`,
    certificates checked against the same CA bundle as the other outgoing clients (certifi's), idle
    connections kept 5 s for the next delivery to the same receiver. Built on a running event loop."""
    return GuardedConnector(
        allowed_networks(settings),
        settings.NOTIFY_TIMEOUT_SECONDS,
        ssl=ssl.create_default_context(cafile=certifi.where()),
        limit=100,
        keepalive_timeout=5.0,
    )
