"""The fault-injection run's schedule and options (the run itself: test_chaos_run.py)."""

from __future__ import annotations

import collections
import itertools

import pytest

from tests.chaos import run


def test_every_fault_is_scheduled_and_the_kills_are_spread() -> None:
    names = ["relay-a0", "relay-a1", "relay-b0", "inbox-a", "inbox-b"]
    faults = run.schedule(60.0, 5.0, names, seed=3)  # kills at 5, 10, ... 55 s
    kinds = collections.Counter(fault.kind for fault in faults)
    assert kinds == {
        "kill": 11,
        "pg-crash": 1,
        "broker-outage": 1,
        "pg-stall": 1,
        "inbox-db-cut": 1,
    }
    assert [f.at for f in faults] == sorted(f.at for f in faults)
    assert {f.target for f in faults if f.kind == "kill"} <= set(names)
    timed = {f.kind: (f.at, f.at + f.duration) for f in faults if f.kind != "kill"}
    windows = sorted(timed.values())
    # The timed faults do not overlap in a run of 60 s or more: each one's recovery is its own.
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(windows))
    assert timed["pg-stall"][1] - timed["pg-stall"][0] > run.LOCK_TTL
    assert run.schedule(60.0, 5.0, names, seed=3) == faults  # the seed fixes the targets


def test_the_options_are_documented_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run.main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--events", "--seconds", "--kill-every", "--seed", "--break", "--quiet-timeout"):
        assert option in shown
    with pytest.raises(SystemExit):
        run.main(["--break", "something-else"])
    assert "invalid choice" in capsys.readouterr().err
