"""A real nginx in front of reference managers, as TCM's own deployment has it (contract §14).

The configuration mirrors the repository's `infra/nginx/nginx.conf`: a plain round-robin
`upstream` (no stickiness), the WebSocket upgrade headers, long read timeouts, and nginx's
default `max_fails=1 fail_timeout=10s` unless a test asks otherwise. nginx runs in the
foreground as a child of the test, from a prefix directory of its own, on 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)

_CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream tcm {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://tcm;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Nginx:
    """nginx balancing over `upstreams` ("127.0.0.1:port"); `url` is its WebSocket URL."""

    def __init__(
        self,
        upstreams: Sequence[str],
        prefix: Path,
        *,
        max_fails: int = 1,
        fail_timeout: float = 10,
    ) -> None:
        if NGINX is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
        self.upstreams = list(upstreams)
        self.prefix = prefix
        self.port = _free_port()
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> Nginx:
        self.prefix.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(
            f"        server {u} max_fails={self.max_fails} fail_timeout={self.fail_timeout:g}s;"
            for u in self.upstreams
        )
        config = self.prefix / "nginx.conf"
        config.write_text(_CONFIG.format(prefix=self.prefix, servers=servers, port=self.port))
        assert NGINX is not None
        self._process = subprocess.Popen(
            [
                NGINX,
                "-p",
                str(self.prefix),
                "-c",
                str(config),
                "-e",
                str(self.prefix / "error.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited at start:\n{self.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start listening:\n{self.log()}")

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)

    def __enter__(self) -> Nginx:  # noqa: PYI034 - not meant to be subclassed
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
