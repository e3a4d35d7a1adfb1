"""Which reader a client of a home gets: `open_reader`, the one factory of the
`JobReader` port (job_reader.py). Apart from the port, because the adapters it
picks from import the port's module (PostgresClientStore through stats.py)."""

from __future__ import annotations

from pathlib import Path

from procpool.adapters.config import shared_store
from procpool.adapters.stores.job_reader import JobReader
from procpool.adapters.stores.sqlite_reader import StoreReader


def open_reader(home: Path, database_url: str | None = None) -> JobReader:
    """The reader of `home`'s jobs: the PostgreSQL store when `database_url`,
    $PROCPOOL_DATABASE_URL or the config file (of `home`) names one, else the home's
    read-only SQLite store. Nothing is opened until the first read.

    Raises:
        ConfigError: the configuration is invalid, or psycopg is not installed.
    """
    shared: JobReader | None = shared_store(home, database_url)
    return shared if shared is not None else StoreReader(home / "procpool.db")
