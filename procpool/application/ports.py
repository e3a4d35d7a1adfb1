"""What the application needs from the outside world, as interfaces.

The supervisor is written against these; the adapters provide SQLite and
in-memory stores and the file-system inbox.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from procpool.domain.errors import ProcpoolError
from procpool.domain.job import Job, Run, Status
from procpool.domain.limits import ClaimLimits
from procpool.domain.pauses import Pause
from procpool.domain.schedules import Advance, Changes, Stored
from procpool.domain.spec import NO_TYPE_DEFAULTS, JobSpec, Request, TypeDefaults


class StoreBusy(ProcpoolError):
    """Another process holds the store's write lock (a backup, an open `sqlite3` shell):
    the transaction did not begin and nothing changed. Try again later."""


class StoreLost(ProcpoolError):
    """The connection to a shared store broke in the middle of a turn (the database
    restarted, the network failed): the turn's transaction is gone, and with it what the
    turn took in and decided. The daemon keeps its workers, reconnects, and the next turn
    that begins matches its view of them to what the store holds (membership.reconcile).
    Raised from the start's recovery, the daemon starts again instead (daemon.py)."""


class StoreReplaced(ProcpoolError):
    """The store's file was deleted or replaced while the daemon had it open (SQLite):
    what the daemon committed from then on would go into a file nobody reads, so it
    stops, and its inbox files stay where they are."""


class SchemaTooNew(ProcpoolError):
    """The store was set up by a newer procpool: `version` is its schema version,
    `known` the newest this procpool knows. Nothing was changed."""

    def __init__(self, message: str, version: int, known: int) -> None:
        super().__init__(message)
        self.version = version
        self.known = known


class IdsBusy(ProcpoolError):
    """Another writer of a shared store holds some of the ids being submitted (a large
    submission in its transaction): nothing was written; offer them again later."""


@dataclass(frozen=True)
class Serving:
    """What a daemon serves, as its store's claim needs it: the concurrency `limits`
    (a claim that must count what runs looks at the `types` served only), the job
    `types` it has handlers for, and the handlers' `defaults` by type."""

    limits: ClaimLimits
    types: tuple[str, ...]
    defaults: Mapping[str, TypeDefaults] = field(default_factory=lambda: NO_TYPE_DEFAULTS)


@dataclass(frozen=True)
class WorkerRecord:
    """A worker as the store remembers it, so the next run can find it if it survives us."""

    pid: int
    create_time: float


@dataclass(frozen=True)
class WorkerReport:
    """What `procpool stats` shows of a live worker."""

    pid: int
    state: str
    current_job: str | None
    jobs_done: int
    updated_at: float


