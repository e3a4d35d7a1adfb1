"""A PostgreSQL client's submissions pass through a staging table of its session, made
once and emptied at each commit (postgres_client.py, `_insert`): what a submission
leaves there, whether it commits, rolls back or loses its connection, is never part of
the next one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from procpool.domain.errors import DuplicateId
from procpool.domain.spec import JobDefaults, JobSpec

if TYPE_CHECKING:
    from procpool.adapters.stores.postgres_client import PostgresClientStore


def _staging(client: PostgresClientStore) -> tuple[int, int]:
    """The staging table's oid and its row count, seen from the client's session."""
    db = client._connection()
    row = db.execute(
        "SELECT 'pg_temp.procpool_staged'::regclass::oid, (SELECT count(*) FROM procpool_staged)"
    ).fetchone()
    return int(row[0]), int(row[1])


@pytest.mark.timeout(120)
def test_the_staging_table_outlives_commits_rollbacks_and_a_lost_session(pg_url: str) -> None:
    from procpool.adapters.stores.postgres_client import PostgresClientStore  # noqa: PLC0415

    client = PostgresClientStore(pg_url, JobDefaults())
    try:
        _submit_through_every_path(client, pg_url)
    finally:
        client.close()


def _submit_through_every_path(client: PostgresClientStore, pg_url: str) -> None:
    import psycopg  # noqa: PLC0415 (the PostgreSQL tests only)

    assert client.submit_spec(JobSpec(type="echo", payload=1, id="a")) == "a"
    made, rows = _staging(client)
    assert rows == 0  # emptied by the commit

    # A refused submission rolls back: its staged row goes with it, the table stays.
    with pytest.raises(DuplicateId):
        client.submit_spec(JobSpec(type="echo", payload=2, id="a"))
    assert _staging(client) == (made, 0)

    # Keyed jobs: one is taken by the live holder of its key, and deleted from the
    # staged rows before the others move.
    assert client.submit_spec(JobSpec(type="echo", id="k1", unique_key="day")) == "k1"
    assert client.submit_spec(JobSpec(type="echo", id="k2", unique_key="day")) == "k1"
    assert client.submit_spec(JobSpec(type="echo", payload=3, id="b")) == "b"
    assert _staging(client) == (made, 0)

    # Its session lost, the client reconnects and makes the table in the new one.
    with psycopg.connect(pg_url, autocommit=True) as admin:
        pid = client._connection().info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert client.submit_spec(JobSpec(type="echo", payload=4, id="c")) == "c"
    assert _staging(client)[1] == 0

    stored = client.get_many(["a", "b", "c", "k1", "k2"])
    assert sorted(stored) == ["a", "b", "c", "k1"]
    assert stored["a"].payload == b"1"  # the refused duplicate changed nothing
