"""Where tests get Pub/Sub from, and how they point clients at it.

In this order, once per test session:

1. ``PUBSUB_EMULATOR_HOST`` when set ("configured"): the only one used; if it does not answer
   the session fails, it is never silently replaced;
2. Google's emulator ("google"), found by :func:`find_google_emulator` and started directly
   (never through ``gcloud beta emulators``) in its own process group on a free port;
3. the in-process emulator ("in-process", :class:`~outbox_di.testing.emulator.InProcessEmulator`),
   always available.

The ``pubsub_emulator`` fixture is parametrized over every available one, so a test using it runs
against Google's emulator and the in-process one: the two are kept in agreement that way.

Clients read ``PUBSUB_EMULATOR_HOST`` when they are constructed: build the high-level
``google.cloud.pubsub_v1`` clients inside :func:`emulator_env`, and the GAPIC async clients with
:func:`async_publisher_client` / :func:`async_subscriber_client` (inside the running loop).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from google.pubsub_v1.services.publisher import PublisherAsyncClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport
from google.pubsub_v1.services.subscriber import SubscriberAsyncClient
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport
from google.pubsub_v1.types import pubsub

from outbox_di import errors
from outbox_di.testing import emulator as emulator_module
from outbox_di.testing.brokers import Probed

__all__ = [
    "ENV_BIN",
    "ENV_HOST",
    "EmulatorEndpoint",
    "EmulatorKind",
    "GoogleEmulator",
    "GoogleEmulatorError",
    "TopicWithSubscription",
    "async_publisher_client",
    "async_subscriber_client",
    "available_kinds",
    "emulator_env",
    "find_google_emulator",
    "probed",
    "publish",
    "pubsub_emulator",
    "pubsub_google_emulator",
    "pubsub_inprocess_emulator",
    "pubsub_server",
    "temporary_subscription",
    "temporary_topic",
    "wait_until_answers",
]

ENV_HOST = "PUBSUB_EMULATOR_HOST"
ENV_BIN = "PUBSUB_EMULATOR_BIN"
_BINARY_NAME = "cloud-pubsub-emulator"
_SDK_RELATIVE = Path("platform", "pubsub-emulator", "bin", _BINARY_NAME)
# No size limits on channels to an emulator: Pub/Sub allows 10 MB messages, gRPC's default
# receive limit is 4 MB (the channel the GAPIC clients make for PUBSUB_EMULATOR_HOST keeps it).
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
_PROBE_PROJECT = "projects/outbox-di-probe"

EmulatorKind = Literal["configured", "google", "in-process"]


@dataclasses.dataclass(frozen=True)
class EmulatorEndpoint:
    """A Pub/Sub emulator that answers at ``host`` (``"127.0.0.1:PORT"``).

    ``emulator`` is the in-process emulator itself (for fault injection and counters) when
    ``kind`` is ``"in-process"``, else None.
    """

    host: str
    kind: EmulatorKind
    emulator: emulator_module.InProcessEmulator | None = None

    @property
    def label(self) -> str:
        """``"Google's emulator"``, ``"in-process emulator"`` or ``"configured emulator"``."""
        return _LABELS[self.kind]


_LABELS: dict[EmulatorKind, str] = {
    "configured": "configured emulator",
    "google": "Google's emulator",
    "in-process": "in-process emulator",
}


def find_google_emulator() -> str | None:
    """The path of Google's emulator binary: ``PUBSUB_EMULATOR_BIN``, else
    ``cloud-pubsub-emulator`` on the PATH, else ``<SDK root>/platform/pubsub-emulator/bin/…``
    where the SDK root is two levels above the resolved ``gcloud``; None when none is there.

    ``PUBSUB_EMULATOR_BIN`` is returned as given, even if it is wrong: a configured binary that
    does not start is an error, never a silent fallback.
    """
    configured = os.environ.get(ENV_BIN)
    if configured:
        return configured
    on_path = shutil.which(_BINARY_NAME)
    if on_path:
        return on_path
    gcloud = shutil.which("gcloud")
    if gcloud:
        candidate = Path(gcloud).resolve().parent.parent / _SDK_RELATIVE
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def available_kinds() -> list[EmulatorKind]:
    """What ``pubsub_emulator`` runs against: only the configured one when
    ``PUBSUB_EMULATOR_HOST`` is set, else Google's (when found) and the in-process one."""
    if os.environ.get(ENV_HOST):
        return ["configured"]
    kinds: list[EmulatorKind] = []
    if find_google_emulator() is not None:
        kinds.append("google")
    kinds.append("in-process")
    return kinds


