"""Keep a DSN's password out of every message: logs, exceptions, command output.

``redact_dsn`` handles both forms libpq accepts: a URL (``postgresql://user:secret@host/db``,
with the password in the user part or in a ``password=`` query parameter) and key=value pairs
(``host=db password=secret``, ``password = 'it''s secret'``, quoted or not). In the key=value
form an unquoted password runs to the next ``key=``, so a password with a space that the
writer forgot to quote (``password=my secret dbname=app``, which libpq refuses) is masked whole.

``redact_text`` masks a DSN's password wherever it (or a word of it) appears in other text: the
message of a driver's exception, which may quote the part of the DSN it could not parse.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["MASK", "dsn_secrets", "redact_dsn", "redact_text"]

MASK = "***"

# key=value form: password, optional spaces around '=', then a quoted value, or bare words up to
# the next `key=` (a bare value has no spaces when libpq accepts the string; when it does not,
# the words after the first are still the password's).
_KEY_VALUE_PASSWORD = re.compile(
    r"(?P<key>\bpassword\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.|'')*'?|[^\s']\S*(?:\s+(?![^\s=]+\s*=)[^\s]+)*)",
    re.IGNORECASE,
)
# Words of a password shorter than this are not searched for in other text: they would mask
# ordinary words of the message, and say next to nothing of the password.
_MIN_WORD = 3


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


def dsn_secrets(dsn: str) -> list[str]:
    """The password of ``dsn`` in every form it may be quoted in (as written, URL-decoded,
    unquoted), and its words, longest first; empty when ``dsn`` holds no password."""
    found: list[str] = []
    if "://" not in dsn:
        for match in _KEY_VALUE_PASSWORD.finditer(dsn):
            value = match["value"]
            found.append(value)
            if value.startswith("'"):
                inner = value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:]
                found.append(inner)
                found.append(re.sub(r"\\(.)", r"\1", inner.replace("''", "'")))
    else:
        rest = dsn.partition("://")[2]
        authority, _, tail = _split_authority(rest)
        if "@" in authority:
            credentials = authority.rpartition("@")[0]
            _, colon, password = credentials.partition(":")
            if colon:
                found.extend((password, urllib.parse.unquote(password)))
        query = tail.partition("?")[2]
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if key.lower() == "password":
                found.extend((value, urllib.parse.quote(value)))
        for raw in re.findall(r"(?i)\bpassword=([^&]*)", query):
            found.append(raw)
    words = [word for value in found for word in value.split()]
    unique = {item for item in [*found, *words] if len(item) >= _MIN_WORD}
    return sorted(unique, key=len, reverse=True)


def redact_text(text: str, dsn: str) -> str:
    """``text`` with the password of ``dsn`` (and each word of it) replaced by ``***``."""
    for secret in dsn_secrets(dsn):
        text = text.replace(secret, MASK)
    return text


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
