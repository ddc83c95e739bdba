"""The dashboard's core without I/O: routing, the read-only default and its 403, the guard
against cross-site POSTs, schema names checked before any query, the hour's series."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import pytest

from outbox_di import errors, operations
from outbox_di.dashboard import ACTION_HEADER, Dashboard, Request, Series
from outbox_di.dashboard.core import Table, minute_series


class FakeBackend:
    """Canned data; records the actions it was asked for."""

    def __init__(self) -> None:
        self.acted: list[tuple[str, str, str, list[str]]] = []
        self.scans = 0

    def schemas(self) -> list[str]:
        self.scans += 1
        return ["catalog", "billing"]

    def status(self, schema_name: str) -> list[operations.StatusRow]:
        return [
            operations.StatusRow("outbox", None, "item.created", 3, 1, 0, 2, 120.0),
            operations.StatusRow("inbox", "billing", "item.created", 1, 0, 0, 1, 30.0),
        ]

    def dead(self, schema_name: str, table: Table) -> list[operations.DeadRow]:
        created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        return [operations.DeadRow(table, None, "e1", "<b>x</b>", "item", "1", 5, "boom", created)]

    def series(self, schema_name: str, now: dt.datetime) -> Series:
        return minute_series([], now)

    def act(self, schema_name: str, table: Table, action: str, event_ids: Sequence[str]) -> int:
        self.acted.append((schema_name, table, action, list(event_ids)))
        return len(event_ids)


def _board(**kwargs: bool) -> tuple[Dashboard, FakeBackend]:
    backend = FakeBackend()
    return Dashboard(backend, ["catalog"], **kwargs), backend


def _post(path: str, body: object, *, header: bool = True) -> Request:
    headers = {ACTION_HEADER: "1", "content-type": "application/json"} if header else {}
    return Request("POST", path, {}, headers, json.dumps(body).encode())


async def test_the_page_its_assets_and_the_security_headers() -> None:
    board, _ = _board()
    page = await board.handle(Request("GET", "/"))
    assert page.status == 200 and page.content_type.startswith("text/html")
    assert b"static/uPlot.iife.min.js" in page.body
    assert dict(page.headers)["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in dict(page.headers)["Content-Security-Policy"]
    script = await board.handle(Request("GET", "static/uPlot.iife.min.js"))
    assert script.status == 200 and b"uPlot" in script.body
    assert (await board.handle(Request("GET", "static/../core.py"))).status == 404
    assert b"innerHTML" not in (await board.handle(Request("GET", "static/dashboard.js"))).body


async def test_overview_totals_and_an_hour_of_minutes() -> None:
    board, _ = _board()
    found = await board.handle(Request("GET", "api/overview", {"schema": "catalog"}))
    data = json.loads(found.body)
    assert data["totals"]["outbox"] == {"pending": 3, "dead": 2, "oldest_pending_age_s": 120.0}
    assert data["totals"]["inbox"]["dead"] == 1
    assert data["oldest_pending_age_s"] == 120.0
    assert [row["table"] for row in data["dead"]] == ["outbox", "inbox"]
    assert len(data["series"]["minutes"]) == 60 and sum(data["series"]["published"]) == 0


async def test_a_schema_not_shown_or_badly_named_is_refused_before_any_query() -> None:
    board, _ = _board()
    other = await board.handle(Request("GET", "api/overview", {"schema": "billing"}))
    assert other.status == 404 and b"not shown by this dashboard" in other.body
    bad = await board.handle(Request("GET", "api/overview", {"schema": 'x"; drop'}))
    assert bad.status == 400 and b"bad name" in bad.body
    assert (await board.handle(Request("GET", "api/overview"))).status == 400


async def test_actions_are_refused_unless_allowed() -> None:
    board, backend = _board()
    body = {"schema": "catalog", "table": "outbox", "event_ids": ["e1"]}
    refused = await board.handle(_post("api/dead/retry", body))
    assert refused.status == 403
    assert b"read-only: start it with --allow-actions" in refused.body
    assert backend.acted == []
    schemas = json.loads((await board.handle(Request("GET", "api/schemas"))).body)
    assert schemas == {"schemas": ["catalog"], "allow_actions": False}


async def test_an_allowed_action_needs_the_header_and_a_valid_body() -> None:
    board, backend = _board(allow_actions=True)
    body = {"schema": "catalog", "table": "inbox", "event_ids": ["e1"]}
    cross_site = await board.handle(_post("api/dead/retry", body, header=False))
    assert cross_site.status == 403 and b"X-Outbox-Dashboard header" in cross_site.body
    for wrong in (
        {"schema": "catalog", "table": "users", "event_ids": ["e1"]},
        {"schema": "catalog", "table": "outbox", "event_ids": []},
        {"schema": "catalog", "table": "outbox", "event_ids": [1]},
        ["not", "an", "object"],
    ):
        assert (await board.handle(_post("api/dead/discard", wrong))).status == 400
    assert (await board.handle(Request("GET", "api/dead/retry"))).status == 405
    done = await board.handle(_post("api/dead/discard", body))
    assert json.loads(done.body) == {"action": "discard", "table": "inbox", "count": 1}
    assert backend.acted == [("catalog", "inbox", "discard", ["e1"])]


async def test_all_schemas_rescans_on_each_load() -> None:
    backend = FakeBackend()
    board = Dashboard(backend, all_schemas=True)
    await board.handle(Request("GET", "api/schemas"))
    found = await board.handle(Request("GET", "api/overview", {"schema": "billing"}))
    assert found.status == 200 and backend.scans == 2


def test_schemas_are_required_and_validated() -> None:
    with pytest.raises(errors.OutboxError, match="--schema or --all-schemas"):
        Dashboard(FakeBackend())
    with pytest.raises(errors.OutboxError, match="not both"):
        Dashboard(FakeBackend(), ["a"], all_schemas=True)
    with pytest.raises(errors.OutboxError):
        Dashboard(FakeBackend(), ["bad name"])


def test_minute_series_fills_the_hour() -> None:
    now = dt.datetime(2026, 1, 1, 12, 30, 40, tzinfo=dt.timezone.utc)
    minute = dt.datetime(2026, 1, 1, 12, 29, tzinfo=dt.timezone.utc)
    series = minute_series([(minute, 4, 0.5, 2.0)], now)
    assert series.minutes[-1] == dt.datetime(2026, 1, 1, 12, 30, tzinfo=dt.timezone.utc).timestamp()
    assert series.published[-2:] == [4, 0]
    assert series.lag_avg_s[-2] == 0.5 and series.lag_max_s[-1] is None
    assert len(series.published) == 60


def test_importing_outbox_di_leaves_the_dashboard_out() -> None:
    import subprocess
    import sys

    code = "import sys, outbox_di, outbox_di.cli; print(any('dashboard' in m for m in sys.modules))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
