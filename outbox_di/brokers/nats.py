"""``NatsPublisher`` and ``NatsSubscriber``: the relay and the inbox on NATS JetStream.

A topic is a **subject**, and a JetStream stream must capture it: the stream is what stores a
message and answers the publish with an acknowledgement (a ``PubAck`` naming the stream and
the message's sequence in it). The inbox's subscription is ``STREAM/durable``, a durable
**pull consumer** of that stream with explicit acknowledgement: the consumer remembers what was
acknowledged and redelivers the rest. The user creates both; ``start()`` only checks them, so a
typo fails the start instead of publishing into nothing.

Publishing sends a claimed batch concurrently on one connection and waits for every
``PubAck``; an event is ``ok`` only once its ``PubAck`` came back. Each message carries
``Nats-Msg-Id: <event_id>``, so the stream drops a republished event within its duplicate
window (the ``PubAck`` then says ``duplicate``, and the event is still ``ok``: the stream has
it). A message the server would refuse fails alone and permanently, checked before anything is
sent: one over the server's ``max_payload`` (headers and body together), since the server
answers that by closing the connection, which would fail every other message in flight; and
a header that NATS headers cannot carry as it is (a name outside the header-name characters,
a value with CR or LF, or with leading or trailing spaces, which the client would silently
rewrite).

The clients are created in ``start()``, inside the running event loop, and reconnect on their
own after an outage (``max_reconnect_attempts=-1``); only the first connection is bounded, by
``nats.connect_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from outbox_di import brokers, errors, models, observability
from outbox_di import config as config_module
from outbox_di.brokers import routing, startup
from outbox_di.brokers.ports import Delivery, PublishOutcome, event_attributes, received_message

__all__ = [
    "DEDUP_HEADER",
    "NatsPublisher",
    "NatsSubscriber",
    "broker_headers",
    "connect",
    "describe_servers",
    "message_problem",
    "redact",
    "server_list",
]

DEDUP_HEADER = "Nats-Msg-Id"
"""The header JetStream deduplicates on; the publisher sets it to the event id."""

# What nats-py accepts as a header name (an HTTP token); anything else raises BadHeaderError.
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The header block nats-py writes: "NATS/1.0\r\n", then "name: value\r\n" a header, then "\r\n".
_HEADER_BLOCK = len(b"NATS/1.0\r\n") + len(b"\r\n")
_HEADER_LINE = len(b": \r\n")
_DEDUP_LINE = len(DEDUP_HEADER) + _HEADER_LINE + 36  # the event id is a 36-character UUID
_STREAM_MESSAGE_TOO_BIG = 10054  # JetStream's error code: over the stream's max_msg_size
# How long close() waits for what it sends last (naks, the close itself).
_CLOSE_TIMEOUT = 2.0


def server_list(settings: config_module.OutboxConfig) -> list[str]:
    """``nats.servers`` as the client takes it: one URL per comma-separated entry."""
    return [item.strip() for item in settings.nats.servers.split(",") if item.strip()]


def describe_servers(settings: config_module.OutboxConfig) -> str:
    """The servers as ``nats://host:port`` without user, password or token, for messages."""
    shown = []
    for url in server_list(settings):
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ""
        shown.append(f"{parts.scheme}://{host}{port}")
    return ", ".join(shown)


def _secrets(settings: config_module.OutboxConfig) -> list[str]:
    """The credentials written in ``nats.servers`` (user:password or a token), longest first."""
    found: set[str] = set()
    for url in server_list(settings):
        userinfo = urllib.parse.urlsplit(url).netloc.rpartition("@")[0]
        if userinfo:
            found.add(userinfo)
            found.update(part for part in userinfo.split(":") if len(part) >= 3)
            found.add(urllib.parse.unquote(userinfo))
    return sorted(found, key=len, reverse=True)


def redact(text: str, settings: config_module.OutboxConfig) -> str:
    """``text`` with every credential written in ``nats.servers`` replaced by ``***``."""
    for secret in _secrets(settings):
        text = text.replace(secret, "***")
    return text


