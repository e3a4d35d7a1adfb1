"""The `procpool` command (CONTRACT section 5): a thin layer over the Client.

Exit codes: 0 success; 1 the thing asked for did not happen; 2 usage error;
124 a --timeout ran out. A user error prints one line, never a traceback.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from procpool.adapters import config as configuration
from procpool.adapters.home.pidfile import AlreadyRunning
from procpool.adapters.logs.cursor import LogCursor
from procpool.adapters.logs.reader import LEVELS, LogFilter, parse, read_all
from procpool.adapters.logs.writer import human_line
from procpool.client import (
    Attempt,
    Client,
    JobInfo,
    JobRejected,
    PauseInfo,
    ScheduleInfo,
    UnknownJob,
)
from procpool.domain import spec
from procpool.domain.errors import ConfigError, DuplicateId, InvalidJobFile, ProcpoolError
from procpool.domain.job import Status
from procpool.domain.timefmt import rfc3339
from procpool.domain.wording import plural
from procpool.entrypoints.progress_display import ProgressDisplay, first_line

EXIT_OK = 0
EXIT_NOT_DONE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124

F = TypeVar("F", bound=Callable[..., Any])


class CommandFailed(click.ClickException):
    """One line on stderr, and an exit code of the contract."""

    def __init__(self, message: str, exit_code: int = EXIT_NOT_DONE) -> None:
        super().__init__(message)
        # click declares exit_code a ClassVar, yet reads it from the instance.
        self.exit_code = exit_code  # type: ignore[misc]

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
    except JobRejected as error:
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


def config_option(function: F) -> F:
    """`--config FILE` of the commands that read the configuration (run, serve)."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="TOML config file [env PROCPOOL_CONFIG; default HOME/procpool.toml].",
    )(function)


def give_up_option(function: F) -> F:
    """`--timeout S` of the commands that wait (wait, cancel, prune, stop)."""
    return click.option(
        "--timeout",
        type=float,
        default=None,
        help=f"Give up waiting after S seconds (exit {EXIT_TIMEOUT}).",
    )(function)


def _client(home: Path | None) -> Client:
    """The command's client, closed with the command (an unclosed connection is a
    ResourceWarning from Python 3.13 on). Reading raises NoJobStore on a home that
    no daemon has made, a message that says how the home was chosen."""
    with _user_errors():
        choice = configuration.locate_home(home)
    client = Client(choice.path, home_source=choice.chosen_by)
    click.get_current_context().call_on_close(client.close)
    return client


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


class _OneLineErrors(click.Group):
    """Usage errors as one line, like every other error of procpool (click prints three)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx is not None else "procpool"
            message = self._options_after_command(error) or error.format_message()
            click.echo(f"{command}: {message[0].lower()}{message[1:]} (see --help)", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("procpool: aborted", err=True)
            sys.exit(EXIT_NOT_DONE)
        except ProcpoolError as error:  # raised outside _user_errors, e.g. NoJobStore
            click.echo(f"procpool: {error}", err=True)
            usage = isinstance(error, ConfigError | InvalidJobFile)
            sys.exit(EXIT_USAGE if usage else EXIT_NOT_DONE)
        sys.exit(result if isinstance(result, int) else EXIT_OK)

    def _options_after_command(self, error: click.UsageError) -> str | None:
        """For `procpool --home X list`: the options a command takes go after it, which
        click's "no such option" does not say. None for any other usage error."""
        if not isinstance(error, click.NoSuchOption) or error.ctx is None:
            return None
        if error.ctx.command is not self:
            return None
        words = sys.argv[1:]
        at = next((i for i, word in enumerate(words) if word in self.commands), None)
        if at is None:
            return None
        known = {name for param in self.commands[words[at]].params for name in param.opts}
        if error.option_name not in known:
            return None
        moved = shlex.join([words[at], *words[:at], *words[at + 1 :]])
        return (
            f"no such option {error.option_name!r} before the command: options go after it,"
            f" as in procpool {moved}"
        )


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="procpool")
@click.pass_context
def main(context: click.Context) -> None:
    """procpool: run CPU-bound jobs in a pool of worker processes, durably."""
    if context.invoked_subcommand != "run":  # the daemon logs them itself
        for warning in configuration.unknown_variables():
            click.echo(f"procpool: warning: {warning}", err=True)


