"""The Django integration against real PostgreSQL: settings, the application, ``enqueue``, the
autostart rules, the background workers, the migration and ``manage.py outbox_worker``.

Django is configured once per test process (as in ``test_sessions.py``) and the application is
installed per test with ``override_settings``, which runs ``ready()`` again. Django's ORM
refuses to run while an event loop runs in its thread, so the tests that enqueue through
Django are plain ``def`` tests. What needs a project of its own (migrations, runserver, the
management command) runs ``python -m django`` in a subprocess, with a settings module written
for the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from dependency_injector.wiring import Provide, inject
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.db import connections  # type: ignore[import-untyped]
from django.db import transaction as django_transaction
from django.test import override_settings  # type: ignore[import-untyped]
from psycopg2 import sql

from outbox_di import (
    ConfigError,
    InboxEvent,
    InboxHandlers,
    Message,
    NotInTransactionError,
    OutboxConfig,
    OutboxContainer,
    OutboxRepository,
    database,
    errors,
)
from outbox_di import schema as outbox_schema
from outbox_di.integrations import django as outbox_django
from outbox_di.integrations.django import apps as outbox_apps
from outbox_di.integrations.django import autostart, conf, runner
from outbox_di.integrations.django.asgi import OutboxLifespan
from outbox_di.publishing.base import InMemoryPublisher
from outbox_di.testing.pubsub import EmulatorEndpoint, temporary_topic
from tests.integration import support

pytestmark = pytest.mark.integration

PROJECT = "django-test"
WAIT = 30.0
APP = "outbox_di.integrations.django"


async def _record(event: InboxEvent) -> None:
    """A handler for the settings tests (never run)."""


HANDLERS = InboxHandlers({"item.created": _record})
HANDLER_MAPPING = {"item.created": _record}
NOT_HANDLERS = 42


_dsn_parts = support.dsn_parts


_configure_django = support.configure_django


@contextlib.contextmanager
def _installed(outbox: Mapping[str, Any]) -> Iterator[outbox_apps.OutboxAppConfig]:
    """The application installed with ``settings.OUTBOX = outbox`` (``ready()`` has run)."""
    # OUTBOX first: installing the application runs ready(), which reads it.
    with override_settings(OUTBOX=dict(outbox)), override_settings(INSTALLED_APPS=[APP]):
        try:
            yield outbox_django.app_config()
        finally:
            for alias in connections:
                connections[alias].close()


@pytest.fixture
def django_db(outbox_dsn: str) -> str:
    _configure_django(outbox_dsn)
    return outbox_dsn


def _outbox(schema: str, **extra: Any) -> dict[str, Any]:
    return {"schema": schema, "publisher": {"topic": "events"}, "autostart": False, **extra}


def _event_ids(dsn: str, schema: str) -> set[uuid.UUID]:
    query = sql.SQL("SELECT event_id FROM {}.outbox_events").format(sql.Identifier(schema))
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        return {uuid.UUID(str(row[0])) for row in cursor.fetchall()}


DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "USER": "app",
        "PASSWORD": "it's secret",
        "HOST": "db.internal",
        "PORT": 5433,
        "OPTIONS": {
            "sslmode": "require",
            "options": "-c search_path=shop",
            "isolation_level": 2,
        },
    },
    "sqlite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}


# -- settings.OUTBOX -------------------------------------------------------------------------


def test_dsn_defaults_from_the_django_database() -> None:
    read = conf.read_settings({"schema": "shop", "publisher": {"topic": "events"}}, DATABASES)
    assert psycopg2.extensions.parse_dsn(read.config.dsn) == {
        "dbname": "shop",
        "user": "app",
        "password": "it's secret",
        "host": "db.internal",
        "port": "5433",
        "sslmode": "require",
        "options": "-c search_path=shop",
    }
    assert read.database == "default"
    assert read.autostart is True  # run_workers' default
    assert read.inbox_handlers is None
    assert read.wire == ()


def test_explicit_dsn_and_django_keys_are_kept_apart() -> None:
    read = conf.read_settings(
        {
            "schema": "shop",
            "dsn": "postgresql://elsewhere/shop",
            "run_workers": False,
            "publisher": {"topic": "events"},
            "inbox": {"enabled": True, "subscription": "shop-inbox"},
            "inbox_handlers": "tests.integration.test_django_integration.HANDLERS",
            "wire": ["tests.integration.test_django_integration"],
        },
        DATABASES,
    )
    assert read.config.dsn == "postgresql://elsewhere/shop"
    assert read.autostart is False  # follows run_workers
    assert read.inbox_handlers is HANDLERS
    assert read.wire == ("tests.integration.test_django_integration",)
    assert read.config.inbox_consumer == "shop"


@pytest.mark.parametrize(
    "reference",
    [
        "tests.integration.test_django_integration.HANDLER_MAPPING",
        "tests.integration.test_django_integration:HANDLER_MAPPING",
    ],
)
def test_inbox_handlers_from_a_dotted_or_colon_path(reference: str) -> None:
    read = conf.read_settings(
        {"schema": "shop", "publisher": {"topic": "events"}, "inbox_handlers": reference},
        DATABASES,
    )
    assert read.inbox_handlers is not None
    assert dict(read.inbox_handlers) == HANDLER_MAPPING


def test_every_problem_is_reported_at_once_with_its_key() -> None:
    with pytest.raises(conf.OutboxImproperlyConfigured) as info:
        conf.read_settings(
            {
                "schema": "Shop",
                "autostrat": True,
                "autostart": "yes",
                "database": "replica",
                "wire": "catalog.views",
                "inbox_handlers": "no_such_module.handlers",
                "publisher": {"topic": "events", "batch_size": 5000},
            },
            DATABASES,
        )
    problems = info.value.problems
    assert "OUTBOX.autostrat: unknown key; did you mean 'autostart'?" in problems
    assert any(p.startswith("OUTBOX.autostart: must be True or False") for p in problems)
    assert any(p.startswith("OUTBOX.database: must name a database of DATABASES") for p in problems)
    assert any(p.startswith("OUTBOX.wire: must be a list of module names") for p in problems)
    assert any(p.startswith("OUTBOX.inbox_handlers: cannot import") for p in problems)
    assert any(p.startswith("OUTBOX.schema: invalid schema name 'Shop'") for p in problems)
    assert any(
        p.startswith("OUTBOX.publisher.batch_size: must be between 1 and 1000") for p in problems
    )
    # Django's exception and the library's, both.
    assert isinstance(info.value, ImproperlyConfigured)
    assert isinstance(info.value, ConfigError)


def test_a_disabled_inbox_needs_no_handlers() -> None:
    read = conf.read_settings(
        {"schema": "shop", "publisher": {"topic": "events"}, "inbox": {"subscription": "events"}},
        DATABASES,
    )
    assert read.config.inbox.enabled is False
    assert read.inbox_handlers is None


@pytest.mark.parametrize(
    ("raw", "databases", "expected"),
    [
        (None, DATABASES, "OUTBOX: not set"),
        (["schema"], DATABASES, "OUTBOX: must be a dict of outbox settings, got list"),
        (
            {"schema": "shop", "publisher": {"topic": "events"}, "database": "sqlite"},
            DATABASES,
            "OUTBOX.dsn: not set, and the database's ENGINE is 'django.db.backends.sqlite3'",
        ),
        (
            {"schema": "shop", "publisher": {"topic": "events"}},
            {"default": {"ENGINE": "django.db.backends.postgresql"}},
            "OUTBOX.dsn: not set, and the database has no NAME",
        ),
        (
            {
                "schema": "shop",
                "publisher": {"topic": "events"},
                "inbox": {"enabled": True, "subscription": "events"},
            },
            DATABASES,
            "OUTBOX.inbox_handlers: required when inbox.enabled is true",
        ),
        (
            {
                "schema": "shop",
                "publisher": {"topic": "events"},
                "inbox_handlers": "tests.integration.test_django_integration.NOT_HANDLERS",
            },
            DATABASES,
            "OUTBOX.inbox_handlers: must be an InboxHandlers (or the dotted path of one), got int",
        ),
    ],
)
def test_one_problem_names_its_key(
    raw: object, databases: Mapping[str, Mapping[str, Any]], expected: str
) -> None:
    with pytest.raises(conf.OutboxImproperlyConfigured) as info:
        conf.read_settings(raw, databases)
    assert any(problem.startswith(expected) for problem in info.value.problems), info.value


# -- the application --------------------------------------------------------------------------


@inject
def _injected_schema(config: OutboxConfig = Provide[OutboxContainer.settings]) -> str:
    return config.schema


def test_ready_builds_and_wires_the_container(django_db: str, outbox_schema_name: str) -> None:
    module = "tests.integration.test_django_integration"
    with _installed(_outbox(outbox_schema_name, wire=[module])) as app:
        try:
            assert app.label == "outbox_di"
            assert isinstance(app.container, OutboxContainer)
            assert outbox_django.get_container() is app.container
            assert outbox_django.get_settings().schema == outbox_schema_name
            assert _injected_schema() == outbox_schema_name
            assert app.workers is None  # autostart off
        finally:
            app.container.unwire()


def test_the_dsn_taken_from_django_connects(django_db: str, outbox_schema: str) -> None:
    async def count_pending(dsn: str) -> int:
        async with database.open_pool(dsn, min_size=1, max_size=1) as pool:
            repo = outbox_django.app_config().repository
            async with pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(repo.queries["outbox_count_pending"].sql)
                row = await cursor.fetchone()
                return int(row[0])

    with _installed(_outbox(outbox_schema)) as app:
        assert asyncio.run(count_pending(app.outbox.config.dsn)) == 0


def test_bad_settings_fail_the_start_with_the_key(django_db: str) -> None:
    bad = {"schema": "shop", "publisher": {"topic": "events", "batch_size": 0}}
    with (
        pytest.raises(ImproperlyConfigured, match=r"OUTBOX\.publisher\.batch_size"),
        _installed(bad),
    ):
        pytest.fail("ready() accepted a bad OUTBOX")


def test_helpers_need_the_application_installed(django_db: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"add 'outbox_di\.integrations\.django'"):
        outbox_django.get_container()


# -- enqueue through Django's connection ------------------------------------------------------


def _message(n: int = 0) -> Message:
    return Message("item", str(n), "item.created", {"n": n})


def test_enqueue_commits_with_the_atomic_block(django_db: str, outbox_schema: str) -> None:
    with _installed(_outbox(outbox_schema)):
        with django_transaction.atomic():
            one = outbox_django.enqueue(_message(1))
            many = outbox_django.enqueue_many([_message(2), _message(3)])
        assert _event_ids(django_db, outbox_schema) == {one, *many}


def test_a_test_overrides_the_projects_container_and_enqueue_follows(
    django_db: str, outbox_schema: str
) -> None:
    # The project's settings name the production schema; the test overrides its container.
    with _installed(_outbox("production_schema")):
        container = outbox_django.get_container()
        with container.override_config(schema=outbox_schema):
            assert outbox_django.get_settings().schema == outbox_schema
            with django_transaction.atomic():
                one = outbox_django.enqueue(_message(1))
        assert _event_ids(django_db, outbox_schema) == {one}
        assert outbox_django.get_settings().schema == "production_schema"


def test_enqueue_rolls_back_with_the_atomic_block(django_db: str, outbox_schema: str) -> None:
    class Refused(Exception):
        pass

    with _installed(_outbox(outbox_schema)):
        with django_transaction.atomic():
            kept = outbox_django.enqueue(_message(1))
            with pytest.raises(Refused), django_transaction.atomic():
                outbox_django.enqueue_many([_message(2), _message(3)])
                raise Refused
        with pytest.raises(Refused), django_transaction.atomic():
            outbox_django.enqueue(_message(4), using="default")
            raise Refused
        assert _event_ids(django_db, outbox_schema) == {kept}


def test_enqueue_outside_atomic_is_refused(django_db: str, outbox_schema: str) -> None:
    with _installed(_outbox(outbox_schema)):
        with pytest.raises(NotInTransactionError, match=r"transaction\.atomic\(\)"):
            outbox_django.enqueue(_message())
        with pytest.raises(NotInTransactionError):
            outbox_django.enqueue_many([_message()])
        assert _event_ids(django_db, outbox_schema) == set()


def test_enqueue_on_a_database_that_is_not_postgresql(django_db: str, outbox_schema: str) -> None:
    with (
        _installed(_outbox(outbox_schema)),
        django_transaction.atomic(using="sqlite"),
        pytest.raises(errors.UnsupportedSessionError, match="needs PostgreSQL"),
    ):
        outbox_django.enqueue(_message(), using="sqlite")


# -- when the workers start ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "environ", "start"),
    [
        (["manage.py", "migrate"], {}, False),
        (["manage.py", "makemigrations"], {}, False),
        (["manage.py", "shell"], {}, False),
        (["manage.py", "test"], {}, False),
        (["manage.py", "outbox_worker"], {}, False),
        (["manage.py"], {}, False),
        (["/srv/app/manage.py", "runserver"], {}, False),  # the autoreloader's parent
        (["/srv/app/manage.py", "runserver"], {"RUN_MAIN": "true"}, True),  # its child
        (["manage.py", "runserver", "0.0.0.0:8000", "--noreload"], {}, True),
        (["/venv/bin/django-admin", "runserver", "--noreload"], {}, True),
        (["/venv/bin/django-admin", "migrate"], {"RUN_MAIN": "true"}, False),
        (["/usr/lib/python3/site-packages/django/__main__.py", "runserver"], {}, False),
        (
            ["/usr/lib/python3/site-packages/django/__main__.py", "runserver"],
            {"RUN_MAIN": "true"},
            True,
        ),
        (["/usr/lib/python3/site-packages/django/__main__.py", "check"], {}, False),
        (["/venv/bin/uvicorn", "site.asgi:application"], {}, True),
        (["/venv/lib/python3/site-packages/uvicorn/__main__.py", "site.asgi:app"], {}, True),
        (["/venv/bin/gunicorn", "site.wsgi"], {}, True),
        (["/venv/bin/daphne", "site.asgi:application"], {}, True),
        (["mod_wsgi"], {}, True),
        ([], {}, True),
        (["/venv/bin/pytest", "tests"], {}, False),
        (["/venv/lib/python3/site-packages/pytest/__main__.py"], {}, False),
        (["-c"], {"PYTEST_XDIST_WORKER": "gw0"}, False),
    ],
)
def test_autostart_decision(argv: list[str], environ: dict[str, str], start: bool) -> None:
    decision = autostart.decide(argv, environ)
    assert decision.start is start, decision.reason
    assert decision.reason


def test_pytest_itself_does_not_autostart(
    django_db: str, outbox_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="outbox_di")
    with _installed({**_outbox(outbox_schema), "autostart": True}) as app:
        assert app.workers is None
    assert "not started in this process (running under pytest)" in caplog.text


# -- the background workers -------------------------------------------------------------------


def _container(dsn: str, schema: str, publisher: InMemoryPublisher) -> Any:
    container = OutboxContainer(
        config={
            "schema": schema,
            "dsn": dsn,
            "pool": {"max_size": 4},
            "publisher": {
                "topic": "events",
                "tick_interval": "50ms",
                "shutdown_timeout": "5s",
                "batch_size": 5,
            },
        }
    )
    container.publisher.override(publisher)
    return container


def _enqueue_direct(dsn: str, schema: str, count: int) -> set[uuid.UUID]:
    """Enqueue ``count`` events through a plain psycopg2 transaction."""
    repo = OutboxRepository(None, schema)
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn:
        return set(repo.enqueue_many_sync(conn, [_message(n) for n in range(count)]))


def _states(dsn: str, schema: str) -> dict[str, int]:
    query = sql.SQL(
        "SELECT status || CASE WHEN status = 'pending' AND locked_at IS NOT NULL "
        "THEN ' leased' ELSE '' END, count(*) FROM {}.outbox_events GROUP BY 1"
    ).format(sql.Identifier(schema))
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        return {state: count for state, count in cursor.fetchall()}


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT}s"
        time.sleep(0.05)


def test_worker_thread_relays_then_drains_in_flight_batches(
    outbox_dsn: str, outbox_schema: str
) -> None:
    publisher = InMemoryPublisher()
    publisher.set_delay(1.0)  # each batch stays in flight for a second
    workers = runner.WorkerThread(_container(outbox_dsn, outbox_schema, publisher))
    workers.start()
    try:
        assert workers.is_alive()
        assert workers.name in {thread.name for thread in threading.enumerate()}
        ids = _enqueue_direct(outbox_dsn, outbox_schema, 20)
        _wait_for(lambda: _states(outbox_dsn, outbox_schema).get("pending leased"), "claim")
    finally:
        stopped = workers.stop()
    assert stopped
    assert not workers.is_alive()
    # The claimed batches were finished and marked; what was never claimed stays pending.
    states = _states(outbox_dsn, outbox_schema)
    assert "pending leased" not in states, states
    assert states.get("published", 0) >= 1, states
    assert sum(states.values()) == len(ids)
    assert {event.event_id for event in publisher.published} <= ids


def test_worker_thread_start_failure_is_raised_and_the_thread_ends(outbox_schema: str) -> None:
    closed = "postgresql://postgres@127.0.0.1:9/postgres?connect_timeout=2"
    workers = runner.WorkerThread(_container(closed, outbox_schema, InMemoryPublisher()))
    with pytest.raises(errors.DatabaseError, match="cannot connect"):
        workers.start()
    assert not workers.is_alive()
    assert workers.stop(1.0)


def test_asgi_lifespan_and_pass_through(django_db: str, outbox_schema: str) -> None:
    seen: list[str] = []
    sent: list[Any] = []
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def django_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    async def serve(app: OutboxLifespan) -> None:
        await app({"type": "http"}, _no_receive, _no_send)
        await app({"type": "lifespan"}, receive, send)

    with _installed(_outbox(outbox_schema)):  # autostart off: nothing to start or stop
        asyncio.run(serve(OutboxLifespan(django_app)))
    assert seen == ["http"]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def _no_receive() -> Any:
    raise AssertionError("not called")


async def _no_send(message: Any) -> None:
    raise AssertionError("not called")


# -- a project of its own: migrations, runserver, outbox_worker --------------------------------


@pytest.fixture
def fresh_database(outbox_dsn: str) -> Iterator[str]:
    """A new database on the test server (Django keeps django_migrations in it), dropped
    afterwards."""
    name = f"outbox_django_{secrets.token_hex(5)}"
    admin = psycopg2.connect(outbox_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield psycopg2.extensions.make_dsn(outbox_dsn, dbname=name)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()


def _write_project(
    folder: Path, databases: Mapping[str, Any], outbox: Mapping[str, Any], extra: str = ""
) -> None:
    (folder / "outbox_site.py").write_text(
        "from __future__ import annotations\n"
        f"DATABASES = {dict(databases)!r}\n"
        f"OUTBOX = {dict(outbox)!r}\n"
        f"INSTALLED_APPS = [{APP!r}]\n"
        "ROOT_URLCONF = 'outbox_site'\n"
        "urlpatterns: list[object] = []\n"
        "SECRET_KEY = 'test'\n"
        "ALLOWED_HOSTS = ['127.0.0.1']\n"
        "USE_TZ = True\n"
        "LOGGING = {'version': 1, 'disable_existing_loggers': False,\n"
        "    'handlers': {'console': {'class': 'logging.StreamHandler'}},\n"
        "    'loggers': {'outbox_di': {'handlers': ['console'], 'level': 'INFO'}}}\n" + extra
    )


def _project_env(folder: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OUTBOX_", "DJANGO_", "RUN_MAIN"))
    }
    env.update(
        {
            "PYTHONPATH": str(folder),
            "DJANGO_SETTINGS_MODULE": "outbox_site",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _django(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=folder,
        env=_project_env(folder),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _tables(dsn: str, schema: str) -> set[str]:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        )
        return {row[0] for row in cursor.fetchall()}


def test_migration_applies_the_ddl_to_the_configured_schema(
    fresh_database: str, tmp_path: Path
) -> None:
    schema = "shop_outbox"
    _write_project(
        tmp_path,
        {"default": support.database_entry(fresh_database)},
        {"schema": schema, "publisher": {"topic": "events"}},
    )
    shown = _django(tmp_path, "sqlmigrate", "outbox_di", "0001").stdout
    assert f'CREATE TABLE IF NOT EXISTS "{schema}".outbox_events' in shown

    first = _django(tmp_path, "migrate", "outbox_di")
    assert "Applying outbox_di.0001_initial... OK" in first.stdout
    # A management command never starts the workers (the topic does not even exist).
    assert "outbox workers" not in first.stdout + first.stderr
    assert _tables(fresh_database, schema) == set(database.TABLES)
    with contextlib.closing(psycopg2.connect(fresh_database)) as conn:
        assert database.check(conn, schema)[0] == []

    again = _django(tmp_path, "migrate", "outbox_di")
    assert "No migrations to apply" in again.stdout
    # Unapplying drops nothing: the schema holds events not yet published.
    _django(tmp_path, "migrate", "outbox_di", "zero")
    assert _tables(fresh_database, schema) == set(database.TABLES)


def test_migration_of_another_database_leaves_it_alone(
    fresh_database: str, outbox_dsn: str, tmp_path: Path
) -> None:
    schema = f"other_{secrets.token_hex(4)}"
    other = f"outbox_django_other_{secrets.token_hex(4)}"
    admin = psycopg2.connect(outbox_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
        other_dsn = psycopg2.extensions.make_dsn(outbox_dsn, dbname=other)
        _write_project(
            tmp_path,
            {
                "default": support.database_entry(fresh_database),
                "other": support.database_entry(other_dsn),
            },
            {"schema": schema, "publisher": {"topic": "events"}},
        )
        migrated = _django(tmp_path, "migrate", "outbox_di", "--database", "other")
        assert "Applying outbox_di.0001_initial... OK" in migrated.stdout
        assert _tables(other_dsn, schema) == set()
        assert _tables(fresh_database, schema) == set()
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other))
            )
        admin.close()


DJANGO_VERSION_2 = '''"""Version 2 of the outbox schema in the schema of ``settings.OUTBOX``:
the library's ``sql/migrations/0002_*.sql``, whatever it holds."""

