"""Hostile and malformed input (issue 5), end to end through a running daemon: every bad
file ends in a named error beside its unchanged bytes, nothing but regular files is
opened, producers' races and a vanishing inbox are survived, the home stays private, and
the CLI answers bad input with one line and the contract's exit code."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, clean_env, run_cli, wait_until

from procpool.domain.spec import ID_RULE, MAX_DEPTH, RFC3339_RULE

MiB = 1024 * 1024


def job(**fields: Any) -> bytes:
    return json.dumps({"type": "echo", **fields}).encode()


def rejected_report(daemon: Daemon, name: str, timeout: float = 30) -> dict[str, Any]:
    """Wait for `name` in rejected/ (it moves there after its report is written)."""
    path = daemon.home / "rejected" / name
    wait_until(lambda: os.path.lexists(path), timeout, what=f"rejected/{name}")
    return json.loads((daemon.home / "rejected" / f"{name}.error.json").read_bytes())


def alive(daemon: Daemon) -> bool:
    return daemon.process is not None and daemon.process.poll() is None


def assert_still_serving(daemon: Daemon, job_id: str) -> None:
    """The daemon lives, and a valid job dropped now still runs to completion."""
    assert alive(daemon), daemon.stderr()
    daemon.drop(f"{job_id}.json", {"type": "echo", "payload": job_id})
    assert daemon.wait_status(job_id, "completed").result == job_id
    assert "Traceback" not in daemon.stderr()


# ------------------------------------------------------------------ 1 and 3: named errors

ID_MESSAGE = f"id must be {ID_RULE}, got"
RUN_AT_MESSAGE = f"run_at must be {RFC3339_RULE}, got"

# name -> (bytes, what the error must say). One daemon reads them all.
BAD_FILES: dict[str, tuple[bytes, str]] = {
    # the wording of the issue
    "zero-attempts.json": (job(max_attempts=0), "max_attempts must be >= 1, got 0"),
    "typo.json": (job(paylaod=1), 'unknown field "paylaod"; did you mean "payload"?'),
    "no-handler.json": (b'{"type": "x"}', 'unknown job type "x"; registered: '),
    "broken.json": (b'{"a": x}', 'not valid JSON at line 1 column 7: unexpected character "x"'),
    # ids
    "id-slash.json": (job(id="a/b"), f'{ID_MESSAGE} "a/b"'),
    "id-dot.json": (job(id=".hidden"), f'{ID_MESSAGE} ".hidden"'),
    "id-dash.json": (job(id="-x"), f'{ID_MESSAGE} "-x"'),
    "id-empty.json": (job(id=""), f'{ID_MESSAGE} ""'),
    "id-long.json": (job(id="x" * 129), ID_MESSAGE),
    "id-space.json": (job(id="a b"), f'{ID_MESSAGE} "a b"'),
    "id-accent.json": (job(id="caf\u00e9"), ID_MESSAGE),
    "id-number.json": (job(id=12), "id must be a string, got 12"),
    "bad name.json": (job(), "the id taken from the file name must be 1-128 characters"),
    # max_attempts, timeout, delay, priority
    "attempts-high.json": (job(max_attempts=1001), "max_attempts must be <= 1000, got 1001"),
    "attempts-text.json": (job(max_attempts="3"), 'max_attempts must be an integer, got "3"'),
    "attempts-frac.json": (job(max_attempts=2.5), "max_attempts must be an integer, got 2.5"),
    "attempts-bool.json": (job(max_attempts=True), "max_attempts must be an integer, got true"),
    "timeout-zero.json": (job(timeout=0), "timeout must be > 0, got 0"),
    "timeout-negative.json": (job(timeout=-1), "timeout must be > 0, got -1"),
    "timeout-huge.json": (job(timeout=4e8), "timeout must be <= 316224000 (ten years)"),
    "timeout-text.json": (job(timeout="soon"), 'timeout must be a number, got "soon"'),
    "timeout-overflow.json": (
        b'{"type": "echo", "timeout": 1e999}',
        "timeout holds a number that is out of range",
    ),
    "timeout-nan.json": (
        b'{"type": "echo", "timeout": NaN}',
        "not valid JSON at line 1 column 29: NaN is not a JSON number",
    ),
    "delay-infinite.json": (
        b'{"type": "echo", "delay": -Infinity}',
        "Infinity is not a JSON number; numbers must be finite",
    ),
    "delay-negative.json": (job(delay=-0.5), "delay must be >= 0, got -0.5"),
    "priority-high.json": (job(priority=10**7), "priority must be <= 1000000, got 10000000"),
    "priority-low.json": (job(priority=-(10**30)), "priority must be >= -1000000, got -1000"),
    "priority-frac.json": (job(priority=1.5), "priority must be an integer, got 1.5"),
    # run_at
    "run-at-word.json": (job(run_at="tomorrow"), f'{RUN_AT_MESSAGE} "tomorrow"'),
    "run-at-month.json": (job(run_at="2026-13-01T00:00:00Z"), RUN_AT_MESSAGE),
    "run-at-date.json": (job(run_at="2026-01-01"), RUN_AT_MESSAGE),
    "run-at-number.json": (job(run_at=1700000000), "run_at must be a string, got 1700000000"),
    "run-at-ancient.json": (job(run_at="0001-01-01T00:00:00Z"), "run_at must be between 1970"),
    "run-at-and-delay.json": (
        job(run_at="2030-01-01T00:00:00Z", delay=1),
        "run_at and delay cannot be given together",
    ),
    # bytes that are not UTF-8 JSON
    "latin1.json": (
        b'{"type": "echo", "payload": "\xe9t\xe9"}',
        "not valid UTF-8 at line 1 column 30: byte 0xe9",
    ),
    "lone-high.json": (
        b'{"type": "echo", "payload": "a\\ud800"}',
        "not valid JSON at line 1 column 31: \\ud800 is half of a UTF-16 surrogate pair",
    ),
    "lone-low.json": (
        b'{"type": "echo", "payload": {"\\udc00": 1}}',
        "\\udc00 is half of a UTF-16 surrogate pair",
    ),
    "bom.json": (b"\xef\xbb\xbf" + job(), "a UTF-8 byte order mark"),
    "binary.json": (bytes(range(256)) * 4, "not valid JSON at line 1 column 1"),
    "truncated.json": (
        b'{"type": "echo",\n "payload": [1, 2',
        "not valid JSON at line 2 column 18: the data ends before the JSON value does",
    ),
    "trailing.json": (job() + b" x", "at line 1 column 18: more follows the JSON value"),
    "empty.json": (b"", "the file is empty"),
    "blank.json": (b" \n\t\n", "the file is empty"),
    "blank.jsonl": (b"\n\n", "the file is empty"),
    # nesting: never a RecursionError, never a crash
    "deep-101.json": (
        b'{"type": "echo", "payload": ' + b"[" * 100 + b"]" * 100 + b"}",
        f"the JSON is nested more than {MAX_DEPTH} levels deep",
    ),
    "deep-10k.json": (
        b'{"type": "echo", "payload": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        "nested more than",
    ),
    "deep-1m.json": (b'{"type": "echo", "payload": ' + b"[" * 1_000_000, "nested more than"),
    "deep-objects.json": (
        b'{"type": "echo", "payload": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
        "nested more than",
    ),
    # not an object, or not a job
    "array.json": (b"[1, 2]", "a job must be a JSON object, got an array"),
    "string.json": (b'"echo"', "a job must be a JSON object, got a string"),
    "number.json": (b"3", "a job must be a JSON object, got a number"),
    "null.json": (b"null", "a job must be a JSON object, got null"),
    "no-type.json": (b"{}", 'missing required field "type"'),
    "type-null.json": (b'{"type": null}', "type must be a string, got null"),
    "bad-cancel.json": (b'{"cancel": "../x"}', "cancel must be 1-128 characters"),
    # size, checked before reading
    "too-big.json": (
        b'{"type": "echo", "payload": "' + b"x" * int(2.1 * MiB) + b'"}',
        "file is 2.1 MiB, limit is 1 MiB",
    ),
}


def test_every_bad_file_is_rejected_with_a_named_error_and_its_bytes_kept(
    daemon: Daemon,
) -> None:
    for name, (content, _) in BAD_FILES.items():
        daemon.drop(name, content)
    wrong = []
    for name, (content, expected) in BAD_FILES.items():
        report = rejected_report(daemon, name)
        if expected not in report["error"]:
            wrong.append(f"{name}: {report['error']!r} does not say {expected!r}")
        assert report["file"] == name
        assert (daemon.home / "rejected" / name).read_bytes() == content
        assert daemon.job(name.rsplit(".", 1)[0]) is None
    assert not wrong, "\n".join(wrong)
    assert not [p for p in (daemon.home / "inbox").iterdir() if not p.name.startswith(".")]
    # The log says the same, as file.rejected events with the error.
    logged = {e["file"]: e for e in daemon.wait_events("file.rejected", len(BAD_FILES))}
    for name in BAD_FILES:
        report = json.loads((daemon.home / "rejected" / f"{name}.error.json").read_bytes())
        assert logged[name]["error"] == report["error"]
        assert logged[name]["level"] == "WARNING"
    handlers = json.loads((daemon.home / "rejected" / "no-handler.json.error.json").read_bytes())
    assert "echo" in handlers["error"] and "sleep" in handlers["error"]
    assert_still_serving(daemon, "after-bad-files")


def test_values_at_their_bounds_are_accepted(daemon: Daemon) -> None:
    deepest = {"type": "echo", "id": "deep-ok", "payload": []}
    innermost = deepest["payload"]
    for _ in range(MAX_DEPTH - 2):
        innermost.append([])
        innermost = innermost[0]
    daemon.drop("deep-ok.json", deepest)
    daemon.drop("bounds.json", job(max_attempts=1000, priority=-1_000_000, timeout=316224000))
    daemon.drop("no-offset.json", job(run_at="2001-02-03T04:05:06", payload="utc"))
    daemon.drop("offset.json", job(run_at="2001-02-03T04:05:06+02:00"))
    daemon.drop("pair.json", b'{"type": "echo", "payload": "\\ud83d\\ude00"}')
    daemon.drop("huge-int.json", b'{"type": "echo", "payload": 123456789012345678901234567890}')
    assert daemon.wait_status("deep-ok", "completed").result == deepest["payload"]
    assert daemon.wait_status("bounds", "pending", "running", "completed").max_attempts == 1000
    # A time without an offset is UTC (documented).
    assert daemon.wait_status("no-offset", "completed").run_at == "2001-02-03T04:05:06.000000Z"
    assert daemon.wait_status("offset", "completed").run_at == "2001-02-03T02:05:06.000000Z"
    assert daemon.wait_status("pair", "completed").result == "\U0001f600"
    assert daemon.wait_status("huge-int", "completed").result == 123456789012345678901234567890
    assert list((daemon.home / "rejected").iterdir()) == []


def test_a_jsonl_file_reports_each_bad_line_where_it_is(daemon: Daemon) -> None:
    lines = [
        json.dumps({"type": "echo", "payload": 1}),
        json.dumps({"type": "echo", "max_attempts": 0}),
        "",
        '{"type": "echo", "payload": "\\ud800"}',
        json.dumps({"type": "echo", "payload": 5}),
        "[5]",
        '{"type": "echo", "payload": x}',
        '{"type": "echo", "payload": ' + "[" * 200 + "]" * 200 + "}",
    ]
    content = ("\n".join(lines) + "\n").encode()
    daemon.drop("mixed.jsonl", content)
    report = rejected_report(daemon, "mixed.jsonl")
    assert (daemon.home / "rejected" / "mixed.jsonl").read_bytes() == content
    assert report["error"] == "5 of 7 lines were rejected, the other 2 accepted"
    assert report["lines"] == [
        {"line": 2, "error": "max_attempts must be >= 1, got 0"},
        {
            "line": 4,
            "error": "not valid JSON at line 4 column 30: \\ud800 is half of a UTF-16"
            " surrogate pair, not a character; strings must be valid Unicode",
        },
        {"line": 6, "error": "a job must be a JSON object, got an array"},
        {"line": 7, "error": 'not valid JSON at line 7 column 29: unexpected character "x"'},
        {"line": 8, "error": f"the JSON is nested more than {MAX_DEPTH} levels deep"},
    ]
    assert daemon.wait_status("mixed-1", "completed").result == 1
    assert daemon.wait_status("mixed-5", "completed").result == 5
    assert [daemon.job(f"mixed-{n}") for n in (2, 3, 4, 6, 7, 8)] == [None] * 6

    daemon.drop("all-bad.jsonl", b"[1]\n{}\n")
    assert rejected_report(daemon, "all-bad.jsonl")["error"] == "all 2 lines were rejected"


def test_a_line_over_the_limit_is_rejected_alone(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(env={"PROCPOOL_MAX_FILE_BYTES": "1000"})
    big = json.dumps({"type": "echo", "payload": "x" * 2000})
    daemon.drop("sizes.jsonl", f'{{"type": "echo"}}\n{big}\n'.encode())
    report = rejected_report(daemon, "sizes.jsonl")
    assert report["lines"] == [{"line": 2, "error": "line 2 is 2 KiB, limit is 1000 bytes"}]
    assert daemon.wait_status("sizes-1", "completed")
    daemon.drop("just-over.json", b" " * 1001)
    assert rejected_report(daemon, "just-over.json")["error"] == (
        "file is 1001 bytes, limit is 1000 bytes"
    )


def test_the_size_is_checked_before_a_byte_is_read(daemon: Daemon) -> None:
    """A sparse 100 GiB file: reading it would take minutes and all the memory."""
    inbox = daemon.home / "inbox"
    with open(inbox / ".sparse.tmp", "wb") as handle:
        handle.truncate(100 * 1024 * MiB)
    os.rename(inbox / ".sparse.tmp", inbox / "sparse.json")
    report = rejected_report(daemon, "sparse.json", timeout=10)
    assert report["error"] == "file is 102400 MiB, limit is 1 MiB"
    assert_still_serving(daemon, "after-sparse")


def test_duplicate_ids_with_other_content_are_named(daemon: Daemon) -> None:
    daemon.drop("a.json", job(payload=1))
    daemon.wait_status("a", "completed")
    daemon.drop("again.json", job(id="a", payload=2))
    report = rejected_report(daemon, "again.json")
    assert report["error"] == 'duplicate id "a" with different content'
    assert daemon.job("a").result == 1


def test_names_in_rejected_never_collide(daemon: Daemon) -> None:
    rejected = daemon.home / "rejected"
    versions = [b"[1]", b"[2]", b"[3]"]
    for number, content in enumerate(versions):
        daemon.drop("same.json", content)
        where = "same.json" if number == 0 else f"same.{number}.json"
        report = rejected_report(daemon, where)
        assert report["file"] == "same.json"
        assert report.get("rejected_as", "same.json") == where
    assert [(rejected / n).read_bytes() for n in ("same.json", "same.1.json", "same.2.json")] == (
        versions
    )

    # Whatever is in rejected/ already, a report alone or a dangling link, is kept.
    (rejected / "planted.json.error.json").write_text("mine")
    (rejected / "dangling.json").symlink_to(rejected / "nowhere")
    daemon.drop("planted.json", b"[]")
    daemon.drop("dangling.json", b"[]")
    assert rejected_report(daemon, "planted.1.json")["file"] == "planted.json"
    assert rejected_report(daemon, "dangling.1.json")["file"] == "dangling.json"
    assert (rejected / "planted.json.error.json").read_text() == "mine"
    assert os.readlink(rejected / "dangling.json") == str(rejected / "nowhere")


def test_awkward_file_names(daemon: Daemon) -> None:
    long_name = "L" * 245 + ".json"  # the longest a producer's dot-file allows
    daemon.drop(long_name, job())
    shortened = "L" * 228 + ".json"  # room for the report's name and a counter
    report = rejected_report(daemon, shortened)
    assert report["file"] == long_name
    assert report["rejected_as"] == shortened
    assert "the id taken from the file name" in report["error"]

    not_utf8 = os.fsdecode(b"caf\xe9.json")
    daemon.drop(not_utf8, job())
    report = rejected_report(daemon, not_utf8)
    assert report["file"] == "caf\\xe9.json"
    [event] = daemon.wait_events("file.rejected", file="caf\\xe9.json")
    assert "the id taken from the file name" in event["error"]
    assert_still_serving(daemon, "after-names")


# ------------------------------------------------------------------ 2: only regular files


def test_only_regular_files_are_opened(daemon: Daemon, tmp_path: Path) -> None:
    inbox = daemon.home / "inbox"
    outside = tmp_path / "outside.json"
    outside.write_bytes(job(id="smuggled"))
    (inbox / "link.json").symlink_to(outside)
    (inbox / "zero.json").symlink_to("/dev/zero")
    (inbox / "dangling.jsonl").symlink_to(tmp_path / "missing")
    (inbox / "to-dir.json").symlink_to(tmp_path)
    os.mkfifo(inbox / "pipe.json")
    (inbox / "folder.json").mkdir()
    (inbox / "folder.json" / "inner.json").write_bytes(job())
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(inbox / "socket.json"))
    kinds = {
        "link.json": "a symbolic link",
        "zero.json": "a symbolic link",
        "dangling.jsonl": "a symbolic link",
        "to-dir.json": "a symbolic link",
        "pipe.json": "a FIFO",
        "folder.json": "a directory",
        "socket.json": "a socket",
    }
    try:
        os.mknod(inbox / "null.json", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        kinds["null.json"] = "a character device"
    except PermissionError:
        pass  # no CAP_MKNOD here: the other kinds still count

    try:
        # Several scans pass while these jobs go through; the odd names stay unread.
        for number in range(3):
            assert_still_serving(daemon, f"regular-{number}")
        for name, kind in kinds.items():
            [warning] = daemon.wait_events("file.skipped", file=name)
            assert warning["level"] == "WARNING"
            assert warning["msg"] == f"{name} is {kind}: left alone, never opened"
            assert os.path.lexists(inbox / name)
        assert daemon.job("smuggled") is None and daemon.job("link") is None
        assert outside.read_bytes() == job(id="smuggled")
        assert (inbox / "folder.json" / "inner.json").exists()
        # Nobody holds the FIFO open for reading: a writer that will not wait finds none.
        with pytest.raises(OSError) as caught:
            os.open(inbox / "pipe.json", os.O_WRONLY | os.O_NONBLOCK)
        assert caught.value.errno == errno.ENXIO
        assert list((daemon.home / "rejected").iterdir()) == []
    finally:
        listener.close()


def test_the_clients_look_through_the_inbox_opens_no_fifo_and_follows_no_link(
    daemon: Daemon,
) -> None:
    """A lookup of an id the store lacks reads the inbox's batch files (a job may wait
    in one), and a retry of every failed job its retry files: a FIFO named like one
    must not hang them, a link to /dev/zero must not fill their memory."""
    assert daemon.stop() == 0  # so that what is dropped now waits in the inbox
    inbox = daemon.home / "inbox"
    os.mkfifo(inbox / "pipe.batch.json")
    os.mkfifo(inbox / "pipe.retry-1.json")
    (inbox / "zero.batch.json").symlink_to("/dev/zero")
    (inbox / "held.batch.json").write_bytes(
        json.dumps({"batch": [{"id": "held", "type": "echo"}]}).encode()
    )
    done = run_cli(daemon.home, "show", "nowhere", timeout=30)
    assert done.returncode == 1, done.stderr
    assert "no job 'nowhere'" in done.stderr
    done = run_cli(daemon.home, "retry", "--all-failed", timeout=30)
    assert done.returncode == 0, done.stderr
    assert daemon.client.is_waiting_in_inbox("held")  # a real batch is still read


# ------------------------------------------------------------------ 4: races with producers


def test_producers_racing_the_daemon(daemon: Daemon) -> None:
    """Files appear, vanish, are rewritten in place and swapped for links while the daemon
    scans. It never fails; every file that stays ends as a job or in rejected/."""
    inbox = daemon.home / "inbox"
    stop = threading.Event()
    left: list[str] = []

    def churn() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            name = f"churn-{number}.json"
            path = inbox / name
            path.write_bytes(job(payload=number))  # in place: it may be read half written
            if number % 3 == 0:
                path.unlink(missing_ok=True)
            elif number % 3 == 1:
                with contextlib.suppress(FileNotFoundError), open(path, "r+b") as handle:
                    handle.write(b" " * 5)  # rewritten in place, if still there
                path.unlink(missing_ok=True)
                path.symlink_to("/dev/zero")
            else:
                left.append(name)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        wait_until(lambda: len(left) > 200, 60, what="churn")
    finally:
        stop.set()
        thread.join()
    assert alive(daemon)
    for name in left:
        job_id = name.removesuffix(".json")
        wait_until(
            lambda job_id=job_id, name=name: (
                daemon.job(job_id) is not None or (daemon.home / "rejected" / name).exists()
            ),
            what=f"{name} accounted for",
        )
    assert_still_serving(daemon, "after-churn")


class UnprivilegedDaemon(Daemon):
    """A daemon that, though root, lacks root's power to read any file whatever its mode
    (CAP_DAC_OVERRIDE): so a mode 000 file is as unreadable to it as to a normal user."""

    def start(self, wait_ready: bool = True) -> Daemon:
        prefix = []
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
            caps = "-dac_override,-dac_read_search"
            prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "procpool", "run", "--home", str(self.home),
                 "--workers", "1"],
                env=clean_env(self.env), stdout=subprocess.DEVNULL, stderr=stderr,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        if wait_ready:
            self.wait_ready()
        return self


def test_a_file_without_read_permission_waits_until_it_has_it(home: Path) -> None:
    daemon = UnprivilegedDaemon(home, workers=1)
    try:
        daemon.start()
        hidden = daemon.home / "inbox" / ".locked.tmp"
        hidden.write_bytes(job(payload="finally"))
        hidden.chmod(0)
        locked = hidden.rename(daemon.home / "inbox" / "locked.json")
        [warning] = daemon.wait_events("file.skipped", file="locked.json")
        assert warning["msg"] == "cannot open locked.json: Permission denied; will try again"
        assert_still_serving(daemon, "beside-locked")
        assert locked.exists() and daemon.job("locked") is None
        locked.chmod(0o600)  # inotify hears of it; the periodic rescan would too
        assert daemon.wait_status("locked", "completed").result == "finally"
        assert len(daemon.events("file.skipped", file="locked.json")) == 1
    finally:
        daemon.client.close()  # made here, not by make_daemon, which would close it
        if alive(daemon):
            assert daemon.stop() == 0


def put_in_place(source: Path, inbox: Path) -> None:
    """Rename `source` to the inbox's name, though the daemon may recreate the inbox."""
    while True:
        try:
            os.rename(source, inbox)
            return
        except OSError as error:
            if error.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(inbox)