@main.command()
@home_option
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Worker processes [default: CPUs]."
)
@click.option(
    "--handlers", "handlers", multiple=True, help="Module with handlers to import (repeatable)."
)
@config_option
@click.option("--log-level", default=None, help="TRACE, DEBUG, INFO, WARNING or ERROR.")
def run(
    home: Path | None,
    workers: int | None,
    handlers: tuple[str, ...],
    config_file: Path | None,
    log_level: str | None,
) -> None:
    """Run the daemon in the foreground until a signal stops it."""
    # The daemon's modules (the supervisor, the workers, loguru): `run` alone needs them.
    from procpool.entrypoints.daemon import EXIT_RESTART, run_daemon, start_again  # noqa: PLC0415

    flags = {
        "home": str(home) if home else None,
        "workers": workers,
        "handlers": list(handlers) or None,
        "log_level": log_level,
    }
    with _user_errors():
        code = run_daemon(flags, config_file)
    if code == EXIT_RESTART:
        start_again()
    sys.exit(code)


@main.command()
@home_option
@click.option(
    "--bind",
    default=None,
    help="HOST:PORT or unix:PATH [config http_bind; default 127.0.0.1:8765].",
)
@click.option(
    "--token-file",
    default=None,
    help="File holding the bearer token to require [config http_token_file].",
)
@config_option
def serve(
    home: Path | None, bind: str | None, token_file: str | None, config_file: Path | None
) -> None:
    """Serve the HTTP API of the home in the foreground until SIGTERM or SIGINT."""
    try:
        from procpool.entrypoints.http.server import serve as serve_http  # noqa: PLC0415
    except ImportError as error:
        missing = configuration.extra_missing("procpool serve", "http", str(error.name))
        raise CommandFailed(str(missing)) from None
    with _user_errors():
        choice = configuration.locate_home(home)
        code = serve_http(choice.path, bind, token_file, config_file)
    sys.exit(code)


@main.command()
@home_option
@click.argument("job_type", metavar="TYPE")
@click.argument("payload", metavar="[PAYLOAD_JSON]", required=False)
@click.option("--id", "job_id", default=None, help="The job's id [default: a new random one].")
@click.option("--max-attempts", type=int, default=None)
@click.option("--timeout", type=float, default=None, help="Hard limit of one attempt, seconds.")
@click.option(
    "--priority", type=int, default=None, help="Higher runs first [default: the handler's, else 0]."
)
@click.option("--delay", type=float, default=None, help="Do not start before now + S seconds.")
@click.option(
    "--concurrency-key",
    default=None,
    help="Jobs of this type with the same key run at most key_limit at once (default 1).",
)
@click.option(
    "--expires-in", type=float, default=None, help="Cancel it if still pending S seconds from now."
)
@click.option(
    "--expires-at", default=None, help="Cancel it if still pending at this RFC 3339 time."
)
@click.option(
    "--unique-key",
    default=None,
    help="While a live job of this type holds this key, print its id and add nothing.",
)
@click.option(
    "--unique-while",
    type=click.Choice(["active", "pending"]),
    default=None,
    help="The key is held while the job is pending or running (active, the default),"
    " or until it first starts (pending).",
)
@click.option(
    "--after",
    "after",
    multiple=True,
    metavar="ID",
    help="Start only once this job completed (repeatable: every one of them).",
)
@click.option(
    "--after-failure",
    type=click.Choice(["cancel", "run"]),
    default=None,
    help="If a job of --after fails or is canceled: cancel this one [default], or run it"
    " once every one of them is terminal.",
)
def submit(
    home: Path | None,
    job_type: str,
    payload: str | None,
    job_id: str | None,
    max_attempts: int | None,
    timeout: float | None,
    priority: int | None,
    delay: float | None,
    concurrency_key: str | None,
    expires_in: float | None,
    expires_at: str | None,
    unique_key: str | None,
    unique_while: str | None,
    after: tuple[str, ...],
    after_failure: str | None,
) -> None:
    """Queue a job and print its id: over the daemon's socket while it runs (returns once
    the job is committed), else as a file in the inbox."""
    value = None
    if payload is not None:
        try:
            # fsencode: argv bytes that are not UTF-8 reach the parser, which names them.
            value = spec.parse_json(os.fsencode(payload))
        except InvalidJobFile as error:
            raise CommandFailed(f"PAYLOAD_JSON: {error}", EXIT_USAGE) from None
    client = _client(home)
    with _user_errors():
        try:
            new_id = client.submit(
                job_type,
                value,
                id=job_id,
                max_attempts=max_attempts,
                timeout=timeout,
                priority=priority,
                delay=delay,
                concurrency_key=concurrency_key,
                expires_in=expires_in,
                expires_at=expires_at,
                unique_key=unique_key,
                unique_while=unique_while,
                after=list(after) or None,
                after_failure=after_failure,
            )
        except DuplicateId as error:  # what was asked did not happen; no usage error
            raise CommandFailed(str(error), EXIT_NOT_DONE) from None
    click.echo(new_id)


