"""Pub/Sub's clients: gRPC channels that reconnect quickly, and start-up calls bounded by
``pubsub.connect_timeout`` that end in a clear :class:`~outbox_di.errors.PubSubUnavailableError`.

Each client is created inside the running event loop: a gRPC asyncio channel is bound to the
loop that made it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.api_core import retry_async

from outbox_di import config as config_module
from outbox_di import errors
from outbox_di.brokers import startup
from outbox_di.brokers.pubsub.names import GOOGLE_ENDPOINT, describe_endpoint, endpoint

__all__ = [
    "RECONNECT_OPTIONS",
    "make_client",
    "make_emulator_client",
    "make_subscriber_client",
    "reconnecting_transport",
    "startup_call",
    "unavailable",
]

# How much longer than pubsub.connect_timeout a start-up call may take before it is cancelled
# (the GAPIC deadline should have ended it already).
_STARTUP_GRACE = 1.0


def unavailable(
    settings: config_module.OutboxConfig, what: str, exc: BaseException
) -> errors.PubSubUnavailableError:
    """The error of a start-up check that Pub/Sub did not answer, naming the endpoint, the
    timeout and the fix."""
    host, source = endpoint(settings)
    timeout = settings.pubsub.connect_timeout
    cause = exc.cause if isinstance(exc, google_exceptions.RetryError) else exc
    reason = getattr(cause, "message", None) or str(cause) or type(cause).__name__
    if source is not None:
        fix = (
            f"start the Pub/Sub emulator at {host}, or point {source} at the one that runs "
            "(pubsub.emulator_host in the settings, PUBSUB_EMULATOR_HOST in the environment)"
        )
    else:
        fix = (
            f"check that this host reaches {GOOGLE_ENDPOINT}:443 (network, firewall, proxy), "
            "or set pubsub.emulator_host (or PUBSUB_EMULATOR_HOST) to use an emulator"
        )
    return errors.PubSubUnavailableError(
        host,
        timeout,
        f"Pub/Sub did not answer at {describe_endpoint(settings)} within "
        f"pubsub.connect_timeout ({timeout:g}s) while {what} ({reason}); {fix}; raise "
        "pubsub.connect_timeout if it is only slow to answer",
    )


async def startup_call(
    settings: config_module.OutboxConfig,
    call: Callable[..., Awaitable[Any]],
    what: str,
    *,
    deadline: float,
    **kwargs: Any,
) -> Any:
    """``call(**kwargs)`` (a GAPIC method) retried while Pub/Sub is unavailable, until
    ``deadline`` (``loop.time()``); :func:`unavailable` when it never answered.

    The GAPIC deadline (``timeout`` and the retry's ``timeout``) should end it; the call is
    cancelled a little later in any case, so a start never waits much past the deadline. Inside
    :func:`stop_startup_on`, a stop ends it at once with :class:`~outbox_di.errors.StartAborted`.
    """
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise unavailable(settings, what, TimeoutError("no time left"))
    retry = retry_async.AsyncRetry(
        predicate=retry_async.if_exception_type(
            google_exceptions.ServiceUnavailable, google_exceptions.DeadlineExceeded
        ),
        initial=0.1,
        maximum=1.0,
        multiplier=2.0,
        timeout=remaining,
    )
    calling = asyncio.wait_for(
        call(timeout=remaining, retry=retry, **kwargs), remaining + _STARTUP_GRACE
    )
    try:
        return await startup.abortable(calling, what)
    except (
        google_exceptions.RetryError,
        google_exceptions.ServiceUnavailable,
        google_exceptions.DeadlineExceeded,
        asyncio.TimeoutError,
    ) as exc:
        raise unavailable(settings, what, exc) from exc


RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
"""gRPC channel options of the library's Pub/Sub clients: after a broker outage the channel tries
to reconnect at most 2 s apart. gRPC's defaults (1 s, growing by 1.6x up to 120 s) left the
fault-injection run's relay and receiver waiting up to 20 s after a 10 s outage had ended."""


def reconnecting_transport(transport_class: Any) -> Any:
    """A transport factory for a GAPIC async client (``transport=`` takes a callable): the
    client's own gRPC transport, whose channel gets :data:`RECONNECT_OPTIONS` on top of the
    options the transport sets itself. Everything else (endpoint, credentials, client info) is
    what the client passes, as with its default transport."""

    def create_channel(*args: Any, options: Sequence[Any] = (), **kwargs: Any) -> Any:
        return transport_class.create_channel(
            *args, options=[*options, *RECONNECT_OPTIONS], **kwargs
        )

    def transport(**kwargs: Any) -> Any:
        return transport_class(channel=create_channel, **kwargs)

    return transport


def make_emulator_client(host: str) -> Any:
    """A ``PublisherAsyncClient`` on an insecure channel to an emulator (no credentials)."""
    import grpc
    from google.pubsub_v1.services.publisher import PublisherAsyncClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

    channel = grpc.aio.insecure_channel(host, options=list(RECONNECT_OPTIONS))
    return PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=channel))


def make_client(settings: config_module.OutboxConfig) -> Any:
    """The client for ``settings``: the emulator when configured (``pubsub.emulator_host`` or
    ``PUBSUB_EMULATOR_HOST``), else Google Cloud with application default credentials."""
    host = settings.pubsub.emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST")
    if host:
        return make_emulator_client(host)
    from google.pubsub_v1.services.publisher import PublisherAsyncClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

    return PublisherAsyncClient(transport=reconnecting_transport(PublisherGrpcAsyncIOTransport))


def make_subscriber_client(settings: config_module.OutboxConfig) -> Any:
    """A ``SubscriberAsyncClient``: on an insecure channel to the emulator when configured
    (``pubsub.emulator_host`` or ``PUBSUB_EMULATOR_HOST``), else Google Cloud with application
    default credentials. Call it inside the running event loop."""
    from google.pubsub_v1.services.subscriber import SubscriberAsyncClient
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport

    host = settings.pubsub.emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST")
    if host:
        import grpc

        channel = grpc.aio.insecure_channel(
            host,
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
                *RECONNECT_OPTIONS,
            ],
        )
        return SubscriberAsyncClient(transport=SubscriberGrpcAsyncIOTransport(channel=channel))
    return SubscriberAsyncClient(transport=reconnecting_transport(SubscriberGrpcAsyncIOTransport))
