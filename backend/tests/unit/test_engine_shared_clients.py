"""The SDK client of a target without key material is built once per process and shared by its sessions; a TLS
target's lives and dies with its session, as its keys do (``engines/connection.py``, ``SharedClients``).

No engine is contacted: the engine's API version is remembered beforehand, so building a client asks nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from backend.app.engines import connection
from backend.app.engines.base import TargetConnection, TargetType
from backend.app.engines.connection import MATERIAL_PREFIX, EngineSession, SharedClients

LOCAL = TargetConnection(type=TargetType.DOCKER, endpoint="unix:///run/windflow-test-nowhere.sock")
TLS = TargetConnection(type=TargetType.DOCKER, endpoint="tcp://10.0.0.1:2376", tls_ca="CA", tls_cert="CERT", tls_key="KEY")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(connection, "_shared", SharedClients(connection.SHARED_CLIENTS))
    monkeypatch.setattr(connection, "_api_versions", {})
    for target in (LOCAL, TLS):
        connection._remember_api_version(connection._engine_key(EngineSession(target)), "1.41")
    return tmp_path


def closes(client) -> list[int]:
    """Count the calls of ``client.close`` (and still close it)."""
    calls: list[int] = []
    original = client.close

    def close() -> None:
        calls.append(1)
        original()

    client.close = close
    return calls


def material_dirs(root: Path) -> list[Path]:
    return sorted(root.glob(f"{MATERIAL_PREFIX}*"))


async def test_sessions_of_a_local_target_share_one_client_and_make_no_directory(isolated):
    first = EngineSession(LOCAL)
    first.open()
    client = await first.client()
    closed = closes(client)
    assert client.api._custom_adapter.max_pool_size == connection.SHARED_POOL_SIZE  # every session's calls and streams
    async with EngineSession(LOCAL) as second:
        assert await second.client() is client
        assert material_dirs(isolated) == []  # nothing to write for a local socket
    await first.aclose()
    assert closed == []  # shared: no session closes it
    async with EngineSession(LOCAL) as third:
        assert await third.client() is client  # the next deployment's sessions reuse it too
        assert third.env["DOCKER_HOST"] == LOCAL.endpoint
    assert closed == []


async def test_a_tls_targets_client_is_its_sessions_own_and_closed_with_its_keys(isolated):
    async with EngineSession(TLS) as first:
        mine = await first.client()
        closed = closes(mine)
        directory = first.material_dir
        assert (directory / "key.pem").read_text().strip() == "KEY"
        async with EngineSession(TLS) as second:
            assert await second.client() is not mine
    assert closed == [1]
    assert not directory.exists()
    assert material_dirs(isolated) == []


async def test_a_refused_api_version_retires_the_client_once_its_last_session_ends(isolated):
    old_session = EngineSession(LOCAL)
    old_session.open()
    old = await old_session.client()
    closed = closes(old)
    connection._shared.forget(connection._engine_key(old_session))  # what call() does on "client version ..."
    async with EngineSession(LOCAL) as fresh:
        assert await fresh.client() is not old
    assert closed == []  # still in use by old_session
    await old_session.aclose()
    assert closed == [1]


async def test_an_expired_client_is_replaced(isolated):
    async with EngineSession(LOCAL) as session:
        old = await session.client()
    closed = closes(old)
    key = connection._engine_key(session)
    connection._shared._entries[key] = (old, 0.0)  # API_VERSION_TTL later: its version may be stale
    async with EngineSession(LOCAL) as session:
        assert await session.client() is not old
    assert closed == [1]


async def test_a_forked_process_builds_its_own_client_and_never_closes_its_parents(isolated):
    async with EngineSession(LOCAL) as session:
        parents = await session.client()
    closed = closes(parents)
    connection._shared._pid = -1  # as seen from a forked child: the table is another process's
    async with EngineSession(LOCAL) as session:
        assert await session.client() is not parents
    assert closed == []


async def test_at_most_the_bound_of_clients_are_kept(isolated, monkeypatch):
    monkeypatch.setattr(connection, "_shared", SharedClients(2))
    clients = []
    for n in range(3):
        target = TargetConnection(type=TargetType.DOCKER, endpoint=f"unix:///run/windflow-test-{n}.sock")
        connection._remember_api_version(connection._engine_key(EngineSession(target)), "1.41")
        async with EngineSession(target) as session:
            clients.append(await session.client())
    assert len(connection._shared._entries) == 2
    first = EngineSession(TargetConnection(type=TargetType.DOCKER, endpoint="unix:///run/windflow-test-0.sock"))
    first.open()
    assert await first.client() is not clients[0]  # the oldest went first
    await first.aclose()
