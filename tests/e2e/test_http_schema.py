"""A property-based run of schemathesis against the API's own OpenAPI document: for
generated requests to every operation, no 500, and every response is one the document
describes (status code, content type, body schema). Against a real daemon and a real
`procpool serve` on loopback.

Each operation gets its own hypothesis run over schemathesis's strategy for it, in
positive mode (requests the document allows) and negative mode (requests it does
not), with a modest number of examples so the suite stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import schemathesis
from conftest import Daemon
from http_helpers import JSON, Server
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 15
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home: Path = tmp_path_factory.mktemp("schema") / "home"
    daemon = Daemon(home, workers=1).start()
    try:
        # A few jobs, so that list pages and stats have something to show.
        for n in range(3):
            daemon.client.submit("echo", {"n": n}, id=f"seed-{n}")
        daemon.client.wait([f"seed-{n}" for n in range(3)], timeout=30)
        server = Server(home, "--bind", "127.0.0.1:0")
        try:
            yield server
        finally:
            server.kill()
    finally:
        daemon.stop()
        daemon.client.close()


def _run(operation: schemathesis.schemas.APIOperation, mode: GenerationMode,
         check: Callable[[schemathesis.Case], object]) -> None:  # fmt: skip
    # derandomize: the same examples at every run of the same code, so a failure in CI
    # is a failure of the change, not of the draw (runs with other seeds, by hand,
    # are how new cases are found: EXAMPLES up, derandomize off).
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case: schemathesis.Case) -> None:
        check(case)

    run()


# The oldest allowed schemathesis (4.0.0) takes up to two minutes for the negative
# mode on a loaded machine: past the suite's 120 s, pytest-timeout cut it short and
# hypothesis reported the cut as a flaky failure.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_response_matches_the_document(server: Server, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 24

    def check(case: schemathesis.Case) -> None:
        headers = JSON if case.method == "POST" else None
        # Negative requests may break the document's own rules (a path it does not
        # have, a method it does not list): only no 500 and a well-formed answer count.
        checks = CONFORMANCE if mode is GenerationMode.POSITIVE else [not_a_server_error]
        response = case.call_and_validate(base_url=server.url, headers=headers, checks=checks)
        assert "Traceback" not in response.text

    ran = 0
    for operation in operations:
        # /events streams for as long as the client reads: it has tests of its own.
        if operation.path == "/events":
            continue
        try:
            _run(operation, mode, check)
        except Unsatisfiable:
            # No request breaks the rules of an operation that takes nothing (/healthz).
            assert mode is GenerationMode.NEGATIVE
            continue
        ran += 1
    # Negative requests exist where input has rules: /jobs, /jobs/batch, list and wait
    # (how many of them schemathesis finds depends on its version).
    assert ran >= (22 if mode is GenerationMode.POSITIVE else 3)