def _reason(exc: BaseException | None, settings: config_module.OutboxConfig) -> str:
    if exc is None:
        return "no answer"
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}", settings)


def _jetstream_off(
    settings: config_module.OutboxConfig, what: str, exc: BaseException
) -> errors.BrokerUnavailableError:
    servers = describe_servers(settings)
    timeout = settings.nats.connect_timeout
    return errors.BrokerUnavailableError(
        servers,
        timeout,
        f"NATS at {servers} answers, but no JetStream does while {what} "
        f"({_reason(exc, settings)}): JetStream is not enabled on the server; start it with "
        "nats-server -js (or a jetstream block in its configuration file)",
    )


def _unavailable(
    settings: config_module.OutboxConfig, what: str, exc: BaseException | None
) -> errors.BrokerUnavailableError:
    servers = describe_servers(settings)
    timeout = settings.nats.connect_timeout
    return errors.BrokerUnavailableError(
        servers,
        timeout,
        f"NATS did not answer at {servers} within nats.connect_timeout ({timeout:g}s) while "
        f"{what} ({_reason(exc, settings)}); start the server (with JetStream: nats-server -js) "
        "or point nats.servers at one that runs; raise nats.connect_timeout if it is only slow "
        "to answer",
    )


async def connect(
    settings: config_module.OutboxConfig,
    role: str,
    logger: logging.Logger | None = None,
    *,
    timeout: float | None = None,
) -> Client:
    """A connected client for ``role`` (``"publisher"``, ``"subscriber"``, in log lines).

    The first connection is bounded by ``timeout`` (``nats.connect_timeout`` unless given):
    nats-py would otherwise keep retrying a server that refuses, so the attempt is cancelled
    and the client closed, and :class:`~outbox_di.errors.BrokerUnavailableError` names the
    servers (without credentials) and the last error. Once connected, the client reconnects
    on its own for as long as it lives.
    """
    log = logger or observability.logger
    bound = settings.nats.connect_timeout if timeout is None else timeout
    client = Client()
    last_error: list[BaseException] = []
    connected = False

    logged: list[str] = []  # the last error logged: a reconnect loop repeats it every 2 s

    async def on_error(exc: Exception) -> None:
        last_error[:] = [exc]
        if connected:
            reason = _reason(exc, settings)
            level = logging.DEBUG if logged == [reason] else logging.WARNING
            logged[:] = [reason]
            log.log(level, "NATS %s: %s", role, reason)

    async def on_disconnected() -> None:
        if connected and not client.is_closed:  # not when closed on purpose
            log.warning("NATS %s: disconnected from %s", role, describe_servers(settings))

    async def on_reconnected() -> None:
        logged.clear()
        log.info("NATS %s: reconnected to %s", role, describe_servers(settings))

    # nats-py types connect_timeout as an int; it is used as a float (asyncio.wait_for).
    options: dict[str, Any] = {
        "servers": server_list(settings),
        "connect_timeout": bound,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "name": f"outbox_di {role}",
    }
    try:
        await asyncio.wait_for(client.connect(**options), bound)
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as exc:
        await _close_client(client)
        cause = last_error[0] if last_error else exc
        raise _unavailable(settings, f"connecting the {role}", cause) from None
    except BaseException:
        await _close_client(client)
        raise
    connected = True
    return client


async def _close_client(client: Client) -> None:
    """Close ``client`` whatever its state, within a short bound; never raises."""
    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(client.close(), _CLOSE_TIMEOUT)