def test_the_inbox_deleted_or_replaced_while_the_daemon_runs(daemon: Daemon) -> None:
    inbox = daemon.home / "inbox"
    assert_still_serving(daemon, "before")

    shutil.rmtree(inbox)  # deleted: recreated, 0700, and read again
    wait_until(inbox.is_dir, what="the inbox recreated")
    assert stat.S_IMODE(inbox.stat().st_mode) == 0o700
    assert_still_serving(daemon, "after-rmtree")

    shutil.rmtree(inbox)  # deleted, and a producer makes a new one
    inbox.mkdir(exist_ok=True)
    assert_still_serving(daemon, "after-mkdir")

    inbox.rename(daemon.home / "old-inbox")  # replaced by a symlink: not followed
    (daemon.home / "elsewhere").mkdir()
    (daemon.home / "elsewhere" / "lured.json").write_bytes(job())
    (daemon.home / "link").symlink_to(daemon.home / "elsewhere")
    put_in_place(daemon.home / "link", inbox)
    [trouble] = daemon.wait_events("inbox.unusable")
    assert "it is a symbolic link, not a directory" in trouble["msg"]
    (daemon.home / "file").write_bytes(b"")  # replaced by a file: the same
    put_in_place(daemon.home / "file", inbox)
    wait_until(lambda: len(daemon.events("inbox.unusable")) == 2, what="a second warning")
    assert alive(daemon)
    inbox.unlink()
    assert_still_serving(daemon, "after-repair")
    daemon.wait_events("inbox.usable")
    assert daemon.job("lured") is None
    assert (daemon.home / "elsewhere" / "lured.json").exists()
    assert len(daemon.events("daemon.started")) == 1


