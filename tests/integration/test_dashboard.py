"""The dashboard against a real PostgreSQL: the numbers of seeded rows, the hour's query on its
index, --all-schemas discovery, retry through the FastAPI and aiohttp mounts, the CLI's bad input,
and a headless chromium that reads the page and clicks retry (its screenshot is
docs/images/dashboard.png)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from outbox_di import cli, database, models, schema
from outbox_di.dashboard import ACTION_HEADER, Dashboard, asgi
from outbox_di.dashboard import aiohttp as dashboard_aiohttp
from outbox_di.dashboard.core import DASHBOARD_FILES, PostgresBackend

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"


def _execute(dsn: str, sql: str, values: dict[str, object] | None = None) -> list[Any]:
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(sql, values)
        return list(cursor.fetchall()) if cursor.description else []


def seed(dsn: str, name: str) -> dict[str, list[str]]:
    """3 pending outbox events (the oldest 5 minutes old), 6 published in the last hour (lag 2 s),
    2 dead outbox events (one error holding markup) and 1 dead inbox event."""
    now = models.utcnow()
    ids: dict[str, list[str]] = {"pending": [], "published": [], "dead": [], "inbox_dead": []}
    insert = (
        f"INSERT INTO {schema.quote_ident(name)}.outbox_events (event_id, aggregate_type, "  # noqa: S608
        "aggregate_id, event_type, payload, status, created_at, published_at, "
        "delivery_attempts, last_error) VALUES (%(id)s, 'item', '1', %(type)s, '\\x7b7d', "
        "%(status)s, %(created)s, %(published)s, %(attempts)s, %(error)s)"
    )
    rows: list[tuple[str, str, dt.datetime, dt.datetime | None, int, str | None]] = []
    for minutes in (5, 1, 0):
        rows.append(("pending", "item.created", now - dt.timedelta(minutes=minutes), None, 0, None))
    for minutes in (50, 30, 30, 10, 2, 1):
        at = now - dt.timedelta(minutes=minutes)
        rows.append(("published", "item.created", at - dt.timedelta(seconds=2), at, 1, None))
    rows.append(("dead", "item.deleted", now, None, 5, "<img src=x onerror=alert(1)> refused"))
    rows.append(("dead", "item.renamed", now, None, 5, "topic not found"))
    for status, event_type, created, published, attempts, error in rows:
        event_id = str(uuid.uuid4())
        ids[status].append(event_id)
        _execute(
            dsn,
            insert,
            {
                "id": event_id,
                "type": event_type,
                "status": status,
                "created": created,
                "published": published,
                "attempts": attempts,
                "error": error,
            },
        )
    _execute(
        dsn,
        f"INSERT INTO {schema.quote_ident(name)}.inbox_events (consumer, event_id, event_type, "  # noqa: S608
        "payload, status, delivery_attempts, last_error) VALUES ('billing', 'in-1', "
        "'item.created', '\\x7b7d', 'dead', 5, 'handler failed')",
    )
    ids["inbox_dead"].append("in-1")
    return ids


def _status_of(dsn: str, name: str, event_id: str) -> str:
    found = _execute(
        dsn,
        f"SELECT status FROM {schema.quote_ident(name)}.outbox_events "  # noqa: S608
        "WHERE event_id = %(id)s",
        {"id": event_id},
    )
    return str(found[0][0]) if found else "gone"


@pytest.fixture
def seeded(outbox_dsn: str, outbox_schema: str) -> dict[str, list[str]]:
    return seed(outbox_dsn, outbox_schema)


def test_the_backend_counts_the_seeded_rows(
    outbox_dsn: str, outbox_schema: str, seeded: dict[str, list[str]]
) -> None:
    backend = PostgresBackend(outbox_dsn)
    rows = backend.status(outbox_schema)
    assert sum(r.pending for r in rows if r.table == "outbox") == 3
    assert sum(r.dead for r in rows if r.table == "outbox") == 2
    assert sum(r.dead for r in rows if r.table == "inbox") == 1
    series = backend.series(outbox_schema, models.utcnow())
    assert sum(series.published) == 6
    lags = [lag for lag in series.lag_avg_s if lag is not None]
    assert lags and all(abs(lag - 2.0) < 0.01 for lag in lags)
    assert {r.event_id for r in backend.dead(outbox_schema, "outbox")} == set(seeded["dead"])


def test_the_hour_query_reads_the_published_index(outbox_dsn: str, outbox_schema: str) -> None:
    """Planned on the purge's partial index (seq scans off: the test table is tiny)."""
    query = schema.Queries(outbox_schema, files=DASHBOARD_FILES)["dashboard_published_per_minute"]
    with database.connect(outbox_dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + query.sql, {"since": models.utcnow()})
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "outbox_events_published_idx" in plan, plan


def test_all_schemas_finds_every_migrated_schema(outbox_dsn: str, outbox_schema: str) -> None:
    found = PostgresBackend(outbox_dsn).schemas()
    assert outbox_schema in found
    assert (
        "public" not in found
        or _execute(outbox_dsn, "SELECT to_regclass('public.outbox_schema_version')")[0][0]
    )


