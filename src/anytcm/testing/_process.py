"""`ReferenceManager`: run the reference manager as a separate process, for tests.

A separate process is the point: tests must be able to kill it (SIGKILL), drain it (SIGTERM),
freeze it (SIGSTOP) and start it again on the same port, exactly as happens to a real manager.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

_LISTENING = re.compile(r"listening on wss?://(?P<host>[^:]+):(?P<port>\d+)/ws")


class ReferenceManagerError(RuntimeError):
    """The reference manager did not start or stop as asked; the message has its last output."""


class ReferenceManager:
    """A reference manager subprocess bound to one host and port for its whole life.

    `start()` returns once `/ready` answers 200. With `port=0` the first start picks a free port;
    later starts reuse it, so clients can reconnect to the same URL after a restart.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        extra_args: Sequence[str] = (),
        faults: dict[str, Any] | None = None,
        startup_timeout: float = 30.0,
        tls: tuple[str, str] | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.extra_args = list(extra_args)
        self.initial_faults = dict(faults or {})
        self.startup_timeout = startup_timeout
        self.tls = tls  # (certfile, keyfile): serve wss:// and https://
        self.ca_file = ca_file  # trusted by this helper's own HTTP calls when tls is set
        self._process: subprocess.Popen[str] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self._port_found = threading.Event()

    # -- addresses ------------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> str:
        """The last lines the server printed (stdout and stderr), for failure messages."""
        return "\n".join(self._output)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ReferenceManager:
        """Start the server and wait until `/ready` answers 200."""
        if self.running:
            raise ReferenceManagerError("the reference manager is already running")
        command = [
            sys.executable, "-m", "anytcm.testing",
            "--host", self.host,
            "--port", str(self.port),
            "--exit-with-parent", str(os.getpid()),
            *self.extra_args,
        ]  # fmt: skip
        if self.token is not None:
            command += ["--token", self.token]
        if self.tls is not None:
            command += ["--certfile", self.tls[0], "--keyfile", self.tls[1]]
        for key, value in self.initial_faults.items():
            command += ["--fault", f"{key}={value}"]
        self._port_found.clear()
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        threading.Thread(
            target=self._pump_output, args=(self._process,), daemon=True, name="refmgr-output"
        ).start()
        deadline = time.monotonic() + self.startup_timeout
        reported = self._port_found.wait(self.startup_timeout)
        if not reported or self._process.poll() is not None:
            self.kill()
            raise ReferenceManagerError(
                f"the reference manager did not report its port:\n{self.output()}"
            )
        self.wait_ready(deadline - time.monotonic())
        return self

    def _pump_output(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                self._output.append(line.rstrip())
                match = _LISTENING.search(line)
                if match and process is self._process:
                    self.port = int(match["port"])
                    self._port_found.set()
        # End of output: the process is gone. Wake a start() still waiting for the port.
        self._port_found.set()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll `/ready` until it answers 200."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, verify=self._verify()) as http:
            while True:
                if not self.running:
                    raise ReferenceManagerError(f"the reference manager exited:\n{self.output()}")
                try:
                    if http.get(f"{self.http_url}/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ReferenceManagerError(f"/ready never answered 200:\n{self.output()}")
                time.sleep(0.02)

    def _signal(self, signum: int) -> None:
        if self._process is None or self._process.poll() is not None:
            raise ReferenceManagerError("the reference manager is not running")
        self._process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; returns its exit status."""
        assert self._process is not None
        return self._process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the process vanishes, sockets are reset (clients see 1006)."""
        if self.running:
            self._signal(signal.SIGKILL)
        if self._process is not None:
            self._process.wait(10)

    def terminate(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """SIGTERM: drain (NACK queued jobs, finish running ones) and exit (contract §7)."""
        self._signal(signal.SIGTERM)
        if wait:
            self.wait(timeout)

    def interrupt(self) -> None:
        """SIGINT: stop at once, as Ctrl-C does."""
        self._signal(signal.SIGINT)
        self.wait()

    def pause(self) -> None:
        """SIGSTOP: freeze the whole process; its sockets stay open but nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: let a paused process go on."""
        self._signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill and start again on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop for good (SIGKILL if still running) — what the context manager does on exit."""
        if self._process is not None and self._process.poll() is None:
            with_resume = True
            try:
                self._process.send_signal(signal.SIGCONT)  # a paused process cannot die of INT
            except ProcessLookupError:
                with_resume = False
            if with_resume:
                self._process.kill()
            self._process.wait(10)

    def __enter__(self) -> ReferenceManager:  # noqa: PYI034 - not meant to be subclassed
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- admin endpoint ---------------------------------------------------------------------------

    def _admin(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        response = httpx.get(
            f"{self.http_url}/_admin/{path}", params=params, timeout=5.0, verify=self._verify()
        )
        if response.status_code != 200:
            raise ReferenceManagerError(f"/_admin/{path}: {response.status_code} {response.text}")
        result: dict[str, Any] = response.json()
        return result

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus metrics as {"name{labels}": value} (for assertions)."""
        response = httpx.get(f"{self.http_url}/metrics", timeout=5.0, verify=self._verify())
        response.raise_for_status()
        values: dict[str, float] = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def _verify(self) -> ssl.SSLContext | bool:
        if self.tls is None:
            return False  # plain http: nothing to verify, and no SSL context built per call
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=self.ca_file)

    def set_faults(self, **switches: Any) -> dict[str, Any]:
        """Set fault switches at run time (keys as in docs/reference-manager.md)."""
        return self._admin("faults", {k: _param(v) for k, v in switches.items()})

    def faults(self) -> dict[str, Any]:
        """The current fault switches."""
        return self._admin("faults", {})

    def reset_faults(self) -> dict[str, Any]:
        return self._admin("faults", {"reset": "1"})

    def alert(self, message: str | None = None, error_type: str | None = None) -> bool:
        """Push an `alert` frame to the first-connected live client; False if none."""
        params = {k: v for k, v in (("message", message), ("error_type", error_type)) if v}
        return bool(self._admin("alert", params)["delivered"])

    def budget_warning(self, job_type: str = "inference") -> bool:
        """Push a `BACKPRESSURE_INSUFFICIENT_BUDGET` frame to the first-connected live client."""
        return bool(self._admin("budget_warning", {"job_type": job_type})["delivered"])


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
