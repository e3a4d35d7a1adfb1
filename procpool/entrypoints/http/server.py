"""`procpool serve`: the HTTP API of one home, in the foreground, on uvicorn.

The socket is bound here, before uvicorn starts, so that a refused bind is an
error in procpool's words (and exit code), a Unix socket is created with mode
0600, and the address is printed once it accepts connections (with its real
port when the bind asked for port 0). SIGTERM and SIGINT stop it gracefully:
open event streams and long polls end within a second, then it exits 0.

Started by the daemon (`http_bind`), it dies with the daemon: PR_SET_PDEATHSIG,
from the parent's pid that the daemon puts in its environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
from pathlib import Path

import uvicorn

from procpool.adapters import config as configuration
from procpool.adapters.bind import (
    DEFAULT_BIND,
    Bind,
    allowed_hosts,
    check_policy,
    listen,
    parse_bind,
)
from procpool.application.supervisor.companion import PARENT_VARIABLE
from procpool.domain.errors import ConfigError
from procpool.entrypoints.http.app import build
from procpool.entrypoints.http.bounds import bounded_protocol, fit_descriptors
from procpool.entrypoints.http.service import Service

_PR_SET_PDEATHSIG = 1
GRACEFUL_SHUTDOWN = 3.0  # seconds uvicorn gives open requests at a stop
KEEP_ALIVE = 5.0  # seconds a connection may stay idle between requests (uvicorn's default)


def _die_with_parent() -> None:
    """Under the daemon: end when it ends, even if it is killed with SIGKILL."""
    parent = os.environ.pop(PARENT_VARIABLE, None)
    if not parent:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if str(os.getppid()) != parent:  # it died before the line above took effect
        sys.exit(0)


def address(bind: Bind, server: socket.socket) -> str:
    """The URL the server answers at (the real port, for port 0)."""
    if bind.is_unix:
        return f"unix:{bind.path}"
    host, port = server.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    home: Path, bind_text: str | None, token_file: str | None, config_file: Path | None
) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code (0).

    Raises:
        ConfigError: a bad bind, a public bind without a token, a bad token file,
            or a bad configuration.
        BindFailed: the address cannot be listened on.
    """
    _die_with_parent()
    config = configuration.load(flags={"home": str(home)}, config_file=config_file)
    try:
        bind = parse_bind(bind_text or config.http_bind or DEFAULT_BIND)
    except ValueError as error:
        raise ConfigError(f"--bind: {error}") from None
    token = check_policy(bind, token_file or config.http_token_file)
    listener = listen(bind)
    service = Service(home, config.max_file_bytes, config.database_url)
    server: uvicorn.Server | None = None

    def closing() -> bool:
        return server is not None and server.should_exit

    app = build(service, hosts=allowed_hosts(bind), token=token, closing=closing)
    connections = fit_descriptors(config.http_max_connections)
    if connections < config.http_max_connections:
        print(
            f"procpool serve: serving at most {connections} connections, not"
            f" {config.http_max_connections} (http_max_connections): the limit of open"
            " files (ulimit -n) leaves no room for more",
            file=sys.stderr,
            flush=True,
        )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=bounded_protocol(config.http_request_timeout, connections),
            # Idle between two requests; the request deadline covers it too.
            # uvicorn annotates both timeouts int; it hands them to asyncio as seconds.
            timeout_keep_alive=min(KEEP_ALIVE, config.http_request_timeout),  # type: ignore[arg-type]
            lifespan="on",
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,  # type: ignore[arg-type]
        )
    )

    def stop(signum: int, frame: object) -> None:
        assert server is not None
        server.should_exit = True

    # Ours stay in place when uvicorn restores the handlers it replaced and raises
    # the signal again: the process then ends with 0, not killed by the signal.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"procpool: serving {home} on {address(bind, listener)}", flush=True)
    try:
        server.run(sockets=[listener])
    finally:
        service.close()
        listener.close()
        if bind.path is not None:
            with contextlib.suppress(OSError):
                bind.path.unlink()
    return 0
