"""The supervisor's hot path (issue 25): what it skips must change nothing it says."""

from __future__ import annotations

import os
import re
import select
import socket
import threading
import time
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from procpool.adapters.home.files import HomeDir
from procpool.adapters.logs import writer
from procpool.adapters.logs.writer import DaemonLogs, StandardError, _plain, human_line
from procpool.adapters.stores.memory import MemoryJobStore
from procpool.application.handlers import HandlerRegistry
from procpool.application.supervisor import effects as module
from procpool.application.supervisor.effects import Effects, TurnEffects
from procpool.application.supervisor.fleet import Fleet, Limits
from procpool.application.supervisor.intake import Intake
from procpool.application.supervisor.ledger import Ledger
from procpool.application.wire.channel import ChannelClosed, SupervisorEnd, WorkerEnd
from procpool.application.wire.messages import Finished, RunJob
from procpool.domain.job import Job, Status
from procpool.domain.retry import RetryPolicy
from procpool.domain.spec import JobDefaults
from procpool.domain.timefmt import rfc3339, rfc3339_each


def test_no_readable_line_is_made_for_a_stderr_that_is_dev_null() -> None:
    """DaemonLogs.write_event builds the human line only for a stderr someone may read."""
    null = os.open(os.devnull, os.O_WRONLY)
    read_end, write_end = os.pipe()
    discarded, piped = StandardError(null), StandardError(write_end)
    try:
        assert not discarded.wanted
        assert piped.wanted
        piped.add(b"line\n")
        piped.flush()
        assert os.read(read_end, 100) == b"line\n"
    finally:
        discarded.close()
        piped.close()
        for fd in (null, read_end, write_end):
            os.close(fd)


def test_a_large_message_crosses_the_channel_whole() -> None:
    """Frames.read_from reads in chunks (64 KiB): a 3 MiB result arrives whole, over
    as many non-blocking reads as it takes."""
    ours, theirs = socket.socketpair()
    supervisor, worker = SupervisorEnd(ours, 8 * 2**20), WorkerEnd(theirs)
    result = b'"' + b"x" * (3 * 2**20) + b'"'
    sender = threading.Thread(target=worker.send, args=(Finished("j", 1, 0.5, result=result),))
    sender.start()
    got: list[object] = []
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        select.select([supervisor.fileno()], [], [], 1.0)
        messages, closed, broken = supervisor.receive()
        assert (closed, broken) == (False, None)
        got.extend(messages)
    sender.join(10)
    assert got == [Finished("j", 1, 0.5, result=result)]
    supervisor.close()
    theirs.close()


def test_sends_that_the_socket_does_not_take_wait_their_turn_in_order() -> None:
    """SupervisorEnd.send: what the socket does not take at once waits, and later
    sends go behind it."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    supervisor, worker = SupervisorEnd(ours, 2**20), WorkerEnd(theirs)
    runs = [RunJob(f"j{n}", n, 1, "echo", b"y" * 50_000) for n in range(6)]
    supervisor.send(runs[:3])
    assert supervisor.backlogged
    supervisor.send(runs[3:])
    got: list[object] = []
    deadline = time.monotonic() + 30
    while len(got) < len(runs) and time.monotonic() < deadline:
        supervisor.flush()
        got.extend(worker.receive(block=False))
    assert got == runs
    assert not supervisor.backlogged
    supervisor.close()
    theirs.close()


def test_clients_are_answered_first_of_the_turns_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Effects.carry_out: the door's answers go out right after the commit, before
    inbox files are moved, jobs are sent to workers and log lines are written (a client
    submitting one at a time waits for each answer; the rest is nobody's round trip)."""
    order: list[str] = []
    turn = TurnEffects()
    turn.sends[7] = [RunJob("j", 1, 1, "echo", b"{}")]
    turn.accepted.append("file")  # type: ignore[arg-type]
    turn.log("INFO", "job.submitted", "job j submitted", job_id="j")
    monkeypatch.setattr(module, "emit_fields", lambda *args: order.append("log"))
    ledger = SimpleNamespace(take_finished=lambda: ["j"])
    effects = Effects(Fleet(Limits()), ledger, turn)  # type: ignore[arg-type]
    effects.carry_out(
        SimpleNamespace(committed=lambda finished: order.append(f"answers {finished}")),
        SimpleNamespace(remove=lambda files: order.append("inbox")),  # type: ignore[arg-type]
        lambda sends: order.append("send"),
        lambda: order.append("flush"),
    )
    assert order == ["answers ['j']", "inbox", "send", "log", "flush"]


