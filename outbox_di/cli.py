"""The ``outbox-di`` command: render, apply and check the schema; operate and run the workers.

Every command reads the same settings as a service: the ``[outbox]`` table of the settings files
with ``OUTBOX_*`` environment variables on top (:func:`outbox_di.settings.load_mapping`), and a
command-line flag wins over both. So ``--dsn`` is, in this order, the flag, ``$OUTBOX_DSN``, then
``dsn`` in the settings files (``--schema`` likewise with ``OUTBOX_SCHEMA`` and ``schema``). The
settings files are ``--settings FILE`` when given (repeatable), else ``settings.toml`` and
``.secrets.toml`` in the current directory (when present) plus those named, comma-separated, by
``$OUTBOX_SETTINGS_FILES``. They are read only when a value is missing from the command line, and
only after parsing, so ``--help`` works whatever they hold.

Exit codes: 0 success, 1 drift found, 2 bad usage or an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from outbox_di import config, database, errors, operations, redaction, schema, settings

_SCHEMA_HELP = "service schema name (default: $OUTBOX_SCHEMA, else schema in the settings files)"
_DSN_HELP = (
    "PostgreSQL DSN, e.g. postgresql://user@host:5432/db "
    "(default: $OUTBOX_DSN, else dsn in the settings files)"
)
_SETTINGS_HELP = (
    "a settings file with an [outbox] table (repeatable; default: settings.toml and "
    ".secrets.toml in the current directory, plus $OUTBOX_SETTINGS_FILES)"
)


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (``--limit``, ``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535 (``--port``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {value}")
    return value


def _add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--settings", action="append", metavar="FILE", dest="settings", help=_SETTINGS_HELP
    )


def _add_schema(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schema", help=_SCHEMA_HELP)
    _add_settings(parser)
    parser.add_argument(
        "--no-notify",
        dest="notify",
        action="store_false",
        help="without the NOTIFY triggers (workers then rely on their poll)",
    )


def _add_dsn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help=_DSN_HELP)


def _add_to(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to",
        type=int,
        metavar="N",
        help=f"stop at version N (default: the latest, {schema.SCHEMA_VERSION})",
    )


_URL_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def redact_arguments(text: str) -> str:
    """``text`` with the password of every DSN in it masked (URLs and ``password=``)."""
    text = _URL_TOKEN.sub(lambda match: redaction.redact_dsn(match.group()), text)
    return redaction.redact_dsn(text) if "password" in text.lower() else text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error never repeats a password: ``unrecognized arguments: --dsn
    postgresql://app:secret@db/app`` (given to a command without ``--dsn``) is masked."""

    def error(self, message: str) -> NoReturn:
        super().error(redact_arguments(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="outbox-di", description="Transactional outbox and inbox on PostgreSQL.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = commands.add_parser(
        "render-ddl", help="print the DDL for a schema: every migration, in order"
    )
    _add_schema(render)
    render.add_argument(
        "--from", dest="start", type=int, metavar="N", help="start at version N (default 1)"
    )
    _add_to(render)

    migrate = commands.add_parser(
        "migrate", help="apply the pending migrations to a database, in order (idempotent)"
    )
    _add_schema(migrate)
    _add_dsn(migrate)
    _add_to(migrate)
    migrate.add_argument(
        "--dry-run", action="store_true", help="print the SQL it would run, run nothing"
    )

    check = commands.add_parser(
        "check",
        help="compare a live schema (--dsn) or migration files (--file) with the migrations",
    )
    _add_schema(check)
    _add_dsn(check)
    check.add_argument(
        "--file",
        action="append",
        help="a committed migration to compare with the migrations, without a database "
        "(repeatable: the files are read in order, as one)",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")

    status = commands.add_parser(
        "status", help="pending, in flight, failing, dead and oldest age per event type"
    )
    _add_schema_dsn(status)
    status.add_argument(
        "--inbox",
        dest="table",
        action="store_const",
        const="inbox",
        default=None,
        help="only the inbox (default: the outbox and the inbox)",
    )
    status.add_argument(
        "--lock-ttl", default="30s", help="leases younger than this count as in flight (30s)"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")

    dead = commands.add_parser("dead", help="list, retry or discard dead-lettered events")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    dead_list = dead_commands.add_parser("list", help="dead events, oldest first")
    _add_schema_dsn(dead_list)
    _add_table(dead_list)
    dead_list.add_argument("--event-type", help="only this event type")
    dead_list.add_argument(
        "--limit", type=_positive_int, default=100, help="at most this many (100)"
    )
    dead_list.add_argument("--json", action="store_true", help="machine-readable output")
    for action, text in (
        ("retry", "make dead events pending again (attempts reset)"),
        ("discard", "delete dead events"),
    ):
        sub = dead_commands.add_parser(action, help=text)
        _add_schema_dsn(sub)
        _add_table(sub)
        chosen = sub.add_mutually_exclusive_group(required=True)
        chosen.add_argument("--all", action="store_true", help="every dead event")
        chosen.add_argument("--event-type", help="the dead events of this type")
        chosen.add_argument("--id", action="append", dest="ids", help="this event (repeatable)")
        sub.add_argument("--json", action="store_true", help="machine-readable output")

    purge = commands.add_parser(
        "purge", help="delete published/processed rows older than a duration, in batches"
    )
    _add_schema_dsn(purge)
    _add_table(purge)
    purge.add_argument("--older-than", required=True, help="a duration: 7d, 12h, 30m")
    purge.add_argument(
        "--batch-size", type=_positive_int, default=1000, help="rows per batch (1000)"
    )
    purge.add_argument("--json", action="store_true", help="machine-readable output")

    dashboard = commands.add_parser(
        "dashboard",
        help="serve a web dashboard: backlog, publish rate and lag, dead events (no login)",
        description="Binds 127.0.0.1 by default and has no login: put it behind your own "
        "authentication before exposing it. Needs the aiohttp extra.",
    )
    _add_schemas(dashboard)
    _add_dsn(dashboard)
    _add_settings(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    dashboard.add_argument("--port", type=_port, default=8089, help="port to listen on (8089)")
    dashboard.add_argument(
        "--allow-actions",
        action="store_true",
        help="show the retry and discard buttons and accept their POSTs (default: read-only)",
    )
    dashboard.add_argument(
        "--lock-ttl", default="30s", help="leases younger than this count as in flight (30s)"
    )

    worker = commands.add_parser(
        "worker",
        help="run the workers (publisher task, inbox) alone, until SIGINT or SIGTERM",
        description="Reads the [outbox] table of the settings files and OUTBOX_* variables.",
    )
    worker.add_argument(
        "--handlers",
        metavar="MODULE:NAME",
        help="the inbox handlers: an InboxHandlers, a mapping, or a factory called with the "
        "worker's container, e.g. myservice.inbox:handlers",
    )
    _add_schemas(
        worker,
        "schema name(s), comma-separated: one runs that service's workers, several one relay "
        "for all of them (default: schema, or schemas, in the settings)",
    )
    _add_settings(worker)
    return parser


_SCHEMAS_HELP = (
    "schema name(s), comma-separated (default: $OUTBOX_SCHEMA, else schema in the settings files)"
)


def _add_schemas(parser: argparse.ArgumentParser, text: str = _SCHEMAS_HELP) -> None:
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--schema", help=text)
    chosen.add_argument(
        "--all-schemas",
        action="store_true",
        help="every schema holding an outbox (an outbox_schema_version table)",
    )


def _add_schema_dsn(parser: argparse.ArgumentParser) -> None:
    _add_schemas(parser)
    _add_dsn(parser)
    _add_settings(parser)


def _add_table(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--inbox",
        dest="table",
        action="store_const",
        const="inbox",
        default="outbox",
        help="act on the inbox table (default: the outbox)",
    )


class UsageError(Exception):
    """A missing or bad command-line value."""


_ENV_PREFIX = "OUTBOX_"


def _settings_files(args: argparse.Namespace) -> list[str]:
    """The settings files :func:`settings.load_mapping` reads for this command (for messages)."""
    if args.settings:
        return list(args.settings)
    files = [name for name in settings.DEFAULT_FILES if os.path.isfile(name)]
    listed = os.environ.get("OUTBOX_SETTINGS_FILES", "").split(",")
    return files + [name.strip() for name in listed if name.strip()]


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[outbox]`` settings with ``OUTBOX_*`` on top, read once, when first needed."""
    cached: dict[str, Any] | None = getattr(args, "_settings_mapping", None)
    if cached is not None:
        return cached
    try:
        mapping = settings.load_mapping(args.settings)
    except errors.ConfigError:
        raise
    except ValueError as exc:  # a settings file that is not valid TOML, YAML, JSON ...
        files = ", ".join(_settings_files(args)) or "none"
        raise UsageError(
            f"cannot read the settings files ({files}): {exc}; fix the file, or give the "
            "values as flags (--dsn, --schema)"
        ) from exc
    args._settings_mapping = mapping
    return mapping


def _setting(args: argparse.Namespace, key: str, flag: str, *, alternative: str = "") -> str:
    """``flag`` when given, else ``OUTBOX_<KEY>``, else ``key`` in the settings files."""
    given: str | None = getattr(args, key)
    if given:
        return given
    value = _settings(args).get(key)
    if isinstance(value, str) and value:
        return value
    files = ", ".join(_settings_files(args)) or "none found"
    if value is not None:
        # A DSN is never echoed, even of the wrong type: it may hold a password.
        shown = f"a {type(value).__name__}" if key == "dsn" else repr(value)
        raise UsageError(
            f"{key} in the outbox settings must be a non-empty string, got {shown} (from "
            f"${_ENV_PREFIX}{key.upper()} or the settings files: {files}); fix it or give {flag}"
        )
    raise UsageError(
        f"{flag} is required: give {flag}{alternative}, set {_ENV_PREFIX}{key.upper()}, or set "
        f"{key} in the [outbox] table of settings.toml (settings files read: {files}; name "
        "others with --settings or OUTBOX_SETTINGS_FILES)"
    )


def _schema_arg(args: argparse.Namespace) -> str:
    return schema.validate_schema_name(_setting(args, "schema", "--schema"))


def _dsn_arg(args: argparse.Namespace, *, alternative: str = "") -> str:
    return _setting(args, "dsn", "--dsn", alternative=alternative)


def _render(args: argparse.Namespace) -> int:
    name = _schema_arg(args)
    sys.stdout.write(schema.render_ddl(name, notify=args.notify, to=args.to, start=args.start))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    name = _schema_arg(args)
    dsn = _dsn_arg(args)
    with database.connect(dsn) as conn:
        result = database.migrate(conn, name, notify=args.notify, to=args.to, dry_run=args.dry_run)
    if args.dry_run:
        if not result.statements:
            print(f"-- schema {name!r} is at version {result.version}: nothing to run")
        for number, text in enumerate(result.statements, 1):
            print(f"-- transaction {number} (outbox-di migrate takes the schema's advisory lock)")
            print("BEGIN;")
            print(text.strip())
            print("COMMIT;")
        if result.applied:
            print(
                f"-- would apply version(s) {', '.join(map(str, result.applied))} to schema "
                f"{name!r}, each in its own transaction"
            )
        return 0
    if result.applied:
        versions = ", ".join(map(str, result.applied))
        print(f"schema {name!r} migrated: version {result.version} (applied {versions})")
    else:
        print(f"schema {name!r} migrated: version {result.version} (nothing to apply)")
    return 0


split_statements = schema.split_statements


def compare_file(
    text: str, schema_name: str, *, notify: bool = True
) -> tuple[list[str], list[str]]:
    """``(missing, extra)`` statements of migration SQL against the rendered migrations."""
    expected = split_statements(schema.render_ddl(schema_name, notify=notify))
    found = split_statements(text)
    missing = [f"missing statement: {s[:120]}" for s in expected if s not in found]
    extra = [f"extra statement: {s[:120]}" for s in found if s not in expected]
    return missing, extra


def _check(args: argparse.Namespace) -> int:
    name = _schema_arg(args)
    notes: list[str] = []
    version: int | None = schema.SCHEMA_VERSION
    behind = False
    if args.file:
        texts = []
        for path in args.file:
            try:
                with open(path, encoding="utf-8") as handle:
                    texts.append(handle.read())
            except UnicodeDecodeError as exc:
                raise UsageError(
                    f"--file {path}: not UTF-8 text (byte {exc.start}: {exc.reason}); give the "
                    "SQL file written by `outbox-di render-ddl`"
                ) from exc
        differences, extras = compare_file("\n;\n".join(texts), name, notify=args.notify)
        target = ", ".join(args.file)
    else:
        dsn = _dsn_arg(args, alternative=" (or --file)")
        with database.connect(dsn) as conn:
            report = database.inspect(conn, name, notify=args.notify)
        differences, extras, notes = report.differences, list(report.extras), list(report.notes)
        version, behind = report.version, report.behind
        target = f"schema {name!r}"
    if args.json:
        print(
            json.dumps(
                {
                    "schema": name,
                    "in_sync": not differences,
                    "version": version,
                    "latest": schema.SCHEMA_VERSION,
                    "behind": behind,
                    "differences": differences,
                    "extras": extras,
                    "notes": notes,
                },
                indent=2,
            )
        )
    else:
        for line in differences:
            print(line if line.startswith("behind: ") else f"DRIFT  {line}")
        for line in extras:
            print(f"note   {line} (not in the template; allowed)")
        for line in notes:
            print(f"note   {line}")
        drift = [line for line in differences if not line.startswith("behind: ")]
        if behind and not drift:
            print(f"{target}: behind; run `outbox-di migrate`")
        elif differences:
            print(
                f"{target}: {len(drift)} difference(s) from the migrations"
                f"{' and behind' if behind else ''}; run `outbox-di migrate` or fix them by hand"
            )
        else:
            print(f"{target}: in sync with the template (version {schema.SCHEMA_VERSION})")
    return 1 if differences else 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _duration(value: str, flag: str) -> float:
    try:
        seconds = config.parse_duration(value, flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if seconds <= 0:
        raise UsageError(f"{flag}: must be a positive duration (30s, 5m, 7d), got {value!r}")
    return seconds


def _schema_names(args: argparse.Namespace, conn: Any | None = None) -> list[str]:
    """``--schema a,b`` (each name checked), or with ``--all-schemas`` every outbox schema of the
    database behind ``conn``."""
    if getattr(args, "all_schemas", False):
        if conn is None:
            raise UsageError("--all-schemas needs the database (--dsn)")
        names = operations.schemas(conn)
        if not names:
            raise UsageError("--all-schemas: no schema of this database holds an outbox")
        return names
    names = schema_list(_setting(args, "schema", "--schema", alternative=" (or --all-schemas)"))
    if conn is not None and len(names) > 1:
        # Before acting on any of them: a typo in the third name changes nothing in the first.
        known = set(operations.schemas(conn))
        missing = [name for name in names if name not in known]
        if missing:
            raise UsageError(
                f"--schema: {', '.join(map(repr, missing))} "
                f"{'holds' if len(missing) == 1 else 'hold'} no outbox in this database "
                "(no outbox_schema_version table); check the name, or run outbox-di migrate "
                "--schema " + missing[0]
            )
    return names


def _schema_field(names: Sequence[str], name: str) -> dict[str, str]:
    """The ``"schema"`` key of a JSON object when the command covers several schemas."""
    return {"schema": name} if len(names) > 1 else {}


def _labelled(
    names: Sequence[str], name: str, lines: list[tuple[str, ...]]
) -> list[tuple[str, ...]]:
    """Table rows with a first ``schema`` column when the command covers several schemas."""
    if len(names) == 1:
        return lines
    return [("schema", *lines[0])] + [(name, *line) for line in lines[1:]]


def _status(args: argparse.Namespace) -> int:
    dsn = _dsn_arg(args)
    if not args.all_schemas:
        _schema_names(args)  # a bad name is said before connecting
    lock_ttl = _duration(args.lock_ttl, "--lock-ttl")  # before connecting: a typo is said at once
    found: list[tuple[str, list[operations.StatusRow]]] = []
    with database.connect(dsn) as conn:
        names = _schema_names(args, conn)
        for name in names:
            rows = operations.status(conn, name, lock_ttl=lock_ttl)
            if args.table is not None:
                rows = [row for row in rows if row.table == args.table]
            found.append((name, rows))
    if args.json:
        shown = [
            _schema_field(names, name) | dataclasses.asdict(row)
            for name, rows in found
            for row in rows
        ]
        print(json.dumps(shown, indent=2))
        return 0
    table: list[tuple[str, ...]] = []
    for name, rows in found:
        if not rows:
            where = f" in the {args.table}" if args.table else ""
            print(f"schema {name!r}: nothing pending, nothing dead{where}")
            continue
        lines = _status_lines(rows)
        table.extend(_labelled(names, name, lines)[0 if not table else 1 :])
    if table:
        _print_table(table)
    return 0


def _status_lines(rows: Sequence[operations.StatusRow]) -> list[tuple[str, ...]]:
    header: tuple[str, ...] = (
        "table",
        "consumer",
        "event type",
        "pending",
        "in flight",
        "failing",
        "dead",
        "oldest pending",
    )
    lines: list[tuple[str, ...]] = [header] + [
        (
            row.table,
            row.consumer or "-",
            row.event_type,
            str(row.pending),
            str(row.in_flight),
            str(row.failing),
            str(row.dead),
            _age(row.oldest_pending_age_s),
        )
        for row in rows
    ]
    return lines


def printable(text: str) -> str:
    """``text`` with control characters (and other unprintable ones) escaped, ``\\x1b`` for
    ESC: event types, ids and errors come from other services and must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _print_table(lines: Sequence[tuple[str, ...]]) -> None:
    lines = [tuple(printable(cell) for cell in line) for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _aggregate(aggregate_type: str, aggregate_id: str) -> str:
    """``type:id`` for the dead list; ``-`` for what is empty (an inbox event with no aggregate)."""
    if not aggregate_type and not aggregate_id:
        return "-"
    return f"{aggregate_type or '-'}:{aggregate_id or '-'}"


def _dead(args: argparse.Namespace) -> int:
    dsn = _dsn_arg(args)
    if not args.all_schemas:
        _schema_names(args)  # a bad name is said before connecting
    with database.connect(dsn) as conn:
        names = _schema_names(args, conn)
        if args.dead_command == "list":
            _dead_list(args, conn, names)
            return 0
        action = operations.dead_retry if args.dead_command == "retry" else operations.dead_discard
        counts = {
            name: action(
                conn,
                name,
                args.table,
                select_all=args.all,
                event_type=args.event_type,
                event_ids=args.ids or (),
            )
            for name in names
        }
    verb = "made pending again" if args.dead_command == "retry" else "discarded"
    for name, changed in counts.items():
        if args.json:
            shown = {"table": args.table, "action": args.dead_command, "count": changed}
            print(json.dumps(_schema_field(names, name) | shown))
        elif len(names) > 1:
            print(f"schema {name!r}: {changed} dead {args.table} event(s) {verb}")
        else:
            print(f"{changed} dead {args.table} event(s) {verb}")
    return 0


_DEAD_HEADER: tuple[str, ...] = (
    "event id",
    "consumer",
    "event type",
    "aggregate",
    "attempts",
    "last error",
)


def _dead_list(args: argparse.Namespace, conn: Any, names: Sequence[str]) -> None:
    table: list[tuple[str, ...]] = []
    shown: list[dict[str, Any]] = []
    for name in names:
        dead = operations.dead_list(
            conn, name, args.table, event_type=args.event_type, limit=args.limit
        )
        if args.json:
            shown.extend(_schema_field(names, name) | dataclasses.asdict(r) for r in dead)
            continue
        if not dead:
            print(f"no dead {args.table} events in schema {name!r}")
            continue
        lines: list[tuple[str, ...]] = [_DEAD_HEADER] + [
            (
                r.event_id,
                r.consumer or "-",
                r.event_type,
                _aggregate(r.aggregate_type, r.aggregate_id),
                str(r.delivery_attempts),
                (r.last_error or "")[:80],
            )
            for r in dead
        ]
        table.extend(_labelled(names, name, lines)[0 if not table else 1 :])
    if args.json:
        print(json.dumps(shown, indent=2, default=str))
    elif table:
        _print_table(table)


def _purge(args: argparse.Namespace) -> int:
    dsn = _dsn_arg(args)
    if not args.all_schemas:
        _schema_names(args)  # a bad name is said before connecting
    older_than = _duration(args.older_than, "--older-than")
    interactive = sys.stderr.isatty() and not args.json
    state = "published" if args.table == "outbox" else "processed"
    with database.connect(dsn) as conn:
        names = _schema_names(args, conn)
        for name in names:

            def progress(total: int, name: str = name) -> None:
                if interactive:
                    where = f" of {name}" if len(names) > 1 else ""
                    print(
                        f"\rpurging {args.table}{where}: {total} rows deleted",
                        end="",
                        file=sys.stderr,
                    )

            total = operations.purge(
                conn,
                name,
                args.table,
                older_than=older_than,
                batch_size=args.batch_size,
                progress=progress,
            )
            if interactive:
                print(file=sys.stderr)
            if args.json:
                shown = {"table": args.table, "deleted": total}
                print(json.dumps(_schema_field(names, name) | shown))
            else:
                where = f" of schema {name!r}" if len(names) > 1 else ""
                print(
                    f"purged {total} {state} {args.table} row(s){where} older than "
                    f"{args.older_than}"
                )
    return 0


def schema_list(text: str) -> list[str]:
    """The names of ``--schema a,b,...``, each validated; a clear error names the flag."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise UsageError(f"--schema: an empty name in {text!r}; give names like catalog,billing")
    for name in names:
        problems = schema.schema_name_problems(name)
        if problems:
            raise UsageError(
                f"--schema: bad schema name {name!r}: {'; '.join(problems)}; give names like "
                "catalog,billing, or --all-schemas"
            )
    return names


def _dashboard(args: argparse.Namespace) -> int:
    dsn = _dsn_arg(args)
    names = [] if args.all_schemas else _schema_names(args)  # [] means every schema
    lock_ttl = _duration(args.lock_ttl, "--lock-ttl")
    try:
        from outbox_di.dashboard import aiohttp as dashboard_server
    except ImportError as exc:
        raise UsageError(
            f"the dashboard server needs aiohttp ({exc}): pip install 'outbox_di[aiohttp]'"
        ) from exc
    from outbox_di.dashboard import Dashboard

    board = Dashboard.from_dsn(
        dsn,
        names,
        all_schemas=args.all_schemas,
        allow_actions=args.allow_actions,
        lock_ttl=lock_ttl,
    )
    with database.connect(dsn):  # a wrong DSN is said now, not on the first page load
        pass
    shown = "every outbox_di schema" if args.all_schemas else ", ".join(names)
    mode = "retry and discard allowed" if args.allow_actions else "read-only"
    print(
        f"outbox-di dashboard: http://{args.host}:{args.port}/ ({shown}; {mode}; no login)",
        flush=True,
    )
    dashboard_server.serve(board, args.host, args.port)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from outbox_di import worker

    schemas: list[str] | None = None
    if args.all_schemas:
        schemas = [config.ALL_SCHEMAS]
    elif args.schema:
        schemas = schema_list(args.schema)
    return worker.run(args.settings, handlers=args.handlers, schemas=schemas)


_COMMANDS = {
    "render-ddl": _render,
    "migrate": _migrate,
    "check": _check,
    "worker": _worker,
    "status": _status,
    "dead": _dead,
    "purge": _purge,
    "dashboard": _dashboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (UsageError, errors.OutboxError, OSError) as exc:
        print(f"outbox-di {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
