"""A rejected job is never a mystery (issue 12): `wait`, `status`, `show` and the
client say that the file, or the line, that would have made the job was
rejected, why, and where the report is; through the real daemon and CLI."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from conftest import Daemon, wait_until

from procpool import Client, JobRejected, ProcpoolError, UnknownJob

REGISTERED = "registered: cpu, echo, fail, sleep"


def rejected(daemon: Daemon, name: str) -> None:
    """Wait until `name` sits in rejected/ (it moves there after its report is written)."""
    wait_until((daemon.home / "rejected" / name).exists, what=f"rejected/{name}")


def says(result, message: str) -> None:
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"procpool: {message}\n")


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon(workers=1)


def test_wait_status_and_show_say_why_a_submitted_job_was_rejected(daemon: Daemon) -> None:
    # While the daemon runs, submit goes over its socket and is refused at once.
    refused = daemon.cli("submit", "ech", "{}", "--id", "typo1")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == f'procpool: unknown job type "ech"; {REGISTERED}\n'
    # A file (what submit writes while no daemon runs) is rejected into rejected/.
    daemon.drop("typo1.json", {"type": "ech", "payload": {}, "id": "typo1"})
    rejected(daemon, "typo1.json")
    message = (
        f"job 'typo1' was rejected: unknown job type \"ech\"; {REGISTERED}"
        " (rejected/typo1.json.error.json)"
    )
    for command in (["wait", "typo1"], ["status", "typo1"], ["status", "typo1", "--json"],
                    ["show", "typo1"], ["cancel", "typo1"], ["retry", "typo1"]):  # fmt: skip
        says(daemon.cli(*command), message)
    # Among other ids, wait names the rejected one.
    daemon.cli("submit", "echo", "1", "--id", "fine")
    says(daemon.cli("wait", "fine", "typo1"), message)


def test_the_client_raises_job_rejected_with_the_reason_and_report(daemon: Daemon) -> None:
    daemon.drop("typo2.json", {"type": "ech", "payload": 1})
    rejected(daemon, "typo2.json")
    with Client(daemon.home) as client:
        for call in (lambda: client.get("typo2"), lambda: client.wait(["typo2"], timeout=5)):
            with pytest.raises(JobRejected) as caught:
                call()
            error = caught.value
            assert (error.job_id, error.line) == ("typo2", None)
            assert error.reason == f'unknown job type "ech"; {REGISTERED}'
            assert error.report == daemon.home / "rejected" / "typo2.json.error.json"
            assert isinstance(error, UnknownJob) and isinstance(error, KeyError)
            assert isinstance(error, ProcpoolError)
        assert client.get("never-submitted") is None
        with pytest.raises(UnknownJob) as unknown:
            client.wait(["never-submitted"], timeout=5)
        assert not isinstance(unknown.value, JobRejected)


def test_a_rejected_line_names_its_job_by_line_or_by_its_own_id(daemon: Daemon) -> None:
    lines = [
        {"type": "echo", "payload": 1},  # batch-1: accepted
        {"type": "ech"},  # batch-2
        {"type": "ech", "id": "given"},  # the id inside the line
        {"cancel": "batch-1", "extra": 1},  # a bad cancel request: no job
        '{"type": "echo", "payload": }',  # batch-5: not JSON
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    daemon.drop("batch.jsonl", text + "\n")
    rejected(daemon, "batch.jsonl")
    assert daemon.wait_status("batch-1", "completed").result == 1
    assert daemon.cli("wait", "batch-1").returncode == 0

    report = "(rejected/batch.jsonl.error.json)"
    says(daemon.cli("wait", "batch-2"),
         f"job 'batch-2' was rejected: line 2 of batch.jsonl: unknown job type \"ech\";"
         f" {REGISTERED} {report}")  # fmt: skip
    says(daemon.cli("status", "given"),
         f"job 'given' was rejected: line 3 of batch.jsonl: unknown job type \"ech\";"
         f" {REGISTERED} {report}")  # fmt: skip
    says(daemon.cli("status", "batch-3"), "no job 'batch-3'")  # it would have been 'given'
    says(daemon.cli("status", "batch-4"), "no job 'batch-4'")  # a cancel request, not a job
    not_json = daemon.cli("show", "batch-5")
    assert not_json.returncode == 1
    prefix = "procpool: job 'batch-5' was rejected: line 5 of batch.jsonl:"
    assert not_json.stderr.startswith(prefix), not_json.stderr
    assert not_json.stderr.endswith(f" {report}\n")
    with Client(daemon.home) as client, pytest.raises(JobRejected) as caught:
        client.get("batch-2")
    assert caught.value.line == 2


def test_a_rejected_cancel_request_rejects_no_job(daemon: Daemon) -> None:
    daemon.drop("cancel-zz.json", {"cancel": "zz", "extra": 1})
    rejected(daemon, "cancel-zz.json")
    says(daemon.cli("status", "cancel-zz"), "no job 'cancel-zz'")
    says(daemon.cli("status", "zz"), "no job 'zz'")


def test_the_store_wins_over_an_earlier_rejection(daemon: Daemon) -> None:
    daemon.drop("again.json", {"type": "ech"})
    rejected(daemon, "again.json")
    assert "was rejected" in daemon.cli("status", "again").stderr
    daemon.cli("submit", "echo", '"second try"', "--id", "again")
    assert daemon.wait_status("again", "completed").result == "second try"
    waited = daemon.cli("wait", "again")
    assert (waited.returncode, waited.stdout) == (0, "again completed\n")
    assert json.loads(daemon.cli("status", "again", "--json").stdout)["status"] == "completed"


def test_the_newest_report_wins_and_a_deleted_report_rejects_nothing(daemon: Daemon) -> None:
    daemon.drop("twice.json", {"type": "ech"})
    rejected(daemon, "twice.json")
    daemon.drop("twice.json", {"type": "echo", "colour": "red"})
    rejected(daemon, "twice.1.json")
    says(
        daemon.cli("status", "twice"),
        "job 'twice' was rejected: unknown field \"colour\" (rejected/twice.1.json.error.json)",
    )

    # The rejected file gone, its report still tells.
    (daemon.home / "rejected" / "twice.1.json").unlink()
    (daemon.home / "rejected" / "twice.json").unlink()
    assert "(rejected/twice.1.json.error.json)" in daemon.cli("status", "twice").stderr
    # The reports are the record: deleted, the id is simply unknown again.
    (daemon.home / "rejected" / "twice.1.json.error.json").unlink()
    assert "(rejected/twice.json.error.json)" in daemon.cli("status", "twice").stderr
    (daemon.home / "rejected" / "twice.json.error.json").unlink()
    says(daemon.cli("status", "twice"), "no job 'twice'")
    says(daemon.cli("wait", "twice"), "no job 'twice'")
