"""The daemon's own files in its home, opened as if others could write the home.

A home shared with a group of producers (mode 0770) lets every member create,
rename and delete names in it. A member who plants `procpool.pid` as a symbolic
link to a file of the daemon's user would have the daemon overwrite that file;
a FIFO would hang it. So every fixed name the daemon opens in its home goes
through this module:

    HomeDir.open(name)         O_NOFOLLOW relative to the home's descriptor; a
                               directory on the way (`logs/`) opened with O_NOFOLLOW
                               too; then fstat: a regular file of the daemon's user,
                               or UnsafeHomeFile
    check_plain(path)          lstat, for files a library opens by path (SQLite):
                               absent, or a regular file (of the daemon's user
                               unless any_owner)
    HomeDir.create_temporary   a new file under an unpredictable name, O_CREAT|O_EXCL
                               (never an existing file or link), renamed into place

Hard links are left to the kernel: `fs.protected_hardlinks` (on by default)
stops a user from linking a file they could not write themselves.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from procpool.domain.errors import ConfigError

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# A FIFO planted under a file's name must not block the open; fstat refuses it next.
_OPEN_FLAGS = _NOFOLLOW | os.O_NONBLOCK


class UnsafeHomeFile(ConfigError):
    """A name in the home the daemon will not use: a link, not a regular file (or not
    a directory), or another user's. The message names the file and what to do."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def refusal(
    path: Path, info: os.stat_result, want_dir: bool = False, any_owner: bool = False
) -> str | None:
    """Why the daemon will not use `path` (`info` from lstat or fstat), or None."""
    wanted = stat.S_ISDIR(info.st_mode) if want_dir else stat.S_ISREG(info.st_mode)
    if not wanted:
        what = "a directory" if want_dir else "a regular file"
        return (
            f"{path} is {_kind(info.st_mode)}, not {what}: the daemon does not follow links"
            " or open other kinds of file in its home (someone who can write the home may"
            " have put it there); remove it"
        )
    if info.st_uid != os.geteuid() and not any_owner:
        return (
            f"{path} belongs to uid {info.st_uid}, not to the daemon's user (uid"
            f" {os.geteuid()}): someone else made it; remove it, or chown it"
        )
    return None


def open_regular(dir_fd: int, name: str, shown: Path, flags: int, mode: int = 0o600) -> int:
    """Open `name` in the directory `dir_fd` without following a link (O_NOFOLLOW, and
    O_NONBLOCK so that a FIFO cannot block); a regular file of ours only. `shown` is
    its path in messages.

    Raises:
        UnsafeHomeFile: a link, another kind of file, or another user's.
        OSError: any other failure (absent without O_CREAT, EACCES, ENOSPC...).
    """
    try:
        fd = os.open(name, flags | _OPEN_FLAGS, mode, dir_fd=dir_fd)
    except OSError as error:
        # A link (ELOOP), a directory opened for writing (EISDIR), a FIFO opened for
        # writing with no reader (ENXIO): say what it is.
        if error.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        why = refusal(shown, os.lstat(name, dir_fd=dir_fd))
        if why is None:
            raise
        raise UnsafeHomeFile(why) from None
    why = refusal(shown, os.fstat(fd))
    if why is not None:
        os.close(fd)
        raise UnsafeHomeFile(why)
    return fd


def check_plain(path: Path, *, any_owner: bool = False) -> None:
    """For a file a library opens by path (SQLite follows links): absent, or a regular
    file of ours (of anyone's with `any_owner`). Checked just before the library
    opens it.

    Raises:
        UnsafeHomeFile: it is a link, another kind of file, or another user's.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    why = refusal(path, info, any_owner=any_owner)
    if why is not None:
        raise UnsafeHomeFile(why)


class HomeDir:
    """A descriptor of the home, and the files in it opened relative to it.

    Raises:
        OSError: the home cannot be opened.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # The home itself may be a link an operator made (its parent is not shared).
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def directory(self, name: str) -> int:
        """A descriptor of the directory HOME/`name` (created 0700 if missing), opened
        without following a link. The caller closes it.

        Raises:
            UnsafeHomeFile: a link, not a directory, or another user's.
            OSError: it cannot be created or opened.
        """
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=self.fd)
        shown = self.path / name
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=self.fd)
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            info = os.lstat(name, dir_fd=self.fd)
            raise UnsafeHomeFile(refusal(shown, info, want_dir=True) or str(error)) from None
        why = refusal(shown, os.fstat(fd), want_dir=True)
        if why is not None:
            os.close(fd)
            raise UnsafeHomeFile(why)
        return fd

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """Open HOME/`name` ("procpool.pid", "logs/procpool.jsonl") without following a
        link on the way; a regular file of ours only. See `open_regular`."""
        directory, _, leaf = name.rpartition("/")
        if not directory:
            return open_regular(self.fd, leaf, self.path / name, flags, mode)
        parent = self.directory(directory)
        try:
            return open_regular(parent, leaf, self.path / name, flags, mode)
        finally:
            os.close(parent)

    def create_temporary(self, prefix: str, mode: int = 0o644) -> tuple[int, str]:
        """A new file `PREFIX.RANDOM.tmp` in the home: (descriptor, name). O_EXCL: never
        a file or link that was there already.

        Raises:
            OSError: it cannot be created.
        """
        name = f"{prefix}.{secrets.token_hex(8)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        return os.open(name, flags, mode, dir_fd=self.fd), name

    def replace(self, source: str, target: str) -> None:
        """Rename HOME/source over HOME/target (a link at target is replaced, not
        followed). Raises OSError."""
        os.replace(source, target, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        """Remove HOME/name if it is there (a link is removed, not followed)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
