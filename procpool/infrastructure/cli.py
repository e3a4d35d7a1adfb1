"""The `procpool` command (CONTRACT section 5): a thin layer over the Client.

Exit codes: 0 success; 1 the thing asked for did not happen; 2 usage error;
124 a --timeout ran out. A user error prints one line, never a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from procpool.client import Client, JobInfo, UnknownJob
from procpool.domain.errors import ConfigError, InvalidJobFile, ProcpoolError
from procpool.domain.job import Status
from procpool.infrastructure import config as configuration
from procpool.infrastructure.daemon import run_daemon
from procpool.infrastructure.pidfile import AlreadyRunning
from procpool.infrastructure.stats import collect

EXIT_OK = 0
EXIT_NOT_DONE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124

F = TypeVar("F", bound=Callable[..., Any])


class CommandFailed(click.ClickException):
    """One line on stderr, and an exit code of the contract."""

    def __init__(self, message: str, exit_code: int = EXIT_NOT_DONE) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"procpool: {self.message}", err=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except (ConfigError, InvalidJobFile) as error:
        raise CommandFailed(str(error), EXIT_USAGE) from None
    except AlreadyRunning as error:
        raise CommandFailed(str(error), EXIT_NOT_DONE) from None
    except UnknownJob as error:
        raise CommandFailed(f"no job {error.args[0]!r}", EXIT_NOT_DONE) from None
    except ProcpoolError as error:
        raise CommandFailed(str(error), EXIT_NOT_DONE) from None
    except PermissionError as error:
        raise CommandFailed(f"permission denied: {error.filename}", EXIT_NOT_DONE) from None


def home_option(function: F) -> F:
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The daemon's home directory [env PROCPOOL_HOME].",
    )(function)


def _client(home: Path | None) -> Client:
    with _user_errors():
        if home is None:
            home = configuration.resolve_home(configuration.load())
    return Client(home)


def _print_json(value: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.encode(value) + b"\n")
    sys.stdout.flush()


def _brief(value: Any, width: int = 60) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def _progress_text(job: JobInfo) -> str:
    if job.progress is None:
        return ""
    message = job.progress.get("message")
    percent = f"{job.progress['fraction'] * 100:.0f}%"
    return f"{percent} {message}" if message else percent


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="procpool")
def main() -> None:
    """procpool: run CPU-bound jobs in a pool of worker processes, durably."""


@main.command()
@home_option
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Worker processes [default: CPUs]."
)
@click.option(
    "--handlers", "handlers", multiple=True, help="Module with handlers to import (repeatable)."
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML config file [env PROCPOOL_CONFIG; default HOME/procpool.toml].",
)
@click.option("--log-level", default=None, help="TRACE, DEBUG, INFO, WARNING or ERROR.")
def run(
    home: Path | None,
    workers: int | None,
    handlers: tuple[str, ...],
    config_file: Path | None,
    log_level: str | None,
) -> None:
    """Run the daemon in the foreground until a signal stops it."""
    flags = {
        "home": str(home) if home else None,
        "workers": workers,
        "handlers": list(handlers) or None,
        "log_level": log_level,
    }
    with _user_errors():
        code = run_daemon(flags, config_file)
    sys.exit(code)


@main.command()
@home_option
@click.argument("job_type", metavar="TYPE")
@click.argument("payload", metavar="[PAYLOAD_JSON]", required=False)
@click.option("--id", "job_id", default=None, help="The job's id [default: a new random one].")
@click.option("--max-attempts", type=int, default=None)
@click.option("--timeout", type=float, default=None, help="Hard limit of one attempt, seconds.")
@click.option("--priority", type=int, default=0, help="Higher runs first.")
@click.option("--delay", type=float, default=None, help="Do not start before now + S seconds.")
def submit(
    home: Path | None,
    job_type: str,
    payload: str | None,
    job_id: str | None,
    max_attempts: int | None,
    timeout: float | None,
    priority: int,
    delay: float | None,
) -> None:
    """Queue a job: writes a file into the inbox and prints the job's id."""
    value = None
    if payload is not None:
        try:
            value = msgspec.json.decode(payload.encode())
        except msgspec.DecodeError as error:
            raise CommandFailed(f"PAYLOAD_JSON is not valid JSON: {error}", EXIT_USAGE) from None
    client = _client(home)
    with _user_errors():
        new_id = client.submit(
            job_type,
            value,
            id=job_id,
            max_attempts=max_attempts,
            timeout=timeout,
            priority=priority,
            delay=delay,
        )
    click.echo(new_id)


