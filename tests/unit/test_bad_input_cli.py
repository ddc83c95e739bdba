"""Bad ``outbox-di`` arguments, tried systematically: every command line ends with exit code 0,
1 or 2 and a message, never a traceback, a hang or a raw exception."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_di import cli, errors, operations

# Nothing answers here: a command that gets as far as connecting fails at once, with exit 2.
UNREACHABLE = "postgresql://outbox:pw@127.0.0.1:1/outbox?connect_timeout=1"

COMMANDS = [
    ["render-ddl"],
    ["migrate"],
    ["check"],
    ["status"],
    ["dead", "list"],
    ["dead", "retry"],
    ["dead", "discard"],
    ["purge"],
]
FLAGS = [
    "--schema", "--dsn", "--to", "--from", "--limit", "--batch-size", "--older-than",
    "--lock-ttl", "--event-type", "--id", "--file", "--settings", "--inbox", "--all", "--json",
    "--dry-run", "--no-notify",
]  # fmt: skip
words = st.sampled_from(
    ["0", "-1", "1", "99", "7d", "-7d", "0s", "1e400", "abc", "orders", "Orders", "pg_x",
     "{{schema}}", "x'; DROP TABLE t; --", "$$", "", "\x1b[31m", UNREACHABLE, "host=nowhere"]
) | st.text(max_size=8)  # fmt: skip


@contextlib.contextmanager
def _isolated(tmp: pathlib.Path) -> Iterator[None]:
    """No settings files and no OUTBOX_* variables: only the arguments count."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("OUTBOX_")}
    here = os.getcwd()
    os.chdir(tmp)
    try:
        yield
    finally:
        os.chdir(here)
        os.environ.update(saved)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse: a usage error
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    command=st.sampled_from(COMMANDS),
    rest=st.lists(st.sampled_from(FLAGS) | words, max_size=6),
)
def test_any_command_line_exits_with_a_code_and_a_message(
    tmp_path: pathlib.Path, command: list[str], rest: list[str]
) -> None:
    # NUL cannot be in a real argument; argparse gets what an exec() could pass.
    argv = [*command, *(arg for arg in rest if "\x00" not in arg)]
    if "--dsn" not in argv:
        argv += ["--dsn", UNREACHABLE]
    with _isolated(tmp_path):
        code, out, err = _run(argv)
    assert code in (0, 1, 2), (argv, code)
    if code == 2:
        assert err.strip(), f"exit 2 without a message: {argv}"
        assert "Traceback" not in err
    assert "pw@" not in out + err, "the password of --dsn is never printed"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # --batch-size 0 used to loop for ever (LIMIT 0 deletes nothing, never "fewer than 0").
        (["purge", "--older-than", "7d", "--batch-size", "0"], "must be at least 1, got 0"),
        (["purge", "--older-than", "7d", "--batch-size", "x"], "must be a whole number"),
        # Used to reach PostgreSQL as LIMIT -5.
        (["dead", "list", "--limit", "-5"], "must be at least 1, got -5"),
        (["status", "--lock-ttl", "0s"], "--lock-ttl: must be a positive duration"),
        (["purge", "--older-than", "0"], "--older-than: must be a positive duration"),
        (["status", "--lock-ttl", "soon"], "--lock-ttl: must be a duration"),
    ],
)
def test_bad_numbers_are_refused_before_connecting(
    tmp_path: pathlib.Path, argv: list[str], message: str
) -> None:
    with _isolated(tmp_path):
        code, _, err = _run([*argv, "--schema", "orders", "--dsn", UNREACHABLE])
    assert code == 2
    assert message in err
    assert "cannot connect" not in err


def test_check_file_that_is_not_utf8_is_named(tmp_path: pathlib.Path) -> None:
    # Used to end in a UnicodeDecodeError traceback.
    bad = tmp_path / "0001.sql"
    bad.write_bytes(b"CREATE TABLE \xff\xfe;")
    with _isolated(tmp_path):
        code, _, err = _run(["check", "--schema", "orders", "--file", str(bad)])
    assert code == 2
    assert f"--file {bad}: not UTF-8 text (byte 13" in err
    assert "Traceback" not in err


def test_purge_refuses_a_batch_size_below_one_from_python_too() -> None:
    with pytest.raises(errors.OutboxError, match="--batch-size must be at least 1, got 0"):
        operations.purge(object(), "orders", older_than=60.0, batch_size=0)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("order.paid", "order.paid"),
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("é ü", "é ü"),
        ("\u202eevil", "\\u202eevil"),
    ],
)
def test_table_cells_cannot_drive_the_terminal(text: str, shown: str) -> None:
    # Event types and errors come from other services: an escape sequence is shown, not run.
    assert cli.printable(text) == shown
