"""A handler only one daemon of the PostgreSQL dependency test has: `collect` returns
what its attempt was handed as ctx.parents."""

from __future__ import annotations

from typing import Any

from procpool import JobContext, handler


@handler("collect")
def collect(ctx: JobContext, payload: Any) -> Any:
    return ctx.parents
