"""A mistyped home is not an empty queue (issue 12, point 7), at the Python client
alone: every read raises NoJobStore naming the home, a submit still queues its file.
Through the real CLI: tests/e2e/test_home_choice.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpool import Client, NoJobStore, ProcpoolError


def test_the_client_raises_no_job_store_on_reads_but_submits(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    with Client(typo) as client:
        for read in (
            client.list,
            client.stats,
            lambda: client.get("x"),
            lambda: client.attempts("x"),
            lambda: client.wait(["x"], timeout=1),
            lambda: client.retry("x"),
            client.retry_failed,
        ):
            with pytest.raises(NoJobStore) as caught:
                read()
            assert isinstance(caught.value, ProcpoolError)
            assert str(caught.value) == (
                f"{typo} is not a procpool home: the directory does not exist"
                " (the home given to Client())"
            )
            assert caught.value.home == typo
        job_id = client.submit("echo", 1)
        assert client.is_waiting_in_inbox(job_id)
        assert client.get(job_id) is None, "a job in the inbox is no typo: it waits"
        with pytest.raises(NoJobStore, match="it has no job store"):
            client.list()
