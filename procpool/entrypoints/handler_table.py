"""`procpool handlers`: every job type a daemon of this configuration registers, with
the defaults and limits its jobs get.

The daemon's own view, worked out as `procpool run` works it out: the configuration is
loaded, and the built-in handlers, the modules of `handlers` and the `procpool.handlers`
entry points are imported into this process. So the list needs no running daemon and
is what the next start (or, for values, the next SIGHUP) would apply; a daemon already
running keeps the handler modules it imported at its start.

    config ──▶ load_handler_modules ──▶ registry ──▶ rows: job_defaults + effective_limits
"""

from __future__ import annotations

from typing import Any

from procpool.adapters import config as configuration
from procpool.application.handlers import load_handler_modules, registry
from procpool.domain.limits import DEFAULT_KEY_LIMIT
from procpool.entrypoints import builtin_handlers  # noqa: F401 (registers the built-in handlers)
from procpool.entrypoints.daemon import effective_limits, job_defaults

COLUMNS = ("type", "timeout", "max_attempts", "priority", "limit", "key_limit")


def handler_rows(config: configuration.Config) -> list[dict[str, Any]]:
    """One row per registered type, sorted by type: {"type", "timeout" (seconds, None:
    none), "max_attempts", "priority", "limit" (None: unlimited), "key_limit"}, each the
    value in force: a job's own field beats these; the handler's defaults beat the
    configuration's; `[limits]`/`[key_limits]` beat the handler's limits.

    Raises:
        ProcpoolError: a handler module does not import, or an option of `@handler` is
            out of its bounds.
        ConfigError: `[limits]` or `[key_limits]` names a type no handler registers.
    """
    load_handler_modules(config.handlers)
    defaults = job_defaults(config)
    limits = effective_limits(config)
    rows = []
    for job_type in registry.names():
        own = defaults.types.get(job_type)
        timeout = None if own is None else own.timeout
        max_attempts = None if own is None else own.max_attempts
        priority = None if own is None else own.priority
        rows.append(
            {
                "type": job_type,
                "timeout": defaults.timeout if timeout is None else timeout,
                "max_attempts": max_attempts or defaults.max_attempts,
                "priority": priority or 0,
                "limit": limits.types.get(job_type),
                "key_limit": limits.keys.get(job_type, DEFAULT_KEY_LIMIT),
            }
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned table with a header line (`-` for no timeout or limit)."""
    cells = [[c.upper() for c in COLUMNS]]
    for row in rows:
        cells.append(["-" if row[c] is None else f"{row[c]:g}" if c == "timeout" else str(row[c])
                      for c in COLUMNS])  # fmt: skip
    widths = [max(len(line[n]) for line in cells) for n in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )
