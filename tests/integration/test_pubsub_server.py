"""``pubsub_server()``: which Pub/Sub a program (``make demo``) gets."""

from __future__ import annotations

import pytest

from outbox_di import errors
from outbox_di.testing import pubsub as pubsub_testing


def test_configured_host_is_used_and_must_answer(
    monkeypatch: pytest.MonkeyPatch, pubsub_inprocess_emulator: pubsub_testing.EmulatorEndpoint
) -> None:
    monkeypatch.setenv(pubsub_testing.ENV_HOST, pubsub_inprocess_emulator.host)
    with pubsub_testing.pubsub_server() as endpoint:
        assert endpoint == pubsub_testing.EmulatorEndpoint(
            pubsub_inprocess_emulator.host, "configured"
        )
    monkeypatch.setenv(pubsub_testing.ENV_HOST, "127.0.0.1:9")
    with (
        pytest.raises(errors.OutboxError, match="is set but no Pub/Sub emulator answers"),
        pubsub_testing.pubsub_server(),
    ):
        pass


def test_without_google_emulator_the_in_process_one_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pubsub_testing.ENV_HOST, raising=False)
    monkeypatch.setattr(pubsub_testing, "find_google_emulator", lambda: None)
    with pubsub_testing.pubsub_server() as endpoint:
        assert endpoint.kind == "in-process" and endpoint.emulator is not None
        assert pubsub_testing.wait_until_answers(endpoint.host, timeout=5.0)
    assert not pubsub_testing.wait_until_answers(endpoint.host, timeout=0.5)


def test_google_emulator_is_started_when_found(monkeypatch: pytest.MonkeyPatch) -> None:
    if pubsub_testing.find_google_emulator() is None:
        pytest.skip("Google's Pub/Sub emulator is not installed here")
    monkeypatch.delenv(pubsub_testing.ENV_HOST, raising=False)
    with pubsub_testing.pubsub_server() as endpoint:
        assert endpoint.kind == "google"
        assert pubsub_testing.wait_until_answers(endpoint.host, timeout=5.0)


def test_a_named_choice_ignores_the_configured_host(
    monkeypatch: pytest.MonkeyPatch, pubsub_inprocess_emulator: pubsub_testing.EmulatorEndpoint
) -> None:
    monkeypatch.setenv(pubsub_testing.ENV_HOST, pubsub_inprocess_emulator.host)
    with pubsub_testing.pubsub_server("in-process") as endpoint:
        assert endpoint.kind == "in-process" and endpoint.host != pubsub_inprocess_emulator.host
        assert endpoint.label == "in-process emulator"
    monkeypatch.setattr(pubsub_testing, "find_google_emulator", lambda: None)
    with (
        pytest.raises(errors.OutboxError, match="Google's Pub/Sub emulator not found"),
        pubsub_testing.pubsub_server("google"),
    ):
        pass
