"""The short fault-injection run (``tests/chaos/run.py``) inside the suite: 10,000 events through
separate relay, inbox and producer processes on a private PostgreSQL cluster, with every fault of
the long run applied at least once (processes SIGKILLed, PostgreSQL crashed, the broker cut, the
database connection stalled past the leases). ``make chaos`` runs the long one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _row(output: str, label: str) -> list[str]:
    """The values of the table row ``label`` (labels fill the first 36 columns)."""
    [line] = [line for line in output.splitlines() if line[:36].strip() == label]
    return line[36:].split()


@pytest.mark.timeout(420)
def test_the_short_fault_injection_run_loses_nothing_and_does_nothing_twice() -> None:
    argv = ["--events", "10000", "--seconds", "60"]  # as docs/reliability.md shows it
    found = subprocess.run(
        [sys.executable, "-m", "tests.chaos.run", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    output = found.stdout
    print(output)
    assert found.returncode == 0, output[-6000:] + found.stderr[-6000:]
    committed = [int(n) for n in _row(output, "events committed (with their orders)")]
    assert sum(committed) == 10_000
    assert [int(n) for n in _row(output, "effects")] == committed
    assert _row(output, "lost (committed, no effect)") == ["0", "0"]
    assert _row(output, "effects twice") == ["0", "0"]
    for fault in ("pg-crash", "broker-outage", "pg-stall", "inbox-db-cut"):
        assert any(line.strip().startswith(fault) for line in output.splitlines()), fault
    assert "kill " in output and "PASSED" in output
