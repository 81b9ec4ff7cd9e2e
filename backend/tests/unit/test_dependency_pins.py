"""What WindFlow's remaining patches of its dependencies rely on (STYLE.md 22; the PostgreSQL broker channel's
pins on kombu are in ``test_sql_transport_pins.py``).

* docker-py: ``engines/connection.py`` replaces ``UnixHTTPConnection.connect`` (the original leaks its socket
  when the connect fails).
* multiprocessing: ``services/stacks/bounded_render.py::_Popen._launch`` is a copy of the forkserver launcher minus
  the re-import of the parent's ``__main__``.

Each check fails when the dependency changes underneath the patch: the patch must then be revisited (or
dropped, if the dependency now does what it was for).

The WebSocket fan-out patches nothing: it sends through the ASGI interface. What its speed relies on, that
uvicorn's ASGI ``send`` of a frame finishes without waiting while the socket takes data, is checked here too
(``test_uvicorn_sends_a_websocket_frame_without_waiting_while_the_socket_takes_it``), and so is the WebSocket
implementation uvicorn picks (``websockets-sansio``, the cheapest per client and event of the three measured:
bench/README.md, "The fan-out through the ASGI interface")."""

from __future__ import annotations

import ast
import asyncio
import inspect
import multiprocessing.context
import socket
import textwrap
from multiprocessing import popen_fork, popen_forkserver, spawn

import docker.transport.unixconn as unixconn
import pytest
import urllib3.connection
import uvicorn
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from backend.app.engines import connection
from backend.app.runtime.realtime import eager
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
    assert list(inspect.signature(unixconn.UnixHTTPConnection.__init__).parameters) == ["self", "base_url", "unix_socket", "timeout"]
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
    assert [ast.unparse(s) for s in pops] == ["prep_data.pop('init_main_from_name', None)", "prep_data.pop('init_main_from_path', None)"]
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


# --- uvicorn: the ASGI send of a WebSocket frame ------------------------------------------------------


def test_uvicorn_serves_websockets_with_its_sansio_implementation():
    """The server (``main.run``: ``ws`` left to ``auto``) frames the fan-out's events with websockets' sans-I/O
    protocol: of uvicorn's three implementations it costs the least CPU per client and event (the legacy
    ``websockets`` one and ``wsproto`` cost 3-5 us more on the benchmark machine). A uvicorn whose ``auto``
    picks another fails here: the fan-out must then be measured again (bench/README.md)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    config = uvicorn.Config(lambda scope, receive, send: None, lifespan="off", log_level="warning")
    config.load()
    assert config.ws == "auto" and config.ws_protocol_class is WebSocketsSansIOProtocol


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "permessage-deflate"])
async def test_uvicorn_sends_a_websocket_frame_without_waiting_while_the_socket_takes_it(deflate):
    """The hub runs each client's ASGI ``send`` at once from its delivery (``runtime/realtime/eager.py``),
    without a task per client: that is only fast if uvicorn's ``send`` of a ``websocket.send`` message
    finishes without suspending while the transport takes data, compressed or not. If uvicorn came to wait
    in every send, each one would need a task (correct, but several times slower): this fails first."""
    frames = 50
    finished_at_once: list[bool] = []
    done = asyncio.Event()

    async def app(scope, receive, send) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        for i in range(frames):
            rest = eager.start(websocket.send_text(f"frame {i} " + "x" * 2000))
            finished_at_once.append(rest is None)
            if rest is not None:
                await rest
        await websocket.receive()  # the client's close
        done.set()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", ws_per_message_deflate=deflate))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        port = sock.getsockname()[1]
        compression = "deflate" if deflate else None
        async with connect(f"ws://127.0.0.1:{port}/", compression=compression) as client:
            assert bool(client.protocol.extensions) is deflate
            received = [await asyncio.wait_for(client.recv(), 10) for _ in range(frames)]
        await asyncio.wait_for(done.wait(), 10)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()
    assert [r.split(" ")[1] for r in received] == [str(i) for i in range(frames)]
    assert all(finished_at_once), finished_at_once
