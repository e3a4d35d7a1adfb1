"""Two daemons' stores on one PostgreSQL database plan the same schedule (CONTRACT 14):
the one that holds the schedule's row plans it, the other skips it for that turn
(`take_schedule` is None), and an advance planned from a cursor already moved writes
nothing, so each occurrence becomes one job."""

from __future__ import annotations

from pathlib import Path

from conftest import wait_until

from procpool.domain import schedules
from procpool.domain.job import Job

NOW = 1_800_000_000.0


def occurrence(instant: float) -> Job:
    job_id = schedules.occurrence_id("tick", instant)
    return Job(id=job_id, type="echo", run_at=instant, created_at=NOW, updated_at=NOW)


def test_two_daemons_never_both_plan_nor_both_insert_an_occurrence(
    pg_url: str, tmp_path: Path
) -> None:
    from procpool.adapters.stores.postgres import PostgresJobStore  # noqa: PLC0415

    for home in ("one", "two"):
        (tmp_path / home).mkdir()
    one = PostgresJobStore(pg_url, tmp_path / "one")
    two = PostgresJobStore(pg_url, tmp_path / "two")
    try:
        tick = schedules.check({"name": "tick", "every": 10, "job": {"type": "echo"}})
        assert two.listener() is not None
        assert two.schedules_changed()  # at first: nothing read yet
        assert not two.schedules_changed()
        with one.transaction():
            one.write_schedules(schedules.Changes([tick], [], []), NOW)
        # Told, so that it reads the schedules again.
        wait_until(lambda: two.heard() and two.schedules_changed(), timeout=20)
        with one.transaction():
            assert one.take_schedule("tick") is not None
            with two.transaction():
                assert two.take_schedule("tick") is None, "held by the other daemon"
            advance = schedules.Advance(NOW + 10, (occurrence(NOW + 10),), run=NOW + 10)
            assert one.advance_schedule("tick", NOW, advance)
        with two.transaction():
            taken = two.take_schedule("tick")
            assert taken is not None and taken.cursor == NOW + 10, "the committed cursor"
            late = schedules.Advance(NOW + 10, (occurrence(NOW + 10),), run=NOW + 10)
            assert not two.advance_schedule("tick", NOW, late)
        rows = one._rows("SELECT id FROM procpool_jobs WHERE id LIKE 'tick.%%'")
        assert rows == [(schedules.occurrence_id("tick", NOW + 10),)]
    finally:
        one.close()
        two.close()
