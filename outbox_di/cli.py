"""The ``outbox-di`` command: render, apply and check the schema; run the demo.

``--dsn`` and ``--schema`` fall back to the ``OUTBOX_DSN`` and ``OUTBOX_SCHEMA`` environment
variables. Exit codes: 0 success, 1 drift found, 2 bad usage or an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from outbox_di import database, errors, schema


def _add_schema(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schema",
        default=os.environ.get("OUTBOX_SCHEMA"),
        help="service schema name (default: $OUTBOX_SCHEMA)",
    )
    parser.add_argument(
        "--no-notify",
        dest="notify",
        action="store_false",
        help="without the NOTIFY triggers (workers then rely on their poll)",
    )


def _add_dsn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default=os.environ.get("OUTBOX_DSN"),
        help="PostgreSQL DSN, e.g. postgresql://user@host:5432/db (default: $OUTBOX_DSN)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outbox-di", description="Transactional outbox and inbox on PostgreSQL."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = commands.add_parser("render-ddl", help="print the DDL for a schema")
    _add_schema(render)

    migrate = commands.add_parser("migrate", help="apply the DDL to a database (idempotent)")
    _add_schema(migrate)
    _add_dsn(migrate)

    check = commands.add_parser(
        "check",
        help="compare a live schema (--dsn) or a migration file (--file) with the template",
    )
    _add_schema(check)
    _add_dsn(check)
    check.add_argument(
        "--file", help="a committed migration to compare with the template, without a database"
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")

    commands.add_parser("demo", help="a short end-to-end run on an embedded or local PostgreSQL")

    worker = commands.add_parser(
        "worker",
        help="run the workers (publisher task) alone, until SIGINT or SIGTERM",
        description="Reads the [outbox] table of settings.toml and OUTBOX_* variables.",
    )
    worker.add_argument(
        "--settings",
        action="append",
        metavar="FILE",
        help="a settings file with an [outbox] table (repeatable; default settings.toml)",
    )
    return parser


class UsageError(Exception):
    """A missing or bad command-line value."""


def _require(value: str | None, flag: str, env: str) -> str:
    if not value:
        raise UsageError(f"{flag} is required (or set {env})")
    return value


def _schema_arg(args: argparse.Namespace) -> str:
    return schema.validate_schema_name(_require(args.schema, "--schema", "OUTBOX_SCHEMA"))


def _render(args: argparse.Namespace) -> int:
    sys.stdout.write(schema.render_ddl(_schema_arg(args), notify=args.notify))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    name = _schema_arg(args)
    dsn = _require(args.dsn, "--dsn", "OUTBOX_DSN")
    with database.connect(dsn) as conn:
        database.migrate(conn, name, notify=args.notify)
        version = database.schema_version(conn, name)
    print(f"schema {name!r} migrated: version {version}")
    return 0


_COMMENT = re.compile(r"--[^\n]*")


def split_statements(sql: str) -> list[str]:
    """Split SQL text into statements, keeping ``$$``-quoted bodies and literals whole."""
    statements: list[str] = []
    current: list[str] = []
    dollar = quote = False
    i = 0
    while i < len(sql):
        char = sql[i]
        if not quote and sql.startswith("$$", i):
            dollar = not dollar
            current.append("$$")
            i += 2
            continue
        if not dollar and char == "'":
            quote = not quote
        if not dollar and not quote and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end == -1 else end
            continue
        if char == ";" and not dollar and not quote:
            statements.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    statements.append("".join(current))
    return [" ".join(s.split()) for s in statements if s.strip()]


def compare_file(
    text: str, schema_name: str, *, notify: bool = True
) -> tuple[list[str], list[str]]:
    """``(missing, extra)`` statements of a migration file against the rendered template."""
    expected = split_statements(schema.render_ddl(schema_name, notify=notify))
    found = split_statements(text)
    missing = [f"missing statement: {s[:120]}" for s in expected if s not in found]
    extra = [f"extra statement: {s[:120]}" for s in found if s not in expected]
    return missing, extra


def _check(args: argparse.Namespace) -> int:
    name = _schema_arg(args)
    if args.file:
        with open(args.file, encoding="utf-8") as handle:
            differences, extras = compare_file(handle.read(), name, notify=args.notify)
        target = args.file
    else:
        dsn = _require(args.dsn, "--dsn", "OUTBOX_DSN (or give --file)")
        with database.connect(dsn) as conn:
            differences, extras = database.check(conn, name, notify=args.notify)
        target = f"schema {name!r}"
    if args.json:
        print(
            json.dumps(
                {
                    "schema": name,
                    "in_sync": not differences,
                    "differences": differences,
                    "extras": extras,
                },
                indent=2,
            )
        )
    else:
        for line in differences:
            print(f"DRIFT  {line}")
        for line in extras:
            print(f"note   {line} (not in the template; allowed)")
        if differences:
            print(
                f"{target}: {len(differences)} difference(s) from the template; "
                "run `outbox-di migrate` or fix them by hand"
            )
        else:
            print(f"{target}: in sync with the template (version {schema.SCHEMA_VERSION})")
    return 1 if differences else 0


def _demo(args: argparse.Namespace) -> int:
    from outbox_di import demo

    return demo.main()


def _worker(args: argparse.Namespace) -> int:
    from outbox_di import worker

    return worker.run(args.settings)


_COMMANDS = {
    "render-ddl": _render,
    "migrate": _migrate,
    "check": _check,
    "demo": _demo,
    "worker": _worker,
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