async def test_fastapi_mount_retries_a_dead_event(
    outbox_dsn: str, outbox_schema: str, seeded: dict[str, list[str]]
) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient as FastAPIClient

    app = FastAPI()
    board = Dashboard.from_dsn(outbox_dsn, [outbox_schema], allow_actions=True)
    app.mount("/outbox", asgi.app(board))
    with FastAPIClient(app) as client:
        moved = client.get("/outbox", follow_redirects=False)
        assert moved.status_code == 307 and moved.headers["location"].endswith("/outbox/")
        assert "uPlot" in client.get("/outbox/").text
        data = client.get("/outbox/api/overview", params={"schema": outbox_schema}).json()
        assert data["totals"]["outbox"]["pending"] == 3
        body = {"schema": outbox_schema, "table": "outbox", "event_ids": seeded["dead"][:1]}
        assert client.post("/outbox/api/dead/retry", json=body).status_code == 403  # no header
        done = client.post("/outbox/api/dead/retry", json=body, headers={ACTION_HEADER: "1"})
        assert done.json()["count"] == 1
    assert _status_of(outbox_dsn, outbox_schema, seeded["dead"][0]) == "pending"


async def test_aiohttp_subapp_is_read_only_by_default(
    outbox_dsn: str, outbox_schema: str, seeded: dict[str, list[str]]
) -> None:
    app = web.Application()
    board = Dashboard.from_dsn(outbox_dsn, [outbox_schema])
    app.add_subapp("/outbox/", dashboard_aiohttp.application(board))
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/outbox/")
        assert page.status == 200 and "static/dashboard.js" in await page.text()
        found = await client.get("/outbox/api/overview", params={"schema": outbox_schema})
        assert (await found.json())["totals"]["inbox"]["dead"] == 1
        body = {"schema": outbox_schema, "table": "inbox", "event_ids": ["in-1"]}
        refused = await client.post(
            "/outbox/api/dead/discard", json=body, headers={ACTION_HEADER: "1"}
        )
        assert refused.status == 403
        assert "--allow-actions" in (await refused.json())["error"]
    assert _status_of(outbox_dsn, outbox_schema, seeded["dead"][0]) == "dead"


def test_cli_bad_input_names_the_flag(outbox_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dashboard", "--dsn", outbox_dsn, "--schema", "catalog,bad name"]) == 2
    err = capsys.readouterr().err
    assert "--schema: bad schema name 'bad name'" in err
    assert cli.main(["dashboard", "--dsn", outbox_dsn, "--schema", "a,,b"]) == 2
    assert "--schema: an empty name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["dashboard", "--dsn", outbox_dsn, "--schema", "a", "--port", "70000"])
    assert "--port: must be between 1 and 65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["dashboard", "--dsn", outbox_dsn, "--schema", "a", "--all-schemas"])
    assert "not allowed with argument" in capsys.readouterr().err


# The browser test: the standalone server (outbox-di dashboard) and Debian's chromium.


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (skips only if that fails)."""
    if not os.path.exists(CHROMIUM) and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, capture_output=True, timeout=600).returncode != 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
            subprocess.run(install, capture_output=True, timeout=600)
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing and `apt-get install -y chromium` did not install it")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(outbox_dsn: str, outbox_schema: str) -> Iterator[str]:
    """``outbox-di dashboard --allow-actions`` on a free port; its URL."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "outbox_di.cli",
            "dashboard",
            "--dsn",
            outbox_dsn,
            "--schema",
            outbox_schema,
            "--port",
            str(port),
            "--allow-actions",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url + "api/schemas", timeout=1) as answer:
                    assert json.load(answer)["allow_actions"] is True
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read() if process.stdout else b""
                    pytest.fail(f"the dashboard did not start: {output.decode()}")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


@pytest.mark.timeout(60)
def test_browser_shows_the_counts_and_retries_a_dead_event(
    chromium: str,
    server: str,
    outbox_dsn: str,
    outbox_schema: str,
    seeded: dict[str, list[str]],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import Dialog, expect, sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            alerts: list[str] = []

            def on_dialog(dialog: Dialog) -> None:
                alerts.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.goto(server)
            page.wait_for_selector("body[data-loaded=true]", timeout=10000)
            section = page.locator(f"section[data-schema={outbox_schema}]")

            def value(testid: str) -> str:
                return section.locator(f"[data-testid={testid}] .value").inner_text()

            assert value("outbox-pending") == "3"
            assert value("outbox-dead") == "2"
            assert value("inbox-dead") == "1"
            assert value("published-hour") == "6"
            assert value("oldest-pending").endswith("m")
            assert section.locator("[data-testid=rate-chart] canvas").count() == 1
            assert section.locator("[data-testid=lag-chart] canvas").count() == 1
            # The error holding markup is shown as text, not run.
            assert "<img src=x onerror=alert(1)>" in section.inner_text()
            assert section.locator("td img").count() == 0
            assert page.locator("#mode").inner_text() == "actions allowed"
            # Always taken; written over docs/images/dashboard.png only when asked, so that a
            # test run leaves the worktree clean.
            shot = (
                SCREENSHOT if os.environ.get("OUTBOX_DASHBOARD_SCREENSHOT") else tmp_path / "d.png"
            )
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            dead_id = seeded["dead"][1]
            section.locator(f"tr[data-event-id='{dead_id}'] [data-testid=retry]").click()
            expect(page.locator("#message")).to_contain_text("made pending again")
            expect(section.locator("[data-testid=outbox-pending] .value")).to_have_text("4")
            assert alerts == []
            assert [line for line in console if line.startswith("error")] == []
        finally:
            browser.close()
    assert _status_of(outbox_dsn, outbox_schema, dead_id) == "pending"
