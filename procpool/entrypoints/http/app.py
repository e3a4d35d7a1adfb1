"""The HTTP API of CONTRACT section 10, as a Litestar application.

    request ─▶ Gate (Host 421, token 401, Content-Type 415, body size 413)
            ─▶ Litestar routes ─▶ Service (client of the home) ─▶ inbox / read-only store
                               ─▶ events.stream (the log, as Server-Sent Events)

Litestar generates the OpenAPI 3.1 document from the handlers' signatures
and the msgspec structs they return; the request bodies are decoded by
procpool's own job-file decoder (so an error reads as the inbox's does), and
their schema comes from msgspec's JSON Schema of `JobRequest`, merged into the
same document. Every error is `{"error": "..."}`; an unexpected one is a 500
with no detail, its traceback going to the server's own output.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio.to_thread
import msgspec
from litestar import Litestar, MediaType, Request, Response, delete, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream

from procpool.adapters.bind import host_name
from procpool.adapters.logs.cursor import LogCursor
from procpool.adapters.stores.stats import Stats
from procpool.client import Attempt, JobInfo, NoJobStore
from procpool.domain.job import Status
from procpool.entrypoints.http.events import (
    WAIT_FLOOR,
    BadEventId,
    EventFilter,
    LogWatch,
    parse_event_id,
    stream,
)
from procpool.entrypoints.http.models import (
    BatchCreated,
    Checkpoint,
    Created,
    Error,
    Health,
    JobPage,
    JobRequest,
    PauseList,
    PauseRequest,
)
from procpool.entrypoints.http.schedule_routes import ScheduleFile, schedule_routes
from procpool.entrypoints.http.service import Outcome, Problem, Service

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

LITESTAR_SCHEMA = "/schema"
MAX_WAIT = 300.0
DEFAULT_WAIT = 30.0
MAX_PAGE = 1000
# The request bodies, by route: decoded by procpool, documented from these types.
REQUEST_BODIES: dict[tuple[str, str], Any] = {
    ("/jobs", "post"): JobRequest,
    # JobRequest is a class made at run time, which mypy cannot take for a type.
    ("/jobs/batch", "post"): list[JobRequest],  # type: ignore[valid-type]
    ("/pauses", "post"): PauseRequest,
    ("/schedules", "post"): ScheduleFile,
}


def _error(status: int, description: str) -> ResponseSpec:
    return ResponseSpec(Error, description=description, generate_examples=False)


BAD_REQUEST = {400: _error(400, "a query parameter or header is malformed")}
# Every route that takes a parameter says 400 with procpool's Error (Litestar would
# document its own shape of a validation error, which this API never sends).
NOT_FOUND = {**BAD_REQUEST, 404: _error(404, "no job has this id")}
NO_STORE = {503: _error(503, "no daemon has made the home's store, or the job waits in the inbox")}
POST_ERRORS = {
    413: _error(413, "the body is larger than max_file_bytes"),
    415: _error(415, "the Content-Type is not application/json"),
}


class Gate:
    """The rules every request passes before a route sees it (CONTRACT section 10).

    Args:
        app: the application behind the gate.
        hosts: the names a Host header may give; None: any (a Unix socket).
        token: the bearer token every request needs; None: no token.
        max_body: the largest request body, in bytes.
    """

    def __init__(
        self, app: ASGIApp, hosts: frozenset[str] | None, token: str | None, max_body: int
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.token = None if token is None else token.encode()
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", ())}
        refusal = self._refusal(scope, headers)
        path = scope.get("path", "")
        if refusal is None and (path == LITESTAR_SCHEMA or path.startswith(LITESTAR_SCHEMA + "/")):
            # Litestar mounts its own copy of the document there, without the request
            # bodies that procpool decodes itself: /openapi.json is the one served.
            refusal = 404, "Not Found", {}
        if refusal is not None:
            await _respond(send, *refusal)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await self._body(headers, receive)
        if body is None:
            limit = f"{self.max_body} bytes (max_file_bytes)"
            await _respond(send, 413, f"the body is larger than {limit}")
            return
        await self.app(scope, _replay(body, receive), send)

    def _refusal(
        self, scope: Scope, headers: dict[str, bytes]
    ) -> tuple[int, str, dict[str, str]] | None:
        if self.hosts is not None:
            host = host_name(headers.get("host", b"").decode("latin-1"))
            if host not in self.hosts:
                return 421, f"the Host header {host!r} names neither this server nor localhost", {}
        if self.token is not None:
            given = headers.get("authorization", b"")
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(
                credentials.strip(), self.token
            ):
                return (
                    401,
                    "a valid Authorization: Bearer token is needed",
                    {"www-authenticate": "Bearer"},
                )
        if scope["method"] == "POST":
            kind = headers.get("content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                shown = kind.decode("latin-1") or "none"
                return 415, f"a POST needs Content-Type: application/json, not {shown}", {}
        return None

    async def _body(self, headers: dict[str, bytes], receive: Receive) -> bytes | None:
        """The whole body, or None once it passes max_body (read no further)."""
        try:
            if int(headers.get("content-length", b"0")) > self.max_body:
                return None
        except ValueError:
            pass  # h11 refuses a malformed length before we see it
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _respond(
    send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    body = msgspec.json.encode(Error(error=message))
    fields = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    fields += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------- errors


def _problem(request: Request[Any, Any, Any], problem: Problem) -> Response[Error]:
    return Response(Error(error=str(problem), index=problem.index), status_code=problem.status)


def _http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[Error]:
    message = error.detail
    if isinstance(error, ValidationException) and isinstance(error.extra, list):
        parts = []
        for item in error.extra:
            if isinstance(item, dict):
                key = item.get("key")
                parts.append(f"{key}: {item.get('message')}" if key else str(item.get("message")))
        message = "; ".join(parts) or message
    headers = {k: v for k, v in (error.headers or {}).items() if k.lower() == "allow"}
    return Response(Error(error=message), status_code=error.status_code, headers=headers)


def _crash(request: Request[Any, Any, Any], error: Exception) -> Response[Error]:
    # A bug, or a store that fails: the detail goes to the server's output, not the client.
    print(f"procpool serve: {request.method} {request.url.path} failed:", file=sys.stderr)
    traceback.print_exception(error, file=sys.stderr)
    return Response(Error(error="internal error; the server's output says why"), status_code=500)


# ----------------------------------------------------------------- the routes


def _in_thread(function: Callable[..., T], *args: object) -> Awaitable[T]:
    """Run what may block (a store's query, a look into the inbox or rejected/, a
    submit's fsync, a CPU sample) in a worker thread: the event loop only moves bytes,
    so one slow look-up never holds the other connections."""
    return anyio.to_thread.run_sync(partial(function, *args))


def _write_routes(service: Service) -> list[Any]:
    @post("/jobs", status_code=201, summary="Submit a job",
          responses={200: ResponseSpec(Created, description="the same submission again"),
                     409: _error(409, "the id belongs to a job with other content"),
                     422: _error(422, "a field or value is wrong"), **POST_ERRORS})  # fmt: skip
    async def submit(request: Request[Any, Any, Any]) -> Response[Created]:
        """The body is a job object (as a job file holds); the id is an idempotency key."""
        outcome, job_id = await _in_thread(service.submit, await request.body())
        location = {"Location": f"/jobs/{job_id}"} if outcome is Outcome.CREATED else {}
        return Response(Created(id=job_id), status_code=outcome.value, headers=location)

    @post("/jobs/batch", status_code=201, summary="Submit jobs, all or none",
          responses={409: _error(409, "an id belongs to a job with other content"),
                     422: _error(422, "an item is wrong: index names it"),
                     **POST_ERRORS})  # fmt: skip
    async def submit_batch(request: Request[Any, Any, Any]) -> BatchCreated:
        """The body is a JSON array of job objects: every one is checked before any is
        queued."""
        return BatchCreated(ids=await _in_thread(service.submit_batch, await request.body()))

    @post("/jobs/{job_id:str}/cancel", status_code=202, summary="Cancel a job",
          responses={**NOT_FOUND, **NO_STORE, **POST_ERRORS,
                     409: _error(409, "the job is already terminal")})  # fmt: skip
    async def cancel(job_id: str) -> JobInfo:
        """Asks for the cancel; the job as it is once the daemon took the request."""
        return await _in_thread(service.cancel, job_id)

    @post("/jobs/{job_id:str}/retry", status_code=201, summary="Retry a finished job",
          responses={**NOT_FOUND, **NO_STORE, **POST_ERRORS,
                     409: _error(409, "the job is not terminal")})  # fmt: skip
    async def retry(
        job_id: str,
        resume: Annotated[bool, Parameter(query="resume", required=False)] = False,
        cascade: Annotated[bool, Parameter(query="cascade", required=False)] = False,
    ) -> Response[Created]:
        """A new job with the same type, payload and options, as `procpool retry`;
        `resume=true`: it starts from the old job's last checkpoint (`--resume`);
        `cascade=true`: the jobs its end canceled are re-created too (`renamed`)."""
        if cascade and resume:
            raise Problem(400, "resume and cascade do not go together")
        if cascade:
            renamed = await _in_thread(service.retry_cascade, job_id)
            created = Created(id=renamed[job_id], renamed=renamed)
        else:
            created = Created(id=await _in_thread(service.retry, job_id, resume))
        location = {"Location": f"/jobs/{created.id}"}
        return Response(created, status_code=201, headers=location)

    queued = ResponseSpec(PauseList, description="no daemon took it yet: it waits in the inbox")

    @post("/pauses", status_code=200, summary="Pause job types",
          responses={202: queued, 400: _error(400, "the body is not JSON"),
                     422: _error(422, "a field or value is wrong"), **POST_ERRORS})  # fmt: skip
    async def pause(request: Request[Any, Any, Any]) -> Response[PauseList]:
        """Start no job of these types until `until` (or for `duration` seconds, or until
        resumed); running ones go on. 200 once stored (no job of them starts after it),
        with the pauses in force."""
        stored, pauses = await _in_thread(service.pause, await request.body())
        return Response(PauseList(pauses=pauses), status_code=200 if stored else 202)

    @delete("/pauses/{job_type:str}", status_code=200, summary="Resume a job type",
            responses={**BAD_REQUEST, 202: queued, 404: _error(404, "the type is not paused"),
                       422: _error(422, "the type is empty")})  # fmt: skip
    async def resume(job_type: str) -> Response[PauseList]:
        """Lift the pause: the type's due jobs start at once. The pauses in force after."""
        done, pauses = await _in_thread(service.resume, job_type)
        return Response(PauseList(pauses=pauses), status_code=200 if done else 202)

    return [submit, submit_batch, cancel, retry, pause, resume]


def _read_routes(service: Service, watch: LogWatch, closing: Callable[[], bool]) -> list[Any]:
    @get("/jobs/{job_id:str}", summary="One job", responses={**NOT_FOUND, **NO_STORE})
    async def job(job_id: str) -> JobInfo:
        """The job, as `procpool status ID --json` prints it."""
        return await _in_thread(service.get, job_id)

    @get("/jobs", summary="Jobs, newest first", responses={**BAD_REQUEST, **NO_STORE})
    async def jobs(
        status: Annotated[list[Status] | None, Parameter(query="status", required=False)] = None,
        job_type: Annotated[str | None, Parameter(query="type", required=False)] = None,
        limit: Annotated[int, Parameter(query="limit", ge=1, le=MAX_PAGE)] = 100,
        cursor: Annotated[str | None, Parameter(query="cursor", required=False)] = None,
        after: Annotated[str | None, Parameter(query="after", required=False)] = None,
    ) -> JobPage:
        """Filter by status (repeatable), type, and `after` (the jobs that wait for that
        job); `next` is the cursor of the next page."""
        found, following = await _in_thread(
            service.page, status or [], job_type, limit, cursor, after
        )
        return JobPage(jobs=found, next=following)

    @get("/jobs/{job_id:str}/attempts", summary="A job's attempts",
         responses={**NOT_FOUND, **NO_STORE})  # fmt: skip
    async def attempts(job_id: str) -> list[Attempt]:
        """Every run of the job, oldest first; a running one comes last."""
        return await _in_thread(service.attempts, job_id)

    @get("/jobs/{job_id:str}/checkpoint", summary="A job's last checkpoint",
         responses={**NOT_FOUND, **NO_STORE})  # fmt: skip
    async def checkpoint(job_id: str) -> Checkpoint:
        """The value its handler last committed with ctx.checkpoint; 404 if none."""
        return await _in_thread(service.checkpoint, job_id)

    @get("/jobs/{job_id:str}/wait", summary="Wait for a job to end",
         responses={**BAD_REQUEST, **NOT_FOUND, **NO_STORE})  # fmt: skip
    async def wait(
        job_id: str,
        timeout: Annotated[float, Parameter(query="timeout", ge=0, le=MAX_WAIT)] = DEFAULT_WAIT,
    ) -> JobInfo:
        """Answers once the job is terminal or `timeout` seconds (at most 300) passed:
        check its status."""
        clock = asyncio.get_running_loop().time
        deadline = clock() + timeout
        while True:
            found = await _in_thread(service.get, job_id)
            left = deadline - clock()
            if found.is_terminal or left <= 0 or closing():
                return found
            await watch.changed(min(left, WAIT_FLOOR))

    @get("/pauses", summary="The paused job types", responses=NO_STORE)
    async def pauses() -> PauseList:
        """The pauses in force, as `procpool pause` lists them."""
        return PauseList(pauses=await _in_thread(service.pauses))

    @get("/stats", summary="Counts, throughput, workers", responses=NO_STORE)
    async def stats() -> Stats:
        """As `procpool stats --json`."""
        return await _in_thread(_stats, service)

    @get("/metrics", summary="Prometheus metrics", media_type=MediaType.TEXT,
         responses={503: _error(503, "the daemon has written no metrics yet")})  # fmt: skip
    async def metrics() -> Response[bytes]:
        """HOME/metrics.prom, as the daemon last wrote it."""
        try:
            data = await _in_thread((service.home / "metrics.prom").read_bytes)
        except OSError:
            raise Problem(503, "no metrics: the daemon has not written metrics.prom") from None
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")

    stopped = ResponseSpec(Health, description="the daemon is not running")

    @get("/healthz", summary="Whether the daemon runs", responses={503: stopped})
    async def healthz() -> Response[Health]:
        """200 while the daemon runs, 503 otherwise."""
        # On the loop: one read of a small file, so that the health of the server is
        # answered even while every worker thread is busy.
        pid = service.daemon_pid()
        if pid is None:
            return Response(Health(daemon="stopped", pid=None), status_code=503)
        return Response(Health(daemon="running", pid=pid if pid > 0 else None))

    return [job, jobs, attempts, checkpoint, wait, pauses, stats, metrics, healthz]


def _event_routes(log_path: Path, watch: LogWatch, closing: Callable[[], bool]) -> list[Any]:
    @get("/events", summary="The log as Server-Sent Events", media_type="text/event-stream",
         responses=BAD_REQUEST)  # fmt: skip
    async def events(
        job: Annotated[list[str] | None, Parameter(query="job", required=False)] = None,
        job_type: Annotated[list[str] | None, Parameter(query="type", required=False)] = None,
        event: Annotated[list[str] | None, Parameter(query="event", required=False)] = None,
        last_event_id: Annotated[
            str | None, Parameter(header="Last-Event-ID", required=False)
        ] = None,
    ) -> Stream:
        """One event per log line: `event:` its name, `data:` the JSON line, `id:` to
        resume from with Last-Event-ID. Filters: job ids, job types, event patterns
        ("job.*"). Without Last-Event-ID, the events from now on."""
        cursor = LogCursor(log_path)
        lost = False
        if last_event_id:
            try:
                inode, offset = parse_event_id(last_event_id)
            except BadEventId as error:
                raise Problem(400, str(error)) from None
            lost = not cursor.resume(inode, offset)
        else:
            cursor.start_at_end()
        wanted = EventFilter(tuple(job or ()), tuple(job_type or ()), tuple(event or ()))
        return Stream(
            stream(cursor, watch, wanted, lost, closing),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return [events]


def build(
    service: Service,
    *,
    hosts: frozenset[str] | None,
    token: str | None,
    closing: Callable[[], bool] = lambda: False,
) -> Gate:
    """The API for one home, behind its Gate. `closing` tells event streams to end."""
    log_path = service.home / "logs" / "procpool.jsonl"
    watch = LogWatch(log_path.parent)
    document = b""

    @get("/openapi.json", include_in_schema=False)
    async def openapi() -> Response[bytes]:
        return Response(document, media_type=MediaType.JSON)

    async def started() -> None:
        watch.start()

    async def stopping() -> None:
        watch.close()

    app = Litestar(
        [
            *_write_routes(service),
            *_read_routes(service, watch, closing),
            *_event_routes(log_path, watch, closing),
            *schedule_routes(service),
            openapi,
        ],
        openapi_config=OpenAPIConfig(
            title="procpool",
            version=_version(),
            description="Submit, watch and steer the jobs of one procpool home.",
            path=LITESTAR_SCHEMA,
            render_plugins=[],
        ),
        exception_handlers={Problem: _problem, HTTPException: _http_error, Exception: _crash},
        on_startup=[started],
        on_shutdown=[stopping],
        debug=False,
        logging_config=None,
    )
    document = openapi_document(app)
    # Litestar types the ASGI scope and messages as TypedDicts, the Gate as the plain
    # mappings uvicorn passes to both.
    return Gate(app, hosts, token, service.max_file_bytes)  # type: ignore[arg-type]


def _stats(service: Service) -> Stats:
    try:
        return service.client.stats()
    except NoJobStore as error:
        raise Problem(503, str(error)) from None


def _version() -> str:
    try:
        return version("procpool")
    except PackageNotFoundError:
        return "0"


def openapi_document(app: Litestar) -> bytes:
    """Litestar's document of the routes, with the request bodies' schemas (which
    procpool decodes itself) from msgspec, as OpenAPI 3.1 JSON."""
    document = app.openapi_schema.to_schema()
    types = list(REQUEST_BODIES.values())
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(components)
    for (path, method), schema in zip(REQUEST_BODIES, schemas, strict=True):
        operation = document["paths"][path][method]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    return msgspec.json.encode(document)
