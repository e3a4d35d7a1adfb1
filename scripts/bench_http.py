"""The HTTP API's cost: requests per second and latency of GET /jobs/{id} and
POST /jobs, with the direct Client figures beside them, measured in the same run.

    python scripts/bench_http.py                  # 5 s per figure
    python scripts/bench_http.py --seconds 2 --connections 4

A daemon (`procpool run` with http_bind on an ephemeral loopback port, 2
workers) serves a temporary home. The load comes from wrk (Debian's package)
when it is installed, else from Python threads with keep-alive connections;
either way only 127.0.0.1 is reached, and each run is bounded in time.

What each figure means:
- GET /jobs/{id}: one completed job read back, as a client polls it.
- POST /jobs: a new `echo` job each time; the answer comes once the daemon has
  committed it (or rejected it), so it includes the daemon's intake turn.
- Client.get: the same read through `procpool.Client`, in this process.
- Client.submit: the inbox file written (fsync'd), without waiting for the daemon.
- Client.submit + stored: the same, then polled until the job is in the store,
  which is what POST /jobs promises.

Prints one JSON line per figure, then a table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from procpool import Client

LUA_POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local prefix = tostring(math.random(1, 1000000000))
request = function()
  counter = counter + 1
  local id = "w-" .. prefix .. "-" .. counter
  local body = '{"type": "echo", "payload": 1, "id": "' .. id .. '"}'
  return wrk.format(nil, "/jobs", nil, body)
end
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def figure(
    name: str, tool: str, requests: int, seconds: float, latencies_ms: dict[str, float]
) -> dict[str, Any]:
    return {
        "figure": name,
        "tool": tool,
        "requests": requests,
        "per_second": round(requests / seconds, 1) if seconds else 0.0,
        **{key: round(value, 3) for key, value in latencies_ms.items()},
    }


# ----------------------------------------------------------------- load generators

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, seconds: float, connections: int, script: Path | None) -> dict[str, Any]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    elapsed = re.search(r"requests in ([0-9.]+)(s|m)", output)
    took = float(elapsed.group(1)) * (60 if elapsed.group(2) == "m" else 1)  # type: ignore[union-attr]
    latencies = {
        f"p{share}_ms": _milliseconds(value)
        for share, value in re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE)
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        print(f"bench_http: {errors.group(1)} answers were not 2xx", file=sys.stderr)
    return {"requests": requests, "seconds": took, "latencies": latencies}


def python_load(
    host: str, port: int, seconds: float, connections: int, request: Any
) -> dict[str, Any]:
    """`connections` threads, each on one keep-alive connection, for `seconds`."""
    samples: list[list[float]] = [[] for _ in range(connections)]
    stop_at = time.monotonic() + seconds

    def run(mine: list[float]) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            method, path, body, headers = request()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            mine.append((time.perf_counter() - started) * 1000)
        connection.close()

    threads = [threading.Thread(target=run, args=(s,)) for s in samples]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    flat = [x for s in samples for x in s]
    latencies = {"p50_ms": percentile(flat, 0.5), "p99_ms": percentile(flat, 0.99)}
    return {"requests": len(flat), "seconds": took, "latencies": latencies}


def timed_calls(seconds: float, call: Any) -> dict[str, Any]:
    """Call `call()` in a loop in this thread for `seconds`."""
    samples = []
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    took = sum(samples) / 1000
    latencies = {"p50_ms": percentile(samples, 0.5), "p99_ms": percentile(samples, 0.99)}
    return {"requests": len(samples), "seconds": took, "latencies": latencies}


# ----------------------------------------------------------------- the run


def start_daemon(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPOOL_")}
    env.update({"PROCPOOL_HTTP_BIND": f"127.0.0.1:{port}", "PROCPOOL_LOG_LEVEL": "WARNING"})
    daemon = subprocess.Popen(
        [sys.executable, "-m", "procpool", "run", "--home", str(home), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return daemon
        except OSError:
            pass
        time.sleep(0.1)
    daemon.kill()
    raise SystemExit("bench_http: the daemon's HTTP API did not come up in 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per figure (default 5)")
    parser.add_argument(
        "--connections", type=int, default=8, help="concurrent connections (default 8)"
    )
    parser.add_argument(
        "--python-load",
        action="store_true",
        help="use the Python load generator even if wrk is there",
    )
    options = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None and not options.python_load
    tool = "wrk" if use_wrk else "python"
    port = free_port()
    results = []
    with tempfile.TemporaryDirectory(prefix="procpool-bench-http-") as directory:
        home = Path(directory) / "home"
        daemon = start_daemon(home, port)
        try:
            client = Client(home)
            client.submit("echo", {"bench": True}, id="bench-read")
            client.wait(["bench-read"], timeout=30)
            url = f"http://127.0.0.1:{port}"
            headers = {"Content-Type": "application/json"}

            def post() -> tuple[str, str, bytes, dict[str, str]]:
                body = json.dumps({"type": "echo", "payload": 1, "id": f"p-{uuid.uuid4().hex}"})
                return "POST", "/jobs", body.encode(), headers

            if use_wrk:
                script = Path(directory) / "post.lua"
                script.write_text(LUA_POST)
                got = wrk(f"{url}/jobs/bench-read", options.seconds, options.connections, None)
                posted = wrk(f"{url}/jobs", options.seconds, options.connections, script)
            else:
                got = python_load("127.0.0.1", port, options.seconds, options.connections,
                                  lambda: ("GET", "/jobs/bench-read", None, {}))  # fmt: skip
                posted = python_load("127.0.0.1", port, options.seconds, options.connections, post)
            results.append(
                figure("GET /jobs/{id}", tool, got["requests"], got["seconds"], got["latencies"])
            )
            results.append(
                figure(
                    "POST /jobs", tool, posted["requests"], posted["seconds"], posted["latencies"]
                )
            )

            read = timed_calls(options.seconds, lambda: client.get("bench-read"))
            results.append(
                figure(
                    "Client.get", "in process", read["requests"], read["seconds"], read["latencies"]
                )
            )
            submitted = timed_calls(options.seconds, lambda: client.submit("echo", 1))
            results.append(figure("Client.submit", "in process", submitted["requests"],
                                  submitted["seconds"], submitted["latencies"]))  # fmt: skip

            def submit_and_store() -> None:
                job_id = client.submit("echo", 1)
                while client._reader.get(job_id) is None:  # the store, not the inbox
                    time.sleep(0.0005)

            stored = timed_calls(options.seconds, submit_and_store)
            results.append(figure("Client.submit + stored", "in process", stored["requests"],
                                  stored["seconds"], stored["latencies"]))  # fmt: skip
            client.close()
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    for result in results:
        print(json.dumps(result))
    print()
    print(f"{'figure':<26} {'load':<11} {'requests/s':>11} {'p50 ms':>9} {'p99 ms':>9}")
    for r in results:
        rate, p50, p99 = r["per_second"], r.get("p50_ms", 0), r.get("p99_ms", 0)
        print(f"{r['figure']:<26} {r['tool']:<11} {rate:>11.1f} {p50:>9.3f} {p99:>9.3f}")
    print(f"\n{options.connections} connections over HTTP, one caller in process; "
          f"{os.cpu_count()} CPUs; {options.seconds:g} s per figure")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
