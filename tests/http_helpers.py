"""A real `procpool serve` for the HTTP tests, on loopback with an ephemeral port."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import clean_env

JSON = {"Content-Type": "application/json"}
_ADDRESS = re.compile(r"on (http://\S+|unix:\S+)")


def free_port() -> int:
    """A loopback port nobody listens on now (for http_bind, which the daemon binds)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`procpool serve --home HOME ARGS`, its address read from its first line."""

    def __init__(
        self, home: Path, *args: str, env: dict[str, str] | None = None, nofile: int | None = None
    ) -> None:
        """`nofile`: the server's soft limit of open files (ulimit -Sn), as many systems
        give a process (1024); default the test's own."""
        self.home = home
        self.output = home.parent / f"{home.name}-serve.log"
        command = [sys.executable, "-m", "procpool", "serve", "--home", str(home), *args]
        if nofile is not None:  # the shell execs the server: same pid
            command = ["sh", "-c", f'ulimit -Sn {nofile} && exec "$@"', "sh", *command]
        self.process = subprocess.Popen(
            command,
            env=clean_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.address = self._read_address()
        self.url = self.address if self.address.startswith("http") else "http://localhost"
        self.client = httpx.Client(
            base_url=self.url, timeout=30, transport=self._transport(), headers={}
        )

    def _read_address(self, timeout: float = 20.0) -> str:
        found: list[str] = []
        lines: list[bytes] = []

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                lines.append(line)
                match = _ADDRESS.search(line.decode(errors="replace"))
                if match and not found:
                    found.append(match.group(1))
            # Keep draining what it prints until it exits (a full pipe would block it).

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        self._lines = lines
        deadline = time.monotonic() + timeout
        while not found and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if not found:
            self.process.kill()
            self.process.wait(10)
            pytest.fail(f"procpool serve did not start: {b''.join(lines).decode()}")
        return found[0]

    def _transport(self) -> httpx.HTTPTransport | None:
        if self.address.startswith("unix:"):
            return httpx.HTTPTransport(uds=self.address[len("unix:") :])
        return None

    def printed(self) -> str:
        return b"".join(self._lines).decode(errors="replace")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {**JSON, **kwargs.pop("headers", {})}
        if body is not None and "content" not in kwargs:
            kwargs["json"] = body
        return self.client.post(path, headers=headers, **kwargs)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self._close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close()

    def _close(self) -> None:
        self.client.close()
        self._reader.join(10)  # the pipe ends with the process
        if self.process.stdout is not None:
            self.process.stdout.close()


def sse_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """The events of a text/event-stream response, as {field: value}; comments skipped."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:  # not the first block, which only sets `retry`
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")