def _status_lines(job: JobInfo) -> list[tuple[str, str]]:
    canceling = job.cancel_requested and job.status == "running"
    return [
        ("id", job.id),
        ("type", job.type),
        ("status", job.status + (" (cancel requested)" if canceling else "")),
        ("attempts", f"{job.attempts} failed of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("concurrency key", job.concurrency_key or ""),
        ("created", job.created_at),
        ("updated", job.updated_at),
        ("run at", job.run_at),
        ("timeout", "none" if job.timeout is None else f"{job.timeout:g} s"),
        ("worker pid", "" if job.worker_pid is None else str(job.worker_pid)),
        ("progress", _progress_text(job)),
        ("last error", job.last_error or ""),
        ("retry of", job.retry_of or ""),
        ("after", " ".join(job.after or []) + (" (runs after a failure)"
                                               if job.after_failure == "run" else "")),
        ("canceled by", job.canceled_by or ""),
        ("waiting", _waiting_text(job.waiting)),
        ("expires at", job.expires_at or ""),
        ("unique key", "" if job.unique_key is None else f"{job.unique_key} ({job.unique_while})"),
        ("checkpoint at", job.checkpoint_at or ""),
        ("payload", _brief(job.payload, 200)),
        ("result", "" if job.result is None else _brief(job.result, 200)),
    ]  # fmt: skip


def _waiting_text(waiting: dict[str, Any] | None) -> str:
    """Why a pending job has not started, in words: "limit of render: 2 of 2 running",
    "paused until 2026-12-07T02:00:00.000000Z"."""
    if waiting is None:
        return ""
    if waiting["reason"] == "after":
        parents = waiting["parents"]
        return "after " + ", ".join(f"{job_id} ({status})" for job_id, status in parents.items())
    if waiting["reason"] == "paused":
        return f"paused until {waiting.get('until') or 'resumed'}"
    share = f"{waiting['running']} of {waiting['max']} running"
    if waiting["reason"] == "key_limit":
        return f"key limit of {waiting['limit']}, key {waiting['key']!r}: {share}"
    return f"limit of {waiting['limit']}: {share}"


def _clock(moment: str | None) -> str:
    return "" if moment is None else moment[:19].replace("T", " ")


def _attempt_lines(attempts: list[Attempt]) -> list[str]:
    if not attempts:
        return ["attempts    none yet"]
    rows = [("#", "STARTED", "ENDED", "DURATION", "OUTCOME", "PID", "SIGNAL", "ERROR")]
    rows.extend(
        # An interrupted run is not counted as an attempt: the next run takes its number.
        ("-" if a.outcome == "interrupted" else str(a.attempt),
         _clock(a.started_at), _clock(a.ended_at),
         "" if a.duration is None else f"{a.duration:.3f} s", a.outcome,
         "" if a.worker_pid is None else str(a.worker_pid), a.exit_signal or "",
         first_line(a.error)[:100])
        for a in attempts
    )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(7)]
    lines = ["attempts"]
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in (0, 3, 5) else cell.ljust(widths[i])
                 for i, cell in enumerate(row[:7])]  # fmt: skip
        lines.append(("  " + "  ".join(cells) + "  " + row[7]).rstrip())
    return lines


def _show(home: Path | None, job_id: str, as_json: bool, with_attempts_json: bool) -> None:
    client = _client(home)
    with _user_errors():
        job = client.get(job_id)
    if job is None and client.is_waiting_in_inbox(job_id):
        raise CommandFailed(f"job {job_id!r} waits in the inbox: no daemon has taken it yet")
    if job is None:
        raise CommandFailed(f"no job {job_id!r}")
    with _user_errors():
        attempts = client.attempts(job_id)
    if as_json:
        document = job.to_dict()
        if with_attempts_json:
            document["history"] = [attempt.to_dict() for attempt in attempts]
        _print_json(document)
        return
    for label, value in _status_lines(job):
        click.echo(f"{label:<11} {value}".rstrip())
    for line in _attempt_lines(attempts):
        click.echo(line)


