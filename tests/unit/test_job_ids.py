"""The ids the client gives jobs that come without one: valid, unique, and in the
order they were made (so that new rows go to the end of the store's b-trees)."""

from __future__ import annotations

import re

import pytest

from procpool import client
from procpool.domain.spec import check_id


def test_a_new_id_is_a_valid_id_of_time_then_randomness() -> None:
    made = {client.new_job_id() for _ in range(10_000)}
    assert len(made) == 10_000
    for job_id in made:
        assert re.fullmatch(r"job-[0-9a-f]{28}", job_id) and check_id(job_id, "id") == job_id


def test_ids_made_later_sort_later(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = []
    for ms in (1_765_000_000_000, 1_765_000_000_001, 1_765_000_001_000, 2**44):
        monkeypatch.setattr(client.time, "time_ns", lambda ms=ms: ms * 1_000_000 + 999_999)
        ids.append(client.new_job_id())
    assert ids == sorted(ids)
    assert ids[0].startswith(f"job-{1_765_000_000_000:012x}")
