"""Every log line is an event with a stable name (CONTRACT section 7).

The daemon's event log is written through a sink that the adapters install
with `configure`: a flat JSON line and a readable line per event, gathered per
loop turn. Events do not pass through loguru on that path: its per-record work
(about 30 us) was the largest single cost of the supervisor under load. Loguru
stays the logger handlers use (`ctx.logger`); their lines reach this sink as
`job.log` events. Without a sink (a library user, a unit test), events go to
loguru.
"""

from __future__ import annotations

from typing import Any, Protocol

LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40,
          "CRITICAL": 50}  # fmt: skip


class EventSink(Protocol):
    def write_event(self, level: str, event: str, message: str, fields: dict[str, Any]) -> None: ...


class _Route:
    sink: EventSink | None = None
    threshold = LEVELS["INFO"]


_route = _Route()


def configure(sink: EventSink | None, level: str = "INFO") -> None:
    """Send events at `level` and above to `sink`; None sends them to loguru."""
    _route.sink = sink
    _route.threshold = LEVELS.get(level.upper(), LEVELS["INFO"])


def emit(level: str, event: str, message: str, **fields: Any) -> None:
    emit_fields(level, event, message, fields)


def emit_fields(level: str, event: str, message: str, fields: dict[str, Any]) -> None:
    """`emit` with its fields as one dict, which the sink may keep until its flush (the
    caller changes it no more): the turn's held lines are written so, without unpacking
    and packing each dict again."""
    sink = _route.sink
    if sink is None:
        # Imported here: the daemon has a sink, and the CLI reads the log without loguru.
        from loguru import logger  # noqa: PLC0415

        logger.bind(event=event, **fields).log(level, message)
    elif LEVELS.get(level, LEVELS["INFO"]) >= _route.threshold:
        sink.write_event(level, event, message, fields)