from __future__ import annotations

from django.db import migrations  # type: ignore[import-untyped]

from outbox_di.integrations.django import operations


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("outbox_di", "0001_initial")]
    operations = [operations.ApplyOutboxVersion(2)]
'''
"""``0002_version_2.py`` as the application ships it (once the library has a version 2)."""

DJANGO_MIGRATIONS = Path(outbox_django.__file__).parent / "migrations"


def test_each_version_is_a_thin_migration_mixed_with_outbox_di_migrate(
    fresh_database: str, tmp_path: Path
) -> None:
    """``outbox-di migrate --to 1``, then ``manage.py migrate``: 0001 finds version 1 applied
    and records it, 0002 applies version 2 through the library, with its checksum. When the
    library ships only version 1, the project's settings give it a version 2 of the test's own
    (a temporary migrations folder) and the application's migrations are this file's copy of
    ``0002_version_2.py``."""
    name = "shop_outbox"
    sql_folder = tmp_path / "sql_migrations"
    sql_folder.mkdir()
    for migration in outbox_schema.migrations():
        (sql_folder / migration.filename).write_text(migration.text)
    if outbox_schema.SCHEMA_VERSION == 1:
        (sql_folder / "0002_test_index.sql").write_text(
            "CREATE INDEX IF NOT EXISTS outbox_events_test_type_idx\n"
            "    ON {{schema}}.outbox_events (event_type);\n"
        )
    found = outbox_schema.load_migrations(sql_folder)
    package = tmp_path / "shop_outbox_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for path in DJANGO_MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.py"):
        (package / path.name).write_text(path.read_text())
    if not (package / "0002_version_2.py").exists():
        (package / "0002_version_2.py").write_text(DJANGO_VERSION_2)
    _write_project(
        tmp_path,
        {"default": support.database_entry(fresh_database)},
        {"schema": name, "publisher": {"topic": "events"}},
        "MIGRATION_MODULES = {'outbox_di': 'shop_outbox_migrations'}\n"
        "import pathlib\n"
        "import outbox_di.schema as _outbox_schema\n"
        f"_found = _outbox_schema.load_migrations(pathlib.Path({str(sql_folder)!r}))\n"
        "_outbox_schema.migrations = lambda: _found\n"
        "_outbox_schema.SCHEMA_VERSION = _found[-1].version\n",
    )
    with contextlib.closing(psycopg2.connect(fresh_database)) as conn:
        database.migrate(conn, name, to=1, found=found)

    shown = _django(tmp_path, "sqlmigrate", "outbox_di", "0002").stdout
    assert found[1].render(name).strip().splitlines()[-1] in shown
    assert f"VALUES (2, '{found[1].checksum}')" in shown

    migrated = _django(tmp_path, "migrate", "outbox_di")
    assert "Applying outbox_di.0001_initial... OK" in migrated.stdout
    assert "Applying outbox_di.0002_version_2... OK" in migrated.stdout
    with contextlib.closing(psycopg2.connect(fresh_database)) as conn:
        with conn.cursor() as cursor:
            cursor.execute(
                sql.SQL("SELECT version, checksum FROM {}.outbox_schema_version ORDER BY 1").format(
                    sql.Identifier(name)
                )
            )
            recorded = cursor.fetchall()
        assert recorded[:2] == [(1, found[0].checksum), (2, found[1].checksum)]
        assert database.check(conn, name, found=found) == ([], [])
        # outbox-di migrate afterwards finds nothing to do.
        assert database.migrate(conn, name, found=found).applied == tuple(
            range(3, found[-1].version + 1)
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux's /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        pytest.skip("needs /proc/<pid>/task/<pid>/children to find the reloader's child")
    return [int(child) for child in path.read_text().split()]


async def _read_until(
    process: asyncio.subprocess.Process, marker: str, output: list[str], within: float = WAIT
) -> None:
    """Collect the process's output lines until one contains ``marker`` (bounded)."""
    assert process.stdout is not None
    deadline = time.monotonic() + within
    while not any(marker in line for line in output):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} within {within}s:\n{''.join(output)}"
        try:
            line = await asyncio.wait_for(process.stdout.readline(), remaining)
        except asyncio.TimeoutError:
            pytest.fail(f"no {marker!r} within {within}s:\n{''.join(output)}")
        assert line, f"the process ended before {marker!r}:\n{''.join(output)}"
        output.append(line.decode(errors="replace"))


async def _finish(process: asyncio.subprocess.Process, output: list[str], within: float) -> float:
    """Wait for the process to end (bounded), collecting the rest of its output; seconds taken."""
    assert process.stdout is not None
    started = time.monotonic()
    rest = await asyncio.wait_for(process.stdout.read(), within)
    await asyncio.wait_for(process.wait(), within)
    output.append(rest.decode(errors="replace"))
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def _started(folder: Path, *args: str) -> Any:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "django",
        *args,
        cwd=folder,
        env=_project_env(folder),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def test_runserver_starts_the_workers_in_the_reloader_child_only(
    outbox_dsn: str,
    outbox_schema: str,
    pubsub_inprocess_emulator: EmulatorEndpoint,
    tmp_path: Path,
) -> None:
    host = pubsub_inprocess_emulator.host
    async with temporary_topic(host, PROJECT, prefix="runserver") as made:
        _write_project(
            tmp_path,
            {"default": support.database_entry(outbox_dsn)},
            {
                "schema": outbox_schema,
                "pubsub": {"project": PROJECT, "emulator_host": host},
                "publisher": {"topic": made.name, "shutdown_timeout": "2s"},
            },
        )
        output: list[str] = []
        port = _free_port()
        async with _started(tmp_path, "runserver", f"127.0.0.1:{port}") as process:
            await _read_until(process, "outbox workers: running in thread", output)
            await _read_until(process, f"development server at http://127.0.0.1:{port}/", output)
            children = _children(process.pid)
            assert len(children) == 1, "".join(output)
            # SIGTERM to the serving child: Django's reloader makes it a normal exit, the
            # workers drain, and the parent then exits with the child's status.
            os.kill(children[0], signal.SIGTERM)
            await _finish(process, output, WAIT)
    text = "".join(output)
    starts = [line for line in text.splitlines() if "outbox workers: starting" in line]
    assert starts == ["outbox workers: starting (runserver, the autoreloader's serving child)"], (
        text
    )
    assert process.returncode == 0, text
    assert "outbox workers: stopped" in text


HANDLERS_MODULE = """
from outbox_di import InboxHandlers

handlers = InboxHandlers()


@handlers.on("item.created", transactional=True)
async def remember(event, session):
    await session.execute("INSERT INTO {schema}.seen (event_id) VALUES (%s)", (event.event_id,))
"""


async def test_outbox_worker_runs_until_sigterm_and_drains(
    outbox_dsn: str,
    outbox_schema: str,
    pubsub_emulator: EmulatorEndpoint,
    tmp_path: Path,
) -> None:
    """The command relays the outbox to a topic whose subscription feeds the project's own
    inbox; the transactional handler named by OUTBOX["inbox_handlers"] records each event
    once; SIGTERM drains everything and the command exits 0."""
    host = pubsub_emulator.host
    with contextlib.closing(psycopg2.connect(outbox_dsn)) as conn, conn, conn.cursor() as cursor:
        cursor.execute(
            sql.SQL("CREATE TABLE {}.seen (event_id text PRIMARY KEY)").format(
                sql.Identifier(outbox_schema)
            )
        )
    (tmp_path / "project_inbox.py").write_text(HANDLERS_MODULE.replace("{schema}", outbox_schema))
    async with temporary_topic(host, PROJECT, prefix="outbox-worker") as made:
        _write_project(
            tmp_path,
            {"default": support.database_entry(outbox_dsn)},
            {
                "schema": outbox_schema,
                "pubsub": {"project": PROJECT, "emulator_host": host},
                "publisher": {
                    "topic": made.name,
                    "tick_interval": "100ms",
                    "shutdown_timeout": "2s",
                },
                "inbox": {"enabled": True, "subscription": made.name, "shutdown_timeout": "2s"},
                "inbox_handlers": "project_inbox.handlers",
            },
        )
        output: list[str] = []
        async with _started(tmp_path, "outbox_worker") as process:
            await _read_until(process, "stop with Ctrl-C or SIGTERM", output)
            ids = {str(event_id) for event_id in _enqueue_direct(outbox_dsn, outbox_schema, 30)}
            seen: set[str] = set()
            deadline = time.monotonic() + WAIT
            while seen != ids and time.monotonic() < deadline:
                assert process.returncode is None, "".join(output)
                await asyncio.sleep(0.1)
                seen = _seen(outbox_dsn, outbox_schema)
            process.send_signal(signal.SIGTERM)
            took = await _finish(process, output, WAIT)
    text = "".join(output)
    assert process.returncode == 0, text
    assert took < runner.stop_deadline(_deadline_config()) + 5, text
    assert (
        f"outbox_worker: schema {outbox_schema!r}, 2 publisher loop(s), inbox of consumer" in text
    )
    assert "outbox_worker: stopped" in text
    assert "Traceback" not in text, text
    assert seen == ids
    assert _states(outbox_dsn, outbox_schema) == {"published": len(ids)}
    assert _inbox_states(outbox_dsn, outbox_schema) == {"processed": len(ids)}


def _deadline_config() -> OutboxConfig:
    return OutboxConfig.from_mapping(
        {
            "schema": "s",
            "dsn": "postgresql://x/y",
            "publisher": {"topic": "events", "shutdown_timeout": "2s"},
            "inbox": {"shutdown_timeout": "2s"},
        }
    )


def _seen(dsn: str, schema: str) -> set[str]:
    query = sql.SQL("SELECT event_id FROM {}.seen").format(sql.Identifier(schema))
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        return {row[0] for row in cursor.fetchall()}


def _inbox_states(dsn: str, schema: str) -> dict[str, int]:
    query = sql.SQL(
        "SELECT status || CASE WHEN status = 'pending' AND locked_at IS NOT NULL "
        "THEN ' leased' ELSE '' END, count(*) FROM {}.inbox_events GROUP BY 1"
    ).format(sql.Identifier(schema))
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        return {state: count for state, count in cursor.fetchall()}
