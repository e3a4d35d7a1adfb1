"""A handler module registered only through the `procpool.handlers` entry point group.

The directory above holds its installed metadata, so putting that directory on a
daemon's PYTHONPATH is all it takes to install it, without pip.
"""

from __future__ import annotations

from typing import Any

from procpool import JobContext, handler


@handler("example.reverse")
def reverse(ctx: JobContext, payload: Any) -> str:
    return str(payload)[::-1]
