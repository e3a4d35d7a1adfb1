"""The dependency policy (docs/development.md, "Dependencies"): every dependency has a
lower bound in pyproject.toml, and .ci/oldest.txt pins each to exactly that bound, so that
the CI run with the oldest versions tests what pyproject.toml claims."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).parents[2]
# NAME[EXTRAS]>=VERSION; psycopg[binary] pins psycopg-binary to its own version.
REQUIREMENT = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([a-z,]+)\])?\s*(>=|==)\s*([0-9][0-9.]*)"
)


def declared() -> dict[str, tuple[str, str]]:
    """{name: (operator, version)} of every runtime and extra dependency. An extra may
    name another of procpool's own (`procpool[http]`): that one is listed by its name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    found = {}
    for text in [*project["dependencies"], *(t for group in extras.values() for t in group)]:
        own = re.fullmatch(r"procpool\[([a-z,]+)\]", text)
        if own:
            assert set(own.group(1).split(",")) <= set(extras), f"{text!r}: no such extra"
            continue
        match = REQUIREMENT.fullmatch(text)
        assert match, f"{text!r}: each dependency is NAME>=VERSION (or ==, for a pinned tool)"
        name, extra, operator, version = match.groups()
        found[name.lower()] = (operator, version)
        if extra == "binary":  # psycopg's compiled part, released in step with it
            found[f"{name.lower()}-binary"] = (operator, version)
    return found


def pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / ".ci" / "oldest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_the_oldest_constraints_pin_every_dependency_to_its_lower_bound() -> None:
    bounds = {name: version for name, (_, version) in declared().items()}
    assert pinned() == bounds


def test_every_bound_names_a_full_version() -> None:
    """'>=8.1.0', not '>=8.1': the pin in .ci/oldest.txt is then the same text. (A stub
    package's version has a fourth part, the date of its stubs: 7.2.2.20261122.)"""
    for name, (_, version) in declared().items():
        assert version.count(".") >= 2, f"{name}: {version}"
