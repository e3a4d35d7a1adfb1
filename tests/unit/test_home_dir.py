"""The daemon's own files in a home others can write (issue 22, cases 7 to 9), at
`HomeDir` alone: a name planted as a link, a FIFO or a directory is refused, saying
which, and the file a link points to keeps its bytes. Through the real daemon:
tests/e2e/test_home_files.py."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from procpool.adapters.home.files import HomeDir, UnsafeHomeFile

VICTIM = b"the daemon user's own file: not to be written through a link\n"


def victim(tmp_path: Path) -> Path:
    """A file of the daemon's user outside the home: what a planted link points to."""
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    return path


def _plant_link(path: Path, target: Path) -> None:
    path.symlink_to(target)


def _plant_fifo(path: Path, target: Path) -> None:
    os.mkfifo(path)


def _plant_directory(path: Path, target: Path) -> None:
    path.mkdir()


def _plant_file(path: Path, target: Path) -> None:
    path.write_bytes(b"a file of ours\n")


def _plant_nothing(path: Path, target: Path) -> None:
    pass


@pytest.mark.parametrize(
    ("plant", "says"),
    [
        (_plant_link, "is a symbolic link, not a regular file"),
        (_plant_fifo, "is a FIFO, not a regular file"),
        (_plant_directory, "is a directory, not a regular file"),
        (_plant_file, None),
        (_plant_nothing, None),
    ],
)
@pytest.mark.parametrize("name", ["procpool.pid", "logs/procpool.jsonl"])
def test_what_the_home_opens_and_what_it_refuses(
    tmp_path: Path, plant: Callable[[Path, Path], None], says: str | None, name: str
) -> None:
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    target = victim(tmp_path)
    plant(home / name, target)
    opened = HomeDir(home)
    try:
        if says is None:
            fd = opened.open(name, os.O_RDWR | os.O_CREAT)
            os.close(fd)
            assert stat.S_ISREG((home / name).lstat().st_mode)
        else:
            with pytest.raises(UnsafeHomeFile, match=f"^{home / name} {says}: .* remove it$"):
                opened.open(name, os.O_RDWR | os.O_CREAT)
    finally:
        opened.close()
    assert target.read_bytes() == VICTIM