@contextlib.contextmanager
def pubsub_server(
    choice: Literal["auto", "google", "in-process"] = "auto",
) -> Iterator[EmulatorEndpoint]:
    """One Pub/Sub emulator for the ``with`` block. ``"auto"``, in the order of
    :func:`available_kinds`: ``PUBSUB_EMULATOR_HOST`` (an error if it does not answer), else
    Google's emulator when found, else the in-process one; ``"google"`` or ``"in-process"``
    for that one alone. For programs (``make demo``, the benchmarks); tests use the fixtures."""
    configured = os.environ.get(ENV_HOST)
    if choice == "auto" and configured:
        if not wait_until_answers(configured, timeout=10.0):
            raise errors.OutboxError(
                f"{ENV_HOST}={configured} is set but no Pub/Sub emulator answers there; fix or "
                "unset it"
            )
        yield EmulatorEndpoint(configured, "configured")
        return
    binary = find_google_emulator() if choice != "in-process" else None
    if binary is not None:
        with GoogleEmulator(binary) as google:
            yield EmulatorEndpoint(google.host, "google")
        return
    if choice == "google":
        raise errors.OutboxError(
            f"Google's Pub/Sub emulator not found: set {ENV_BIN} or install the gcloud SDK's "
            "pubsub-emulator component"
        )
    with emulator_module.InProcessEmulator() as in_process:
        yield EmulatorEndpoint(in_process.host, "in-process", in_process)