def _status_lines(job: JobInfo) -> list[tuple[str, str]]:
    canceling = job.cancel_requested and job.status == "running"
    return [
        ("id", job.id),
        ("type", job.type),
        ("status", job.status + (" (cancel requested)" if canceling else "")),
        ("attempts", f"{job.attempts} failed of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("created", job.created_at),
        ("updated", job.updated_at),
        ("run at", job.run_at),
        ("timeout", "none" if job.timeout is None else f"{job.timeout:g} s"),
        ("worker pid", "" if job.worker_pid is None else str(job.worker_pid)),
        ("progress", _progress_text(job)),
        ("last error", job.last_error or ""),
        ("payload", _brief(job.payload, 200)),
        ("result", "" if job.result is None else _brief(job.result, 200)),
    ]  # fmt: skip


@main.command()
@home_option
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def status(home: Path | None, job_id: str, as_json: bool) -> None:
    """Show one job."""
    job = _client(home).get(job_id)
    if job is None:
        raise CommandFailed(f"no job {job_id!r}")
    if as_json:
        _print_json(job.to_dict())
        return
    for label, value in _status_lines(job):
        click.echo(f"{label:<11} {value}".rstrip())


@main.command(name="list")
@home_option
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in Status]))
@click.option("--type", "job_type", default=None)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_jobs(
    home: Path | None, statuses: tuple[str, ...], job_type: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first."""
    jobs = _client(home).list(status=statuses or None, type=job_type, limit=limit)
    if as_json:
        for job in jobs:
            _print_json(job.to_dict())
        return
    rows = [("ID", "TYPE", "STATUS", "ATTEMPTS", "UPDATED", "NOTE")]
    for job in jobs:
        note = job.last_error if job.status in ("failed", "pending") and job.last_error else ""
        note = note or _progress_text(job)
        rows.append(
            (job.id, job.type, job.status, f"{job.attempts}/{job.max_attempts}",
             job.updated_at[:19].replace("T", " "), note[:80])
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5]
        )


@main.command()
@home_option
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--timeout", type=float, default=None, help="Give up after S seconds (exit 124).")
@click.option(
    "--progress", "show_progress", is_flag=True, help="Show the handlers' progress reports."
)
def wait(
    home: Path | None, job_ids: tuple[str, ...], timeout: float | None, show_progress: bool
) -> None:
    """Block until every job is terminal: exit 0 if all completed, 1 otherwise."""
    client = _client(home)
    try:
        if show_progress:
            jobs = _wait_with_progress(client, list(job_ids), timeout)
        else:
            jobs = client.wait(list(job_ids), timeout=timeout)
    except UnknownJob as error:
        raise CommandFailed(f"no job {error.args[0]!r}") from None
    except TimeoutError:
        raise CommandFailed(f"timed out after {timeout:g} s", EXIT_TIMEOUT) from None
    for job in jobs:
        suffix = f": {job.last_error}" if job.status == "failed" and job.last_error else ""
        click.echo(f"{job.id} {job.status}{suffix}")
    if any(job.status != "completed" for job in jobs):
        sys.exit(EXIT_NOT_DONE)


def _wait_with_progress(client: Client, job_ids: list[str], timeout: float | None) -> list[JobInfo]:
    deadline = None if timeout is None else time.monotonic() + timeout
    shown: dict[str, tuple[str, str]] = {}
    while True:
        try:
            return client.wait(
                job_ids,
                timeout=0.2
                if deadline is None
                else min(0.2, max(0.0, deadline - time.monotonic())),
            )
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise
        for job_id in job_ids:
            job = client.get(job_id)
            if job is None:
                continue
            state = (job.status, _progress_text(job))
            if shown.get(job_id) != state:
                shown[job_id] = state
                click.echo(f"{job_id} {job.status} {state[1]}".rstrip())


@main.command()
@home_option
@click.argument("job_id", metavar="ID")
@click.option(
    "--timeout", type=float, default=None, help="Give up waiting after S seconds (exit 124)."
)
def cancel(home: Path | None, job_id: str, timeout: float | None) -> None:
    """Cancel a job; while the daemon runs, wait until it is canceled."""
    client = _client(home)
    job = client.get(job_id)
    if job is None and not client.is_waiting_in_inbox(job_id):
        raise CommandFailed(f"no job {job_id!r}")
    if job is not None and job.is_terminal:
        raise CommandFailed(f"job {job_id} is already {job.status}; nothing to cancel")
    with _user_errors():
        client.cancel(job_id)
    if client.daemon_pid() is None:
        click.echo(f"cancel of {job_id} requested; it takes effect when the daemon starts")
        return
    try:
        [job] = client.wait([job_id], timeout=timeout)
    except TimeoutError:
        raise CommandFailed(
            f"job {job_id} not canceled after {timeout:g} s", EXIT_TIMEOUT
        ) from None
    if job.status != "canceled":
        raise CommandFailed(f"job {job_id} ended {job.status} before the cancel took effect")
    click.echo(f"{job_id} canceled")


@main.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def stats(home: Path | None, as_json: bool) -> None:
    """Counts per status and type, workers, throughput, oldest pending job."""
    figures = collect(_client(home))
    if as_json:
        _print_json(figures)
        return
    daemon = figures["daemon"]
    click.echo(
        "daemon      " + (f"running, pid {daemon['pid']}" if daemon["running"] else "not running")
    )
    click.echo(f"workers     {figures['workers']['alive']} alive")
    click.echo("jobs        " + "  ".join(f"{k} {v}" for k, v in figures["jobs"].items()))
    for job_type, counts in sorted(figures["types"].items()):
        click.echo(f"  {job_type:<10}" + "  ".join(f"{k} {v}" for k, v in counts.items()))
    minute = figures["last_minute"]
    click.echo(
        "last minute "
        + "  ".join(f"{status} {minute[status]}" for status in ("completed", "failed", "canceled"))
    )
    age = figures["oldest_pending_age"]
    click.echo(f"oldest pending  {'none' if age is None else f'{age:.1f} s'}")


@main.command()
@home_option
@click.option(
    "--timeout", type=float, default=None, help="Give up waiting after S seconds (exit 124)."
)
def stop(home: Path | None, timeout: float | None) -> None:
    """Send SIGTERM to the daemon and wait for it to exit."""
    client = _client(home)
    pid = client.daemon_pid()
    if pid is None or pid < 0:
        raise CommandFailed("procpool is not running on this home")
    os.kill(pid, signal.SIGTERM)
    deadline = None if timeout is None else time.monotonic() + timeout
    while client.daemon_pid() is not None:
        if deadline is not None and time.monotonic() >= deadline:
            raise CommandFailed(
                f"the daemon (pid {pid}) still runs after {timeout:g} s", EXIT_TIMEOUT
            )
        time.sleep(0.05)
    click.echo(f"procpool (pid {pid}) stopped")
