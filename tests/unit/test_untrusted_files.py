"""Reading a file someone else put there (adapters/inbox/untrusted_files.py): what is
read, and the table of what is refused without being followed, waited on or read."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from procpool.adapters.inbox.untrusted_files import open_regular, read_bounded, read_regular

LIMIT = 100


def _regular(path: Path) -> None:
    path.write_bytes(b'{"type": "echo"}')


def _at_limit(path: Path) -> None:
    path.write_bytes(b"x" * LIMIT)


def _over_limit(path: Path) -> None:
    path.write_bytes(b"x" * (LIMIT + 1))


def _symlink(path: Path) -> None:
    (path.parent / "target.json").write_bytes(b"{}")
    path.symlink_to(path.parent / "target.json")


def _dangling_symlink(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere.json")


def _fifo(path: Path) -> None:
    os.mkfifo(path)  # no writer: a blocking open would wait for ever


def _directory(path: Path) -> None:
    path.mkdir()


def _socket(path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()


def _link_to_a_device(path: Path) -> None:
    path.symlink_to("/dev/zero")  # never followed; a device itself: see below


def _missing(path: Path) -> None:
    pass


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_regular, b'{"type": "echo"}'),
        (_at_limit, b"x" * LIMIT),
        (_over_limit, None),
        (_symlink, None),
        (_dangling_symlink, None),
        (_fifo, None),
        (_directory, None),
        (_socket, None),
        (_link_to_a_device, None),
        (_missing, None),
    ],
)
@pytest.mark.timeout(10)
def test_read_regular_reads_a_regular_file_and_refuses_the_rest(
    tmp_path: Path, make: Callable[[Path], None], expected: bytes | None
) -> None:
    path = tmp_path / "job.json"
    make(path)
    assert read_regular(path, LIMIT) == expected


@pytest.mark.timeout(10)
def test_a_device_is_opened_but_refused() -> None:
    assert open_regular("/dev/zero") is None  # an endless file is never read
    assert read_regular(Path("/dev/zero"), LIMIT) is None


@pytest.mark.parametrize(
    ("make", "error"),
    [(_symlink, errno.ELOOP), (_socket, errno.ENXIO), (_missing, errno.ENOENT)],
)
def test_open_regular_says_why_it_could_not_open(
    tmp_path: Path, make: Callable[[Path], None], error: int
) -> None:
    make(tmp_path / "job.json")
    directory = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as raised:
            open_regular("job.json", dir_fd=directory)
    finally:
        os.close(directory)
    assert raised.value.errno == error


def test_open_regular_relative_to_a_directory_gives_its_fstat(tmp_path: Path) -> None:
    _regular(tmp_path / "job.json")
    directory = os.open(tmp_path, os.O_RDONLY)
    try:
        opened = open_regular("job.json", dir_fd=directory)
        assert opened is not None
        fd, info = opened
        os.close(fd)
        assert info.st_size == 16
    finally:
        os.close(directory)


def test_read_bounded_stops_at_the_limit_of_a_file_that_grew(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(b"x" * 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_bounded(fd, 10, 10) == b"x" * 10
        with path.open("ab") as handle:
            handle.write(b"y" * 200_000)  # more than one chunk past what fstat said
        os.lseek(fd, 0, os.SEEK_SET)
        assert read_bounded(fd, 10, 100) is None
        os.lseek(fd, 0, os.SEEK_SET)
        assert read_bounded(fd, 10, 200_010) == b"x" * 10 + b"y" * 200_000
    finally:
        os.close(fd)
