"""Where Google's emulator is looked for, and which emulators the fixture runs against."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from outbox_di.testing import pubsub as pubsub_testing


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No emulator variables and a PATH with only an empty directory on it."""
    monkeypatch.delenv(pubsub_testing.ENV_BIN, raising=False)
    monkeypatch.delenv(pubsub_testing.ENV_HOST, raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return tmp_path


def test_configured_binary_comes_first(
    bare_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = _executable(bare_environment / "bin" / "cloud-pubsub-emulator")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setenv(pubsub_testing.ENV_BIN, "/nowhere/cloud-pubsub-emulator")
    # Returned as given, even when wrong: a configured binary is never silently replaced.
    assert pubsub_testing.find_google_emulator() == "/nowhere/cloud-pubsub-emulator"


def test_binary_on_the_path_comes_next(
    bare_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = _executable(bare_environment / "bin" / "cloud-pubsub-emulator")
    sdk = bare_environment / "sdk"
    _executable(sdk / "bin" / "gcloud")
    _executable(sdk / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator")
    monkeypatch.setenv("PATH", os.pathsep.join([str(on_path.parent), str(sdk / "bin")]))
    assert pubsub_testing.find_google_emulator() == str(on_path)


def test_sdk_root_is_two_levels_above_the_resolved_gcloud(
    bare_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk = bare_environment / "lib" / "google-cloud-sdk"
    gcloud = _executable(sdk / "bin" / "gcloud")
    binary = _executable(sdk / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator")
    links = bare_environment / "usr-bin"
    links.mkdir()
    (links / "gcloud").symlink_to(gcloud)  # as /usr/bin/gcloud -> /usr/lib/google-cloud-sdk/…
    monkeypatch.setenv("PATH", str(links))
    assert pubsub_testing.find_google_emulator() == str(binary.resolve())


def test_nothing_found(bare_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = bare_environment / "sdk"
    _executable(sdk / "bin" / "gcloud")  # an SDK without the emulator component
    monkeypatch.setenv("PATH", str(sdk / "bin"))
    assert pubsub_testing.find_google_emulator() is None
    assert pubsub_testing.available_kinds() == ["in-process"]


def test_available_kinds(bare_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _executable(bare_environment / "bin" / "cloud-pubsub-emulator")
    monkeypatch.setenv("PATH", str(bare_environment / "bin"))
    assert pubsub_testing.available_kinds() == ["google", "in-process"]
    monkeypatch.setenv(pubsub_testing.ENV_HOST, "127.0.0.1:8085")
    assert pubsub_testing.available_kinds() == ["configured"]


def test_emulator_env_restores_the_previous_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pubsub_testing.ENV_HOST, "before:1")
    with pubsub_testing.emulator_env("127.0.0.1:2") as host:
        assert os.environ[pubsub_testing.ENV_HOST] == host == "127.0.0.1:2"
    assert os.environ[pubsub_testing.ENV_HOST] == "before:1"
    monkeypatch.delenv(pubsub_testing.ENV_HOST)
    with pubsub_testing.emulator_env("127.0.0.1:3"):
        pass
    assert pubsub_testing.ENV_HOST not in os.environ


def test_google_emulator_that_cannot_start_says_why(tmp_path: Path) -> None:
    broken = tmp_path / "cloud-pubsub-emulator"
    broken.write_text("#!/bin/sh\necho 'no java here' >&2\nexit 3\n")
    broken.chmod(0o755)
    emulator = pubsub_testing.GoogleEmulator(str(broken), startup_timeout=5)
    with pytest.raises(pubsub_testing.GoogleEmulatorError, match=r"(?s)status 3.*no java here"):
        emulator.start()