def _answers_once(host: str, timeout: float) -> bool:
    channel = grpc.insecure_channel(
        host,
        options=[("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200)],
    )
    try:
        list_topics = channel.unary_unary(
            "/google.pubsub.v1.Publisher/ListTopics",
            request_serializer=pubsub.ListTopicsRequest.serialize,
            response_deserializer=pubsub.ListTopicsResponse.deserialize,
        )
        list_topics(pubsub.ListTopicsRequest(project=_PROBE_PROJECT), timeout=timeout)
        return True
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def wait_until_answers(host: str, timeout: float) -> bool:
    """Whether a Pub/Sub server at ``host`` answers a gRPC call (ListTopics) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if _answers_once(host, min(1.0, remaining)):
            return True
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class GoogleEmulatorError(RuntimeError):
    """Google's emulator did not start; the message carries the end of its log."""


class GoogleEmulator:
    """Google's Pub/Sub emulator as a child process, in its own process group.

    ``with GoogleEmulator() as emulator: emulator.host`` starts the binary directly (not through
    gcloud, whose wrapper leaves the Java server running when it is killed), on a free port of
    127.0.0.1, and waits until it answers a gRPC call; leaving stops the whole group (SIGTERM,
    then SIGKILL) and reaps it.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.binary = binary or find_google_emulator()
        self._bind_host = host
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.port: int | None = None
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: str | None = None

    @property
    def host(self) -> str:
        if self.port is None:
            raise RuntimeError("the emulator is not started")
        return f"{self._bind_host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> GoogleEmulator:
        if self._process is not None:
            return self
        if self.binary is None:
            raise GoogleEmulatorError(
                f"Google's Pub/Sub emulator was not found: set {ENV_BIN}, put {_BINARY_NAME} on "
                "the PATH, or install the gcloud component (gcloud components install "
                "pubsub-emulator)"
            )
        started = time.monotonic()
        for attempt in range(3):
            try:
                self._launch()
                self._wait_ready(started + self.startup_timeout)
            except _PortTaken:
                self._kill_group()
                if attempt == 2:
                    raise self._error("could not get a free port") from None
                continue
            except BaseException:
                self._kill_group()
                self._remove_log()
                raise
            self.startup_seconds = time.monotonic() - started
            return self
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        assert self.binary is not None
        self.port = _free_port(self._bind_host)
        if self._log_path is None:
            fd, self._log_path = tempfile.mkstemp(prefix="pubsub-emulator-", suffix=".log")
            os.close(fd)
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                [self.binary, f"--host={self._bind_host}", f"--port={self.port}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None and self.port is not None
        while not _port_open(self._bind_host, self.port):
            self._check_alive()
            if time.monotonic() >= deadline:
                raise self._error(f"did not open port {self.port} in {self.startup_timeout:.0f} s")
            time.sleep(0.05)
        while not _answers_once(self.host, max(0.1, min(1.0, deadline - time.monotonic()))):
            self._check_alive()
            if time.monotonic() >= deadline:
                raise self._error(f"did not answer in {self.startup_timeout:.0f} s")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is None:
            return
        if "BindException" in self._log_tail() or "already in use" in self._log_tail():
            raise _PortTaken
        raise self._error(f"exited with status {code}")

    def _log_tail(self, lines: int = 30) -> str:
        if self._log_path is None:
            return ""
        try:
            with open(self._log_path, "rb") as log:
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _error(self, what: str) -> GoogleEmulatorError:
        return GoogleEmulatorError(
            f"Google's Pub/Sub emulator ({self.binary}) {what}; end of its log:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        """Stop the process group and reap it (idempotent)."""
        self._kill_group()
        self._remove_log()

    def _kill_group(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(self.stop_timeout)
        # Whatever is left of the group (the leader, or anything it started) is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _remove_log(self) -> None:
        if self._log_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._log_path)
            self._log_path = None

    def __enter__(self) -> GoogleEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


@contextlib.contextmanager
def emulator_env(host: str) -> Iterator[str]:
    """Set ``PUBSUB_EMULATOR_HOST`` to ``host`` for the block (restored afterwards).

    The ``google.cloud.pubsub_v1`` clients (and the GAPIC ones) read it when they are
    constructed, so build them inside the block; they keep using it after it ends.
    """
    previous = os.environ.get(ENV_HOST)
    os.environ[ENV_HOST] = host
    try:
        yield host
    finally:
        if previous is None:
            os.environ.pop(ENV_HOST, None)
        else:
            os.environ[ENV_HOST] = previous


def async_publisher_client(host: str) -> PublisherAsyncClient:
    """A GAPIC ``PublisherAsyncClient`` on an insecure channel to ``host`` (no credentials).

    Call it inside the running event loop that will use it; close it with ``async with client``
    (or ``await client.transport.close()``), which closes the channel.
    """
    channel = grpc.aio.insecure_channel(host, options=_CHANNEL_OPTIONS)
    return PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=channel))


def async_subscriber_client(host: str) -> SubscriberAsyncClient:
    """A GAPIC ``SubscriberAsyncClient`` on an insecure channel to ``host`` (no credentials);
    see :func:`async_publisher_client`."""
    channel = grpc.aio.insecure_channel(host, options=_CHANNEL_OPTIONS)
    return SubscriberAsyncClient(transport=SubscriberGrpcAsyncIOTransport(channel=channel))


@dataclasses.dataclass(frozen=True)
class TopicWithSubscription:
    """A topic and its one subscription, by bare ``name`` and by full resource names."""

    project: str
    name: str
    topic: str
    subscription: str


@contextlib.asynccontextmanager
async def temporary_topic(
    host: str,
    project: str,
    *,
    prefix: str = "test",
    ordered: bool = False,
    ack_deadline: int = 60,
) -> AsyncIterator[TopicWithSubscription]:
    """A fresh topic with one subscription (both named ``<prefix>-<random>``), made before
    anything is published and deleted afterwards. Use it inside the test's event loop."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    made = TopicWithSubscription(
        project,
        name,
        f"projects/{project}/topics/{name}",
        f"projects/{project}/subscriptions/{name}",
    )
    async with async_publisher_client(host) as publisher:
        await publisher.create_topic(name=made.topic)
    async with async_subscriber_client(host) as subscriber:
        await subscriber.create_subscription(
            request={
                "name": made.subscription,
                "topic": made.topic,
                "enable_message_ordering": ordered,
                "ack_deadline_seconds": ack_deadline,
            }
        )
    try:
        yield made
    finally:
        async with async_subscriber_client(host) as subscriber:
            await subscriber.delete_subscription(subscription=made.subscription)
        async with async_publisher_client(host) as publisher:
            await publisher.delete_topic(topic=made.topic)


@contextlib.asynccontextmanager
async def temporary_subscription(
    host: str, topic: TopicWithSubscription, *, prefix: str = "extra"
) -> AsyncIterator[str]:
    """Another subscription on ``topic`` (full name ``projects/P/subscriptions/<prefix>-…``),
    deleted afterwards: a second consumer, or a watcher of what the broker carried."""
    name = f"projects/{topic.project}/subscriptions/{prefix}-{uuid.uuid4().hex[:12]}"
    async with async_subscriber_client(host) as subscriber:
        await subscriber.create_subscription(request={"name": name, "topic": topic.topic})
    try:
        yield name
    finally:
        async with async_subscriber_client(host) as subscriber:
            await subscriber.delete_subscription(subscription=name)


async def publish(
    host: str, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
) -> list[str]:
    """Publish ``(data, attributes)`` pairs to ``topic`` in one request, as another service
    would; returns Pub/Sub's message ids."""
    async with async_publisher_client(host) as publisher:
        response = await publisher.publish(
            topic=topic,
            messages=[
                pubsub.PubsubMessage(data=data, attributes=dict(attrs)) for data, attrs in messages
            ],
            timeout=10.0,
        )
    return list(response.message_ids)


def probed(received: Any) -> Probed:
    """A :class:`~outbox_di.testing.brokers.Probed` from a pulled ``ReceivedMessage``."""
    message = received.message
    return Probed(bytes(message.data), dict(message.attributes), message.message_id or None)


# -- pytest fixtures (session-scoped, synchronous, plain values) ---------------------------------


@pytest.fixture(scope="session")
def pubsub_google_emulator() -> Iterator[EmulatorEndpoint]:
    """Google's emulator for the session; skips when its binary is not found."""
    binary = find_google_emulator()
    if binary is None:
        pytest.skip(
            f"Google's Pub/Sub emulator not found ({ENV_BIN} unset, no {_BINARY_NAME} on the "
            "PATH, no gcloud SDK with the pubsub-emulator component)"
        )
    with GoogleEmulator(binary) as google:
        yield EmulatorEndpoint(google.host, "google")


@pytest.fixture(scope="session")
def pubsub_inprocess_emulator() -> Iterator[EmulatorEndpoint]:
    """The in-process emulator for the session (``.emulator`` for fault injection)."""
    with emulator_module.InProcessEmulator() as in_process:
        yield EmulatorEndpoint(in_process.host, "in-process", in_process)


@pytest.fixture(scope="session", params=available_kinds())
def pubsub_emulator(request: pytest.FixtureRequest) -> EmulatorEndpoint:
    """Each available emulator in turn (see :func:`available_kinds`)."""
    kind: EmulatorKind = request.param
    if kind == "configured":
        host = os.environ[ENV_HOST]
        if not wait_until_answers(host, timeout=10.0):
            pytest.fail(f"{ENV_HOST}={host} is set but no Pub/Sub emulator answers there")
        return EmulatorEndpoint(host, "configured")
    if kind == "google":
        endpoint: EmulatorEndpoint = request.getfixturevalue("pubsub_google_emulator")
        return endpoint
    endpoint = request.getfixturevalue("pubsub_inprocess_emulator")
    return endpoint
