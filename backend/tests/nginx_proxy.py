"""nginx in front of backend processes, with the production proxy's own server block (deploy/nginx.conf), for
the two-replica test and benchmarks (``bench/event_latency.py --replicas 2`` imports this too): the replicas
on loopback ports are its upstream instead of Docker's DNS name ``backend``. Imports nothing of the backend."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from backend.tests.processes import REPO_ROOT, Proc

NGINX = "/usr/sbin/nginx"
#: what the shipped configuration says -> what it says here (the test fails if the shipped file changes shape)
_LOCAL = {
    "    listen 80;\n": "    listen 127.0.0.1:{port};\n",
    "    listen [::]:80;\n": "",
    "    resolver 127.0.0.11 valid=5s ipv6=off;\n": "",
    "    resolver_timeout 5s;\n": "",
    "    set $windflow_backend http://backend:8000;\n": "    set $windflow_backend http://windflow;\n",
    "    set $windflow_websocket http://backend:8001;\n": "    set $windflow_websocket http://windflow_ws;\n",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """nginx (one worker process) listening on a free loopback port, in front of ``upstream_ports``;
    ``/api/v1/ws`` goes to ``ws_ports`` (the replicas' WebSocket listeners, WS_PORT), or to the same ports
    (their ASGI route) when they have none."""

    def __init__(self, upstream_ports: list[int], workdir: Path, ws_ports: list[int] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/api/v1/ws"
        server = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
        for shipped, here in _LOCAL.items():
            if shipped not in server:
                raise AssertionError(f"deploy/nginx.conf changed: {shipped!r} is gone (update backend/tests/nginx_proxy.py)")
            server = server.replace(shipped, here.format(port=self.port))
        # a replica that refused a connection is left alone for 2 s (the request goes to the next one at once)
        upstream = "".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;\n" for port in upstream_ports)
        ws_upstream = "".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;\n" for port in ws_ports or upstream_ports)
        temp = " ".join(f"{kind}_temp_path {workdir}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = workdir / "nginx.conf"
        conf.write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"worker_processes 1;\ndaemon off;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log notice;\n"
            + "worker_rlimit_nofile 65536;\nevents { worker_connections 20000; }\n"
            + f"http {{\n    access_log off;\n    {temp}\n    upstream windflow {{\n{upstream}    }}\n"
            + f"    upstream windflow_ws {{\n{ws_upstream}    }}\n{server}\n}}\n"
        )
        argv = [NGINX, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
        self.proc = Proc(argv, dict(os.environ), workdir / "nginx.out")

    def wait_ready(self, timeout: float = 30) -> None:
        """Until a request through nginx reaches a replica (start the replicas first: one that refused a
        connection is skipped for 2 s)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.alive():
                raise AssertionError(f"nginx exited:\n{self.proc.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/auth/setup", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx did not reach a replica:\n{self.proc.output()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.stop(grace=5)
