"""Example handlers: gzip a file and hash a file or a directory tree, with the standard library.

Load them with `PYTHONPATH=scripts procpool run --handlers example_handlers`, then
make an input file (2,000,000 numbered lines, 14 MiB) and work on it:

    mkdir -p /tmp/data && seq 2000000 > /tmp/data/numbers.txt
    procpool submit compress '{"source": "/tmp/data/numbers.txt", "level": 9}'
    procpool submit hash '{"path": "/tmp/data", "algorithm": "blake2b"}'

(docs/handlers.md, "The example module", shows the session.)

A bad payload raises PermanentError: no retry would make it valid. Other
errors (a full disk, an I/O error) are ordinary exceptions, so the job is
retried with backoff.

A job may run more than once (a crash cuts an attempt short, then it runs
again), and a cancel or timeout kills the worker's process group with SIGKILL,
so no cleanup code runs. Hence `compress` writes its output to a temporary file
beside the target and renames it into place: a reader never sees half a file,
and a rerun simply replaces it (a killed attempt may leave a dot-file
`.TARGET.*` behind, which nothing reads). The output is byte-for-byte reproducible (no
timestamp or file name in the gzip header), so every run reports the same digest.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from procpool import JobContext, PermanentError, handler

CHUNK_BYTES = 1024 * 1024
ALGORITHMS = ("sha256", "sha512", "blake2b", "blake2s")


def _field(payload: Any, key: str, kind: type, default: Any = None) -> Any:
    if not isinstance(payload, dict):
        raise PermanentError(f"the payload must be a JSON object, got {type(payload).__name__}")
    value = payload.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise PermanentError(f"payload.{key} must be a {kind.__name__}, got {value!r}")
    return value


def _regular_file(path: Path, what: str) -> os.stat_result:
    """`path`'s stat, which must be of a regular file; PermanentError otherwise."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PermanentError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise PermanentError(f"{what} {path} cannot be read: permission denied") from None
    if not stat.S_ISREG(info.st_mode):
        raise PermanentError(f"{what} {path} is not a regular file")
    return info


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK_BYTES):
        yield chunk


@handler("compress")
def compress(ctx: JobContext, payload: Any) -> dict[str, Any]:
    """Gzip `source` to `target` (default: source + ".gz") at `level` 1-9 (default 6).

    Returns the sizes and the sha256 of both the source and the compressed file.
    """
    source = Path(_field(payload, "source", str))
    target = Path(_field(payload, "target", str, default=f"{source}.gz"))
    level = _field(payload, "level", int, default=6)
    if not 1 <= level <= 9:
        raise PermanentError(f"payload.level must be between 1 and 9, got {level}")
    if target.resolve() == source.resolve():
        raise PermanentError(f"the target {target} is the source itself")
    info = _regular_file(source, "the source")
    size = info.st_size
    if not target.parent.is_dir():
        raise PermanentError(f"the target's directory {target.parent} does not exist")
    if target.is_dir():
        raise PermanentError(f"the target {target} is a directory")
    try:
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except PermissionError:
        raise PermanentError(f"cannot write into {target.parent}: permission denied") from None

    source_digest = hashlib.sha256()
    done = 0
    try:
        os.fchmod(descriptor, stat.S_IMODE(info.st_mode))
        with os.fdopen(descriptor, "wb") as raw, source.open("rb") as reader:
            # filename="" and mtime=0: the same input always gives the same bytes.
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0
            ) as out:
                for chunk in _chunks(reader):
                    source_digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    ctx.progress(done / size if size else 1.0, f"{_mib(done)} of {_mib(size)}")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

    target_digest = hashlib.sha256()
    with target.open("rb") as written:
        for chunk in _chunks(written):
            target_digest.update(chunk)
    compressed = target.stat().st_size
    ctx.logger.info(f"compressed {source} to {target}: {done} -> {compressed} bytes")
    return {
        "source": str(source),
        "target": str(target),
        "bytes_in": done,
        "bytes_out": compressed,
        "source_sha256": source_digest.hexdigest(),
        "target_sha256": target_digest.hexdigest(),
    }


def _digest_file(path: Path, algorithm: str, on_chunk: Callable[[int], None]) -> str:
    digest = hashlib.new(algorithm)
    try:
        handle = path.open("rb")
    except PermissionError:
        raise PermanentError(f"{path} cannot be read: permission denied") from None
    with handle:
        for chunk in _chunks(handle):
            digest.update(chunk)
            on_chunk(len(chunk))
    return digest.hexdigest()


def _tree(root: Path) -> tuple[list[tuple[str, Path]], int]:
    """The regular files under `root` as sorted (relative POSIX path, path) pairs, and
    how many other entries were skipped.

    Symbolic links are never followed: a link out of the tree would hash files
    that are not in it, and a link loop would never end. A FIFO is never opened:
    reading it could block forever.
    """
    files: list[tuple[str, Path]] = []
    skipped = 0
    for directory, subdirectories, names in os.walk(root):
        skipped += sum(1 for name in subdirectories if Path(directory, name).is_symlink())
        for name in names:
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file():
                skipped += 1
                continue
            files.append((path.relative_to(root).as_posix(), path))
    files.sort()
    return files, skipped


@handler("hash")
def hash_tree(ctx: JobContext, payload: Any) -> dict[str, Any]:
    """Digest `path` with `algorithm` (sha256, sha512, blake2b or blake2s; default sha256).

    A file gives the digest of its bytes. A directory gives the digest of a
    manifest in the format of `sha256sum`: one line "DIGEST  RELATIVE/PATH\\n"
    per regular file, sorted by path; symbolic links are skipped and counted.
    """
    path = Path(_field(payload, "path", str))
    algorithm = _field(payload, "algorithm", str, default="sha256")
    if algorithm not in ALGORITHMS:
        raise PermanentError(
            f"payload.algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}"
        )
    if not path.exists():
        raise PermanentError(f"{path} does not exist")

    is_directory = path.is_dir()
    if is_directory:
        files, skipped = _tree(path)
    else:
        _regular_file(path, "the path")
        files, skipped = [(path.name, path)], 0
    total = sum(file.stat().st_size for _, file in files)
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        ctx.progress(done / total if total else 1.0, f"{_mib(done)} of {_mib(total)}")

    digests = [(name, _digest_file(file, algorithm, advance)) for name, file in files]
    if is_directory:
        manifest = "".join(f"{digest}  {name}\n" for name, digest in digests)
        digest = hashlib.new(algorithm, manifest.encode()).hexdigest()
    else:
        digest = digests[0][1]
    ctx.progress(1.0, f"{len(files)} files hashed")
    return {
        "path": str(path),
        "algorithm": algorithm,
        "kind": "directory" if is_directory else "file",
        "digest": digest,
        "files": len(files),
        "bytes": done,
        "skipped": skipped,
    }