def test_a_send_to_a_worker_gone_says_the_channel_closed() -> None:
    """SupervisorEnd.send writes straight to the socket when nothing waits before it:
    a peer that is gone is ChannelClosed there too, as it is from the buffer."""
    ours, theirs = socket.socketpair()
    supervisor = SupervisorEnd(ours, 2**20)
    theirs.close()
    with pytest.raises(ChannelClosed):
        supervisor.send([RunJob("j", 1, 1, "echo", b"null")])
    supervisor.close()


@pytest.mark.parametrize(
    ("registered", "names"),
    [((), []), (("echo",), ["echo"]), (("sleep", "cpu", "echo"), ["cpu", "echo", "sleep"])],
)
def test_the_registry_names_its_types_sorted_as_registered(
    registered: tuple[str, ...], names: list[str]
) -> None:
    """HandlerRegistry.names sorts once per registration, not per call: the names
    follow every registration, and a caller's copy is its own."""
    registry = HandlerRegistry()
    for job_type in registered:
        registry.register(job_type, lambda ctx, payload: None)
    given = registry.names()
    assert given == names
    given.append("mine")
    assert registry.names() == names
    registry.register("zz", lambda ctx, payload: None)
    assert registry.names() == [*names, "zz"]


@pytest.mark.parametrize(
    ("job_type", "error"),
    [
        ("echo", None),
        ("nope", 'unknown job type "nope"; registered: cpu, echo'),
    ],
)
def test_a_socket_submission_is_judged_by_the_registered_types(
    job_type: str, error: str | None
) -> None:
    """On a store of one daemon, the registry itself says which types a submission may
    have (no set built per submission), with the same words for an unknown type."""
    registry = HandlerRegistry()
    for name in ("echo", "cpu"):
        registry.register(name, lambda ctx, payload: None)
    store = MemoryJobStore()
    said: list[object] = []

    def log(*args: object, **fields: object) -> None:
        said.append(args)

    ledger = Ledger(store, RetryPolicy(), log)
    intake = Intake(store, ledger, registry, Fleet(Limits()), log)
    data = msgspec.json.encode({"id": "j1", "type": job_type, "payload": None})
    (verdict,) = intake.submissions([[data]], JobDefaults(), 1_800_000_000.0, 2**20)
    assert verdict.error == error
    assert verdict.ids == (["j1"] if error is None else None)
    assert (store.get("j1") is not None) is (error is None)


