"""Schema names, the numbered migrations and the named queries, rendered for one service schema.

Only this module turns a schema name into SQL text. The name is validated against a strict
pattern and then double-quoted, so no user data ever reaches SQL unchecked. Queries are parsed
once per process and rendered once per repository, never per call.

The schema is built by numbered migrations, ``outbox_di/sql/migrations/NNNN_<name>.sql``
(numbered from 0001, no gaps), applied in order after ``sql/schema_version.sql`` (the schema and
its version table). :data:`SCHEMA_VERSION` is the highest number shipped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from outbox_di import errors

if TYPE_CHECKING:
    from importlib.abc import Traversable

SCHEMA_NAME_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PARAM = re.compile(r"%\((\w+)\)s")
_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_SECTION = re.compile(
    r"^-- (no-notify|notify):begin\n(.*?)^-- \1:end[ \t]*(?:\n|\Z)", re.MULTILINE | re.DOTALL
)


def validate_schema_name(name: object) -> str:
    """Return ``name`` if it is a usable schema name, else raise a clear SchemaNameError that
    lists every problem at once."""
    if not isinstance(name, str):
        raise errors.SchemaNameError(f"schema name must be a string, got {type(name).__name__}")
    problems = schema_name_problems(name)
    if problems:
        raise errors.SchemaNameError(
            f"invalid schema name {name!r}: it {'; it '.join(problems)}. Use 1-63 lower-case "
            "letters, digits and underscores, starting with a letter or underscore, not pg_ "
            "(for example 'catalog')"
        )
    return name


def schema_name_problems(name: str) -> list[str]:
    """Everything wrong with ``name`` as a schema name (empty when it is usable)."""
    if SCHEMA_NAME_PATTERN.fullmatch(name) is not None and not name.startswith("pg_"):
        return []
    if not name:
        return ["is empty"]
    problems: list[str] = []
    if len(name) > 63:
        problems.append(f"is {len(name)} characters long (PostgreSQL's limit is 63)")
    if name.lower() != name:
        problems.append("has upper-case letters")
    others = sorted({c for c in name.lower() if not (c.isascii() and (c.isalnum() or c == "_"))})
    if others:
        problems.append("has characters other than a-z, 0-9 and _: " + " ".join(map(repr, others)))
    if name[0].isdigit():
        problems.append("starts with a digit")
    if name.startswith("pg_"):
        problems.append("starts with pg_, a prefix reserved by PostgreSQL for system schemas")
    return problems


def quote_ident(name: str) -> str:
    """Double-quote a validated identifier."""
    return '"' + validate_schema_name(name) + '"'


def channel_name(schema: str, table: str) -> str:
    """The LISTEN/NOTIFY channel of ``table`` ('outbox' or 'inbox') in ``schema``.

    PostgreSQL truncates channels at 63 bytes, so a very long schema name keeps only its head;
    two schemas sharing a 56-character prefix then wake each other's workers, which is harmless.
    """
    if table not in ("outbox", "inbox"):
        raise ValueError(f"table must be 'outbox' or 'inbox', got {table!r}")
    return f"{validate_schema_name(schema)[:56]}_{table}"


def _literal(text: str) -> str:
    # Only ever called with channel names built from a validated schema name.
    return "'" + text.replace("'", "''") + "'"


def _read_resource(name: str) -> str:
    return importlib.resources.files("outbox_di").joinpath("sql").joinpath(name).read_text("utf-8")


def _sections(text: str, *, notify: bool) -> str:
    """``text`` with the notify (or the no-notify) sections kept and the others left out."""
    keep = "notify" if notify else "no-notify"

    def _section(match: re.Match[str]) -> str:
        return match.group(2) if match.group(1) == keep else ""

    return _SECTION.sub(_section, text)


def _render(text: str, schema: str, *, notify: bool) -> str:
    """Fill in the placeholders of a migration (or of ``schema_version.sql``) for ``schema``."""
    quoted = quote_ident(schema)
    return (
        _sections(text, notify=notify)
        .replace("{{schema}}", quoted)
        .replace("{{outbox_channel}}", _literal(channel_name(schema, "outbox")))
        .replace("{{inbox_channel}}", _literal(channel_name(schema, "inbox")))
    )


def split_statements(sql: str) -> list[str]:
    """Split SQL text into statements, ``--`` comments left out and whitespace collapsed,
    keeping ``$$``-quoted bodies and literals whole."""
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


def checksum(text: str) -> str:
    """The checksum recorded for a migration: the sha256 (hex) of its statements, un-rendered.

    Computed on the file as shipped, placeholders left as they are, so the schema name and
    ``--no-notify`` do not change it; ``--`` comments and whitespace do not count (a reworded
    comment is not a new migration), while a changed statement, or one moved in or out of a
    notify section, does. The notify and the no-notify forms are both hashed.
    """
    forms = ("\n".join(split_statements(_sections(text, notify=n))) for n in (True, False))
    return hashlib.sha256("\n\x00\n".join(forms).encode("utf-8")).hexdigest()


_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclasses.dataclass(frozen=True)
class Migration:
    """One numbered migration file: ``NNNN_<name>.sql``."""

    version: int
    name: str
    """The file name without ``.sql``, e.g. ``0001_initial``."""
    text: str
    """The file as shipped, placeholders un-rendered."""

    @functools.cached_property
    def checksum(self) -> str:
        """See :func:`checksum`."""
        return checksum(self.text)

    @property
    def filename(self) -> str:
        return f"{self.name}.sql"

    def render(self, schema: str, *, notify: bool = True) -> str:
        """The migration's SQL for ``schema`` (without the version row; see
        :func:`record_version_sql`)."""
        return _render(self.text, schema, notify=notify)

    def render_notify(self, schema: str, *, notify: bool = True) -> str:
        """Only the statements of this migration's notify (or no-notify) sections, for
        ``schema``: what ``migrate`` replays when the triggers differ from what was asked."""
        keep = "notify" if notify else "no-notify"
        parts = [m.group(2) for m in _SECTION.finditer(self.text) if m.group(1) == keep]
        return _render("".join(parts), schema, notify=notify)


def load_migrations(directory: Traversable) -> tuple[Migration, ...]:
    """The migrations of ``directory``, in order; raises a clear
    :class:`~outbox_di.errors.OutboxError` on a misnamed file, a duplicate or a gap."""
    found: dict[int, Migration] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            raise errors.OutboxError(
                f"migration file {entry.name!r} is misnamed: name it NNNN_<snake_name>.sql "
                "(four digits, then lower-case letters, digits and underscores)"
            )
        version = int(match.group(1))
        if version in found:
            raise errors.OutboxError(
                f"two migrations have number {version:04d}: {found[version].filename!r} and "
                f"{entry.name!r}; renumber one of them"
            )
        found[version] = Migration(version, entry.name[:-4], entry.read_text("utf-8"))
    ordered = tuple(found[version] for version in sorted(found))
    for expected, migration in enumerate(ordered, 1):
        if migration.version != expected:
            raise errors.OutboxError(
                f"migrations must be numbered from 0001 without gaps: {migration.filename!r} "
                f"comes where {expected:04d} was expected"
            )
    if not ordered:
        raise errors.OutboxError(f"no migrations found in {directory}")
    return ordered


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """The library's migrations (``outbox_di/sql/migrations``), in order."""
    return load_migrations(importlib.resources.files("outbox_di").joinpath("sql/migrations"))


