"""Every log line is an event with a stable name (CONTRACT section 7)."""

from __future__ import annotations

from typing import Any

from loguru import logger


def emit(level: str, event: str, message: str, **fields: Any) -> None:
    logger.bind(event=event, **fields).log(level, message)
