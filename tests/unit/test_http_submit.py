"""POST /jobs hands its job to Client.submit by the spec's field names: every field a
job object may carry (but those of `procpool retry`) is an argument of submit, and
every argument of submit is such a field, so that none is left out."""

from __future__ import annotations

import inspect

from procpool import Client
from procpool.domain.spec import JobSpec
from procpool.entrypoints.http.service import SUBMIT_FIELDS, _arguments


def test_the_submitted_fields_are_client_submits_arguments() -> None:
    arguments = [name for name in inspect.signature(Client.submit).parameters if name != "self"]
    assert sorted(SUBMIT_FIELDS) == sorted(arguments)


def test_a_spec_becomes_its_arguments() -> None:
    job = JobSpec(type="echo", payload={"n": 1}, id="j", concurrency_key="k", expires_in=5.0)
    given = _arguments(job)
    assert (given["type"], given["payload"], given["id"]) == ("echo", {"n": 1}, "j")
    assert (given["concurrency_key"], given["expires_in"], given["after"]) == ("k", 5.0, None)
