"""Where a notification may go: never to the platform's own network unless the operator allows it.

A channel's URL is a tenant's input: pointed at ``127.0.0.1``, a private range, ``169.254.169.254`` (cloud
metadata) or an IPv6 loopback/ULA address, a delivery would make the server a relay into its own network
(Redis, PostgreSQL, the Docker API). So an address that is not public is refused, unless it lies in one of
``NOTIFY_ALLOWED_NETWORKS`` (CIDR list, empty by default) — a self-hosted operator's internal receiver.

Checked twice: when a channel is created or its URL changed (a 422 naming the setting), and when a delivery
connects. At send time the host is resolved once, every resolved address is checked, and the connection goes
to a checked address (the request keeps the URL's host for ``Host`` and TLS SNI/certificate checks): a name
that resolved to a public address when the channel was created and to ``127.0.0.1`` now (DNS rebinding) is
refused. ``GuardedConnector`` (``egress_connector.py``) does it inside the sender's HTTP client (aiohttp), so every connection it opens
is checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from backend.app.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SETTING = "NOTIFY_ALLOWED_NETWORKS"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressRefused(Exception):
    """A receiver's address is not one a notification may reach."""


def allowed_networks(settings: Settings) -> tuple[Network, ...]:
    return parse_networks(settings.NOTIFY_ALLOWED_NETWORKS)


def parse_networks(value: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks; raises ``ValueError`` on a malformed entry."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip())


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, allowed: Iterable[Network]) -> str | None:
    """Why ``ip`` may not be reached (None: it may)."""
    allowed = tuple(allowed)
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    inner = _embedded_v4(ip)
    if inner is not None:
        return None if refusal(inner, allowed) is None else f"{ip} embeds the non-public address {inner}"
    if ip.is_loopback:
        kind = "loopback"
    elif ip.is_link_local:
        kind = "link-local (cloud metadata lives there)"
    elif ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        kind = "reserved"
    elif ip.is_private or not ip.is_global:
        kind = "private"
    else:
        return None
    return f"{ip} is a {kind} address"


def _message(host: str, reason: str) -> str:
    return (
        f"the receiver {host} is not reachable from WindFlow: {reason}; notifications go to public addresses only "
        f"(an operator can allow an internal network with {SETTING})"
    )


async def resolve(host: str, port: int, timeout: float) -> list[IPAddress]:
    """The addresses ``host`` resolves to (a literal: itself); ``OSError``/``TimeoutError`` when it does not."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = await asyncio.wait_for(
        asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout
    )
    seen: dict[IPAddress, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    return list(seen)


async def check_addresses(host: str, port: int, *, allowed: tuple[Network, ...], timeout: float) -> list[IPAddress]:
    """Resolve ``host`` and check every address; raises ``EgressRefused`` if any is refused."""
    addresses = await resolve(host, port, timeout)
    for ip in addresses:
        reason = refusal(ip, allowed)
        if reason is not None:
            raise EgressRefused(_message(host, reason))
    return addresses


async def check_url(settings: Settings, url: str) -> str | None:
    """At a channel's creation: why ``url`` is refused (None: accepted). A name that does not resolve now is
    accepted — it is checked again, on the address actually connected to, at each delivery."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"the URL's port is not a number between 0 and 65535: {url[:100]}"
    try:
        await check_addresses(host, port, allowed=allowed_networks(settings), timeout=min(settings.NOTIFY_TIMEOUT_SECONDS, 5.0))
    except EgressRefused as exc:
        return str(exc)
    except (OSError, TimeoutError, UnicodeError, ValueError):
        return None
    return None
