"""``settings.OUTBOX``: the library's configuration tree plus a few keys only Django uses.

```python
OUTBOX = {
    "schema": "catalog",                      # the library's tree (docs/configuration.md)
    "publisher": {"topic": "catalog-items"},
    # "dsn" defaults to the Django database named by "database"
    "database": "default",                    # Django-only keys, split off before validation
    "autostart": True,                        # default: run_workers
    "inbox_handlers": "catalog.inbox.handlers",
    "wire": ["catalog.views"],
}
```

Every problem, in the Django keys and in the library's tree, is reported at once with its key
path (``OUTBOX.publisher.batch_size: ...``), as one :class:`OutboxImproperlyConfigured`, which
is both Django's ``ImproperlyConfigured`` and the library's ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg2.extensions
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.db import DEFAULT_DB_ALIAS  # type: ignore[import-untyped]

from outbox_di import config, errors
from outbox_di.inbox import handlers as handlers_module

__all__ = [
    "DJANGO_KEYS",
    "DjangoOutboxSettings",
    "OutboxImproperlyConfigured",
    "dsn_from_database",
    "read_settings",
]

SETTING = "OUTBOX"
"""The name of the Django setting."""

DJANGO_KEYS = ("autostart", "database", "inbox_handlers", "wire")
"""Keys of ``settings.OUTBOX`` that the Django integration reads; the rest is the library's."""

# libpq connection parameters that may sit in DATABASES[...]["OPTIONS"] and mean the same to the
# library's pool (Django's own options, such as isolation_level or pool, are left out).
_LIBPQ_OPTIONS = (
    "options",
    "passfile",
    "service",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "target_session_attrs",
)


class OutboxImproperlyConfigured(errors.ConfigError, ImproperlyConfigured):  # type: ignore[misc]
    """``settings.OUTBOX`` is invalid: ``problems`` names each key (``OUTBOX.<path>: ...``)."""


@dataclasses.dataclass(frozen=True)
class DjangoOutboxSettings:
    """``settings.OUTBOX`` read and checked: the library's config and the Django-only keys."""

    config: config.OutboxConfig
    database: str
    autostart: bool
    inbox_handlers: handlers_module.InboxHandlers | None
    wire: tuple[str, ...]

    @property
    def has_workers(self) -> bool:
        """Whether there is anything to run: the publisher, the inbox, or both."""
        return self.config.publisher.enabled or self.config.inbox.enabled


