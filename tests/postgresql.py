"""A throwaway PostgreSQL cluster for the tests, from the server binaries on the machine.

One cluster per test session: `initdb` into a temporary directory, `pg_ctl start`, a
Unix socket in that directory and no TCP (`listen_addresses=''`), `fsync=off` (a
crash of the test machine loses nothing worth keeping). Each test gets a database of
its own (`CREATE DATABASE`), dropped at its end. `initdb` refuses to run as root, so
as root the server runs as the `postgres` user (`runuser -u postgres --`), in a
directory owned by it.

Where no server or no psycopg is installed the PostgreSQL tests are skipped, saying
why; with CI_REQUIRE_POSTGRESQL=1 (set by `.ci/run`) they fail instead, so CI
never passes by skipping them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRED = os.environ.get("CI_REQUIRE_POSTGRESQL") == "1"


def _server_bin() -> Path | None:
    """The directory of `initdb`, `pg_ctl` and `postgres`: PATH, else the Debian layout."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(versions[0]).parent if versions else None


def unavailable(why: str) -> None:
    """Skip the test, or fail it where PostgreSQL is required."""
    if REQUIRED:
        pytest.fail(f"PostgreSQL is required here (CI_REQUIRE_POSTGRESQL=1): {why}")
    pytest.skip(why)


class Cluster:
    """A running cluster: `url(database)` connects through its socket directory."""

    def __init__(self, bin_dir: Path, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable  # fsync on, as a real server; off for the tests' speed
        self.as_root = os.geteuid() == 0
        self.directory = Path(tempfile.mkdtemp(prefix="procpool-pg-"))
        self.data = self.directory / "data"
        self.socket_dir = self.directory
        if self.as_root:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self.user = "postgres"
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.directory.chmod(0o755)  # clients of any user reach the socket

    def _run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        return subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self) -> None:
        done = self._run(
            str(self.bin_dir / "initdb"), "--no-sync", "-A", "trust", "-U", self.user,
            "-E", "UTF8", "--locale=C", "-D", str(self.data),
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr or done.stdout}")
        self.pg_ctl("start")

    def pg_ctl(self, action: str) -> None:
        """`start`, `stop` (fast: open connections are ended) or `restart`."""
        options = (
            f"-c listen_addresses='' -c unix_socket_directories={self.socket_dir}"
            " -c max_connections=200"
        )
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast"]
        if action != "stop":
            command += ["-o", options, "-l", str(self.directory / "server.log")]
        done = self._run(*command, action)
        if done.returncode:
            log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl {action} failed: {done.stderr or done.stdout}\n{log}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.pg_ctl("stop")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The session's cluster, started on first use."""
    try:
        import psycopg  # noqa: F401, PLC0415
    except ImportError:
        unavailable("psycopg is not installed: pip install '.[postgresql]'")
    bin_dir = _server_bin()
    if bin_dir is None:
        unavailable("no PostgreSQL server binaries (initdb) on PATH or in /usr/lib/postgresql")
    assert bin_dir is not None
    cluster = Cluster(bin_dir)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        cluster.stop()
        unavailable(f"cannot start a PostgreSQL cluster: {error}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> Iterator[str]:
    """A URL of an empty database of the test's own, dropped after the test."""
    import psycopg  # noqa: PLC0415

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield pg_cluster.url(name)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def spans(tmp_path: Path) -> Path:
    """The directory where the `span` runs of tests/pg_handlers.py leave their marks."""
    directory = tmp_path / "spans"
    directory.mkdir()
    return directory
