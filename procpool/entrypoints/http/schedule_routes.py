"""The schedules' routes of the HTTP API (CONTRACT section 14), behind the Gate like
every route (the bearer token, a POST's Content-Type):

    GET    /schedules                  every schedule (as `procpool schedule list --json`)
    POST   /schedules                  apply: the body is a schedule file as JSON
    GET    /schedules/{name}           one schedule
    GET    /schedules/{name}/next?n=N  its next occurrences, UTC and local
    POST   /schedules/{name}/pause | resume | trigger
    DELETE /schedules/{name}

Each calls the home's client in a worker thread. A change answers 200 once stored, 202
while it waits in the inbox of a home whose daemon does not run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio.to_thread
import msgspec
from litestar import Request, Response, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from procpool.client import NoJobStore, ScheduleChanges, ScheduleInfo
from procpool.domain.errors import InvalidJobFile
from procpool.domain.schedules import UnknownSchedule
from procpool.entrypoints.http.models import Error
from procpool.entrypoints.http.service import ACK_WAIT, Problem, Service

T = TypeVar("T")


class ScheduleFile(msgspec.Struct, forbid_unknown_fields=True):
    """A schedule file as JSON: every schedule of the home, as `procpool schedule apply`
    takes it (CONTRACT section 14); the schedules not in it are removed."""

    schedule: list[dict[str, Any]]


class Occurrence(msgspec.Struct):
    """One occurrence to come: its instant in UTC, and in the schedule's zone."""

    utc: str
    local: str


class ScheduleChanged(msgspec.Struct):
    """What a pause, resume, trigger or remove did: the schedule, and for a trigger the
    id of the job it made."""

    name: str
    action: str
    job_id: str | None = None


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(Error, description=description, generate_examples=False)


UNKNOWN = {404: _error("no schedule has this name")}
NO_STORE = {503: _error("no daemon has made the home's store")}


async def _call(function: Callable[[], T]) -> T:
    """Run a client call in a worker thread, its errors as HTTP problems."""

    def guarded() -> T:
        try:
            return function()
        except UnknownSchedule as error:
            raise Problem(404, str(error)) from None
        except NoJobStore as error:
            raise Problem(503, str(error)) from None
        except InvalidJobFile as error:
            raise Problem(422, str(error)) from None

    return await anyio.to_thread.run_sync(guarded)


def schedule_routes(service: Service) -> list[Any]:
    """The route handlers, for the application of `service`'s home."""
    client = service.client

    @get("/schedules", summary="The schedules", responses=NO_STORE)
    async def schedules() -> list[ScheduleInfo]:
        """Every schedule with its last run, next run and last skip, by name."""
        return await _call(client.schedules)

    @post("/schedules", status_code=200, summary="Apply a schedule file",
          responses={202: ResponseSpec(ScheduleChanges, description="waits in the inbox"),
                     400: _error("the body is not JSON"),
                     422: _error("a schedule or field is wrong: nothing changed")})  # fmt: skip
    async def apply(request: Request[Any, Any, Any]) -> Response[ScheduleChanges]:
        """Make the stored schedules be exactly those of the body: what was added,
        changed and removed ("no change" is three empty lists)."""
        body = await request.body()
        changes = await _call(lambda: client.schedule_apply(body, json_file=True, timeout=ACK_WAIT))
        return Response(changes, status_code=200 if changes.stored else 202)

    @get("/schedules/{name:str}", summary="One schedule", responses={**UNKNOWN, **NO_STORE})
    async def one(name: str) -> ScheduleInfo:
        """The schedule, as `procpool schedule show NAME --json` prints it."""
        return await _call(lambda: client.schedule(name))

    @get("/schedules/{name:str}/next", summary="A schedule's next occurrences",
         responses={**UNKNOWN, **NO_STORE})  # fmt: skip
    async def upcoming(
        name: str, n: Annotated[int, Parameter(query="n", ge=1, le=1000)] = 5
    ) -> list[Occurrence]:
        """The next `n` occurrences, in UTC and in the schedule's zone."""
        found = await _call(lambda: client.schedule_next(name, n))
        return [Occurrence(utc, local) for utc, local in found]

    def change(action: str, summary: str) -> Any:
        async def changed(name: str) -> Response[ScheduleChanged]:
            done, made = await _call(lambda: client.schedule_change(name, action, timeout=ACK_WAIT))
            return Response(ScheduleChanged(name, action, made), status_code=200 if done else 202)

        responses = {
            **UNKNOWN,
            202: ResponseSpec(ScheduleChanged, description="waits in the inbox"),
        }
        if action == "remove":
            return delete("/schedules/{name:str}", status_code=200, summary=summary,
                          responses=responses)(changed)  # fmt: skip
        return post(f"/schedules/{{name:str}}/{action}", status_code=200, summary=summary,
                    responses=responses, operation_id=f"schedule_{action}")(changed)  # fmt: skip

    return [
        schedules, apply, one, upcoming,
        change("pause", "Pause a schedule"), change("resume", "Resume a schedule"),
        change("trigger", "Make one job of a schedule now"),
        change("remove", "Remove a schedule"),
    ]  # fmt: skip