def _show_command(name: str, summary: str, json_help: str, with_attempts_json: bool) -> None:
    """`status` and `show`: the same table; their JSON differs by the attempt history."""

    @main.command(name=name, help=summary)
    @home_option
    @click.argument("job_id", metavar="ID")
    @click.option("--json", "as_json", is_flag=True, help=json_help)
    def command(home: Path | None, job_id: str, as_json: bool) -> None:
        _show(home, job_id, as_json, with_attempts_json)


_show_command("status", "Show one job, and every attempt it made.", "One JSON object.", False)
_show_command(
    "show",
    "Show one job and its attempts: start, end, outcome, error, worker pid, signal.",
    "The job, with its attempts under history.",
    True,
)


@main.command(name="list")
@home_option
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in Status]))
@click.option("--type", "job_type", default=None)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--waiting",
    type=click.Choice(["limit", "key_limit", "paused", "after"]),
    default=None,
    help="Only pending jobs a full limit, a pause or their parents hold back (their"
    " waiting.reason).",
)
@click.option(
    "--after", "after", default=None, metavar="ID", help="Only the jobs that wait for ID."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_jobs(
    home: Path | None,
    statuses: tuple[str, ...],
    job_type: str | None,
    limit: int,
    waiting: str | None,
    after: str | None,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    if waiting is not None and statuses:
        raise click.UsageError("--waiting lists pending jobs: it does not go with --status")
    jobs = _client(home).list(
        status=statuses or None, type=job_type, limit=limit, waiting=waiting, after=after
    )
    if as_json:
        for job in jobs:
            _print_json(job.to_dict())
        return
    rows = [("ID", "TYPE", "STATUS", "ATTEMPTS", "UPDATED", "NOTE")]
    for job in jobs:
        note = first_line(job.last_error) if job.status != "completed" else ""
        if job.status == "running":
            note = _progress_text(job) or note
        note = note or (f"retry of {job.retry_of}" if job.retry_of else "")
        note = _waiting_text(job.waiting) or note
        rows.append(
            (job.id, job.type, job.status, f"{job.attempts}/{job.max_attempts}",
             job.updated_at[:19].replace("T", " "), note[:80])
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        click.echo(
            (
                "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5]
            ).rstrip()
        )


class _DaemonGone(Exception):
    """The daemon stopped while a command waited for it to act."""


def _all_terminal(jobs: list[JobInfo | None]) -> bool:
    return all(job is not None and job.is_terminal for job in jobs)


class _DaemonWatch:
    """Whether a daemon serves the home, looked up at most every `interval` seconds
    (a look takes the pid file's lock for an instant)."""

    def __init__(self, client: Client, interval: float = 0.2) -> None:
        self._client = client
        self._interval = interval
        self._next = 0.0
        self.pid: int | None = None
        self.absent = False  # whether `announce` has said that none runs
        # Whether a daemon has served the home (its store is there, or one was seen):
        # the first daemon of a new home starts, it does not run "again".
        self.served = client.reader.exists()

    def look(self) -> int | None:
        """The daemon's pid (-1: running, pid unreadable), or None if none runs."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            self.pid = self._client.daemon_pid()
        return self.pid

    def announce(self, jobs: list[JobInfo | None]) -> None:
        """While jobs are left to wait for, say on stderr when no daemon runs to run
        them, once per absence, and when one runs again."""
        if _all_terminal(jobs):
            return
        pid = self.look()
        if pid is None and not self.absent:
            click.echo(f"procpool: no daemon runs on {self._client.home}; still waiting: the"
                       " jobs go on when it starts", err=True)  # fmt: skip
            self.absent = True
        elif pid is not None and self.absent:
            running = f" (pid {pid})" if pid > 0 else ""
            news = "the daemon runs again" if self.served else "a daemon started"
            click.echo(f"procpool: {news}{running}; still waiting", err=True)
            self.absent = False
        if pid is not None:
            self.served = True


@main.command()
@home_option
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@give_up_option
@click.option(
    "--progress", "show_progress", is_flag=True, help="Show the handlers' progress reports."
)
def wait(
    home: Path | None, job_ids: tuple[str, ...], timeout: float | None, show_progress: bool
) -> None:
    """Block until every job is terminal: exit 0 if all completed, 1 otherwise.

    While no daemon runs, it says so once on stderr and keeps waiting.
    """
    client = _client(home)
    display = ProgressDisplay(job_ids, sys.stdout, sys.stdout.isatty()) if show_progress else None
    watch = _DaemonWatch(client)

    def on_poll(found: list[JobInfo | None]) -> None:
        if display is not None:
            display.update(found)
        watch.announce(found)

    try:
        jobs = client.wait(list(job_ids), timeout=timeout, on_poll=on_poll)
    except JobRejected as error:
        raise CommandFailed(str(error)) from None
    except UnknownJob as error:
        raise CommandFailed(f"no job {error.args[0]!r}") from None
    except TimeoutError:
        raise CommandFailed(f"timed out after {timeout:g} s", EXIT_TIMEOUT) from None
    for job in jobs:
        failed = job.status == "failed" and job.last_error
        suffix = f": {first_line(job.last_error)}" if failed else ""
        click.echo(f"{job.id} {job.status}{suffix}")
    if any(job.status != "completed" for job in jobs):
        sys.exit(EXIT_NOT_DONE)


@main.command()
@home_option
@click.argument("job_id", metavar="ID")
@give_up_option
def cancel(home: Path | None, job_id: str, timeout: float | None) -> None:
    """Cancel a job; while the daemon runs, wait until it is canceled.

    With no daemon running, or once it stops, the request waits in the inbox and
    takes effect when the daemon starts: exit 0.
    """
    client = _client(home)
    with _user_errors():
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
    watch = _DaemonWatch(client)

    def give_up_without_a_daemon(jobs: list[JobInfo | None]) -> None:
        if not _all_terminal(jobs) and watch.look() is None:
            raise _DaemonGone

    try:
        with _user_errors():
            [job] = client.wait([job_id], timeout=timeout, on_poll=give_up_without_a_daemon)
    except TimeoutError:
        raise CommandFailed(
            f"job {job_id} not canceled after {timeout:g} s", EXIT_TIMEOUT
        ) from None
    except _DaemonGone:
        with _user_errors():
            found = client.get(job_id)
        if found is None or not found.is_terminal:
            if found is not None and found.cancel_requested:
                # The daemon took the request and stopped before the job ended: ask
                # again, so that the next start applies it after its recovery.
                with _user_errors():
                    client.cancel(job_id)
            click.echo(f"the daemon stopped before job {job_id} was canceled; the cancel"
                       " takes effect when the daemon starts")  # fmt: skip
            return
        job = found
    if job.status != "canceled":
        raise CommandFailed(f"job {job_id} ended {job.status} before the cancel took effect")
    click.echo(f"{job_id} canceled")


@main.command()
@home_option
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object (keys in docs/operations.md)."
)
def stats(home: Path | None, as_json: bool) -> None:
    """Jobs per status and type, throughput, failure rate, run times, workers."""
    from procpool.adapters.stores.stats import render  # noqa: PLC0415 (psutil)

    figures = _client(home).stats()
    if as_json:
        _print_json(figures)
        return
    click.echo(render(figures))


@main.command()
@home_option
@click.option(
    "--handlers", "modules", multiple=True, help="Module with handlers to import (repeatable)."
)
@config_option
@click.option("--json", "as_json", is_flag=True, help="A JSON array of one object per type.")
def handlers(
    home: Path | None, modules: tuple[str, ...], config_file: Path | None, as_json: bool
) -> None:
    """Every job type the daemon registers, with the timeout, max_attempts and priority
    its jobs get when they do not say, and its limits. Read from the configuration (and
    --handlers, as `procpool run` takes them): the handler modules are imported here."""
    from procpool.entrypoints import handler_table  # noqa: PLC0415 (imports user code)

    flags = {"home": str(home) if home else None, "handlers": list(modules) or None}
    with _user_errors():
        rows = handler_table.handler_rows(configuration.load(flags=flags, config_file=config_file))
    if as_json:
        _print_json(rows)
        return
    click.echo(handler_table.render(rows))


@main.command()
@home_option
@click.argument("job_id", metavar="[ID]", required=False)
@click.option(
    "--all-failed",
    is_flag=True,
    help="The failed work: each line of retries whose newest job failed, once;"
    " none with a job pending or running.",
)
@click.option("--type", "job_type", default=None, help="With --all-failed: only this type.")
@click.option(
    "--resume", is_flag=True, help="The new job starts from the old one's last checkpoint."
)
@click.option(
    "--cascade",
    is_flag=True,
    help="Also re-create the jobs its failure or cancel canceled (transitively), waiting"
    " for the new ids; prints OLD NEW per job.",
)
def retry(
    home: Path | None,
    job_id: str | None,
    all_failed: bool,
    job_type: str | None,
    resume: bool,
    cascade: bool,
) -> None:
    """Queue a finished job again as ID.retry-N; prints the new id."""
    if (job_id is None) == (not all_failed):
        raise CommandFailed("give either a job ID or --all-failed", EXIT_USAGE)
    if job_type is not None and not all_failed:
        raise CommandFailed("--type goes with --all-failed", EXIT_USAGE)
    if (resume or cascade) and job_id is None:
        raise CommandFailed(f"--{'resume' if resume else 'cascade'} goes with a job ID", EXIT_USAGE)
    if resume and cascade:
        raise CommandFailed("--resume and --cascade do not go together", EXIT_USAGE)
    client = _client(home)
    if cascade and job_id is not None:
        with _user_errors():
            renamed = client.retry_cascade(job_id)
        for old, new in renamed.items():
            click.echo(f"{old} {new}")
        return
    with _user_errors():
        new_ids = [client.retry(job_id, resume=resume)] if job_id else client.retry_failed(job_type)
    for new_id in new_ids:
        click.echo(new_id)
    if not new_ids:
        click.echo("no failed jobs to retry", err=True)


@main.command()
@home_option
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0),
    default=None,
    help="Days since the job finished [default: config retention_days].",
)
@give_up_option
def prune(home: Path | None, days: float | None, timeout: float | None) -> None:
    """Delete finished jobs older than D days, with their attempts; pending ones stay."""
    with _user_errors():
        config = configuration.load(flags={"home": str(home) if home else None})
    if days is None:
        days = config.retention_days
    client = _client(home)
    cutoff = time.time() - days * 86400
    before = client.count_finished_before(cutoff)
    with _user_errors():
        client.prune(days)
    if client.daemon_pid() is None:
        click.echo(f"prune of jobs older than {plural(days, 'day')} requested; it takes effect"
                   " when the daemon starts")  # fmt: skip
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    while (left := client.count_finished_before(cutoff)) > 0:
        if deadline is not None and time.monotonic() >= deadline:
            raise CommandFailed(
                f"{plural(left, 'job')} still to delete after {timeout:g} s", EXIT_TIMEOUT
            )
        time.sleep(0.1)
    click.echo(f"deleted {plural(before, 'job')} finished before {rfc3339(cutoff)[:19]}Z")


def _pauses_text(pauses: list[PauseInfo]) -> str:
    if not pauses:
        return "no type is paused"
    rows = [("PAUSED", "UNTIL", "SINCE")]
    rows += [(p.type, p.until or "resumed", p.since) for p in pauses]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c}" for a, b, c in rows)


@main.command()
@home_option
@click.argument("job_types", metavar="[TYPE]...", nargs=-1)
@click.option("--until", default=None, help="RFC 3339 time at which the pause ends by itself.")
@click.option(
    "--for",
    "duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="End the pause after S seconds.",
)
@give_up_option
@click.option("--json", "as_json", is_flag=True, help="With no TYPE: the pauses as JSON lines.")
def pause(
    home: Path | None,
    job_types: tuple[str, ...],
    until: str | None,
    duration: float | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Start no job of these types until resumed (or --until, --for); running jobs go
    on. With no TYPE: list the pauses in force.

    While the daemon runs, it returns once the daemon has stored the pause (no job of
    the types starts after that); with no daemon running, the request waits in the
    inbox and takes effect when the daemon starts.
    """
    client = _client(home)
    if not job_types:
        if until is not None or duration is not None:
            raise CommandFailed("--until and --for need a TYPE to pause", EXIT_USAGE)
        with _user_errors():
            pauses = client.pauses()
        if as_json:
            for listed in pauses:
                _print_json(listed)
        else:
            click.echo(_pauses_text(pauses))
        return
    if until is not None and duration is not None:
        raise CommandFailed("--until and --for cannot be given together", EXIT_USAGE)
    with _user_errors():
        stored = client.pause(job_types, until, duration=duration, timeout=timeout)
    names = ", ".join(job_types)
    if stored:
        shown = {p.type: p for p in client.pauses()}
        for job_type in dict.fromkeys(job_types):
            found = shown.get(job_type)
            ends = "it ended already" if found is None else f"until {found.until or 'resumed'}"
            click.echo(f"paused {job_type} {ends}")
    else:
        _not_taken(client, f"pause of {names}", timeout)


@main.command()
@home_option
@click.argument("job_types", metavar="TYPE...", nargs=-1, required=True)
@give_up_option
def resume(home: Path | None, job_types: tuple[str, ...], timeout: float | None) -> None:
    """Lift the pauses of these types: their due jobs start at once. A type that is not
    paused is no error."""
    client = _client(home)
    with _user_errors():
        done = client.resume(job_types, timeout=timeout)
    names = ", ".join(job_types)
    if done:
        click.echo(f"resumed {names}")
    else:
        _not_taken(client, f"resume of {names}", timeout)


def _not_taken(client: Client, request: str, timeout: float | None) -> None:
    """A pause or resume request the daemon has not taken: with no daemon running it waits
    for the next start (said, not an error); else the daemon did not take it in time.
    Raises CommandFailed (EXIT_TIMEOUT) then."""
    if client.daemon_pid() is None:
        click.echo(f"{request} requested; it takes effect when the daemon starts")
        return
    raise CommandFailed(
        f"the daemon did not take the {request} within {timeout or 0:g} s; the request"
        " waits in the inbox", EXIT_TIMEOUT,
    )  # fmt: skip


def _write_lines(lines: Iterable[bytes]) -> None:
    out = sys.stdout.buffer
    for line in lines:
        out.write(line)
    out.flush()


@main.command()
@home_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines, across rotations.")
@click.option(
    "-n",
    "--lines",
    "last",
    type=click.IntRange(min=0),
    default=None,
    help="Only the last N matching lines [default: all; 10 with -f].",
)
@click.option(
    "--job", "job_ids", multiple=True, help="Only this job's lines (repeatable: any of them)."
)
@click.option(
    "--event",
    "events",
    multiple=True,
    help="Only this event; a pattern such as 'job.*' works (repeatable: any of them).",
)
@click.option(
    "--level",
    type=click.Choice(list(LEVELS), case_sensitive=False),
    default=None,
    help="Only this level and above.",
)
@click.option("--json", "as_json", is_flag=True, help="The raw JSON lines.")
def logs(
    home: Path | None,
    follow: bool,
    last: int | None,
    job_ids: tuple[str, ...],
    events: tuple[str, ...],
    level: str | None,
    as_json: bool,
) -> None:
    """Print the daemon's log (logs/procpool.jsonl and its rotated files), filtered.

    A line is shown if it is of any --job given, any --event given, and at --level
    or above.
    """
    client = _client(home)
    client.require_store()  # a mistyped home is not a daemon that has logged nothing
    path = client.home / "logs" / "procpool.jsonl"
    wanted = LogFilter(job_ids=job_ids, events=events, level=level)

    def shown(lines: Iterable[bytes]) -> Iterator[bytes]:
        for raw in lines:
            line = parse(raw)
            if line is not None and wanted.matches(line):
                yield raw if as_json else human_line(line).encode("utf-8", "replace") + b"\n"

    try:
        if not follow:
            if not path.exists():
                raise CommandFailed(f"no log at {path}: the daemon has not run on this home")
            lines = shown(read_all(path))
            _write_lines(lines if last is None else deque(lines, maxlen=last))
            return
        cursor = LogCursor(path)
        while not cursor.open():
            time.sleep(0.2)
        backlog: list[bytes] = []
        while batch := cursor.read():  # the current file as it is now
            backlog.extend(line + b"\n" for _, line in batch)
        _write_lines(deque(shown(backlog), maxlen=10 if last is None else last))
        while True:
            fresh = cursor.read()
            if fresh:
                _write_lines(shown(line + b"\n" for _, line in fresh))
            else:
                time.sleep(0.1)
    except KeyboardInterrupt:
        sys.exit(EXIT_OK)  # Ctrl-C is how one stops following: not an error
    except BrokenPipeError:
        # The reader (head, less) went away: point stdout at /dev/null so that the
        # interpreter's final flush does not complain, and end quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_OK)


@main.command()
@home_option
@give_up_option
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


# ----------------------------------------------------------------- schedules
# procpool schedule apply FILE | list | show NAME | next NAME [-n N] | pause | resume |
# trigger | remove NAME (CONTRACT section 14).


@main.group()
@home_option
@click.pass_context
def schedule(context: click.Context, home: Path | None) -> None:
    """Schedules: jobs made on a clock, exactly one per occurrence. --home may come
    before or after the subcommand."""
    context.obj = home


def _schedule_client(home: Path | None) -> Client:
    """The client of the subcommand's --home, else of the group's."""
    group_home: Path | None = click.get_current_context().obj
    return _client(home or group_home)


@schedule.command()
@home_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@give_up_option
def apply(home: Path | None, file: Path, timeout: float | None) -> None:
    """Make the stored schedules be exactly those of FILE (TOML, or JSON if its name
    ends in .json): adds, changes and removes, and says which. A new schedule starts
    now; an edited one fires nothing because of the edit. Applying the same file
    again changes nothing."""
    client = _schedule_client(home)
    with _user_errors():
        changes = client.schedule_apply(
            file.read_bytes(), json_file=file.suffix == ".json", timeout=timeout
        )
    lines = [f"added {name}" for name in changes.added]
    lines += [f"changed {name}" for name in changes.changed]
    lines += [f"removed {name}" for name in changes.removed]
    click.echo("\n".join(lines) if lines else "no change")
    if not changes.stored:
        _waiting(client, "apply", timeout)


def _waiting(client: Client, what: str, timeout: float | None) -> None:
    if client.daemon_pid() is None:
        click.echo(f"the {what} waits in the inbox; it takes effect when the daemon starts")
        return
    raise CommandFailed(
        f"the daemon did not take the {what} within {timeout or 0:g} s; the request waits"
        " in the inbox", EXIT_TIMEOUT,
    )  # fmt: skip


def _when(schedule: ScheduleInfo) -> str:
    return f"cron {schedule.cron}" if schedule.cron else f"every {schedule.every}s"


@schedule.command(name="list")
@home_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_schedules(home: Path | None, as_json: bool) -> None:
    """Every schedule with its last run, next run and last skip."""
    client = _schedule_client(home)
    with _user_errors():
        found = client.schedules()
    if as_json:
        for info in found:
            _print_json(info)
        return
    if not found:
        click.echo("no schedule")
        return
    rows = [("NAME", "WHEN", "TYPE", "STATE", "LAST RUN", "NEXT RUN", "LAST SKIP")]
    for info in found:
        skip = info.last_skip
        rows.append((
            info.name, _when(info), info.type, "paused" if info.paused else "active",
            info.last_run or "-", info.next_run or "ended",
            "-" if skip is None else f"{skip['occurrence']} {skip['reason']}",
        ))  # fmt: skip
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        click.echo("  ".join([*cells, row[-1]]))


@schedule.command()
@home_option
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def show(home: Path | None, name: str, as_json: bool) -> None:
    """One schedule: its definition and where it stands."""
    client = _schedule_client(home)
    with _user_errors():
        info = client.schedule(name)
    if as_json:
        _print_json(info)
        return
    for key, value in info.to_dict().items():
        click.echo(f"{key + ':':<10} {'-' if value is None else value}")


@schedule.command(name="next")
@home_option
@click.argument("name")
@click.option("-n", "count", type=click.IntRange(1, 1000), default=5, show_default=True)
def next_runs(home: Path | None, name: str, count: int) -> None:
    """The next N occurrences of a schedule, in UTC and in its zone: check a
    daylight-saving transition in advance."""
    client = _schedule_client(home)
    with _user_errors():
        for utc, local in client.schedule_next(name, count):
            click.echo(f"{utc}  {local}")


def _change(action: str, done: str) -> None:
    @schedule.command(name=action, help=f"{done.capitalize()} the schedule NAME.")
    @home_option
    @click.argument("name")
    @give_up_option
    def change(home: Path | None, name: str, timeout: float | None) -> None:
        client = _schedule_client(home)
        with _user_errors():
            stored, made = client.schedule_change(name, action, timeout=timeout)
        if not stored:
            _waiting(client, f"{action} of {name}", timeout)
            return
        click.echo(f"{done} {name}" + (f": job {made}" if made else ""))


_change("pause", "paused")
_change("resume", "resumed")
_change("trigger", "triggered")
_change("remove", "removed")
