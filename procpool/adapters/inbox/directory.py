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

A scan costs what it reads, not what waits. The inbox is listed (and each name
looked at) once; later scans take the next names of that listing, oldest
first, until it is used up, and only then list again: files that arrive
meanwhile are newer than all of it and wait for that listing. A scan reads at
most `limit` files, `scan_lines` lines and about `scan_bytes` bytes, so the
supervisor's memory and the length of its turn are bounded whatever waits in
the inbox. A `.jsonl` file larger than what is left of that budget waits for the
next scan, which begins with it; one larger than a whole budget is read in
parts: each part is a run of whole lines, judged and committed in its own turn
together with how far the file has got (ports.FileProgress), and the file goes
to the back of the queue, behind the files listed with it, so that one large
file never holds up small ones or cancel requests for more than a turn.

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
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec

from procpool.adapters.inbox.untrusted_files import open_regular, read_bounded
from procpool.application.events import emit
from procpool.application.ports import FileProgress, InboxEntry, InboxFile, LineError, Part
from procpool.domain import inbox_names, spec
from procpool.domain.errors import InvalidJobFile

SUFFIXES = (inbox_names.JOB_SUFFIX, inbox_names.LINES_SUFFIX)
# A .jsonl file is bounded per line by max_file_bytes; as a whole, by this.
MAX_LINES_FILE_BYTES = 256 * 1024 * 1024
# What one scan reads at most besides its limit of files: lines (a .json file counts as
# one) and bytes (one file or line more may pass it). At about 1.2 KB of the supervisor's
# memory per line judged, 2,000 lines hold ~2.4 MB and take ~50 ms to judge and store:
# the loop stays free for workers and cancel requests. Larger parts were not faster
# (400,000 lines: 11.1 s at 2,000 per turn, 10.3 s at 10,000, 11.0 s at 5,000).
SCAN_LINES = 2_000
SCAN_BYTES = 16 * 1024 * 1024
# A .jsonl file is read this much at a time: a part holds one piece and one line at most.
_PIECE = 256 * 1024
# A file that ends mid-value and was written this recently is probably still being
# written by a producer that does not rename: it is read again later, not rejected.
SETTLE_SECONDS = 2.0
# rejected/ holds NAME and NAME.error.json, written through .NAME.error.json.tmp: the
# longest of them, with a ".N" counter, must fit in a file name (255 bytes).
MAX_REJECTED_NAME_BYTES = 255 - len("..error.json.tmp") - len(".99999")

_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The inbox cannot be opened for want of descriptors or memory: nothing is wrong with it.
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)

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


def _version(identity: _Identity) -> str:
    return f"{identity.device}:{identity.inode}:{identity.size}:{identity.mtime_ns}"


@dataclass
class _Budget:
    """What is left of one scan's: files, lines, bytes."""

    files: int
    lines: int
    bytes: int

    def spent(self) -> bool:
        return self.files <= 0 or self.lines <= 0 or self.bytes <= 0

    def whole(self, lines: int, size: int) -> bool:
        """Whether nothing of `lines` and `size` (a scan's budget) was spent yet."""
        return self.lines >= lines and self.bytes >= size

    def charge(self, lines: int, size: int) -> None:
        self.files -= 1
        self.lines -= lines
        self.bytes -= size


@dataclass(frozen=True)
class _Found:
    """An InboxFile's token: the name on disk (maybe not UTF-8) and what it held."""

    name: str
    identity: _Identity