def _suggest_stream(subject: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", subject).upper()


def message_problem(attributes: dict[str, str], payload: bytes, max_payload: int) -> str | None:
    """Why the server (or the client) would refuse, or silently change, a message with these
    headers (the event's attributes, before ``Nats-Msg-Id`` is added) and this payload; None
    when it can be sent as it is."""
    size = _HEADER_BLOCK + _DEDUP_LINE + len(payload)
    for key, value in attributes.items():
        if not _HEADER_NAME_RE.fullmatch(key):
            return (
                f"header {key[:40]!r} cannot be a NATS header name (letters, digits and "
                "!#$%&'*+-.^_`|~ only, no spaces or ':')"
            )
        if key[:5].lower() == "nats-":
            return f"header {key[:40]!r} uses the prefix 'Nats-', reserved by NATS JetStream"
        if value and ("\r" in value or "\n" in value or value[0].isspace() or value[-1].isspace()):
            return (
                f"header {key[:40]!r} has a line break or leading or trailing spaces, which "
                "NATS headers do not carry as they are"
            )
        if value.isascii():
            size += len(key) + _HEADER_LINE + len(value)
            continue
        try:
            size += len(key) + _HEADER_LINE + len(value.encode())
        except UnicodeEncodeError:
            return f"header {key[:40]!r} is not valid UTF-8 text (a lone surrogate)"
    if size > max_payload:
        return (
            f"message of {size} bytes (payload {len(payload)} bytes and its headers) is over "
            f"the NATS server's max_payload of {max_payload} bytes"
        )
    return None


class NatsPublisher:
    """Publishes outbox events to JetStream subjects (see the module docstring).

    ``publisher.ordering`` needs nothing more here: with it on, a claimed batch holds at most
    one event of each ordering key, and a stream keeps the order in which one connection sent
    its messages.
    """

    def __init__(
        self, settings: config_module.OutboxConfig, logger: logging.Logger | None = None
    ) -> None:
        self.settings = settings
        self.router = routing.TopicRouter(settings)
        self.timeout = settings.publisher.publish_timeout
        self.logger = logger or observability.logger
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self.streams: dict[str, str] = {}
        """The stream that captures each configured subject, as found by ``start()``."""

    async def start(self) -> None:
        """Connect and check that a stream captures every configured subject.

        Bounded by ``nats.connect_timeout`` as a whole: a server that does not answer raises
        :class:`~outbox_di.errors.BrokerUnavailableError`; a subject no stream captures raises
        :class:`~outbox_di.errors.ConfigError` naming its key and how to create the stream. A
        start that fails closes what it opened. Idempotent.
        """
        if self._client is not None:
            return
        self._client, self._js = await startup.abortable(
            self._connect(), "checking the subjects' streams on NATS"
        )

    async def _connect(self) -> tuple[Client, JetStreamContext]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.nats.connect_timeout
        client = await connect(self.settings, "publisher", self.logger)
        try:
            js = client.jetstream(timeout=max(deadline - loop.time(), 0.001))
            await self._check_subjects(js, deadline)
        except BaseException:
            await _close_client(client)
            raise
        return client, js

    async def _check_subjects(self, js: JetStreamContext, deadline: float) -> None:
        subjects = self.router.configured()
        if not subjects:
            return
        self.logger.info(
            "checking JetStream streams on %s for subjects: %s",
            describe_servers(self.settings),
            ", ".join(sorted(set(subjects.values()))),
        )
        loop = asyncio.get_running_loop()
        problems = []
        for key, subject in subjects.items():
            what = f"looking up the stream of subject {subject!r}"
            try:
                stream = await asyncio.wait_for(
                    js.find_stream_name_by_subject(subject), max(deadline - loop.time(), 0.001)
                )
            except nats.js.errors.NotFoundError:
                name = _suggest_stream(subject)
                problems.append(
                    f"{key}: no JetStream stream captures subject {subject!r}; create one "
                    f"first: nats stream add {name} --subjects {subject!r} --defaults, or with "
                    f"nats-py: await nc.jetstream().add_stream(name={name!r}, "
                    f"subjects=[{subject!r}])"
                )
                continue
            except nats.js.errors.ServiceUnavailableError as exc:
                raise _jetstream_off(self.settings, what, exc) from exc
            except (asyncio.TimeoutError, nats.errors.Error) as exc:
                raise _unavailable(self.settings, what, exc) from exc
            self.streams[subject] = stream
        if problems:
            raise errors.ConfigError(problems)

    async def close(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None:
            await _close_client(client)

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[PublishOutcome]:
        """One outcome per event, in order; never raises for a broker failure."""
        js, client = self._js, self._client
        if js is None or client is None:
            raise errors.OutboxError("NatsPublisher.start() must run before publishing")
        max_payload = client.max_payload
        outcomes: list[PublishOutcome | None] = [None] * len(events)
        sends = []
        for index, event in enumerate(events):
            subject = self.router.topic_for(event)
            if subject is None:
                outcomes[index] = routing.unrouted(event, "subject")
                continue
            headers = event_attributes(event)
            problem = message_problem(headers, event.payload, max_payload)
            if problem is not None:
                outcomes[index] = PublishOutcome(error=problem, permanent=True)
                continue
            headers[DEDUP_HEADER] = headers["event_id"]
            sends.append(self._send(js, index, subject, event.payload, headers, outcomes))
        await asyncio.gather(*sends)
        return [
            outcome if outcome is not None else PublishOutcome(error="not published")
            for outcome in outcomes
        ]

    async def _send(
        self,
        js: JetStreamContext,
        index: int,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        outcomes: list[PublishOutcome | None],
    ) -> None:
        try:
            ack = await js.publish(subject, payload, timeout=self.timeout, headers=headers)
        except asyncio.TimeoutError:  # nats-py raises its own subclass, or asyncio's
            outcomes[index] = PublishOutcome(
                error=f"no PubAck within publisher.publish_timeout ({self.timeout:g}s)"
            )
        except nats.js.errors.NoStreamResponseError:
            outcomes[index] = PublishOutcome(
                error=f"no JetStream stream answered for subject {subject!r} (was it deleted?)"
            )
        except nats.js.errors.APIError as exc:
            outcomes[index] = PublishOutcome(
                error=f"JetStream refused the message: {exc.description} (code {exc.err_code})",
                permanent=exc.err_code == _STREAM_MESSAGE_TOO_BIG,
            )
        except (nats.errors.MaxPayloadError, nats.errors.BadHeaderError) as exc:
            outcomes[index] = PublishOutcome(
                error=f"NATS refused the message: {exc}", permanent=True
            )
        except Exception as exc:  # connection closed, outbound buffer full while reconnecting
            outcomes[index] = PublishOutcome(error=f"{type(exc).__name__}: {exc}")
        else:
            outcomes[index] = PublishOutcome(message_id=f"{ack.stream}:{ack.seq}")


def broker_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """A received message's headers without those NATS itself sets (``Nats-…``)."""
    if not headers:
        return {}
    return {key: value for key, value in headers.items() if key[:5].lower() != "nats-"}


class NatsSubscriber:
    """Receives from the durable pull consumer ``inbox.subscription`` (``STREAM/durable``).

    Each concurrent ``receive`` fetches on a pull subscription of its own (a reply inbox kept
    in a small pool), so two pullers never take each other's messages or status replies. A
    message handed out is tracked until it is settled; ``close()`` hands back (``nak``) what
    is still unsettled and what arrived for a fetch that was cancelled, so another subscriber
    gets it at once instead of after the consumer's ``ack_wait``.
    """

    def __init__(
        self, settings: config_module.OutboxConfig, logger: logging.Logger | None = None
    ) -> None:
        subscription = brokers.subscription_of(settings)
        self.settings = settings
        self.subscription = subscription
        self.stream, _, self.durable = subscription.partition("/")
        self.logger = logger or observability.logger
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._idle: list[JetStreamContext.PullSubscription] = []
        self._subscriptions: list[JetStreamContext.PullSubscription] = []
        self._unsettled: dict[str, Msg] = {}

    @property
    def name(self) -> str:
        return self.subscription

    async def start(self) -> None:
        """Connect and check that the consumer exists and is one the inbox can use (a pull
        consumer with explicit acknowledgement, delivering bodies). Bounded by
        ``nats.connect_timeout``; idempotent."""
        if self._client is not None:
            return
        self._client, self._js = await startup.abortable(
            self._connect(), f"checking consumer {self.subscription!r} on NATS"
        )

    async def _connect(self) -> tuple[Client, JetStreamContext]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.nats.connect_timeout
        client = await connect(self.settings, "subscriber", self.logger)
        try:
            js = client.jetstream(timeout=max(deadline - loop.time(), 0.001))
            await self._check_consumer(js, deadline)
            self._idle.append(await self._subscribe(js))
        except BaseException:
            self._idle.clear()
            self._subscriptions.clear()
            await _close_client(client)
            raise
        return client, js

    async def _check_consumer(self, js: JetStreamContext, deadline: float) -> None:
        stream, durable = self.stream, self.durable
        create = (
            f"nats consumer add {stream} {durable} --pull --ack explicit --defaults, or with "
            f"nats-py: await nc.jetstream().add_consumer({stream!r}, durable_name={durable!r}, "
            "ack_policy='explicit')"
        )
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        try:
            info = await js.consumer_info(stream, durable, timeout=remaining)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == 10059:  # stream not found
                problem = (
                    f"inbox.subscription: stream {stream!r} does not exist; create the stream "
                    f"(nats stream add {stream} --subjects <subject> --defaults), then the "
                    f"consumer: {create}"
                )
            else:
                problem = (
                    f"inbox.subscription: stream {stream!r} has no consumer {durable!r}; "
                    f"create it: {create}"
                )
            raise errors.ConfigError([problem]) from exc
        except nats.js.errors.ServiceUnavailableError as exc:
            what = f"checking consumer {self.subscription!r}"
            raise _jetstream_off(self.settings, what, exc) from exc
        except (asyncio.TimeoutError, nats.errors.Error) as exc:
            raise _unavailable(
                self.settings, f"checking consumer {self.subscription!r}", exc
            ) from exc
        except ValueError as exc:  # a character nats-py refuses in a stream or consumer name
            raise errors.ConfigError(
                [f"inbox.subscription: {self.subscription!r} is not a JetStream name ({exc})"]
            ) from exc
        config = info.config
        problems = []
        if config.deliver_subject:
            problems.append(
                f"inbox.subscription: consumer {self.subscription!r} is a push consumer "
                f"(deliver subject {config.deliver_subject!r}); the inbox pulls; create a "
                f"pull consumer: {create}"
            )
        if config.ack_policy not in (None, api.AckPolicy.EXPLICIT):
            problems.append(
                f"inbox.subscription: consumer {self.subscription!r} acknowledges with policy "
                f"{_policy(config.ack_policy)!r}; the inbox needs 'explicit' (each message "
                f"acknowledged once recorded); create one: {create}"
            )
        if config.headers_only:
            problems.append(
                f"inbox.subscription: consumer {self.subscription!r} delivers headers only; "
                f"the inbox needs the bodies; create one that delivers them: {create}"
            )
        if problems:
            raise errors.ConfigError(problems)
        if config.max_deliver is not None and config.max_deliver > 0:
            self.logger.warning(
                "consumer %s stops redelivering a message after %d deliveries "
                "(max_deliver): a message handed back that often, during a long database "
                "outage, is no longer delivered to the inbox",
                self.subscription,
                config.max_deliver,
            )

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        subscription = await js.pull_subscribe_bind(self.durable, self.stream)
        self._subscriptions.append(subscription)
        return subscription

    async def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        js = self._js
        if js is None:
            raise errors.OutboxError("NatsSubscriber.start() must run before receiving")
        try:
            subscription = self._idle.pop() if self._idle else await self._subscribe(js)
        except Exception as exc:
            raise errors.BrokerError(f"cannot subscribe to {self.subscription!r}: {exc}") from exc
        try:
            # nats-py's fetch of a batch, once it waits on the server, returns only when the
            # batch is full or its timeout ends: in the demo that held single events for the
            # whole receive timeout (10 s). So wait for one message, then take what else the
            # consumer has ready, without waiting for more.
            messages = await subscription.fetch(batch=1, timeout=max(timeout, 0.01))
            if max_messages > 1:
                messages += await self._ready(subscription, max_messages - 1)
        except asyncio.TimeoutError:  # nats-py raises its own subclass, or asyncio's
            return []
        except Exception as exc:
            raise errors.BrokerError(
                f"fetching from {self.subscription!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            # Cancelled or not, what arrives for this fetch waits in the subscription's queue
            # for the next one (or for close(), which hands it back).
            self._idle.append(subscription)
        deliveries = []
        unsettled = self._unsettled
        for message in messages:
            sequence = message.metadata.sequence.stream
            received = received_message(
                broker_headers(message.headers), message.data, f"{self.stream}:{sequence}"
            )
            unsettled[message.reply] = message
            deliveries.append(Delivery(received, len(message.data), message))
        return deliveries

    async def _ready(
        self, subscription: JetStreamContext.PullSubscription, limit: int
    ) -> list[Msg]:
        """Up to ``limit`` messages the consumer has ready now: a no-wait pull, whose answer
        (the messages, then a "no messages" status when there were fewer) comes at once, read
        to its end so that nothing of it is left behind in the subscription's queue. A pull
        that cannot be made, or an answer that does not come within ``nats.connect_timeout``,
        ends it with what came (what comes later waits in the queue for the next fetch)."""
        client = self._client
        inbox = getattr(subscription, "_sub", None)
        subject = getattr(subscription, "_nms", None)
        reply = getattr(subscription, "_deliver", None)
        if client is None or inbox is None or not subject or not reply:
            return []
        taken: list[Msg] = []
        try:
            request = json.dumps({"batch": limit, "no_wait": True}).encode()
            await client.publish(subject, request, reply=reply)
            deadline = asyncio.get_running_loop().time() + self.settings.nats.connect_timeout
            while len(taken) < limit:
                remaining = deadline - asyncio.get_running_loop().time()
                message = await inbox.next_msg(timeout=max(remaining, 0.001))
                if JetStreamContext.is_status_msg(message):
                    break  # the end of the answer: no more ready (or a 408 of an old pull)
                taken.append(message)
        except Exception as exc:  # a timeout, a lost connection: the messages in hand go on
            self.logger.debug("NATS subscriber: the no-wait pull ended early: %s", exc)
        return taken

    async def ack(self, deliveries: Sequence[Delivery]) -> int:
        """Acknowledge each delivery, then wait (one round trip, within
        ``nats.connect_timeout``) until the server has read them all; when that wait fails
        every acknowledgement sent is counted as failed (the server redelivers what it did
        not take)."""
        client = self._client
        failed = sent = 0
        unsettled = self._unsettled
        for delivery in deliveries:
            message: Msg = delivery.token
            unsettled.pop(message.reply, None)
            try:
                await message.ack()
            except nats.errors.MsgAlreadyAckdError:
                continue
            except Exception:
                failed += 1
            else:
                sent += 1
        if sent and client is not None:
            try:
                await client.flush(timeout=math.ceil(self.settings.nats.connect_timeout))
            except Exception as exc:
                self.logger.warning(
                    "NATS subscriber: %d acknowledgements not confirmed: %s",
                    sent,
                    _reason(exc, self.settings),
                )
                failed += sent
        elif sent:
            failed += sent
        return failed

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        unsettled = self._unsettled
        for delivery in deliveries:
            message: Msg = delivery.token
            unsettled.pop(message.reply, None)
            with contextlib.suppress(Exception):
                await message.nak()

    async def close(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is None:
            return
        handed_back = list(self._unsettled.values())
        self._unsettled.clear()
        for subscription in self._subscriptions:
            handed_back.extend(_queued(subscription))
        for message in handed_back:
            with contextlib.suppress(Exception):
                await message.nak()
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions.clear()
        self._idle.clear()
        if handed_back:
            with contextlib.suppress(Exception):
                await client.flush(timeout=math.ceil(_CLOSE_TIMEOUT))
        await _close_client(client)


def _queued(subscription: JetStreamContext.PullSubscription) -> list[Msg]:
    """The messages waiting in a pull subscription's queue (delivered for a fetch that was
    cancelled or timed out), taken out of it; status replies are dropped."""
    queue: asyncio.Queue[Msg] | None = getattr(
        getattr(subscription, "_sub", None), "_pending_queue", None
    )
    taken: list[Msg] = []
    while queue is not None and not queue.empty():
        message = queue.get_nowait()
        if message.reply and not JetStreamContext.is_status_msg(message):
            taken.append(message)
    return taken


def _policy(policy: object) -> str:
    return str(getattr(policy, "value", policy))
