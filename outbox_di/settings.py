"""Read the outbox settings through dynaconf: the ``[outbox]`` table of the settings files, with
``OUTBOX_*`` environment variables on top.

The only module that imports dynaconf. It returns plain dicts, so :mod:`outbox_di.config` (and
anything built from it) never sees dynaconf's Box objects, upper-cased keys or lazy values.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from outbox_di import config, errors

__all__ = ["environment_overlay", "load_mapping", "load_settings", "with_environment"]

DEFAULT_FILES = ("settings.toml", ".secrets.toml")
"""Files read from the current directory when no ``settings_files`` are given (if present)."""

_NESTED = "__"
_MISSING = object()


def load_mapping(
    settings_files: Sequence[str | os.PathLike[str]] | None = None,
    *,
    section: str = "outbox",
    env_prefix: str = "OUTBOX",
) -> dict[str, Any]:
    """The ``section`` table of the settings files, deep-merged with ``<env_prefix>_*`` variables.

    ``settings_files`` defaults to ``settings.toml`` and ``.secrets.toml`` in the current
    directory (when present) plus the comma-separated files named by
    ``<env_prefix>_SETTINGS_FILES``. Keys come back lower-cased (dynaconf upper-cases keys taken
    from variable names), except the routing keys of ``publisher.topics``: they are event types.
    """
    marker = env_prefix.upper() + "_"
    files = _resolve_files(settings_files, marker + "SETTINGS_FILES")
    problems: list[str] = []

    file_data = _open(files, env_prefix).as_dict()
    raw_section: Any = next((v for k, v in file_data.items() if k.lower() == section.lower()), {})
    if not isinstance(raw_section, Mapping):
        got = type(raw_section).__name__
        raise errors.ConfigError([f"{section}: must be a table in the settings files, got {got}"])
    merged: dict[str, Any] = _plain(raw_section, (), section, problems)
    if problems:
        raise errors.ConfigError(problems)
    _deep_merge(merged, environment_overlay(env_prefix))
    return merged


RESERVED_VARIABLES = frozenset({"SETTINGS_FILES", "TEST_DSN"})
"""``OUTBOX_*`` names that are not settings: the settings files to read, and the test kit's
PostgreSQL."""


def environment_overlay(env_prefix: str = "OUTBOX") -> dict[str, Any]:
    """The settings given by ``<env_prefix>_*`` variables, as a nested dict (``__`` nests:
    ``OUTBOX_PUBLISHER__BATCH_SIZE=200`` is ``{"publisher": {"batch_size": 200}}``).

    An unknown setting is an error with a "did you mean" hint, not ignored: a misspelt secret
    would otherwise lose silently to the settings file.
    """
    marker = env_prefix.upper() + "_"
    problems: list[str] = []
    overlay: dict[str, Any] = {}
    names = [
        name
        for name in sorted(os.environ)
        if name.startswith(marker) and name[len(marker) :] not in RESERVED_VARIABLES
    ]
    if not names:
        return overlay
    # Variables are read from an instance without files, so a top-level table of the same name in
    # a settings file (another part of the application) cannot leak into the outbox settings.
    env_data = _open([], env_prefix).as_dict()
    top_keys = [field.name for field in dataclasses.fields(config.OutboxConfig)]
    for name in names:
        segments = name[len(marker) :].split(_NESTED)
        if segments[0].lower() not in top_keys:
            problems.append(_unknown_variable(name, marker, segments, top_keys))
            continue
        value = _lookup(env_data, segments)
        if value is _MISSING:
            problems.append(f"{name}: dynaconf did not read it (check the {_NESTED} separators)")
            continue
        path = _key_path(segments)
        layer: Any = _plain(value, path, name, problems)
        for key in reversed(path):
            layer = {key: layer}
        _deep_merge(overlay, layer)
    if problems:
        raise errors.ConfigError(problems)
    return overlay


def with_environment(data: Any, env_prefix: str = "OUTBOX") -> dict[str, Any]:
    """``data`` (a dict, a dynaconf section such as ``settings.outbox``, an
    :class:`~outbox_di.config.OutboxConfig`) as a plain dict, with the ``<env_prefix>_*``
    variables on top: the one rule that makes the environment win however the settings were
    built."""
    if isinstance(data, config.OutboxConfig):
        data = data.to_dict()
    if not isinstance(data, Mapping):
        raise errors.ConfigError(
            [f"<root>: must be a table of settings, got {type(data).__name__}"]
        )
    problems: list[str] = []
    merged: dict[str, Any] = _plain(data, (), "the configuration", problems)
    if problems:
        raise errors.ConfigError(problems)
    _deep_merge(merged, environment_overlay(env_prefix))
    return merged


def load_settings(
    settings_files: Sequence[str | os.PathLike[str]] | None = None,
    *,
    section: str = "outbox",
    env_prefix: str = "OUTBOX",
) -> config.OutboxConfig:
    """Load the settings (see :func:`load_mapping`) and build a checked :class:`OutboxConfig`."""
    data = load_mapping(settings_files, section=section, env_prefix=env_prefix)
    return config.OutboxConfig.from_mapping(data)


def _resolve_files(
    settings_files: Sequence[str | os.PathLike[str]] | None, files_variable: str
) -> list[str]:
    """Absolute paths of the files to read; a file named explicitly but missing is an error
    (dynaconf would skip it silently, and a typo would then look like a missing setting)."""
    problems: list[str] = []
    names: list[str] = []
    if settings_files is None:
        names.extend(name for name in DEFAULT_FILES if os.path.isfile(name))
        listed = (part.strip() for part in os.environ.get(files_variable, "").split(","))
        for name in filter(None, listed):
            if not os.path.isfile(name):
                problems.append(f"{files_variable}: no such file: {name!r}")
            names.append(name)
    else:
        for entry in settings_files:
            name = os.fspath(entry)
            if not os.path.isfile(name):
                problems.append(f"settings_files: no such file: {name!r}")
            names.append(name)
    if problems:
        raise errors.ConfigError(problems)
    return list(dict.fromkeys(os.path.abspath(name) for name in names))


def _open(files: list[str], env_prefix: str) -> Any:
    """A dynaconf instance with our options, refusing to go on if the environment changed them.

    Measured on dynaconf 3.3: a ``*_FOR_DYNACONF`` variable (``SETTINGS_FILE_FOR_DYNACONF``,
    ``ENVIRONMENTS_FOR_DYNACONF``, ``ENVVAR_PREFIX_FOR_DYNACONF`` ...) overrides the same option
    passed as a keyword, which would silently read other files or other variables.
    """
    pinned: tuple[tuple[str, str, object], ...] = (
        ("settings_files", "SETTINGS_FILE_FOR_DYNACONF", files),
        ("environments", "ENVIRONMENTS_FOR_DYNACONF", False),
        ("envvar_prefix", "ENVVAR_PREFIX_FOR_DYNACONF", env_prefix),
        # Without merging, a later file's [outbox] table replaces the earlier one wholesale.
        ("merge_enabled", "MERGE_ENABLED_FOR_DYNACONF", True),
        ("nested_separator", "NESTED_SEPARATOR_FOR_DYNACONF", _NESTED),
        ("ignore_unknown_envvars", "IGNORE_UNKNOWN_ENVVARS_FOR_DYNACONF", False),
        ("includes", "INCLUDES_FOR_DYNACONF", []),
        ("preload", "PRELOAD_FOR_DYNACONF", []),
        ("secrets", "SECRETS_FOR_DYNACONF", []),
        ("core_loaders", "CORE_LOADERS_FOR_DYNACONF", ["YAML", "TOML", "INI", "JSON", "PY"]),
        ("loaders", "LOADERS_FOR_DYNACONF", ["dynaconf.loaders.env_loader"]),
        ("redis_enabled", "REDIS_ENABLED_FOR_DYNACONF", False),
        ("vault_enabled", "VAULT_ENABLED_FOR_DYNACONF", False),
    )
    # Imported here: dynaconf imports its Django and Flask helpers when they are installed, which
    # a process that never reads a settings file (the container given a dict) need not pay for.
    import dynaconf

    options = {keyword: value for keyword, _, value in pinned}
    settings = dynaconf.Dynaconf(load_dotenv=False, **options)
    overridden = [name for _, name, value in pinned if settings.get(name) != value]
    if overridden:
        raise errors.ConfigError(
            [
                f"{name}: set in the environment, where it overrides an option outbox_di gives "
                "dynaconf; unset it for this process, or pass your own dynaconf section to "
                "OutboxConfig.from_mapping"
                for name in overridden
            ]
        )
    return settings


def _unknown_variable(name: str, marker: str, segments: list[str], top_keys: list[str]) -> str:
    key = segments[0].lower()
    hint = config.closest_key(key, top_keys)
    if hint is None:
        return f"{name}: {key!r} is not an outbox setting; settings are: {', '.join(top_keys)}"
    suggestion = marker + _NESTED.join([hint.upper(), *segments[1:]])
    return f"{name}: {key!r} is not an outbox setting; did you mean {hint!r} ({suggestion})?"


def _lookup(data: Mapping[Any, Any], segments: list[str]) -> Any:
    """The value dynaconf stored for one variable: exact key first, then ignoring case."""
    value: Any = data
    for segment in segments:
        if not isinstance(value, Mapping):
            return _MISSING
        if segment in value:
            value = value[segment]
            continue
        matches = [key for key in value if isinstance(key, str) and key.lower() == segment.lower()]
        if len(matches) != 1:
            return _MISSING
        value = value[matches[0]]
    return value


def _key_path(segments: Sequence[str]) -> tuple[str, ...]:
    path: tuple[str, ...] = ()
    for segment in segments:
        path += (segment if config.is_free_form(path) else segment.lower(),)
    return path


def _plain(value: Any, path: tuple[str, ...], source: str, problems: list[str]) -> Any:
    """Copy dynaconf's values into plain dicts and lists, lower-casing config keys."""
    if isinstance(value, Mapping):
        keep_case = config.is_free_form(path)
        result: dict[Any, Any] = {}
        for key in value:
            new_key = key.lower() if isinstance(key, str) and not keep_case else key
            if new_key in result:
                where = ".".join((*path, str(new_key)))
                problems.append(f"{where}: given twice in {source} (keys differ only in case)")
            result[new_key] = _plain(value[key], (*path, str(new_key)), source, problems)
        return result
    if isinstance(value, (list, tuple)):
        return [_plain(item, path, source, problems) for item in value]
    return value


def _deep_merge(base: dict[Any, Any], overlay: Mapping[Any, Any]) -> None:
    """Merge ``overlay`` into ``base``; tables merge key by key, anything else replaces."""
    for key, value in overlay.items():
        current = base.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            _deep_merge(current, value)
        else:
            base[key] = value


def merge_into(base: dict[str, Any], overlay: Mapping[str, Any]) -> None:
    """Deep-merge ``overlay`` (plain or dynaconf) into ``base``: tables key by key, keys
    lower-cased as in the settings files; anything else replaces."""
    problems: list[str] = []
    plain = _plain(overlay, (), "the overrides", problems)
    if problems:
        raise errors.ConfigError(problems)
    _deep_merge(base, plain)
