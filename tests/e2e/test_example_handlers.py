"""The example handlers (docs/handlers.md), run by a real daemon: real files gzipped and hashed."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from conftest import TESTS, Daemon

SCRIPTS = TESTS.parent / "scripts"


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon(
        env={"PYTHONPATH": os.pathsep.join([str(SCRIPTS), str(TESTS)])},
        args=("--handlers", "example_handlers"),
    )


def _sample(size: int) -> bytes:
    """Compressible but not trivial: words drawn at random, so gzip has work to do."""
    words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"\n", b" "]
    rng = random.Random(7)
    data = bytearray()
    while len(data) < size:
        data += rng.choice(words)
    return bytes(data[:size])


def test_compress_a_real_file(daemon: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "data.txt"
    original = _sample(3 * 1024 * 1024 + 123)  # several chunks, the last one short
    source.write_bytes(original)
    submitted = daemon.cli("submit", "compress", json.dumps({"source": str(source)}), "--id", "gz")
    assert submitted.returncode == 0, submitted.stderr

    waited = daemon.cli("wait", "gz", "--timeout", "60")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    result = daemon.job("gz").result
    target = tmp_path / "data.txt.gz"
    compressed = target.read_bytes()
    assert gzip.decompress(compressed) == original
    assert result == {
        "source": str(source),
        "target": str(target),
        "bytes_in": len(original),
        "bytes_out": len(compressed),
        "source_sha256": hashlib.sha256(original).hexdigest(),
        "target_sha256": hashlib.sha256(compressed).hexdigest(),
    }
    assert len(compressed) < len(original) / 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # ctx.logger's line travels from the worker to the daemon's log.
    [line] = daemon.wait_events("job.log", job_id="gz")
    assert "compressed" in line["msg"]


def test_hash_a_file_and_a_tree(daemon: Daemon, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    contents = {"a.txt": b"first\n", "sub/b.bin": _sample(2 * 1024 * 1024), "sub/c": b""}
    for name, data in contents.items():
        (tree / name).write_bytes(data)
    (tree / "link").symlink_to(tree / "a.txt")

    daemon.drop("one.json", {"type": "hash", "payload": {"path": str(tree / "a.txt")}})
    daemon.drop(
        "all.json", {"type": "hash", "payload": {"path": str(tree), "algorithm": "blake2b"}}
    )
    one = daemon.wait_status("one", "completed", "failed", timeout=60)
    everything = daemon.wait_status("all", "completed", "failed", timeout=60)
    assert one.status == "completed", one.last_error
    assert everything.status == "completed", everything.last_error

    assert one.result["digest"] == hashlib.sha256(b"first\n").hexdigest()
    assert one.result["kind"] == "file"
    manifest = "".join(
        f"{hashlib.blake2b(contents[name]).hexdigest()}  {name}\n" for name in sorted(contents)
    )
    assert everything.result == {
        "path": str(tree),
        "algorithm": "blake2b",
        "kind": "directory",
        "digest": hashlib.blake2b(manifest.encode()).hexdigest(),
        "files": 3,
        "bytes": sum(len(data) for data in contents.values()),
        "skipped": 1,
    }


@pytest.mark.parametrize(
    ("job_type", "payload", "error"),
    [
        ("compress", '{"source": "/nonexistent/file"}', "does not exist"),
        ("compress", '"just a string"', "must be a JSON object"),
        ("hash", '{"path": "/", "algorithm": "md4"}', "payload.algorithm must be one of"),
    ],
)
def test_a_bad_payload_fails_at_once(
    daemon: Daemon, job_type: str, payload: str, error: str
) -> None:
    submitted = daemon.cli("submit", job_type, payload, "--id", "bad", "--max-attempts", "3")
    assert submitted.returncode == 0, submitted.stderr
    waited = daemon.cli("wait", "bad", "--timeout", "60")
    assert waited.returncode == 1
    job = daemon.job("bad")
    assert job.status == "failed"
    assert job.attempts == 1  # PermanentError: no retry, whatever attempts were left
    assert error in job.last_error
    assert job.last_error.startswith("PermanentError: ")
