"""Dependencies between jobs (CONTRACT section 15): the rules, as pure functions.

    submission ─▶ problems(graph, known) ─▶ [] or the ids at fault (nothing stored)
    parent ends ─▶ verdict(after_failure, statuses of all parents) ─▶ wait | ready | cancel

A job with `after` is held back until its parents allow it: every parent
`completed` (after_failure "cancel", the default), or every parent terminal
(after_failure "run": a fan-in callback). A parent that ends `failed` or
`canceled` cancels a "cancel" dependent at once, so that no job waits on a parent
that can no longer complete. The stores keep the edges; the decisions are here.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from procpool.domain.job import Status


@dataclass(frozen=True)
class Problem:
    """Why the job `job_id` of a submission cannot be stored: `message` names the id
    at fault."""

    job_id: str
    message: str


def problems(graph: Mapping[str, Sequence[str]], known: Container[str]) -> list[Problem]:
    """What is wrong with the `after` lists of one submission: `graph` maps each new
    job's id to its `after` (jobs without one may be left out or map to ()), `known`
    holds the ids already stored. A parent must be known or in `graph`; no job may name
    itself; the new jobs must form no cycle (stored jobs cannot wait for new ones, so
    a cycle can only run through new jobs). One problem per job at fault, in the order
    of `graph`; a cycle is reported once, at its first job."""
    found: list[Problem] = []
    for job_id, parents in graph.items():
        for parent in parents:
            if parent == job_id:
                found.append(Problem(job_id, f"after names the job itself ({job_id})"))
                break
            if parent not in graph and parent not in known:
                found.append(Problem(job_id, f"after names {parent}, which is no job"))
                break
    if found:
        return found
    cycle = _cycle(graph)
    if cycle:
        path = " -> ".join([*cycle, cycle[0]])
        found.append(Problem(cycle[0], f"after makes a cycle: {path}"))
    return found


def _cycle(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """The jobs of one cycle through the edges of `graph` (job -> parent), in order; []
    if there is none. Iterative: a chain may be as long as the submission."""
    done: set[str] = set()
    for root in graph:
        if root in done:
            continue
        path: list[str] = [root]
        on_path = {root: 0}
        stack = [iter(graph.get(root, ()))]
        while stack:
            parent = next(stack[-1], None)
            if parent is None:
                stack.pop()
                node = path.pop()
                del on_path[node]
                done.add(node)
                continue
            if parent in on_path:
                return path[on_path[parent] :]
            if parent in done or parent not in graph:
                continue
            on_path[parent] = len(path)
            path.append(parent)
            stack.append(iter(graph[parent]))
    return []


class Decision(Enum):
    WAIT = "wait"  # a parent may still complete (or, for "run", still end)
    READY = "ready"  # the parents allow it to start
    CANCEL = "cancel"  # a parent failed or was canceled: give it up


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    # CANCEL: the parent that decided it, and how that parent ended.
    parent: str | None = None
    parent_status: Status | None = None


_WAIT = Verdict(Decision.WAIT)
_READY = Verdict(Decision.READY)


def verdict(after_failure: str, after: Sequence[str], statuses: Mapping[str, Status]) -> Verdict:
    """What a pending job waiting for `after` does now, given its parents' `statuses`.
    A parent missing from `statuses` (deleted by hand) counts as canceled: the job must
    not wait for it forever. With several failed parents, the first in `after` names
    the cancel."""
    known = [(parent, statuses.get(parent, Status.CANCELED)) for parent in after]
    if after_failure == "run":
        return _READY if all(status.is_terminal for _, status in known) else _WAIT
    for parent, status in known:
        if status in (Status.FAILED, Status.CANCELED):
            return Verdict(Decision.CANCEL, parent, status)
    return _READY if all(status is Status.COMPLETED for _, status in known) else _WAIT


def waiting(parents: Mapping[str, Status]) -> dict[str, object]:
    """The `waiting` object of a job held by its parents."""
    return {"reason": "after", "parents": {job_id: str(s) for job_id, s in parents.items()}}
