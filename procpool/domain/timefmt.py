"""Times as procpool shows them: UTC, RFC 3339, with a Z."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(moment: float | datetime) -> str:
    """UTC, microseconds, with a Z: 2026-11-28T02:04:15.123456Z."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