# ------------------------------------------------------------------ 5: a private home


def start_and_stop(home: Path, *args: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "procpool", "run", "--home", str(home), "--workers", "1", *args],
        env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    log = home / "logs" / "procpool.jsonl"
    try:
        wait_until(
            lambda: (
                process.poll() is not None
                or (log.exists() and b"daemon.started" in log.read_bytes())
            ),
            what="the daemon started",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert b"daemon.stopped" in log.read_bytes()


def test_the_home_is_created_private(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    start_and_stop(home)
    for directory in (home, home / "inbox", home / "rejected"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


@pytest.mark.parametrize("where", ["", "inbox", "rejected"])
def test_a_home_that_others_can_write_is_refused(home: Path, where: str) -> None:
    (home / "inbox").mkdir(parents=True, mode=0o700)
    (home / "rejected").mkdir(mode=0o700)
    home.chmod(0o700)
    (home / where).chmod(0o777)
    refused = run_cli(home, "run", "--workers", "1")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (
        f"procpool: {home / where} is writable by every user (mode 0777);"
        f" run chmod o-w {home / where}\n"
    )
    assert not (home / "procpool.pid").exists()


def test_group_write_is_allowed_for_a_shared_group_of_producers(home: Path) -> None:
    (home / "inbox").mkdir(parents=True)
    for directory in (home, home / "inbox"):
        directory.chmod(0o2770)
    start_and_stop(home)


def test_an_inbox_that_is_a_link_is_refused(home: Path, tmp_path: Path) -> None:
    home.mkdir(mode=0o700)
    (tmp_path / "other").mkdir()
    (home / "inbox").symlink_to(tmp_path / "other")
    refused = run_cli(home, "run", "--workers", "1")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"procpool: {home / 'inbox'} is a symbolic link; it must be a directory\n"
    )


# ------------------------------------------------------------------ 6: the CLI's own input


def one_line_error(result: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert says in line, line


def test_bad_submissions_get_one_line_and_exit_2(home: Path) -> None:
    one_line_error(
        run_cli(home, "submit", "echo", "{bad"),
        2,
        "PAYLOAD_JSON: not valid JSON at line 1 column 2",
    )
    one_line_error(
        run_cli(home, "submit", "echo", "[" * 100_000),
        2,
        f"PAYLOAD_JSON: the JSON is nested more than {MAX_DEPTH} levels deep",
    )
    one_line_error(
        run_cli(home, "submit", "echo", os.fsdecode(b'"\xff"')),
        2,
        "PAYLOAD_JSON: not valid UTF-8 at line 1 column 2: byte 0xff",
    )
    one_line_error(
        run_cli(home, "submit", "echo", "--max-attempts", "0"),
        2,
        "max_attempts must be >= 1, got 0",
    )
    one_line_error(run_cli(home, "submit", "echo", "--id", "../x"), 2, ID_MESSAGE)
    one_line_error(run_cli(home, "submit", os.fsdecode(b"\xff")), 2, "type is not valid Unicode")
    assert not (home / "inbox").exists() or not list((home / "inbox").iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ("submit", "echo", "--bogus"),
        ("submit", "echo", "--max-attempts", "many"),
        ("submit",),
        ("list", "--limit", "0"),
        ("list", "--status", "lost"),
    ],
)
def test_bad_flags_exit_2_without_a_traceback(home: Path, args: tuple[str, ...]) -> None:
    result = run_cli(home, *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()  # one line, naming the command and what is wrong
    assert line.startswith(f"procpool {args[0]}: ")
    assert line.endswith("(see --help)")


NOT_A_HOME = "never-made is not a procpool home: the directory does not exist"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("status", "ghost"), NOT_A_HOME),
        (("status", "ghost", "--json"), NOT_A_HOME),
        (("wait", "ghost"), NOT_A_HOME),
        (("cancel", "ghost"), NOT_A_HOME),
        (("stop",), "not running"),
    ],
)
def test_unknown_ids_and_a_missing_home(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    home = tmp_path / "never-made"
    one_line_error(run_cli(home, *args), 1, says)
    assert not home.exists()
