"""A handler that logs with fields, as the handler guide's example does."""

from __future__ import annotations

from typing import Any

from procpool import JobContext, handler


@handler("count_lines")
def count_lines(ctx: JobContext, payload: Any) -> int:
    ctx.logger.info("counted the lines", n=200000, source="the numbers file")
    return 200000
