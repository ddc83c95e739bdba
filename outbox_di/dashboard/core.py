"""The dashboard's framework-neutral core: a request (method, path, query, headers, body) in, a
response (status, content type, body) out. The ASGI and aiohttp adapters only translate; the
data comes from a :class:`Backend`, by default :class:`PostgresBackend`, whose blocking
psycopg2 calls run in a thread so that they never hold up the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib.resources
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import psycopg2

from outbox_di import database, errors, models, operations, schema

Table = Literal["outbox", "inbox"]
ACTION_HEADER = "x-outbox-dashboard"  # lower case, as Request.headers
"""POST actions must carry this header (any value): a cross-site form cannot send it, and a
cross-site script cannot either without a CORS preflight, which the dashboard never grants."""
DASHBOARD_FILES = ("dashboard.sql",)
HOUR_MINUTES = 60
DEAD_LIMIT = 100
_STATIC = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


@dataclasses.dataclass(frozen=True)
class Request:
    """What the core needs of an HTTP request; ``path`` is relative to the mount point."""

    method: str
    path: str
    query: Mapping[str, str] = dataclasses.field(default_factory=dict)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Lower-case names."""
    body: bytes = b""


@dataclasses.dataclass(frozen=True)
class Response:
    """What an adapter sends back; every response carries :data:`SECURITY_HEADERS`."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = SECURITY_HEADERS


def json_response(status: int, value: object) -> Response:
    return Response(status, "application/json", json.dumps(value, default=str).encode())


def _error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


@dataclasses.dataclass(frozen=True)
class Series:
    """Per-minute values over the last hour, oldest first (zero where nothing was published)."""

    minutes: list[float]
    published: list[int]
    lag_avg_s: list[float | None]
    lag_max_s: list[float | None]


class Backend(Protocol):
    """Where the dashboard's data comes from (blocking calls: the core runs them in a thread)."""

    def schemas(self) -> list[str]: ...

    def status(self, schema_name: str) -> list[operations.StatusRow]: ...

    def dead(self, schema_name: str, table: Table) -> list[operations.DeadRow]: ...

    def series(self, schema_name: str, now: dt.datetime) -> Series: ...

    def act(self, schema_name: str, table: Table, action: str, event_ids: Sequence[str]) -> int: ...


def minute_series(rows: Sequence[Sequence[Any]], now: dt.datetime) -> Series:
    """The rows of ``dashboard_published_per_minute`` spread over the last 60 minutes."""
    end = now.replace(second=0, microsecond=0)
    starts = [end - dt.timedelta(minutes=HOUR_MINUTES - 1 - i) for i in range(HOUR_MINUTES)]
    found = {minute: (int(count), avg, peak) for minute, count, avg, peak in rows}
    series = Series([], [], [], [])
    for start in starts:
        count, avg, peak = found.get(start, (0, None, None))
        series.minutes.append(start.timestamp())
        series.published.append(count)
        series.lag_avg_s.append(None if avg is None else float(avg))
        series.lag_max_s.append(None if peak is None else float(peak))
    return series


class PostgresBackend:
    """The data from PostgreSQL, through the same :mod:`outbox_di.operations` functions as the
    ``outbox-di status`` and ``dead`` commands (one short connection per call)."""

    def __init__(self, dsn: str, *, lock_ttl: float = 30.0) -> None:
        self._dsn = dsn
        self._lock_ttl = lock_ttl

    def _rows(self, schema_name: str, name: str, values: dict[str, object]) -> list[Any]:
        query = schema.Queries(schema_name, files=DASHBOARD_FILES)[name]
        with database.connect(self._dsn) as conn:
            try:
                with conn, conn.cursor() as cursor:
                    cursor.execute(query.sql, values)
                    return list(cursor.fetchall())
            except psycopg2.Error as exc:
                raise errors.DatabaseError(f"{name} failed: {exc}".strip()) from exc

    def schemas(self) -> list[str]:
        with database.connect(self._dsn) as conn:
            return operations.schemas(conn)

    def status(self, schema_name: str) -> list[operations.StatusRow]:
        with database.connect(self._dsn) as conn:
            return operations.status(conn, schema_name, lock_ttl=self._lock_ttl)

    def dead(self, schema_name: str, table: Table) -> list[operations.DeadRow]:
        with database.connect(self._dsn) as conn:
            return operations.dead_list(conn, schema_name, table, limit=DEAD_LIMIT)

    def series(self, schema_name: str, now: dt.datetime) -> Series:
        since = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=HOUR_MINUTES - 1)
        rows = self._rows(schema_name, "dashboard_published_per_minute", {"since": since})
        return minute_series(rows, now)

    def act(self, schema_name: str, table: Table, action: str, event_ids: Sequence[str]) -> int:
        run = operations.dead_retry if action == "retry" else operations.dead_discard
        with database.connect(self._dsn) as conn:
            return run(conn, schema_name, table, event_ids=event_ids)


def _static(name: str) -> bytes:
    return (
        importlib.resources.files("outbox_di.dashboard")
        .joinpath("static")
        .joinpath(name)
        .read_bytes()
    )