def latest_version(found: Sequence[Migration] | None = None) -> int:
    """The highest version of ``found`` (default: the library's migrations)."""
    return (found or migrations())[-1].version


SCHEMA_VERSION = latest_version()
"""The version this library creates and needs: the highest migration number shipped."""


@functools.cache
def _version_sql() -> Mapping[str, str]:
    """The named blocks of ``sql/schema_version.sql``, comments left out."""
    parts = _NAME_LINE.split(_read_resource("schema_version.sql"))
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        blocks[name] = "\n".join(lines).strip() + "\n"
    return blocks


def version_sql(name: str, schema: str) -> str:
    """The named statement of ``sql/schema_version.sql`` for ``schema``."""
    return _render(_version_sql()[name], schema, notify=True)


def render_version_table(schema: str) -> str:
    """The schema and its version table, created or brought up to date, for ``schema``."""
    return version_sql("version_table", schema)


def record_version_sql(schema: str, migration: Migration) -> str:
    """The statement recording ``migration`` as applied (its checksum filled in on a row that
    has none, as outbox_di 0.1.0 recorded version 1). Only the library's own number and hex
    digest are written into it."""
    return (
        version_sql("record_version", schema)
        .replace("{{version}}", str(int(migration.version)))
        .replace("{{checksum}}", _hex(migration.checksum))
    )


def _hex(digest: str) -> str:
    if re.fullmatch(r"[0-9a-f]{64}", digest) is None:
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