class JobStore(Protocol):
    """The authoritative job store. One writer: the supervisor.

    Changes are made inside `transaction()`; one transaction per loop turn,
    so a turn's changes cost one durable commit.

    `shared`: whether other daemons write the store too (PostgreSQL). Then a lost
    compare-and-set is normal (another daemon rescued or canceled the job), not a bug.
    """

    shared: bool

    def transaction(self) -> AbstractContextManager[None]:
        """Begin, holding the write lock from the start; commit on a normal exit, roll
        back on an exception.

        Raises:
            StoreBusy: on entry, when another process holds the lock past a short wait.
        """
        ...

    def get(self, job_id: str) -> Job | None: ...

    def digests(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The submission digest of each of these ids that exists."""
        ...

    def statuses(self, job_ids: Sequence[str]) -> dict[str, Status]:
        """The status of each of these ids that exists (one query, not one per id)."""
        ...

    def insert(self, jobs: Sequence[Job]) -> None:
        """Add new jobs; their ids must not exist yet."""
        ...

    def insert_unique(self, jobs: Sequence[Job]) -> dict[str, str]:
        """Add new jobs that carry a unique_key (their ids must not exist yet), one at a
        time, in order: a job whose type and key a live job holds (that one inserted
        just before included) is not added. Returns those: new id -> the holder's id.
        Race-free against every other writer (the store's unique index decides)."""
        ...

    def write_checkpoint(self, job_id: str, lease: int, value: bytes, now: float) -> bool:
        """Store `value` (JSON bytes) as the job's checkpoint, at `now`, only if the job
        is running with this lease (and, on a shared store, this daemon owns it);
        whether it was stored."""
        ...

    def checkpoints(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        """The last checkpoint (JSON bytes) of each of these jobs that has one."""
        ...

    def copy_checkpoint(self, source: str, target: str) -> None:
        """Give the job `target` (new, pending) the last checkpoint of `source`, and its
        time, if it has one (`procpool retry --resume`)."""
        ...

    def dependents(self, parent_id: str, after: str, limit: int) -> list[str]:
        """The ids of up to `limit` jobs whose `after` names `parent_id`, those after the
        id `after` in id order ("": from the first), through the edges' index: what
        `held` is asked next when the parent ends."""
        ...

    def held_ids(self, after: str, limit: int) -> list[str]:
        """The ids of up to `limit` jobs still held back by their parents, after the id
        `after` in id order ("": from the first): a start's sweep."""
        ...

    def held(
        self, job_ids: Sequence[str], arrived: bool = False
    ) -> list[tuple[Job, dict[str, Status]]]:
        """Those of these jobs still held back by their parents (pending, not released),
        each with the status of every parent of its own that exists. A job with `after`
        is inserted held; `arrived`: these were inserted in this transaction (a shared
        store makes a parent's end wait for it: see PostgresJobStore.held)."""
        ...

    def release(self, job_ids: Sequence[str]) -> None:
        """Let these held jobs be claimed (their run_at, limits and pauses still apply),
        from this transaction on."""
        ...

    def save(
        self, job: Job, *, expected: Status, expected_lease: int, fields: Sequence[str] = ...
    ) -> bool:
        """Compare-and-set: write `job` if the stored row still has `expected` status
        and lease. Returns whether it did. `fields` may name the only fields that
        changed (of status, attempts, run_at, updated_at, last_error, result,
        progress, worker_pid, lease, started_at, cancel_requested); default: all."""
        ...

    def save_many(self, saves: Sequence[tuple[Job, Status, int]], fields: Sequence[str]) -> int:
        """`save` of each (job, expected status, expected lease), each writing `fields`.
        Returns how many were written: fewer than `saves` if a compare-and-set failed."""
        ...

    def serve(self, serving: Serving) -> None:
        """What `due` obeys from now on: see `Serving`. A store that clients write
        themselves (PostgreSQL) publishes the limits and the handlers' defaults for
        them."""
        ...

    def due(self, now: float, limit: int) -> list[Job]:
        """Up to `limit` pending jobs whose run_at has come: highest priority first, then
        oldest run_at, leaving out the types paused at `now` (`pause`, read in this
        transaction) and those that the limits of `serve` hold back (as
        `limits.admit` decides, from the running jobs counted in this transaction: the
        caller starts what it gets in the same transaction). Its cost must not grow with
        the number of priority levels, of jobs scheduled for later, or of jobs held back
        by a full or paused type: it runs every loop turn that has a worker free."""
        ...

    def limit_figures(self, now: float) -> list[tuple[str, int, int, int]]:
        """Each type limit of `serve`: (type, max, running, due pending jobs)."""
        ...

    def pause_figures(self, now: float) -> list[tuple[Pause, int]]:
        """Each pause in force at `now`, with its type's due pending jobs."""
        ...

    def key_limit_figures(self, now: float) -> list[tuple[str, int, int, int, int]]:
        """Each type with a key limit or a keyed job running: (type, max per key, keys
        running, keys full, due pending jobs of the full keys)."""
        ...

    def pause(self, pause: Pause) -> None:
        """Store a pause (one per type: it replaces the type's earlier one). `due` leaves
        the type out from this transaction on, while the pause is in force."""
        ...

    def resume(self, types: Sequence[str]) -> list[str]:
        """Remove the pauses of these types; returns the types that had one in force or
        not (each removed row), in the order given."""
        ...

    def pauses(self) -> list[Pause]:
        """Every stored pause, those whose `until` has passed included."""
        ...

    def expired(self, now: float, limit: int) -> list[Job]:
        """Up to `limit` pending jobs whose expires_at has come, earliest first."""
        ...

    # Schedules (CONTRACT section 14; adapters/stores/schedule_rows.py).

    def schedules(self) -> list[Stored]:
        """Every stored schedule, by name."""
        ...

    def schedule_definitions(self) -> dict[str, bytes]:
        """Each stored schedule's definition (`Schedule.encoded`), by name."""
        ...

    def take_schedule(self, name: str) -> Stored | None:
        """In a turn: the schedule as committed now, held until the transaction ends;
        None if it is gone or another daemon holds it (it is planning it)."""
        ...

    def write_schedules(self, changes: Changes, now: float) -> None:
        """Apply's changes; an added schedule's cursor is `now`, a changed one's is moved
        up to `now` (an edit never fires)."""
        ...

    def pause_schedule(self, name: str, paused: bool, now: float) -> bool:
        """Pause or resume (the cursor moved up to `now`: no catch-up); False: no such
        schedule."""
        ...

    def trigger_schedule(self, name: str, job: Job) -> bool:
        """Insert a manual job of the schedule; False if its id exists."""
        ...

    def advance_schedule(self, name: str, expected: float, advance: Advance) -> bool:
        """Compare-and-set: if the schedule's cursor is still `expected`, move it to
        `advance.cursor` and insert its jobs (ids that exist are left alone) and skips,
        in this transaction. False: another daemon or turn did it first; nothing written."""
        ...

    def schedule_skips(self) -> dict[str, int]:
        """Occurrences skipped since the store began, by reason."""
        ...

    def schedules_changed(self) -> bool:
        """Whether the schedules were written (by this process, or on a shared store by
        another one that said so) since the last call."""
        ...

    def next_expiry(self) -> float | None:
        """The earliest expires_at of any pending job (seconds since the epoch)."""
        ...

    def next_run_at(self, after: float) -> float | None:
        """The earliest run_at later than `after` of any pending job, or `until` of a
        pause `due` saw in force, if earlier: when a job may next become startable
        (seconds since the epoch)."""
        ...

    def with_status(self, status: Status) -> list[Job]: ...

    def left_running(self) -> list[Job]:
        """The running jobs an earlier run of this daemon left behind, for recovery (with
        a shared store: of this home on this host, not those of the other daemons)."""
        ...

    def max_lease(self) -> int: ...

    def add_worker(self, worker: WorkerRecord) -> None: ...

    def remove_worker(self, pid: int) -> None: ...

    def workers(self) -> list[WorkerRecord]: ...

    def update_workers(self, reports: Sequence[WorkerReport]) -> None: ...

    def record_runs(self, runs: Sequence[Run]) -> None:
        """Add to the attempt history."""
        ...

    def counts(self) -> dict[tuple[str, Status], int]:
        """Jobs per (type, status)."""
        ...

    def oldest_pending_created(self) -> float | None: ...

    def delete_finished_before(self, cutoff: float, limit: int) -> list[tuple[str, Status]]:
        """Delete up to `limit` terminal jobs last changed before `cutoff`, with their
        history. Returns the (type, status) of each deleted job."""
        ...

    def vacuum_step(self, pages: int) -> None:
        """Give up to `pages` free pages back to the file system."""
        ...

    def files_in_progress(self) -> dict[str, FileProgress]:
        """How far each `.jsonl` file read in parts has been judged, by `FileProgress.key`.
        Read every scan: only files that are being read in parts have a record."""
        ...

    def save_progress(self, progress: FileProgress, errors: Sequence[LineError]) -> None:
        """Record how far a file has been judged (replacing the record of its key), and add
        `errors`, bad lines of the part just judged, to those to report when it is done."""
        ...

    def line_errors(self, key: str) -> list[LineError]:
        """The bad lines recorded for a file read in parts, by line number."""
        ...

    def forget_progress(self, key: str) -> None:
        """Drop a file's record and its bad lines: it is done, or read again from the start."""
        ...

    def close(self) -> None: ...


@dataclass
class Tick:
    """What one turn of a daemon on a shared store learns about the others
    (`SharedStore.tick`)."""

    lost: bool = False  # the others declared this daemon dead: its runs are not its own
    daemon_id: int = 0  # the id it has now (a new one after `lost`)
    cancels: list[str] = field(default_factory=list)  # its running jobs asked to cancel
    orphans: list[Job] = field(default_factory=list)  # running jobs of dead daemons, locked
    # Other daemons were declared dead in this turn: what they left of their dependents
    # to settle (CONTRACT section 15) is this daemon's to find (a sweep).
    buried: bool = False


class SharedStore(JobStore, Protocol):
    """A store that several daemons write (`shared` is True): PostgreSQL. Leases are
    unique across daemons, and each daemon holds a lease of its own on the store."""

    daemon_id: int

    def new_lease(self) -> int:
        """A fencing token for a new attempt, never used by any daemon before."""
        ...

    def owned(self) -> list[Job]:
        """In a turn's transaction: the running jobs this daemon owns now."""
        ...

    def tick(self) -> Tick:
        """In the turn's transaction: renew this daemon's lease when due, find the cancels
        other hosts asked for, and take the running jobs of dead daemons."""
        ...

    def tick_in(self) -> float:
        """Seconds until `tick` (or `listener`, while there is none) has work to do."""
        ...

    def digests_now(self, job_ids: Sequence[str]) -> dict[str, str] | None:
        """`digests`, or None at once if another writer holds some of these ids."""
        ...

    def served_types(self) -> set[str] | None:
        """The job types the live daemons have handlers for; None: any (a live daemon
        did not record its types)."""
        ...

    def fence_in(self) -> float:
        """Seconds left before this daemon must have ended its workers' runs, unless a
        renewal commits first; <= 0: past it."""
        ...

    def listener(self) -> int | None:
        """A descriptor that becomes readable when another process notifies this daemon
        (a new job, a cancel), or None while there is none (polling covers the gap)."""
        ...

    def reachable(self) -> bool:
        """Whether a new connection to the store can be opened now."""
        ...

    def heard(self) -> bool:
        """Take what the listener received (see `listener`). False: the listener broke;
        the caller stops watching its descriptor, then `listener` closes it and opens
        another."""
        ...


class StartRegister(Protocol):
    """Which run each worker has begun, kept where it outlives the daemon (see
    adapters/home/start_register.py): one slot per live worker."""

    def begun(self) -> set[int]:
        """The leases of the runs the workers of earlier daemons began last."""
        ...

    def slot(self, index: int) -> memoryview | None:
        """Slot `index`, for the worker that owns it to write its run's lease into."""
        ...


@dataclass
class InboxEntry:
    """One object from an inbox file: a job spec, a cancel request, or why it is neither."""

    line: int | None  # 1-based line in a .jsonl file; None in a .json file
    value: JobSpec | Request | None
    error: str | None = None


@dataclass(frozen=True)
class Part:
    """Which lines of a `.jsonl` file an InboxFile holds. A large file is read a part at a
    time, across loop turns; `start == 0 and complete`: the whole file at once."""

    key: str  # names the file: its name, escaped so that distinct names never share a key
    version: str  # names its content (device, inode, size, mtime): a new one starts over
    start: int  # byte offset of the part's first line
    end: int  # byte offset just past its last line
    first_line: int  # the number of its first line (1-based; blank lines count)
    last_line: int  # the number of its last line
    complete: bool  # the part reaches the end of the file
    size: int  # the file's size, bytes


@dataclass(frozen=True)
class FileProgress:
    """How far a `.jsonl` file read in parts has been judged. Stored in the same transaction
    as the jobs of its lines, so that a restart goes on from `offset`: no line is lost, and
    none is judged twice."""

    key: str  # Part.key
    version: str  # Part.version of the file judged so far
    offset: int  # bytes judged: the next part starts here
    line: int  # lines judged, blank lines too: the next part's first line is line + 1
    entries: int  # non-blank lines judged
    accepted: int  # new jobs made of them
    rejected: int  # bad lines among them


@dataclass
class InboxFile:
    """A file read from the inbox. `error` set means the whole file is rejected."""

    name: str
    stem: str
    is_lines: bool
    entries: list[InboxEntry] = field(default_factory=list)
    error: str | None = None
    token: object = None  # what the inbox needs to find this very file again
    part: Part | None = None  # a .jsonl file: which of its lines `entries` holds
    # All or none: a batch (`{"batch": [...]}`, or one submission over the socket door)
    # whose jobs are stored only if every one of them is good; `line` numbers its jobs.
    whole: bool = False


@dataclass
class LineError:
    line: int
    error: str


class Inbox(Protocol):
    def fileno(self) -> int | None:
        """A descriptor that becomes readable when files arrive, or None: poll."""
        ...

    def drain_events(self) -> None:
        """Consume the readiness of `fileno()`."""
        ...

    def scan(
        self, limit: int, progress: Mapping[str, FileProgress] | None = None
    ) -> Iterator[InboxFile]:
        """Read up to `limit` files (a part of a file counts as one), oldest first, within
        the inbox's budget of lines and bytes per scan. A `.jsonl` file too large for what
        is left of the budget is read in parts, its next part at a later scan; one whose
        key is in `progress` with the same version goes on after `offset`."""
        ...

    def more(self) -> bool:
        """Whether the last scan stopped at its budget with files still to read."""
        ...

    def vanished(self, progress: Mapping[str, FileProgress]) -> list[str]:
        """The keys of `progress` whose files the last scan's listing no longer found
        (deleted or renamed before their last part was read); [] if it listed nothing."""
        ...

    def remove(self, files: Iterable[InboxFile]) -> None:
        """Delete accepted files: called only after their jobs are committed."""
        ...

    def reject(
        self, file: InboxFile, error: str, lines: Sequence[LineError], duplicate: str | None = None
    ) -> str:
        """Move a file into rejected/ beside its error report (naming `duplicate`, an id
        that exists with other content, when that is why); returns where it went."""
        ...
