"""The daemon's test-only clock (adapters/testing_clock.py): the real `time` module
unless the variable names a file; then time.time() plus the file's offset, read again
when the file is replaced, 0 without a file, a clear error for a file that holds no
number."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from procpool.adapters.testing_clock import VARIABLE, OffsetFileClock, clock_from
from procpool.domain.errors import ConfigError


def write(path: Path, text: str) -> None:
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    os.replace(new, path)


def test_unset_the_daemon_reads_the_time_module() -> None:
    assert clock_from({}) is time
    assert clock_from({VARIABLE: ""}) is time


def test_the_offset_is_read_again_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    clock = clock_from({VARIABLE: str(path)})
    assert isinstance(clock, OffsetFileClock)
    assert abs(clock.time() - time.time()) < 1  # no file yet: no offset
    for offset in (300.0, -4.5, 0.0):
        write(path, str(offset))
        assert abs(clock.time() - (time.time() + offset)) < 1, offset
    monotonic = clock.monotonic()
    assert time.monotonic() - 1 < monotonic <= time.monotonic()  # the real one
    path.unlink()
    assert abs(clock.time() - time.time()) < 1


def test_a_file_without_a_number_names_the_variable_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    write(path, "soon")
    with pytest.raises(ConfigError, match=f"{VARIABLE}: {path} holds 'soon'"):
        OffsetFileClock(path).time()
