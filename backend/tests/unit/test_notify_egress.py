"""Which addresses a notification may reach (``services/notifications/egress.py``): pure logic; the
integration tests (test_notifications.py) refuse real channels at creation and real connections at send."""

from __future__ import annotations

import ipaddress

import pytest

from backend.app.config import Settings
from backend.app.services.notifications.egress import parse_networks, refusal

REFUSED = [
    "127.0.0.1",
    "127.5.5.5",
    "10.0.0.1",
    "172.16.3.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",  # CGNAT
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fd00::5",
    "fe80::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), ()) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), ()) is None


def test_the_operators_networks_allow_an_internal_receiver_and_nothing_else() -> None:
    allowed = parse_networks("10.0.5.0/24, 127.0.0.1, fd00:1::/64")
    assert refusal(ipaddress.ip_address("10.0.5.7"), allowed) is None
    assert refusal(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert refusal(ipaddress.ip_address("fd00:1::9"), allowed) is None
    assert refusal(ipaddress.ip_address("10.0.6.1"), allowed) is not None
    assert refusal(ipaddress.ip_address("127.0.0.2"), allowed) is not None
    assert refusal(ipaddress.ip_address("169.254.169.254"), allowed) is not None


def test_a_malformed_network_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="NOTIFY_ALLOWED_NETWORKS"):
        Settings(NOTIFY_ALLOWED_NETWORKS="10.0.0.0/8, not-a-network")
