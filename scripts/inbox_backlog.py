"""What one scan of the inbox costs with a backlog waiting (issue 13, point 6).

Fills a fresh inbox with N small job files, then scans it as the supervisor does each
turn (read up to 1,000 files, remove them) and prints the first scan (which lists the
inbox), the median and the slowest, in milliseconds. Runs the inbox in this process:
no daemon, no store.

Usage: python scripts/inbox_backlog.py [--files N] [--scans K] [--batch B]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from procpool.adapters.inbox.directory import FileInbox


def measure(files: int, scans: int, batch: int) -> list[float]:
    """Seconds taken by each of `scans` scans of `batch` files, `files` waiting."""
    base = Path(tempfile.mkdtemp(prefix="procpool-backlog-"))
    try:
        inbox = FileInbox(base / "home", 1 << 20)
        for number in range(files):
            (inbox.directory / f"f{number:07d}.json").write_bytes(b'{"type": "echo"}')
        taken = []
        for _ in range(scans):
            start = time.perf_counter()
            read = list(inbox.scan(batch))
            inbox.remove(read)
            taken.append(time.perf_counter() - start)
        inbox.close_descriptors()
        return taken
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="files waiting")
    parser.add_argument("--scans", type=int, default=20, help="scans measured")
    parser.add_argument("--batch", type=int, default=1000, help="files read per scan")
    args = parser.parse_args()
    taken = [t * 1000 for t in measure(args.files, args.scans, args.batch)]
    print(
        f"{args.files:,} files waiting, {args.batch:,} read per scan: first scan"
        f" {taken[0]:.0f} ms, median {statistics.median(taken):.0f} ms,"
        f" slowest {max(taken):.0f} ms"
    )


if __name__ == "__main__":
    main()