def select_migrations(
    start: int | None = None, to: int | None = None, found: Sequence[Migration] | None = None
) -> tuple[Migration, ...]:
    """The migrations from version ``start`` (default 1) to ``to`` (default the latest); a
    number outside ``1..latest`` is refused with the range."""
    chosen = tuple(found or migrations())
    latest = chosen[-1].version
    first = 1 if start is None else start
    last = latest if to is None else to
    for label, value in (("--from", first), ("--to", last)):
        if not 1 <= value <= latest:
            raise errors.OutboxError(f"{label} {value}: this outbox_di has versions 1 to {latest}")
    if first > last:
        raise errors.OutboxError(f"--from {first} is after --to {last}")
    return tuple(m for m in chosen if first <= m.version <= last)


def render_ddl(
    schema: str,
    *,
    notify: bool = True,
    to: int | None = None,
    start: int | None = None,
    found: Sequence[Migration] | None = None,
) -> str:
    """The complete DDL for ``schema``: the version table, then every migration (from
    ``start`` to ``to``, default all) in order, each followed by the statement recording it.

    Applied as one script it builds the schema a fresh ``outbox-di migrate`` builds. Each
    migration's statements are idempotent, so the text may also run on a schema already at an
    earlier version. ``notify=False`` leaves out the NOTIFY triggers (and drops them if
    present): write-heavy services that prefer to rely on the workers' poll pay nothing per
    insert.
    """
    validate_schema_name(schema)
    chosen = select_migrations(start, to, found)
    parts = [render_version_table(schema)]
    for migration in chosen:
        parts.append(f"\n-- outbox_di version {migration.version}: {migration.filename}\n")
        parts.append(migration.render(schema, notify=notify).rstrip("\n") + "\n\n")
        parts.append(record_version_sql(schema, migration))
    return "".join(parts)


LIBRARY_FILES = ("queries.sql",)
"""The library's own named queries."""
TEST_KIT_FILES = ("queries.sql", "testing.sql")
"""The library's queries and the test kit's (``sql/testing.sql``), for ``outbox_di.testing``."""


@functools.cache
def _raw_queries(files: tuple[str, ...] = LIBRARY_FILES) -> Mapping[str, str]:
    queries: dict[str, str] = {}
    for file in files:
        for name, sql in _parse_queries(_read_resource(file)).items():
            if name in queries:
                raise ValueError(f"query {name!r} of {file} is also in an earlier file")
            queries[name] = sql
    return queries


def _parse_queries(text: str) -> dict[str, str]:
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


def query_names(files: tuple[str, ...] = LIBRARY_FILES) -> frozenset[str]:
    """Names of every query in ``files`` (the library's own by default)."""
    return frozenset(_raw_queries(files))


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """One named query rendered for a schema, in every parameter style a driver needs."""

    name: str
    sql: str
    """pyformat (``%(name)s``): psycopg2/aiopg, psycopg 3 and Django."""
    params: tuple[str, ...]
    """Parameter names in order of first appearance (``$1`` is ``params[0]``)."""
    numeric_sql: str
    """``$1`` style for asyncpg."""
    named_sql: str
    """``:name`` style for SQLAlchemy's ``text()``."""

    def positional(self, values: Mapping[str, object]) -> list[object]:
        """The values in ``$n`` order."""
        return [values[name] for name in self.params]


def _build_query(name: str, sql: str) -> Query:
    order: list[str] = []
    for match in _PARAM.finditer(sql):
        if match.group(1) not in order:
            order.append(match.group(1))

    def _numeric(match: re.Match[str]) -> str:
        return f"${order.index(match.group(1)) + 1}"

    return Query(
        name=name,
        sql=sql,
        params=tuple(order),
        numeric_sql=_PARAM.sub(_numeric, sql),
        named_sql=_PARAM.sub(lambda m: f":{m.group(1)}", sql),
    )


class Queries:
    """Every named query rendered for one schema; attribute access by name."""

    def __init__(self, schema: str, *, files: tuple[str, ...] = LIBRARY_FILES) -> None:
        quoted = quote_ident(schema)
        self.schema = schema
        self._files = files
        replacements = {
            "{{schema}}": quoted,
            "{{outbox_channel}}": '"' + channel_name(schema, "outbox") + '"',
            "{{inbox_channel}}": '"' + channel_name(schema, "inbox") + '"',
        }

        def render(sql: str) -> str:
            for placeholder, value in replacements.items():
                sql = sql.replace(placeholder, value)
            return sql

        self._queries = {
            name: _build_query(name, render(sql)) for name, sql in _raw_queries(files).items()
        }

    def __getitem__(self, name: str) -> Query:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in {', '.join(self._files)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._queries
