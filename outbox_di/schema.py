"""Schema names, the DDL template and the named queries, rendered for one service schema.

Only this module turns a schema name into SQL text. The name is validated against a strict
pattern and then double-quoted, so no user data ever reaches SQL unchecked. Queries are parsed
once per process and rendered once per repository, never per call.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import re
from collections.abc import Mapping

from outbox_di import errors

SCHEMA_NAME_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PARAM = re.compile(r"%\((\w+)\)s")
_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_SECTION = re.compile(r"^-- (no-notify|notify):begin\n(.*?)^-- \1:end\n", re.MULTILINE | re.DOTALL)

SCHEMA_VERSION = 1
"""The version the template creates; recorded in ``outbox_schema_version``."""


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


@functools.cache
def _template() -> str:
    return _read_resource("schema.sql.tmpl")


def render_ddl(schema: str, *, notify: bool = True) -> str:
    """The complete, idempotent DDL for ``schema``.

    ``notify=False`` leaves out the NOTIFY triggers (and drops them if present): write-heavy
    services that prefer to rely on the workers' poll pay nothing per insert.
    """
    quoted = quote_ident(schema)
    keep = "notify" if notify else "no-notify"

    def _section(match: re.Match[str]) -> str:
        return match.group(2) if match.group(1) == keep else ""

    text = _SECTION.sub(_section, _template())
    return (
        text.replace("{{schema}}", quoted)
        .replace("{{outbox_channel}}", _literal(channel_name(schema, "outbox")))
        .replace("{{inbox_channel}}", _literal(channel_name(schema, "inbox")))
    )


@functools.cache
def _raw_queries() -> Mapping[str, str]:
    text = _read_resource("queries.sql")
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


def query_names() -> frozenset[str]:
    """Names of every query in ``queries.sql``."""
    return frozenset(_raw_queries())


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

    def __init__(self, schema: str) -> None:
        quoted = quote_ident(schema)
        self.schema = schema
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
            name: _build_query(name, render(sql)) for name, sql in _raw_queries().items()
        }

    def __getitem__(self, name: str) -> Query:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in queries.sql") from None

    def __contains__(self, name: object) -> bool:
        return name in self._queries