class _CountedStore(MemoryJobStore):
    """A store of one writer that counts the write statements a ledger asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.statements: list[tuple[str, int]] = []  # (kind, jobs written by it)

    def save(self, job: Job, **given: Any) -> bool:
        self.statements.append(("save", 1))
        return super().save(job, **given)

    def save_many(self, saves: Sequence[tuple[Job, Status, int]], fields: Sequence[str]) -> int:
        self.statements.append(("save_many", len(saves)))
        return super().save_many(saves, fields)


def test_the_held_changes_of_the_same_columns_are_one_statement() -> None:
    """Ledger.held writes each job once, as it is at the end, and the jobs whose changes
    set the same columns by one statement: six started jobs, four of which then began
    and two of those completed, are three statements (start+begin+complete, start+begin,
    start), not ten."""
    store = _CountedStore()
    ledger = Ledger(store, RetryPolicy(), lambda *args, **fields: None)
    now = 1_800_000_000.0
    queued = [Job(id=f"j{n}", type="echo", payload=b"null", run_at=now, created_at=now,
                  updated_at=now, digest="d") for n in range(6)]  # fmt: skip
    with store.transaction():
        store.insert(queued)
    with store.transaction(), ledger.held():
        running = [
            ledger.start(job, lease=n + 1, worker_pid=7, now=now) for n, job in enumerate(queued)
        ]
        begun = [ledger.began(job, now) for job in running[:4]]
        for job in begun[:2]:
            ledger.complete(job, b"null", 0.001, now)
    assert sorted(store.statements) == [("save_many", 2), ("save_many", 2), ("save_many", 2)]
    assert [store.get(f"j{n}").status for n in range(6)] == (  # type: ignore[union-attr]
        [Status.COMPLETED] * 2 + [Status.RUNNING] * 4
    )
    assert store.get("j2").started_at == now and store.get("j4").started_at is None  # type: ignore[union-attr]


def test_a_held_change_whose_compare_and_set_fails_stops_the_turn() -> None:
    """On a store of one writer a lost compare-and-set is a bug: found in the batch
    (fewer rows written than jobs), it raises, and the turn is rolled back."""
    store = _CountedStore()
    ledger = Ledger(store, RetryPolicy(), lambda *args, **fields: None)
    now = 1_800_000_000.0
    queued = [Job(id=f"j{n}", type="echo", payload=b"null", run_at=now, created_at=now,
                  updated_at=now, digest="d") for n in range(3)]  # fmt: skip
    with store.transaction():
        store.insert(queued)
    stale = msgspec.structs.replace(queued[1], lease=5)  # not what the store holds
    refused = pytest.raises(RuntimeError, match="1 of 3 jobs changed under the supervisor")
    with refused, store.transaction(), ledger.held():
        for n, job in enumerate([queued[0], stale, queued[2]]):
            ledger.start(job, lease=n + 10, worker_pid=7, now=now)


def test_the_moments_of_a_log_are_dated_each_as_one_alone() -> None:
    """rfc3339_each, which dates a turn's log lines (and each rfc3339), gives each moment
    its own text: within a second, across seconds, carried to the next second, before
    1970 (the second -1 is not the one before the first)."""
    dated = {
        0: "1970-01-01T00:00:00.000000Z",
        1_800_000_000.25: "2027-01-15T08:00:00.250000Z",
        1_800_000_000.9999996: "2027-01-15T08:00:01.000000Z",  # rounded up to the second
        1_800_000_001.0000004: "2027-01-15T08:00:01.000000Z",
        1_800_000_001.5: "2027-01-15T08:00:01.500000Z",
        1_800_000_000.000007: "2027-01-15T08:00:00.000007Z",  # back to the second before
        -0.5: "1969-12-31T23:59:59.500000Z",
        -1.9999999: "1969-12-31T23:59:58.000000Z",
    }
    assert rfc3339_each(dated) == list(dated.values())
    assert rfc3339_each([-0.5, 0.5]) == [
        "1969-12-31T23:59:59.500000Z",
        "1970-01-01T00:00:00.500000Z",
    ]
    assert [rfc3339(moment) for moment in dated] == list(dated.values())


class _Colour(StrEnum):
    RED = "red"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain", "plain"),
        ("job-000001", "job-000001"),
        ("", '""'),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("line\nbreak", '"line\\nbreak"'),
        ("no\u00a0break", '"no\u00a0break"'),  # str.isspace: not a plain word
        ("sep\x1carator", '"sep\\u001carator"'),
        ("été", "été"),
        (_Colour.RED, "red"),
        (12345, "12345"),
        (-7, "-7"),
        (True, "true"),
        (0.25, "0.25"),
        (None, "null"),
        ([1, "a"], '[1,"a"]'),
        ({"k": 1}, '{"k":1}'),
        ("bad\udcff", "bad\udcff"),  # a plain word, even with a lone surrogate
        ("a b\udcff", "'a b\\udcff'"),  # JSON cannot say it
    ],
)
def test_a_fields_value_on_a_readable_line(value: object, shown: str) -> None:
    """human_line shows a plain word as it is and anything else as JSON (repr where JSON
    cannot say it), in each of the job's fields and the handler's: the fast paths (str
    and split, an int's str) show the same."""
    head = {"ts": "T", "level": "INFO", "event": "job.log", "msg": "m"}
    for key in ("job_id", "worker_pid", "attempt", "duration_ms"):
        assert human_line({**head, key: value}) == f"T INFO    job.log          m  {key}={shown}"
    line = {**head, "job_id": "j", "fields": {"n": value}}
    assert human_line(line) == f"T INFO    job.log          m  job_id=j  n={shown}"


def test_a_plain_word_is_told_as_the_regular_expression_tells_it() -> None:
    """_plain (str.split's whitespace, no quote) answers as the regular expression that
    says what a plain word is, for every character alone, between two letters and at
    either end of a word (the BMP, surrogates included), and for the empty text."""
    plain_word = re.compile(r'[^\s"]+')  # no whitespace (str.isspace's is \s's), no quote
    assert not _plain("")
    for code in range(0x10000):
        for text in (chr(code), f"a{chr(code)}b", f"{chr(code)}ab", f"ab{chr(code)}"):
            assert _plain(text) == bool(plain_word.fullmatch(text)), repr(text)


class _Unencodable:
    def __repr__(self) -> str:
        return "<unencodable>"


def test_held_events_make_the_lines_each_would_have_made_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DaemonLogs makes a turn's lines together at its flush: each is the line its event
    made when it was written (its own time; None values and reserved names left out; a
    value JSON cannot hold shown by repr), to the file and, unless told not to, stderr."""
    (tmp_path / "logs").mkdir()
    read_end, write_end = os.pipe()
    logs = DaemonLogs(HomeDir(tmp_path), "INFO", 2**30, 1)
    logs.stderr.close()
    logs.stderr = StandardError(write_end)
    events = [
        (
            "INFO",
            "job.completed",
            "job j completed",
            {"job_id": "j", "type": "echo", "attempt": 1, "worker_pid": 7, "duration_ms": 0.5},
        ),
        ("WARNING", "job.failed", "two\nlines", {"job_id": "j", "signal": None, "ts": "x"}),
        (
            "INFO",
            "file.rejected",
            "m",
            {"file": "a name", "lines": [{"line": 1}], "thing": _Unencodable()},
        ),
        ("INFO", "daemon.stderr_lost", "file only", {"error": "gone"}),
        # Not valid Unicode (a file name's lone surrogate): escaped, the others kept.
        ("WARNING", "file.skipped", "skipped bad\udcff", {"file": "bad\udcff"}),
    ]
    moments = [1_800_000_000.25, 1_800_000_000.5, 1_800_000_001.0000004, 1_800_000_002.0, 1.8e9 + 3]
    times = iter(moments)
    clock = SimpleNamespace(time=lambda: next(times), monotonic=time.monotonic)
    monkeypatch.setattr(writer, "time", clock)
    expected_file, expected_stderr = b"", b""
    for (level, event, message, fields), moment in zip(events, moments, strict=True):
        line = {"ts": rfc3339(moment), "level": level, "event": event, "msg": message}
        line |= {k: v for k, v in fields.items() if v is not None and k not in line}
        expected_file += writer._encode(line) + b"\n"
        if event != "daemon.stderr_lost":
            expected_stderr += f"{human_line(line)}\n".encode("utf-8", "replace")
        logs.write_event(level, event, message, fields, stderr=event != "daemon.stderr_lost")
    assert (tmp_path / "logs" / "procpool.jsonl").read_bytes() == b""  # held until the flush
    logs.flush()
    assert (tmp_path / "logs" / "procpool.jsonl").read_bytes() == expected_file
    assert expected_file.count(b"\n") == len(events) and b'"file":"bad\\\\udcff"' in expected_file
    assert os.read(read_end, 65536) == expected_stderr
    logs.stderr.close()
    os.close(read_end)
    os.close(logs.file.fd)


_ODD_VALUES: list[Any] = [
    "plain", "two words", 'say "hi"', "", "line\nbreak", "été", "no\u00a0break", "bad\udcff",
    "a b\udcff", _Colour.RED, 0, -7, 10**30, True, False, 0.123, 1e16, 1e-7, float("nan"),
    float("inf"), [1, "a"], {"k": 1}, (1, 2), _Unencodable(),
]  # fmt: skip


def test_a_readable_line_made_from_its_event_is_human_line_of_its_json_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DaemonLogs makes the readable line of a common event (no None value, no reserved
    name) from the event itself, its head (level and event, padded) kept per kind: the
    line human_line makes of the event's JSON line, for odd values in each of the fields
    shown, for heads taken from what is kept and heads that are not kept (1 and 1.0 are
    one key, and not one text), twice each."""
    (tmp_path / "logs").mkdir()
    read_end, write_end = os.pipe()
    logs = DaemonLogs(HomeDir(tmp_path), "INFO", 2**30, 1)
    logs.stderr.close()
    logs.stderr = StandardError(write_end)
    kinds: list[tuple[Any, Any]] = [
        ("INFO", "job.started"), ("WARNING", "job.started"), ("INFO", "job.completed"),
        ("CRITICAL", "daemon.stderr_resumed"), ("INFO", _Colour.RED), ("INFO", "red"),
        ("INFO", 1), ("INFO", 1.0), ("", ""),
    ]  # fmt: skip
    events: list[tuple[Any, Any, str, dict[str, Any]]] = []
    for n, value in enumerate(_ODD_VALUES):
        level, event = kinds[n % len(kinds)]
        for key in ("job_id", "worker_pid", "attempt", "duration_ms"):
            events.append((level, event, f"m {n}", {"job_id": "j", "type": "t", key: value}))
        events.append((level, event, f"m {n}", {"fields": {"n": value, "s": "a b"}}))
        events.append((level, event, "odd\nmessage", {"fields": value, "other": value}))
    for level, event in kinds:
        events.append((level, event, "", {}))
    moments = iter(range(10**6))
    clock = SimpleNamespace(
        time=lambda: 1_800_000_000 + next(moments) / 7, monotonic=time.monotonic
    )
    monkeypatch.setattr(writer, "time", clock)
    for turn in range(2):
        expected = b""
        for n, (level, event, message, fields) in enumerate(events):
            moment = 1_800_000_000 + (turn * len(events) + n) / 7
            line = {"ts": rfc3339(moment), "level": level, "event": event, "msg": message, **fields}
            expected += f"{human_line(line)}\n".encode("utf-8", "replace")
            logs.write_event(level, event, message, fields)
        logs.flush()  # a turn's lines, some 20 KiB: the pipe takes them all
        assert os.read(read_end, 65536) == expected
    logs.stderr.close()
    os.close(read_end)
    os.close(logs.file.fd)


def test_the_log_file_rotates_where_its_real_size_would_pass_the_limit(tmp_path: Path) -> None:
    """JsonLogFile.flush looks at its count first and at the file (fstat) only once the
    count passes max_bytes: an empty file takes a flush past the limit whole, a file
    truncated from outside is not rotated at the stale count, a full one is."""
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "procpool.jsonl"
    file = writer.JsonLogFile(HomeDir(tmp_path), writer.LOG_NAME, max_bytes=100, keep=1)
    file.add(b"x" * 150 + b"\n")
    file.flush()
    assert log.stat().st_size == 151 and not log.with_name("procpool.jsonl.1").exists()
    os.truncate(log, 0)  # logrotate's copytruncate: the count (151) is stale
    file.add(b"a" * 50 + b"\n")
    file.flush()
    assert log.read_bytes() == b"a" * 50 + b"\n"
    assert not log.with_name("procpool.jsonl.1").exists()
    file.add(b"b" * 50 + b"\n")  # 51 + 51 bytes: past 100
    file.flush()
    assert log.with_name("procpool.jsonl.1").read_bytes() == b"a" * 50 + b"\n"
    assert log.read_bytes() == b"b" * 50 + b"\n"
    file.stop()


def test_lines_past_the_limit_are_dropped_one_by_one() -> None:
    """_Output.add_lines takes lines made together in one piece only when all fit; else
    each is taken as add takes it, and those past the limit are counted."""
    read_end, write_end = os.pipe()
    stderr = StandardError(write_end)
    stderr.LIMIT = 10
    stderr.add_lines(b"aaaa\nbbbb\ncccc\n", lambda: iter([b"aaaa\n", b"bbbb\n", b"cccc\n"]))
    stderr.add_lines(b"dd\n", lambda: iter([b"dd\n"]))
    assert stderr.dropped == 2
    stderr.flush()
    assert os.read(read_end, 100) == b"aaaa\nbbbb\n"
    stderr.close()
    os.close(read_end)