def _fresh(identity: _Identity) -> bool:
    """Changed in the last SETTLE_SECONDS: a file that looks unfinished may still grow."""
    age = time.time() - identity.mtime_ns / 1e9
    return 0 <= age < SETTLE_SECONDS


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def printable(name: str) -> str:
    """A file name fit for logs and JSON: bytes that are not UTF-8 shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _key(name: str) -> str:
    """A file's name as text any store can hold, distinct for distinct names: a
    backslash doubled, then a byte that is not UTF-8 shown as \\xNN."""
    return printable(name.replace("\\", "\\\\"))


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
    def __init__(
        self,
        home: Path,
        max_file_bytes: int,
        *,
        scan_lines: int = SCAN_LINES,
        scan_bytes: int = SCAN_BYTES,
    ) -> None:
        self.directory = home / "inbox"
        self.rejected = home / "rejected"
        self.max_file_bytes = max_file_bytes
        self.scan_lines = scan_lines
        self.scan_bytes = scan_bytes
        self._ensure_directories()
        self._watched = self._directory_identity()
        self._warned: set[str] = set()  # names whose trouble was logged; once is enough
        self._trouble: str | None = None  # what is wrong with the inbox itself, if anything
        # The names to read next: what is left of the last listing (oldest first), then
        # the .jsonl files read in part, each behind the names that were there before it.
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._partial: set[str] = set()  # queued because a part of them is still to read
        self._fresh = 0  # queued names of the last listing: list again once none is left
        self._more = False
        self._present: set[str] | None = None  # keys of the files listed by the last scan
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

    def _out_of_resources(self, reason: str | None) -> str:
        """The trouble of a process out of descriptors (or memory), in the same words
        whether the inbox failed to open or to list: one spell, one line."""
        return (
            f"cannot read the inbox {self.directory}: {reason};"
            " no job file is read until a descriptor frees"
        )

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
            if error.errno in _OUT_OF_RESOURCES:
                self._report_trouble(self._out_of_resources(reason))
                return None
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
        self._queue.clear()  # names of the old directory
        self._queued.clear()
        self._partial.clear()
        self._fresh = 0
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
            if error.errno in _OUT_OF_RESOURCES:  # the open took the last descriptor
                self._report_trouble(self._out_of_resources(error.strerror))
            else:
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

    def _list(self, directory: int) -> None:
        """Queue the inbox's files, oldest first, behind the files read in part."""
        names = self._candidates(directory)
        self._present = {_key(name) for name in names if name.endswith(".jsonl")}
        fresh = [name for name in names if name not in self._queued]
        self._queue.extend(fresh)
        self._queued.update(fresh)
        self._fresh = len(fresh)

    def _next(self) -> str:
        name = self._queue.popleft()
        self._queued.discard(name)
        if name in self._partial:
            self._partial.discard(name)
        else:
            self._fresh -= 1
        return name

    def _again(self, name: str) -> None:
        """A file read in part: its next part after the files queued before it."""
        self._queue.append(name)
        self._queued.add(name)
        self._partial.add(name)

    def scan(
        self, limit: int, progress: Mapping[str, FileProgress] | None = None
    ) -> Iterator[InboxFile]:
        self._more = False
        self._present = None
        directory = self._open_directory()
        if directory is None:
            return
        budget = _Budget(limit, self.scan_lines, self.scan_bytes)
        try:
            if not self._fresh:
                self._list(directory)
            # The budget counts files read, not names tried: files left for later
            # (unreadable, still being written) must not starve the ones behind them.
            read: set[str] = set()
            while self._queue:
                # A file's next part goes on from where its last one is committed: not
                # in the scan that read that one.
                if budget.spent() or self._queue[0] in read:
                    self._more = True
                    break
                name = self._next()
                read.add(name)
                try:
                    file = self._read(directory, name, budget, progress or {})
                except OSError as error:
                    self._warn_once(
                        name, f"cannot read {printable(name)}: {error.strerror}; will try again"
                    )
                    continue
                if file is None:
                    continue
                if file.part is not None and not file.part.complete:
                    self._again(name)
                yield file
        finally:
            os.close(directory)

    def more(self) -> bool:
        return self._more

    def vanished(self, progress: Mapping[str, FileProgress]) -> list[str]:
        if self._present is None:  # the last scan went on with an earlier listing
            return []
        return [known for known in progress if known not in self._present]

    def _read(
        self, directory: int, name: str, budget: _Budget, progress: Mapping[str, FileProgress]
    ) -> InboxFile | None:
        """The file as it is now (a .jsonl file: its next part), or None to leave it for a
        later scan. What it reads is charged to `budget`."""
        is_lines = name.endswith(inbox_names.LINES_SUFFIX)
        shown = printable(name)
        stem = inbox_names.stem(shown) or shown  # listed for its suffix, which stays printable
        file = InboxFile(name=shown, stem=stem, is_lines=is_lines)
        opened = self._open(directory, name, file)
        if opened is None:
            return None
        fd, info = opened
        try:
            identity = _identity(info)
            file.token = _Found(name, identity)
            if is_lines:
                # Whole, until a part is read: a file rejected at once is done with.
                file.part = Part(_key(name), _version(identity), 0, 0, 1, 0, True, info.st_size)
            limit = MAX_LINES_FILE_BYTES if is_lines else self.max_file_bytes
            if info.st_size > limit:
                file.error = too_big("file", info.st_size, limit)
                budget.charge(1, 0)
                return file
            if is_lines:
                return self._read_part(fd, name, file, identity, budget, progress)
            data = read_bounded(fd, info.st_size, limit)
            if data is None:
                file.error = f"file grew past the limit of {_size(limit)} while it was read"
                budget.charge(1, 0)
                return file
            # Changed while read: a producer writes it in place; read it when it is done.
            if _identity(os.fstat(fd)) != identity:
                return None
        finally:
            os.close(fd)
        self._warned.discard(name)
        if self._parse(file, data) and _fresh(identity):
            return None
        budget.charge(1, len(data))
        return file

    def _open(
        self, directory: int, name: str, file: InboxFile
    ) -> tuple[int, os.stat_result] | None:
        """The file, opened, and its fstat if it is a regular file; None to leave it."""
        try:
            return open_regular(name, dir_fd=directory)
        except FileNotFoundError:
            return None
        except OSError as error:
            # ELOOP or ENXIO: it became a symlink or a socket since the listing; the
            # next scan sees what it is. Anything else (EACCES) may pass: try again.
            if error.errno not in (errno.ELOOP, errno.ENXIO):
                self._warn_once(name, f"cannot open {file.name}: {error.strerror}; will try again")
            return None

    def _read_part(
        self,
        fd: int,
        name: str,
        file: InboxFile,
        identity: _Identity,
        budget: _Budget,
        progress: Mapping[str, FileProgress],
    ) -> InboxFile | None:
        """The next lines of a .jsonl file, as many as the budget allows: after those
        already judged if `progress` holds this very version of it, else from the start."""
        part = file.part
        assert part is not None
        start, line = 0, 0
        known = progress.get(part.key)
        if known is not None and known.version == part.version and known.offset <= part.size:
            start, line = known.offset, known.line
        entries, end, last, unfinished = self._lines(
            fd, start, part.size, line, budget.lines, budget.bytes
        )
        # Changed while read (appended to, rewritten): read it when it is done. A file
        # that changes between parts is read again from the start, as a new version.
        if _identity(os.fstat(fd)) != identity:
            return None
        self._warned.discard(name)
        complete = end >= part.size
        if start == 0 and not complete and not budget.whole(self.scan_lines, self.scan_bytes):
            # Begun in a scan that has read other files: it waits for a scan of its own,
            # which reads it whole if it fits one, so that the jobs of a file that fits
            # are judged together (`after` may name a later line: CONTRACT section 15).
            self._again(name)
            return None
        file.entries = entries
        file.part = replace(
            part, start=start, end=end, first_line=line + 1, last_line=last, complete=complete
        )
        if start == 0 and complete and not entries:
            file.error = "the file is empty"
            unfinished = True
        if complete and unfinished and _fresh(identity):
            return None
        budget.charge(len(entries), end - start)
        return file

    def _lines(
        self, fd: int, start: int, size: int, line: int, max_entries: int, max_bytes: int
    ) -> tuple[list[InboxEntry], int, int, bool]:
        """Judge the lines from byte `start` (just after line number `line`) until
        `max_entries` non-blank lines have been, or about `max_bytes` bytes, or the file
        ends. Returns the entries, the offset just past the last line judged, its number,
        and whether it looks unfinished (its JSON ends early). Holds a piece and a line
        at most: a line over the limit is skipped through, not kept."""
        entries: list[InboxEntry] = []
        unfinished = False
        end = start  # just past the last line judged
        buffer = b""  # the file's bytes from `end` on, as far as read
        base = start  # the offset of buffer[0]
        position = 0  # where the next line starts in buffer
        while end < size and len(entries) < max_entries and end - start < max_bytes:
            newline = buffer.find(b"\n", position)
            if newline < 0:
                read_to = base + len(buffer)
                pending = len(buffer) - position
                if read_to < size and pending <= self.max_file_bytes:
                    piece = os.pread(fd, min(_PIECE, size - read_to), read_to)
                    if not piece:  # shrunk: the identity check after the read says so
                        break
                    buffer = buffer[position:] + piece
                    base, position = base + position, 0
                    continue
                if read_to < size:  # longer than any line may be: find where it ends
                    line += 1
                    found = self._newline(fd, read_to, size)
                    stop = size if found is None else found
                    error = too_big(f"line {line}", stop - end, self.max_file_bytes)
                    entries.append(InboxEntry(line, None, error))
                    unfinished = False
                    end = base = size if found is None else found + 1
                    buffer, position = b"", 0
                    continue
                newline = len(buffer)  # the last line, without a newline
            text = buffer[position:newline]
            line += 1
            position = newline + 1
            end = base + min(position, len(buffer))
            if not text.strip():
                continue
            if len(text) > self.max_file_bytes:
                entries.append(
                    InboxEntry(line, None, too_big(f"line {line}", len(text), self.max_file_bytes))
                )
                unfinished = False
                continue
            entry, unfinished = self._entry(line, text)
            entries.append(entry)
        return entries, end, line, unfinished

    @staticmethod
    def _newline(fd: int, offset: int, size: int) -> int | None:
        """The offset of the first newline at or after `offset`, or None."""
        while offset < size:
            piece = os.pread(fd, min(_PIECE, size - offset), offset)
            if not piece:
                return None
            found = piece.find(b"\n")
            if found >= 0:
                return offset + found
            offset += len(piece)
        return None

    def _parse(self, file: InboxFile, data: bytes) -> bool:
        """Fill in a .json file's entries (a batch's jobs numbered from 1); return
        whether it looks unfinished."""
        if not data.strip():
            file.error = "the file is empty"
            return True
        try:
            value = spec.decode(data)
        except InvalidJobFile as error:
            file.entries.append(InboxEntry(None, None, str(error)))
            return isinstance(error, spec.IncompleteJson)
        if isinstance(value, spec.BatchRequest):
            file.whole = True
            file.entries = [
                InboxEntry(n, None, str(job))
                if isinstance(job, InvalidJobFile)
                else InboxEntry(n, job)
                for n, job in enumerate(value.jobs, 1)
            ]
        else:
            file.entries.append(InboxEntry(None, value))
        return False

    @staticmethod
    def _entry(line: int, data: bytes) -> tuple[InboxEntry, bool]:
        """One line of a .jsonl file, and whether it looks unfinished."""
        try:
            value = spec.decode(data, first_line=line)
        except InvalidJobFile as error:
            return InboxEntry(line, None, str(error)), isinstance(error, spec.IncompleteJson)
        if isinstance(value, spec.BatchRequest):
            return InboxEntry(line, None, "a batch must be a .json file of its own"), False
        return InboxEntry(line, value), False

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

    def reject(
        self, file: InboxFile, error: str, lines: Sequence[LineError], duplicate: str | None = None
    ) -> str:
        found = file.token
        if not isinstance(found, _Found) or not self._still_same(found):
            return ""
        report: dict[str, object] = {"file": file.name, "error": error}
        if duplicate is not None:  # the fact as a field: no reader parses `error` for it
            report["duplicate"] = duplicate
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
