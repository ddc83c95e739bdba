"""Keep a DSN's password out of every message: logs, exceptions, command output.

``redact_dsn`` handles both forms libpq accepts: a URL (``postgresql://user:secret@host/db``,
with the password in the user part or in a ``password=`` query parameter) and key=value pairs
(``host=db password=secret``, ``password = 'it''s secret'``, quoted or not).
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["redact_dsn"]

MASK = "***"

# key=value form: password, optional spaces around '=', then a quoted or a bare value.
_KEY_VALUE_PASSWORD = re.compile(
    r"(?P<key>\bpassword\s*=\s*)(?P<value>'(?:[^'\\]|\\.|'')*'|\S+)", re.IGNORECASE
)


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***`` (anything else left as it was)."""
    if "://" not in dsn:
        return _KEY_VALUE_PASSWORD.sub(lambda m: m["key"] + MASK, dsn)
    scheme, _, rest = dsn.partition("://")
    authority, slash, tail = _split_authority(rest)
    if "@" in authority:
        credentials, _, host = authority.rpartition("@")
        user, colon, _ = credentials.partition(":")
        authority = f"{user}:{MASK}@{host}" if colon else authority
    if "?" in tail:
        path, _, query = tail.partition("?")
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in pairs):
            query = "&".join(
                f"{key}={MASK}" if key.lower() == "password" else _pair(key, value)
                for key, value in pairs
            )
        tail = f"{path}?{query}"
    return f"{scheme}://{authority}{slash}{tail}"


def _split_authority(rest: str) -> tuple[str, str, str]:
    """``user:pw@host:port`` and the rest (``/db?…``); the password may hold '/' or '?', so the
    authority ends at the first '/' or '?' after the last '@'."""
    at = rest.rfind("@")
    start = at + 1 if at >= 0 else 0
    ends = [i for i in (rest.find("/", start), rest.find("?", start)) if i >= 0]
    end = min(ends) if ends else len(rest)
    if end < len(rest) and rest[end] == "/":
        return rest[:end], "/", rest[end + 1 :]
    return rest[:end], "", rest[end:]


def _pair(key: str, value: str) -> str:
    return f"{urllib.parse.quote(key)}={urllib.parse.quote(value)}"
