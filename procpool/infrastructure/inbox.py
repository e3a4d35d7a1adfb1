"""The inbox directory: job files in, rejected files aside (CONTRACT section 2).

Nothing here is trusted (DESIGN decision 10): a name is looked at with lstat
first, and only a regular file is opened, with O_NOFOLLOW and O_NONBLOCK so
that a symlink is never followed and a FIFO never waited on; its size is
checked before a byte is read. New files are noticed through inotify where the
kernel has it; a periodic rescan covers everything inotify can miss.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from procpool.application.events import emit
from procpool.application.ports import InboxEntry, InboxFile, LineError
from procpool.domain import spec
from procpool.domain.errors import InvalidJobFile

SUFFIXES = (".json", ".jsonl")
# A .jsonl file is bounded per line by max_file_bytes; as a whole, by this.
MAX_LINES_FILE_BYTES = 256 * 1024 * 1024

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_ATTRIB = 0x004


@dataclass(frozen=True)
class _Identity:
    device: int
    inode: int
    size: int
    mtime_ns: int


def _identity(info: os.stat_result) -> _Identity:
    return _Identity(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


class _Inotify:
    """Just enough of inotify(7): a descriptor that is readable when files arrive."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._libc = libc
        self.fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.watch(directory)

    def watch(self, directory: Path) -> None:
        mask = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_ATTRIB
        if self._libc.inotify_add_watch(self.fd, os.fsencode(directory), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")

    def drain(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


class FileInbox:
    def __init__(self, home: Path, max_file_bytes: int) -> None:
        self.directory = home / "inbox"
        self.rejected = home / "rejected"
        self.max_file_bytes = max_file_bytes
        self._ensure_directories()
        self._watched = self._directory_identity()
        self._warned: set[str] = set()
        try:
            self._inotify: _Inotify | None = _Inotify(self.directory)
        except (OSError, AttributeError):
            self._inotify = None

    def _ensure_directories(self) -> None:
        for directory in (self.directory, self.rejected):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _directory_identity(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.directory)
        except FileNotFoundError:
            return None
        return info.st_dev, info.st_ino

    def fileno(self) -> int | None:
        return None if self._inotify is None else self._inotify.fd

    def drain_events(self) -> None:
        if self._inotify is not None:
            self._inotify.drain()

    def close_descriptors(self) -> None:
        if self._inotify is not None:
            self._inotify.close()

    def _follow_replaced_directory(self) -> None:
        """The inbox was deleted or replaced while we ran: recreate it and watch it again."""
        if self._directory_identity() == self._watched:
            return
        self._ensure_directories()
        self._watched = self._directory_identity()
        if self._inotify is not None:
            self._inotify.watch(self.directory)
        emit(
            "WARNING",
            "inbox.replaced",
            f"the inbox {self.directory} was replaced; watching it again",
        )

    # ----------------------------------------------------------------- reading

    def _candidates(self) -> list[tuple[int, str, os.stat_result]]:
        found = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(SUFFIXES):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                self._warn_once(name, f"{name} is not a regular file: left alone")
                continue
            found.append((info.st_mtime_ns, name, info))
        found.sort(key=lambda item: (item[0], item[1]))
        return found

    def _warn_once(self, name: str, message: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            emit("WARNING", "file.skipped", message, file=name)

    def scan(self, limit: int) -> Iterator[InboxFile]:
        self._follow_replaced_directory()
        for _, name, info in self._candidates()[:limit]:
            file = self._read(name, info)
            if file is not None:
                yield file

    def _read(self, name: str, listed: os.stat_result) -> InboxFile | None:
        is_lines = name.endswith(".jsonl")
        stem = name.removesuffix(".jsonl" if is_lines else ".json")
        file = InboxFile(name=name, stem=stem, is_lines=is_lines)
        limit = MAX_LINES_FILE_BYTES if is_lines else self.max_file_bytes
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ELOOP:  # became a symlink since the listing
                return None
            self._warn_once(name, f"cannot open {name}: {error.strerror}; will try again")
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            file.token = _identity(info)
            if info.st_size > limit:
                file.error = f"file is {_mib(info.st_size)}, limit is {_mib(limit)}"
                return file
            data = self._read_all(fd, info.st_size, limit)
        finally:
            os.close(fd)
        if data is None:
            file.error = f"file grew past the limit of {_mib(limit)} while it was read"
            return file
        self._warned.discard(name)
        self._parse(file, data)
        return file

    @staticmethod
    def _read_all(fd: int, size: int, limit: int) -> bytes | None:
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, max(size - total, 0) + 65536)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)

    def _parse(self, file: InboxFile, data: bytes) -> None:
        if not file.is_lines:
            if not data.strip():
                file.error = "the file is empty"
                return
            file.entries.append(self._entry(None, data))
            return
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            if len(line) > self.max_file_bytes:
                file.entries.append(
                    InboxEntry(
                        number,
                        None,
                        f"line is {_mib(len(line))}, limit is {_mib(self.max_file_bytes)}",
                    )
                )
                continue
            file.entries.append(self._entry(number, line))

    @staticmethod
    def _entry(line: int | None, data: bytes) -> InboxEntry:
        try:
            return InboxEntry(line, spec.decode(data))
        except InvalidJobFile as error:
            return InboxEntry(line, None, str(error))

    # ----------------------------------------------------------------- after the commit

    def _still_same(self, file: InboxFile) -> bool:
        """Whether the name still holds the file that was read, not a newer one."""
        try:
            info = os.lstat(self.directory / file.name)
        except FileNotFoundError:
            return False
        return _identity(info) == file.token

    def remove(self, files: Iterable[InboxFile]) -> None:
        for file in files:
            if self._still_same(file):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.directory / file.name)

    def _free_name(self, name: str) -> str:
        """A name in rejected/ that neither it nor its report has: never overwrite."""
        stem, dot, suffix = name.rpartition(".")
        candidate, number = name, 0
        while (self.rejected / candidate).exists() or (
            self.rejected / f"{candidate}.error.json"
        ).exists():
            number += 1
            candidate = f"{stem}.{number}{dot}{suffix}"
        return candidate

    def reject(self, file: InboxFile, error: str, lines: Sequence[LineError]) -> str:
        if not self._still_same(file):
            return ""
        self.rejected.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self._free_name(file.name)
        report: dict[str, object] = {"file": file.name, "error": error}
        if file.is_lines:
            report["lines"] = [{"line": e.line, "error": e.error} for e in lines]
        if target != file.name:
            report["rejected_as"] = target
        temporary = self.rejected / f".{target}.error.json.tmp"
        temporary.write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
        os.rename(temporary, self.rejected / f"{target}.error.json")
        os.rename(self.directory / file.name, self.rejected / target)
        return f"rejected/{target}"
