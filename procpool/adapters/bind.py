"""Where the HTTP API listens (CONTRACT section 10), and who may be let in.

`http_bind` / `--bind` is `HOST:PORT` (`127.0.0.1:8765`, `[::1]:8765`,
`localhost:8765`, `0.0.0.0:8765`) or `unix:PATH`. The rules:

- a bind that is neither loopback nor a Unix socket needs a bearer token
  (`http_token_file`, `--token-file`): without one it is refused before
  anything listens;
- a Unix socket is created with mode 0600, so only the daemon's user reaches it;
- the `Host` header must name the bound address or `localhost` (DNS rebinding:
  a web page whose name an attacker re-points at 127.0.0.1 sends its own name).
  A wildcard bind (`0.0.0.0`, `::`) listens on every address of the machine, so
  there any of them, and the machine's host name, is accepted. A Unix socket
  cannot be reached from a browser, so its `Host` is not checked.

This module imports nothing of the HTTP library: the daemon checks `http_bind`
with it before it starts the server, and a config without the extra loads.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from procpool.domain.errors import ConfigError, ProcpoolError

DEFAULT_BIND = "127.0.0.1:8765"
BIND_RULE = "HOST:PORT (such as 127.0.0.1:8765 or [::1]:8765) or unix:PATH"
MAX_TOKEN_BYTES = 4096


class BindFailed(ProcpoolError):
    """The address cannot be listened on (in use, not ours, no such directory)."""


@dataclass(frozen=True)
class Bind:
    """A parsed bind: `host` and `port` for TCP, `path` for a Unix socket."""

    host: str = ""  # without brackets: "::1", not "[::1]"
    port: int = 0
    path: Path | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_bind(text: str) -> Bind:
    """`HOST:PORT` or `unix:PATH` as a Bind.

    Raises:
        ValueError: the text is neither, with the part at fault named.
    """
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ValueError(f"unix: needs a path, as in unix:/run/procpool.sock; got {text!r}")
        return Bind(path=Path(path).expanduser())
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"must be {BIND_RULE}, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address (in {text!r})") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, as in [::1]:8765; got {text!r}")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, got {port_text!r}")
    return Bind(host=host.lower(), port=int(port_text))


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise BindFailed(f"cannot resolve the bind host {host!r}: {error}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]


def is_private(bind: Bind) -> bool:
    """Whether only this machine can connect: a Unix socket, or loopback addresses only.

    Raises:
        BindFailed: the host name does not resolve.
    """
    if bind.is_unix or bind.host == "localhost":
        return True
    return all(address.is_loopback for address in _addresses(bind.host))


def read_token(path: str | os.PathLike[str]) -> str:
    """The bearer token: the file's text without surrounding white space.

    Raises:
        ConfigError: the file cannot be read, is empty, or is too long to be a token.
    """
    try:
        data = Path(path).read_bytes()[: MAX_TOKEN_BYTES + 1]
    except OSError as error:
        raise ConfigError(f"cannot read the token file {path}: {error.strerror}") from None
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"the token file {path} is not UTF-8 text") from None
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    if len(data) > MAX_TOKEN_BYTES or any(c.isspace() for c in token):
        raise ConfigError(
            f"the token file {path} must hold one token: no spaces, at most {MAX_TOKEN_BYTES} bytes"
        )
    return token


def check_policy(bind: Bind, token_file: str | None) -> str | None:
    """The token to require, after checking that this bind may serve.

    Returns:
        The token, or None when none is configured (allowed only on a private bind).

    Raises:
        ConfigError: a public bind without a token, or a token file that is unusable.
        BindFailed: the host name does not resolve.
    """
    token = read_token(token_file) if token_file else None
    if token is None and not is_private(bind):
        raise ConfigError(
            f"refusing to serve HTTP on {bind} without a token: it is reachable from other"
            " machines. Set http_token_file (or --token-file) to a file holding a secret, or"
            " bind to 127.0.0.1 or a unix: socket"
        )
    return token


def allowed_hosts(bind: Bind) -> frozenset[str] | None:
    """The names a request's Host header may give (without the port); None: any.

    Raises:
        BindFailed: the bind's host name does not resolve.
    """
    if bind.is_unix:
        return None
    names = {"localhost", bind.host}
    # A name's addresses too: `--bind localhost:8765` serves on 127.0.0.1, the address
    # it prints. An address literal cannot be rebound by anyone's DNS.
    names.update(str(address) for address in _addresses(bind.host))
    try:
        wildcard = ipaddress.ip_address(bind.host).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
        with contextlib.suppress(OSError):
            import psutil  # noqa: PLC0415 (only for a wildcard bind)

            for addresses in psutil.net_if_addrs().values():
                for address in addresses:
                    if address.family in (socket.AF_INET, socket.AF_INET6):
                        names.add(address.address.split("%")[0].lower())
    return frozenset(names)


def host_name(header: str) -> str:
    """The name in a Host header, lower case, without its port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def listen(bind: Bind, backlog: int = 1024) -> socket.socket:
    """A listening socket for the bind; a Unix socket gets mode 0600.

    Raises:
        BindFailed: the address is in use or cannot be bound, with the reason.
    """
    if bind.path is not None:
        return _listen_unix(bind.path, backlog)
    try:
        infos = socket.getaddrinfo(
            bind.host, bind.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise BindFailed(f"cannot resolve the bind host {bind.host!r}: {error}") from None
    # IPv4 first: "localhost" then means 127.0.0.1, which every client tries.
    family, kind, proto, _, address = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
    server = socket.socket(family, kind, proto)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(address)
        server.listen(backlog)
    except OSError as error:
        server.close()
        raise BindFailed(f"cannot listen on {bind}: {error.strerror}") from None
    return server


def _listen_unix(path: Path, backlog: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise BindFailed(f"cannot listen on unix:{path}: a file that is no socket is there")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError as error:
            if error.errno != errno.ECONNREFUSED:
                raise BindFailed(f"cannot listen on unix:{path}: {error.strerror}") from None
            path.unlink()  # left by a server that is gone: nobody listens
        else:
            raise BindFailed(f"cannot listen on unix:{path}: another server listens there")
        finally:
            probe.close()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The socket file is created 0600 (no moment when others could connect).
    previous = os.umask(0o177)
    try:
        server.bind(str(path))
        server.listen(backlog)
    except OSError as error:
        server.close()
        raise BindFailed(f"cannot listen on unix:{path}: {error.strerror}") from None
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    return server
