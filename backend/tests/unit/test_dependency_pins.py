"""What WindFlow's remaining patches of its dependencies rely on (STYLE.md 22; the PostgreSQL broker channel's
pins on kombu are in ``test_sql_transport_pins.py``).

* docker-py: ``engines/connection.py`` replaces ``UnixHTTPConnection.connect`` (the original leaks its socket
  when the connect fails).
* multiprocessing: ``services/stacks/bounded_render.py::_Popen._launch`` is a copy of the forkserver launcher minus
  the re-import of the parent's ``__main__``.
* uvicorn: ``api/realtime.py::_direct_transport`` finds the ``websockets-sansio`` protocol behind the ASGI
  ``send`` and the hub writes :func:`runtime.realtime.hub.text_frame` frames to its transport.

Each check fails when the dependency changes underneath the patch: the patch must then be revisited (or
dropped, if the dependency now does what it was for)."""

from __future__ import annotations

import ast
import inspect
import multiprocessing.context
import textwrap
from datetime import UTC, datetime
from multiprocessing import popen_fork, popen_forkserver, spawn

import docker.transport.unixconn as unixconn
import urllib3.connection
from uvicorn.protocols.websockets import auto as uvicorn_auto
from uvicorn.protocols.websockets import websockets_sansio_impl as sansio
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from backend.app.core.events import Event, EventType
from backend.app.engines import connection
from backend.app.runtime.realtime.frames import encode_event
from backend.app.runtime.realtime.hub import text_frame
from backend.app.services.stacks import bounded_render


def _function(source: str, name: str) -> ast.FunctionDef:
    tree = ast.parse(textwrap.dedent(source))
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def _dump(statements: list[ast.stmt]) -> list[str]:
    return [ast.dump(s) for s in statements]


# --- docker-py: UnixHTTPConnection.connect ------------------------------------------------------------


def test_docker_unix_connect_patch_is_the_original_plus_close_on_failure():
    """``connection._unix_connect_closing_on_failure`` is docker-py's ``connect`` with the socket closed when
    the connect fails. docker-py changing it (or fixing the leak) fails here."""
    original = _function(inspect.getsource(unixconn.UnixHTTPConnection), "connect")  # the file's, not the patch
    patched = _function(inspect.getsource(connection._unix_connect_closing_on_failure), "_unix_connect_closing_on_failure")
    create, guarded, store = patched.body[-3:]
    assert isinstance(guarded, ast.Try) and len(guarded.handlers) == 1
    assert _dump([create, *guarded.body, store]) == _dump(original.body)
    assert unixconn.UnixHTTPConnection.connect is connection._unix_connect_closing_on_failure


def test_docker_unix_connection_keeps_the_attributes_the_patch_reads():
    assert list(inspect.signature(unixconn.UnixHTTPConnection.__init__).parameters) == [
        "self", "base_url", "unix_socket", "timeout"]
    init = inspect.getsource(unixconn.UnixHTTPConnection.__init__)
    assert "self.unix_socket = unix_socket" in init and "self.timeout = timeout" in init
    assert unixconn.UnixHTTPConnection.__mro__[1] is urllib3.connection.HTTPConnection  # which uses self.sock


# --- multiprocessing: the forkserver launcher ---------------------------------------------------------


def test_bounded_render_launch_is_the_forkserver_launch_minus_main_reimport():
    """``bounded_render._Popen._launch`` is ``popen_forkserver.Popen._launch`` with the two ``init_main_from_*``
    keys dropped from the preparation data. Any change to the standard library's launcher fails here."""
    stdlib = _function(inspect.getsource(popen_forkserver.Popen._launch), "_launch")
    ours = _function(inspect.getsource(bounded_render._Popen._launch), "_launch")
    body = [s for s in ours.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]  # docstring
    pops = [s for s in body if "prep_data.pop" in ast.unparse(s)]
    assert [ast.unparse(s) for s in pops] == [
        "prep_data.pop('init_main_from_name', None)", "prep_data.pop('init_main_from_path', None)"]
    assert _dump([s for s in body if s not in pops]) == _dump(stdlib.body)
    assert list(inspect.signature(popen_forkserver.Popen._launch).parameters) == ["self", "process_obj"]


def test_the_forkserver_hooks_bounded_render_relies_on():
    assert bounded_render._Popen.__mro__[1] is popen_forkserver.Popen
    assert "self._launch(process_obj)" in inspect.getsource(popen_fork.Popen.__init__)
    assert "self._fds" in inspect.getsource(popen_forkserver.Popen.__init__)
    source = inspect.getsource(spawn.get_preparation_data)
    assert "init_main_from_name" in source and "init_main_from_path" in source
    # a Process subclass chooses its launcher through the static _Popen hook
    assert bounded_render._RenderProcess.__mro__[1] is multiprocessing.context.ForkServerProcess
    hook = inspect.getattr_static(multiprocessing.context.ForkServerProcess, "_Popen")
    assert isinstance(hook, staticmethod) and list(inspect.signature(hook).parameters) == ["process_obj"]


# --- uvicorn: pre-built WebSocket frames written to the connection's transport ----------------------


def test_uvicorn_serves_websockets_with_the_sansio_protocol_the_direct_write_recognises():
    """``api/realtime._direct_transport`` reads ``send.__self__.conn`` (a websockets ``ServerProtocol``:
    ``extensions``, ``state``) and ``send.__self__.transport``; the ASGI ``send`` is the protocol's bound
    ``send``, passed as is."""
    assert uvicorn_auto.AutoWebSocketsProtocol is sansio.WebSocketsSansIOProtocol
    source = inspect.getsource(sansio.WebSocketsSansIOProtocol)
    assert "self.conn = ServerProtocol(" in source and "extensions=extensions" in source
    assert "self.transport = transport" in inspect.getsource(sansio.WebSocketsSansIOProtocol.connection_made)
    assert "await self.app(self.scope, self.receive, self.send)" in inspect.getsource(
        sansio.WebSocketsSansIOProtocol.run_asgi)
    assert sansio.ServerProtocol is ServerProtocol
    assert State.OPEN.name == "OPEN"
    conn = ServerProtocol()
    assert conn.extensions == [] and isinstance(conn.state, State)


def test_text_frame_is_the_frame_websockets_itself_would_send():
    """The hub's frames (``runtime/realtime/hub.py::text_frame``) byte for byte as websockets serialises an
    unmasked text frame without extensions, for each length encoding (7-bit, 16-bit, 64-bit)."""
    for size in (10, 300, 70_000):
        evt = Event(type=EventType.DEPLOYMENT_PROGRESS, deployment_id="d", organization_id="o",
                    timestamp=datetime(2026, 1, 1, tzinfo=UTC), data={"message": "x" * size})
        frame = text_frame(evt)
        payload = encode_event(evt).encode()
        assert frame == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[]), size
