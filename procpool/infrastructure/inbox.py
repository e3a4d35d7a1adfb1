"""The inbox directory: job files in, rejected files aside (CONTRACT section 2).

Nothing here is trusted (DESIGN decision 10). A scan opens the inbox itself
with O_NOFOLLOW and lists it through that descriptor; each name is looked at
with lstat first, and only a regular file is opened, with O_NOFOLLOW and
O_NONBLOCK so that a symlink is never followed and a FIFO never waited on; its
size is checked before a byte is read. A job-like name that is not a regular
file (symlink, FIFO, socket, device, directory) is left where it is, unopened,
with one warning in the log: it is not the daemon's to move, and nothing in it
is read. New files are noticed through inotify where the kernel has it; a
periodic rescan covers everything inotify can miss.

Nothing here raises into the supervisor's loop: a file that vanishes, changes
while it is read or cannot be opened is left for the next scan, with a warning
logged once; an inbox that is deleted is recreated, one that is replaced is
watched again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import time
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
# A file that ends mid-value and was written this recently is probably still being
# written by a producer that does not rename: it is read again later, not rejected.
SETTLE_SECONDS = 2.0
# rejected/ holds NAME and NAME.error.json, written through .NAME.error.json.tmp: the
# longest of them, with a ".N" counter, must fit in a file name (255 bytes).
MAX_REJECTED_NAME_BYTES = 255 - len("..error.json.tmp") - len(".99999")

_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_ATTRIB = 0x004
_IN_CREATE = 0x100
_IN_ONLYDIR = 0x01000000
_IN_DONT_FOLLOW = 0x02000000

_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFREG: "a regular file",
}


@dataclass(frozen=True)
class _Identity:
    device: int
    inode: int
    size: int
    mtime_ns: int


def _identity(info: os.stat_result) -> _Identity:
    return _Identity(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True)
class _Found:
    """An InboxFile's token: the name on disk (maybe not UTF-8) and what it held."""

    name: str
    identity: _Identity


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def printable(name: str) -> str:
    """A file name fit for logs and JSON: bytes that are not UTF-8 shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 2**20:
        return f"{size / 1024:.1f}".removesuffix(".0") + " KiB"
    return f"{size / 2**20:.1f}".removesuffix(".0") + " MiB"


def too_big(what: str, size: int, limit: int) -> str:
    """ "file is 2.1 MiB, limit is 1 MiB"; in bytes when rounding would hide the difference."""
    shown, allowed = _size(size), _size(limit)
    if shown == allowed:
        shown, allowed = f"{size} bytes", f"{limit} bytes"
    return f"{what} is {shown}, limit is {allowed}"


class _Inotify:
    """Just enough of inotify(7): a descriptor that is readable when files arrive."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._libc = libc
        self.fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1 failed: {os.strerror(code)}")
        self.watch(directory)

    def watch(self, directory: Path) -> None:
        # IN_CREATE too: a file published with link(2), as the client does, raises only that.
        mask = (
            _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_ATTRIB | _IN_ONLYDIR | _IN_DONT_FOLLOW
        )
        if self._libc.inotify_add_watch(self.fd, os.fsencode(directory), mask) < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_add_watch failed: {os.strerror(code)}", str(directory))

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
        self._warned: set[str] = set()  # names whose trouble was logged; once is enough
        self._trouble: str | None = None  # what is wrong with the inbox itself, if anything
        try:
            self._inotify: _Inotify | None = _Inotify(self.directory)
        except (OSError, AttributeError):
            self._inotify = None

    def _ensure_directories(self) -> None:
        for directory in (self.directory, self.rejected):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _directory_identity(self) -> tuple[int, int] | None:
        try:
            info = os.lstat(self.directory)
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

    # ----------------------------------------------------------------- the directory

    def _report_trouble(self, trouble: str | None) -> None:
        """Log what is wrong with the inbox once, and once more when it is fixed."""
        if trouble == self._trouble:
            return
        if trouble is not None:
            emit("WARNING", "inbox.unusable", trouble, inbox=str(self.directory))
        else:
            emit("INFO", "inbox.usable", f"the inbox {self.directory} is read again")
        self._trouble = trouble

    def _open_directory(self) -> int | None:
        """The inbox, opened for one scan; recreated if it was deleted. None: not now."""
        try:
            fd = os.open(self.directory, _OPEN_DIRECTORY)
        except FileNotFoundError:
            try:
                self._ensure_directories()
                fd = os.open(self.directory, _OPEN_DIRECTORY)
            except OSError as error:
                self._report_trouble(
                    f"cannot recreate the inbox {self.directory}: {error.strerror}"
                )
                return None
        except OSError as error:
            reason = error.strerror
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                with contextlib.suppress(OSError):
                    reason = f"it is {_kind(os.lstat(self.directory).st_mode)}, not a directory"
            self._report_trouble(
                f"cannot read the inbox {self.directory}: {reason};"
                " no job file is read until it is a directory again"
            )
            return None
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != self._watched:
            self._watch_again(info)
        if info.st_mode & stat.S_IWOTH:
            self._report_trouble(
                f"the inbox {self.directory} is writable by every user;"
                f" run chmod o-w {self.directory}"
            )
        else:
            self._report_trouble(None)
        return fd

    def _watch_again(self, info: os.stat_result) -> None:
        """The inbox was deleted or replaced while we ran: watch the new one."""
        self._watched = (info.st_dev, info.st_ino)
        if self._inotify is not None:
            try:
                self._inotify.watch(self.directory)
            except OSError as error:
                emit(
                    "WARNING",
                    "inbox.unwatched",
                    f"cannot watch the inbox {self.directory}: {error.strerror};"
                    " new files are found by rescans",
                )
        emit(
            "WARNING",
            "inbox.replaced",
            f"the inbox {self.directory} was deleted or replaced; watching the new one",
        )

    # ----------------------------------------------------------------- reading

    def _candidates(self, directory: int) -> list[str]:
        try:
            entries = list(os.scandir(directory))
        except OSError as error:
            self._report_trouble(f"cannot list the inbox {self.directory}: {error.strerror}")
            return []
        found = []
        skipped = []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(SUFFIXES):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:  # gone since the listing
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((info.st_mtime_ns, name))
            else:
                kind = _kind(info.st_mode)
                self._warn_once(name, f"{printable(name)} is {kind}: left alone, never opened")
                skipped.append(name)
        self._warned.intersection_update([name for _, name in found] + skipped)
        found.sort()
        return [name for _, name in found]

    def _warn_once(self, name: str, message: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            emit("WARNING", "file.skipped", message, file=printable(name))

    def scan(self, limit: int) -> Iterator[InboxFile]:
        directory = self._open_directory()
        if directory is None:
            return
        try:
            # The limit counts files read, not names tried: files left for later (unreadable,
            # still being written) must not starve the ones behind them.
            read = 0
            for name in self._candidates(directory):
                if read >= limit:
                    break
                try:
                    file = self._read(directory, name)
                except OSError as error:
                    self._warn_once(
                        name, f"cannot read {printable(name)}: {error.strerror}; will try again"
                    )
                    continue
                if file is not None:
                    read += 1
                    yield file
        finally:
            os.close(directory)

    def _read(self, directory: int, name: str) -> InboxFile | None:
        """The file as it is now, or None to leave it for a later scan."""
        is_lines = name.endswith(".jsonl")
        shown = printable(name)
        stem = shown.removesuffix(".jsonl" if is_lines else ".json")
        file = InboxFile(name=shown, stem=stem, is_lines=is_lines)
        data = self._bytes(directory, name, file)
        if data is None:
            return file if file.error is not None else None
        self._warned.discard(name)
        unfinished = self._parse(file, data)
        assert isinstance(file.token, _Found)
        age = time.time() - file.token.identity.mtime_ns / 1e9
        return None if unfinished and 0 <= age < SETTLE_SECONDS else file

    def _bytes(self, directory: int, name: str, file: InboxFile) -> bytes | None:
        """The file's bytes; None with `file.error` set to reject it, without to leave it."""
        limit = MAX_LINES_FILE_BYTES if file.is_lines else self.max_file_bytes
        try:
            fd = os.open(name, _OPEN_FILE, dir_fd=directory)
        except FileNotFoundError:
            return None
        except OSError as error:
            # ELOOP or ENXIO: it became a symlink or a socket since the listing; the
            # next scan sees what it is. Anything else (EACCES) may pass: try again.
            if error.errno not in (errno.ELOOP, errno.ENXIO):
                self._warn_once(name, f"cannot open {file.name}: {error.strerror}; will try again")
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            found = file.token = _Found(name, _identity(info))
            if info.st_size > limit:
                file.error = too_big("file", info.st_size, limit)
                return None
            data = self._read_all(fd, info.st_size, limit)
            if data is None:
                file.error = f"file grew past the limit of {_size(limit)} while it was read"
                return None
            # Changed while read: a producer writes it in place; read it when it is done.
            return data if _identity(os.fstat(fd)) == found.identity else None
        finally:
            os.close(fd)

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

    def _parse(self, file: InboxFile, data: bytes) -> bool:
        """Fill in the file's entries; return whether it looks unfinished."""
        if not data.strip():
            file.error = "the file is empty"
            return True
        if not file.is_lines:
            entry, unfinished = self._entry(None, data)
            file.entries.append(entry)
            return unfinished
        unfinished = False
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            if len(line) > self.max_file_bytes:
                error = too_big(f"line {number}", len(line), self.max_file_bytes)
                file.entries.append(InboxEntry(number, None, error))
                unfinished = False
                continue
            entry, unfinished = self._entry(number, line)
            file.entries.append(entry)
        return unfinished

    @staticmethod
    def _entry(line: int | None, data: bytes) -> tuple[InboxEntry, bool]:
        try:
            return InboxEntry(line, spec.decode(data, first_line=line or 1)), False
        except InvalidJobFile as error:
            return InboxEntry(line, None, str(error)), isinstance(error, spec.IncompleteJson)

    # ----------------------------------------------------------------- after the commit

    def _still_same(self, found: _Found) -> bool:
        """Whether the name still holds the file that was read, not a newer one."""
        try:
            info = os.lstat(self.directory / found.name)
        except OSError:
            return False
        return _identity(info) == found.identity

    def remove(self, files: Iterable[InboxFile]) -> None:
        for file in files:
            found = file.token
            if not isinstance(found, _Found) or not self._still_same(found):
                continue
            try:
                os.unlink(self.directory / found.name)
            except FileNotFoundError:
                continue
            except OSError as error:
                self._warn_once(found.name, f"cannot remove {file.name}: {error.strerror}")

    def _free_name(self, name: str) -> str:
        """A name in rejected/ that neither it nor its report has: never overwrite."""
        stem, _, suffix = os.fsencode(name).rpartition(b".")
        stem = stem[: MAX_REJECTED_NAME_BYTES - len(suffix) - 1]
        number = 0
        while True:
            counter = f".{number}".encode() if number else b""
            candidate = os.fsdecode(stem + counter + b"." + suffix)
            if not (
                os.path.lexists(self.rejected / candidate)
                or os.path.lexists(self.rejected / f"{candidate}.error.json")
            ):
                return candidate
            number += 1

    def _write_report(self, target: str, report: dict[str, object]) -> None:
        temporary = self.rejected / f".{target}.error.json.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # left by a crash; O_EXCL below refuses anything there
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o600)
        try:
            os.write(fd, msgspec.json.format(msgspec.json.encode(report)) + b"\n")
        finally:
            os.close(fd)
        os.rename(temporary, self.rejected / f"{target}.error.json")

    def reject(self, file: InboxFile, error: str, lines: Sequence[LineError]) -> str:
        found = file.token
        if not isinstance(found, _Found) or not self._still_same(found):
            return ""
        report: dict[str, object] = {"file": file.name, "error": error}
        if file.is_lines:
            report["lines"] = [{"line": e.line, "error": e.error} for e in lines]
        try:
            self.rejected.mkdir(mode=0o700, parents=True, exist_ok=True)
            target = self._free_name(found.name)
            if target != found.name:
                report["rejected_as"] = printable(target)
            self._write_report(target, report)
            os.rename(self.directory / found.name, self.rejected / target)
        except OSError as problem:
            self._warn_once(
                found.name, f"cannot move {file.name} into rejected/: {problem}; will try again"
            )
            return ""
        return f"rejected/{printable(target)}"
