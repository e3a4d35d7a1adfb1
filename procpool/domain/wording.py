"""Counts in messages: "1 worker", "2 workers", never "1 workers"."""

from __future__ import annotations


def plural(count: float, noun: str, many: str | None = None) -> str:
    """`count` followed by `noun` in the number the count asks for.

    Args:
        count: an int is shown as it is, a float with `:g` ("0.5", "7").
        noun: the singular ("worker").
        many: the plural, for nouns that do not just take an "s" ("processes").

    Returns:
        "1 worker", "0 workers", "2.5 days": only a count equal to 1 takes the singular.
    """
    shown = str(count) if isinstance(count, int) else f"{count:g}"
    return f"{shown} {noun if count == 1 else (many or noun + 's')}"
