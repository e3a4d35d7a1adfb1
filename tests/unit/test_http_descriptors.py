"""The cap on what HTTP clients can hold of `procpool serve` fits the process's
descriptors (entrypoints/http/bounds.py): the soft limit is raised as the hard one
allows, else the cap shrinks. The bounds through a real server:
tests/e2e/test_http_bounds.py."""

from __future__ import annotations

import resource

import pytest

from procpool.entrypoints.http import bounds


@pytest.mark.parametrize(
    ("limits", "wanted", "raised_to", "fits"),
    [
        ((1024, 524288), 2048, 2048 + bounds.RESERVED_DESCRIPTORS, 2048),
        ((1024, 1500), 2048, 1500, 1500 - bounds.RESERVED_DESCRIPTORS),
        ((8192, 8192), 2048, None, 2048),
        ((1024, resource.RLIM_INFINITY), 100, None, 100),
        ((200, 200), 2048, None, 1),
    ],
)
def test_the_cap_fits_the_descriptors(
    monkeypatch: pytest.MonkeyPatch,
    limits: tuple[int, int],
    wanted: int,
    raised_to: int | None,
    fits: int,
) -> None:
    """The soft limit is raised as far as the cap needs and the hard limit allows; a
    cap that cannot fit shrinks to what does."""
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(bounds.resource, "getrlimit", lambda _: limits)
    monkeypatch.setattr(bounds.resource, "setrlimit", lambda _, value: set_to.append(value))
    assert bounds.fit_descriptors(wanted) == fits
    assert set_to == ([] if raised_to is None else [(raised_to, limits[1])])
