"""A DSN's password never reaches a message, whatever it holds and wherever the DSN puts it."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_di.redaction import MASK, redact_dsn

# Passwords of printable characters, at least 4 long so that "not in the output" means something.
# What the DSNs below hold besides the password: a password found there proves nothing.
_AROUND = "postgresql://orders@db.internal:5432/orders?sslmode=require host= dbname= password"

passwords = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\\"),
    min_size=4,
    max_size=30,
).filter(
    lambda p: MASK not in p and "orders" not in p and "db.internal" not in p and p not in _AROUND
)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(password=passwords)
def test_a_url_password_is_masked(password: str) -> None:
    quoted = urllib.parse.quote(password, safe="")
    for dsn in (
        f"postgresql://orders:{quoted}@db.internal:5432/orders",
        f"postgresql://orders:{quoted}@db.internal/orders?sslmode=require",
        f"postgres://orders@db.internal/orders?password={quoted}&sslmode=require",
    ):
        redacted = redact_dsn(dsn)
        assert quoted not in redacted, (dsn, redacted)
        assert MASK in redacted
        assert "db.internal" in redacted and "orders" in redacted


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(password=passwords)
def test_a_key_value_password_is_masked(password: str) -> None:
    literal = "'" + password.replace("'", "''") + "'"
    for dsn in (
        f"host=db.internal dbname=orders password={literal}",
        f"host=db.internal password = {literal} dbname=orders",
    ):
        redacted = redact_dsn(dsn)
        assert password not in redacted, (dsn, redacted)
        assert "dbname=orders" in redacted


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://orders@db/orders", "postgresql://orders@db/orders"),
        ("postgresql://o:s3cret@db:5432/orders", "postgresql://o:***@db:5432/orders"),
        ("host=db password=s3cret dbname=x", "host=db password=*** dbname=x"),
        ("host=db dbname=x", "host=db dbname=x"),
        ("postgresql://o:a/b?c@db/orders", "postgresql://o:***@db/orders"),
    ],
)
def test_what_else_is_kept(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected
