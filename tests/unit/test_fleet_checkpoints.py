"""Checkpoints as the supervisor's side sees them (CONTRACT section 16), against the
fleet's simulated workers of test_fleet: which attempt may write, what each is
answered, and that the loop does not linger while a checkpointing job runs."""

from __future__ import annotations

import pytest
from test_fleet import GRACE, HEARTBEAT, LONGEST, SHORTEST, Sim, W

from procpool.application.supervisor.settings import Limits
from procpool.application.wire.messages import Checkpoint, CheckpointStored
from procpool.domain.job import Status


def answers(sim: Sim) -> list[CheckpointStored]:
    """What the supervisor sends the simulated workers, CheckpointStored kept."""
    found: list[CheckpointStored] = []
    deliver = sim.deliver_message

    def keep(pid: int, message: object) -> None:
        if isinstance(message, CheckpointStored):
            found.append(message)
        deliver(pid, message)

    sim.deliver_message = keep  # type: ignore[method-assign]
    return found


def running(sim: Sim, job_id: str = "B") -> int:
    sim.spawn(W)
    sim.submit(job_id)
    sim.hand(W, job_id)
    sim.start_next(W)
    return sim.job(job_id).lease


@pytest.mark.parametrize(
    ("case", "stored"),
    [
        ("current", True),  # the attempt that runs: written, answered after the commit
        ("older lease", False),  # an earlier run of the job: stale
        ("cancel asked", False),  # its cancel was asked: it no longer owns the job
    ],
)
def test_only_the_attempt_that_owns_the_job_writes_its_checkpoint(case: str, stored: bool) -> None:
    sim = Sim(on_term="return")  # a cancel's SIGTERM: the handler returns
    told = answers(sim)
    lease = running(sim)
    if case == "cancel asked":
        sim.apply(sim.intake.cancel("B", sim.now, 0.0))
    sent = lease - 1 if case == "older lease" else lease
    sim.receive(W, Checkpoint("B", sent, b'{"i":3}'))
    assert [(a.job_id, a.lease, a.stored) for a in told] == [("B", sent, stored)]
    assert sim.store.checkpoints(["B"]) == ({"B": b'{"i":3}'} if stored else {})
    assert (sim.job("B").checkpoint_at is not None) is stored
    said = {s.event for s in sim.said}
    assert stored or said & {"checkpoint.refused", "message.stale"}, said


def test_a_checkpoint_over_the_limit_or_before_the_start_ends_the_worker() -> None:
    sim = Sim()
    sim.fleet.limits = Limits(heartbeat_timeout=HEARTBEAT, kill_grace=GRACE,
                              max_checkpoint_bytes=10)  # fmt: skip
    lease = running(sim)
    sim.receive(W, Checkpoint("B", lease, b"1" * 11))
    assert sim.store.checkpoints(["B"]) == {}
    job = sim.job("B")
    assert (job.status, job.attempts) == (Status.PENDING, 1)
    assert "checkpoint of 11 bytes" in (job.last_error or "")
    other = Sim()
    other.spawn(W)
    other.submit("C")
    other.hand(W, "C")  # queued, not started
    other.receive(W, Checkpoint("C", other.job("C").lease, b"1"))
    assert W not in other.fleet.workers or other.fleet.workers[W].end_cause is not None


def test_the_loop_does_not_linger_while_a_job_that_checkpoints_runs() -> None:
    sim = Sim()
    sim.spawn(W)
    for n in range(21):
        sim.submit(f"j{n}")
        sim.hand(W, f"j{n}")
    sim.start_next(W)
    sim.fleet.batch.observe(0.002)
    assert sim.fleet.linger(LONGEST, SHORTEST) == pytest.approx(LONGEST)
    assert not sim.fleet.awaits_commit()
    sim.receive(W, Checkpoint("j0", sim.job("j0").lease, b"1"))
    sim.finish(W)
    sim.start_next(W)  # the next job of the type: its checkpoint will wait for a commit
    assert sim.fleet.linger(LONGEST, SHORTEST) == 0.0
    assert sim.fleet.awaits_commit(), "as a client on the socket: the loop does not linger"