def read_settings(raw: object, databases: Mapping[str, Mapping[str, Any]]) -> DjangoOutboxSettings:
    """Check ``raw`` (the value of ``settings.OUTBOX``) against ``databases``.

    ``dsn`` defaults to the connection of the Django database named by ``database``
    (``"default"``), the one :func:`~outbox_di.integrations.django.enqueue` writes through: the
    outbox tables have to live in that database. ``autostart`` defaults to ``run_workers``.
    """
    if raw is None:
        raise OutboxImproperlyConfigured(
            [
                f"{SETTING}: not set; add a {SETTING} dict to your settings, at least "
                '{"schema": "<schema>", "publisher": {"topic": "<topic>"}} (see docs/django.md)'
            ]
        )
    if not isinstance(raw, Mapping):
        raise OutboxImproperlyConfigured(
            [f"{SETTING}: must be a dict of outbox settings, got {type(raw).__name__}"]
        )

    problems: list[str] = []
    library_keys = [field.name for field in dataclasses.fields(config.OutboxConfig)]
    valid_keys = [*library_keys, *DJANGO_KEYS]
    tree: dict[Any, Any] = {}
    for key, value in raw.items():
        if isinstance(key, str) and key in DJANGO_KEYS:
            continue
        if isinstance(key, str) and key.lower() not in valid_keys:
            hint = config.closest_key(key, valid_keys)
            problems.append(
                f"{SETTING}.{key}: unknown key; did you mean {hint!r}?"
                if hint is not None
                else f"{SETTING}.{key}: unknown key; valid keys: {', '.join(valid_keys)}"
            )
            continue
        tree[key] = value

    database = raw.get("database", DEFAULT_DB_ALIAS)
    if not isinstance(database, str) or database not in databases:
        aliases = ", ".join(repr(alias) for alias in databases) or "none"
        problems.append(
            f"{SETTING}.database: must name a database of DATABASES ({aliases}), got {database!r}"
        )
        database = DEFAULT_DB_ALIAS
    elif not any(isinstance(key, str) and key.lower() == "dsn" for key in tree):
        try:
            tree["dsn"] = dsn_from_database(databases[database])
        except ValueError as exc:
            problems.append(f"{SETTING}.dsn: not set, and {exc}")

    autostart = raw.get("autostart")
    if autostart is not None and not isinstance(autostart, bool):
        problems.append(
            f"{SETTING}.autostart: must be True or False (or absent: follow run_workers), "
            f"got {autostart!r}"
        )
        autostart = None

    wire = raw.get("wire", ())
    if isinstance(wire, str) or not isinstance(wire, Sequence):
        problems.append(f"{SETTING}.wire: must be a list of module names, got {wire!r}")
        wire = ()
    elif not all(isinstance(name, str) and name for name in wire):
        problems.append(f"{SETTING}.wire: every entry must be a module name, got {wire!r}")
        wire = ()

    handlers = _load_handlers(raw.get("inbox_handlers"), problems)

    outbox_config: config.OutboxConfig | None = None
    try:
        outbox_config = config.OutboxConfig.from_mapping(tree)
    except errors.ConfigError as exc:
        problems.extend(_in_setting(problem) for problem in exc.problems)
    if outbox_config is not None and outbox_config.inbox.enabled and not handlers:
        problems.append(
            f"{SETTING}.inbox_handlers: required when inbox.enabled is true: the dotted path of "
            'an InboxHandlers (e.g. "myapp.inbox.handlers")'
        )
    if problems or outbox_config is None:
        raise OutboxImproperlyConfigured(problems)
    return DjangoOutboxSettings(
        config=outbox_config,
        database=database,
        autostart=outbox_config.run_workers if autostart is None else autostart,
        inbox_handlers=handlers,
        wire=tuple(wire),
    )


def _in_setting(problem: str) -> str:
    # The library names keys from the root of its tree: "publisher.batch_size: ...".
    if problem.startswith("<root>"):
        return SETTING + problem[len("<root>") :]
    return f"{SETTING}.{problem}"


def _load_handlers(value: object, problems: list[str]) -> handlers_module.InboxHandlers | None:
    """``inbox_handlers``: an ``InboxHandlers``, a mapping, or the dotted path of either
    (``"pkg.module.handlers"``; ``"pkg.module:handlers"`` as for ``outbox-di worker``)."""
    if value is None:
        return None
    try:
        return handlers_module.resolve(value)
    except ValueError as exc:
        problems.append(f"{SETTING}.inbox_handlers: {exc}")
        return None


def dsn_from_database(database: Mapping[str, Any]) -> str:
    """A libpq connection string for one entry of ``DATABASES`` (PostgreSQL only).

    ``NAME``, ``USER``, ``PASSWORD``, ``HOST`` and ``PORT``, plus the libpq parameters among
    ``OPTIONS`` (``sslmode``, ``options`` such as a ``search_path``, ``service``, ...).
    Raises ``ValueError`` saying why when the entry is not a PostgreSQL database.
    """
    engine = str(database.get("ENGINE", ""))
    if not engine.startswith("django.db.backends.postgresql"):
        raise ValueError(f"the database's ENGINE is {engine!r}, not PostgreSQL")
    parameters: dict[str, Any] = {}
    for key, name in (
        ("NAME", "dbname"),
        ("USER", "user"),
        ("PASSWORD", "password"),
        ("HOST", "host"),
        ("PORT", "port"),
    ):
        value = database.get(key)
        if value not in (None, ""):
            parameters[name] = str(value)
    options = database.get("OPTIONS") or {}
    for name in _LIBPQ_OPTIONS:
        value = options.get(name)
        if value not in (None, ""):
            parameters[name] = str(value)
    if "dbname" not in parameters and "service" not in parameters:
        raise ValueError("the database has no NAME")
    dsn: str = psycopg2.extensions.make_dsn(**parameters)
    return dsn
