"""A DSN's password never reaches a message: config errors, connection errors (libpq quotes the
part of a string it cannot parse), ``repr`` of the config, the migrate command a start-up
error prints, an ``outbox-di`` usage error."""

from __future__ import annotations

import contextlib
import io
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_di import cli, config, database, errors

# The config's repr names its fields: a password like 'nbox' is "in" it (inbox) but leaks
# nothing, so passwords sharing three characters in a row with it are not drawn either.
_REPR = repr(
    config.OutboxConfig.from_mapping(
        {"schema": "orders", "dsn": "postgresql://o@h/d", "publisher": {"enabled": False}}
    )
)
_AROUND = (
    "postgresql://orders@127.0.0.1:1/orders?connect_timeout=1 host= dbname= password port=" + _REPR
)
passwords = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\\"),
    min_size=4,
    max_size=24,
).filter(lambda p: "***" not in p and not any(p[i : i + 3] in _AROUND for i in range(len(p))))
# Passwords with spaces, as written in a key=value string without the quotes libpq needs (a
# word with '=' would be another key, to libpq as to anyone).
spaced = st.lists(passwords.filter(lambda p: "=" not in p), min_size=2, max_size=3).map(" ".join)


def _leaks(text: str, password: str) -> list[str]:
    """The words of ``password`` (URL-quoted too) that appear in ``text``."""
    words = [*password.split(), password, urllib.parse.quote(password, safe="")]
    return [word for word in words if len(word) >= 4 and word in text]


def _dsns(password: str) -> list[str]:
    quoted = urllib.parse.quote(password, safe="")
    literal = "'" + password.replace("'", "''") + "'"
    return [
        f"postgresql://orders:{quoted}@127.0.0.1:1/orders?connect_timeout=1",
        f"postgresql://orders:{quoted}@127.0.0.1:notaport/orders",
        f"postgresql://orders@127.0.0.1:1/orders?password={quoted}&connect_timeout=1",
        f"host=127.0.0.1 port=1 dbname=orders password={literal} connect_timeout=1",
        *(
            [f"host=127.0.0.1 port=1 password={password} dbname=orders"]  # unquoted: maybe broken
            if "=" not in password and "'" not in password
            else []
        ),
        f"host=127.0.0.1 port=notaport password={literal}",
    ]


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(password=passwords | spaced)
def test_no_error_nor_repr_shows_the_password(password: str) -> None:
    for dsn in _dsns(password):
        shown: list[str] = []
        with (
            pytest.raises(errors.DatabaseError) as failed,
            database.connect(dsn, connect_timeout=1),
        ):
            pass
        shown.append(str(failed.value))
        shown.append(database.migrate_command(dsn, "orders"))
        try:
            cfg = config.OutboxConfig.from_mapping(
                {"schema": "orders", "dsn": dsn, "publisher": {"enabled": False}}
            )
        except errors.ConfigError as exc:
            shown.append(str(exc))
        else:
            shown.append(repr(cfg))
            shown.append(str(cfg))
        for text in shown:
            assert not _leaks(text, password), (dsn, text)


def test_a_driver_reason_quoting_the_password_is_masked() -> None:
    # libpq: 'missing "=" after "secretpw" in connection info string' (the second word of an
    # unquoted password); database._redact used to keep it, and 'password=*** secretpw' too.
    with (
        pytest.raises(errors.DatabaseError) as failed,
        database.connect("host=127.0.0.1 port=1 password=my secretpw dbname=x"),
    ):
        pass
    assert str(failed.value) == (
        "cannot connect to PostgreSQL (host=127.0.0.1 port=1 password=*** dbname=x): invalid "
        'dsn: missing "=" after "***" in connection info string'
    )


def test_repr_of_the_config_masks_the_password_and_to_dict_keeps_it() -> None:
    dsn = "postgresql://orders:hunter2pw@db/orders"
    cfg = config.OutboxConfig.from_mapping(
        {"schema": "orders", "dsn": dsn, "publisher": {"enabled": False}}
    )
    assert "hunter2pw" not in repr(cfg)
    assert "dsn='postgresql://orders:***@db/orders'" in repr(cfg)
    assert cfg.to_dict()["dsn"] == dsn  # round-trips: from_mapping(to_dict()) == cfg


def test_a_usage_error_does_not_echo_the_dsn() -> None:
    # render-ddl takes no --dsn: argparse's "unrecognized arguments" used to print it whole.
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        cli.main(["render-ddl", "--schema", "orders", "--dsn", "postgresql://o:hunter2pw@db/o"])
    assert "hunter2pw" not in err.getvalue()
    assert "unrecognized arguments: --dsn postgresql://o:***@db/o" in err.getvalue()