class Dashboard:
    """The dashboard of ``schemas`` (or, with ``all_schemas``, of every schema holding an
    ``outbox_schema_version`` table, looked up again on each page load). Read-only unless
    ``allow_actions``: then retry and discard of dead events work."""

    def __init__(
        self,
        backend: Backend,
        schemas: Sequence[str] = (),
        *,
        all_schemas: bool = False,
        allow_actions: bool = False,
    ) -> None:
        if not schemas and not all_schemas:
            raise errors.OutboxError("the dashboard needs schemas: give --schema or --all-schemas")
        if schemas and all_schemas:
            raise errors.OutboxError("give --schema or --all-schemas, not both")
        self.backend = backend
        self.schemas = [schema.validate_schema_name(name) for name in schemas]
        self.all_schemas = all_schemas
        self.allow_actions = allow_actions

    @classmethod
    def from_dsn(
        cls,
        dsn: str,
        schemas: Sequence[str] = (),
        *,
        all_schemas: bool = False,
        allow_actions: bool = False,
        lock_ttl: float = 30.0,
    ) -> Dashboard:
        return cls(
            PostgresBackend(dsn, lock_ttl=lock_ttl),
            schemas,
            all_schemas=all_schemas,
            allow_actions=allow_actions,
        )

    async def _schemas(self) -> list[str]:
        if self.all_schemas:
            return await asyncio.to_thread(self.backend.schemas)
        return list(self.schemas)

    async def handle(self, request: Request) -> Response:
        """Answer one request; errors become JSON ``{"error": ...}`` with a 4xx/5xx status."""
        path = request.path.lstrip("/")
        try:
            if path in ("api/dead/retry", "api/dead/discard"):
                if request.method != "POST":
                    return _error(405, f"{request.method} is not allowed here: use POST")
                return await self._act(request, path.rsplit("/", 1)[1])
            if request.method not in ("GET", "HEAD"):
                return _error(405, f"{request.method} is not allowed here: use GET")
            if path == "favicon.ico":  # none: answered, so the browser logs no 404
                return Response(204, "image/x-icon", b"")
            if path in ("", "index.html"):
                return Response(200, "text/html; charset=utf-8", _static("index.html"))
            if path.startswith("static/") and path[len("static/") :] in _STATIC:
                name = path[len("static/") :]
                return Response(200, _STATIC[name], _static(name))
            if path == "api/schemas":
                return json_response(
                    200, {"schemas": await self._schemas(), "allow_actions": self.allow_actions}
                )
            if path == "api/overview":
                return await self._overview(request.query.get("schema", ""))
            return _error(404, f"no page {request.path!r}")
        except errors.OutboxError as exc:
            return _error(502, str(exc))

    async def _known(self, name: str) -> str | Response:
        problems = schema.schema_name_problems(name) if name else ["it is empty"]
        if problems:
            return _error(400, f"schema: bad name {name!r}: {'; '.join(problems)}")
        if name not in await self._schemas():
            return _error(404, f"schema {name!r} is not shown by this dashboard")
        return name

    async def _overview(self, name: str) -> Response:
        known = await self._known(name)
        if isinstance(known, Response):
            return known
        now = models.utcnow()
        rows = await asyncio.to_thread(self.backend.status, known)
        dead_outbox = await asyncio.to_thread(self.backend.dead, known, "outbox")
        dead_inbox = await asyncio.to_thread(self.backend.dead, known, "inbox")
        series = await asyncio.to_thread(self.backend.series, known, now)
        return json_response(200, overview(known, now, rows, dead_outbox + dead_inbox, series))

    async def _act(self, request: Request, action: str) -> Response:
        if not self.allow_actions:
            return _error(
                403,
                "this dashboard is read-only: start it with --allow-actions (or "
                "allow_actions=True) to retry or discard dead events",
            )
        if ACTION_HEADER not in request.headers:
            return _error(
                403,
                "an X-Outbox-Dashboard header is required (a guard against cross-site requests)",
            )
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return _error(400, "the body must be JSON: {schema, table, event_ids}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object: {schema, table, event_ids}")
        known = await self._known(str(body.get("schema", "")))
        if isinstance(known, Response):
            return known
        table = body.get("table")
        if table not in ("outbox", "inbox"):
            return _error(400, f"table must be 'outbox' or 'inbox', got {table!r}")
        ids = body.get("event_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return _error(400, "event_ids must be a non-empty list of event ids (strings)")
        count = await asyncio.to_thread(self.backend.act, known, table, action, ids)
        return json_response(200, {"action": action, "table": table, "count": count})


def overview(
    name: str,
    now: dt.datetime,
    rows: Sequence[operations.StatusRow],
    dead: Sequence[operations.DeadRow],
    series: Series,
) -> dict[str, object]:
    """The JSON of one schema's section of the page."""
    ages = [row.oldest_pending_age_s for row in rows if row.oldest_pending_age_s is not None]
    return {
        "schema": name,
        "now": now.isoformat(),
        "totals": {
            table: {
                "pending": sum(row.pending for row in rows if row.table == table),
                "dead": sum(row.dead for row in rows if row.table == table),
                "oldest_pending_age_s": max(
                    (
                        row.oldest_pending_age_s
                        for row in rows
                        if row.table == table and row.oldest_pending_age_s is not None
                    ),
                    default=None,
                ),
            }
            for table in ("outbox", "inbox")
        },
        "oldest_pending_age_s": max(ages, default=None),
        "status": [dataclasses.asdict(row) for row in rows],
        "dead": [dataclasses.asdict(row) for row in dead],
        "series": dataclasses.asdict(series),
    }
