"""An in-process Pub/Sub emulator that speaks the real gRPC API.

It lets services test against the real ``google-cloud-pubsub`` client without Java: a
``grpc.server`` on a thread pool serves ``google.pubsub.v1.Publisher`` and
``google.pubsub.v1.Subscriber`` on ``127.0.0.1:<free port>``, with the proto-plus types of
``google.pubsub_v1.types`` as (de)serializers (the package ships no ``*_pb2_grpc`` modules).

Behaviour follows what Google's emulator was measured to do (docs/pubsub-emulators.md): message
ids are increasing numeric strings, ack ids are ``<subscription>:<n>``, an empty unary ``Pull``
waits until a message arrives or until one second before the call's deadline (at once with
``return_immediately``), ``delivery_attempt`` is set only on subscriptions with a dead-letter
policy, and the error codes and texts are the emulator's. On top of that it has fault injection
(:meth:`InProcessEmulator.fail_next_publishes`, :meth:`~InProcessEmulator.set_publish_delay`,
:meth:`~InProcessEmulator.drop_acks`) and counters for tests.

It needs no event loop, so a synchronous session-scoped fixture can own it::

    with InProcessEmulator() as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from types import TracebackType
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
from google.pubsub_v1.types import pubsub

__all__ = [
    "DEFAULT_ACK_DEADLINE_SECONDS",
    "MAX_ACK_DEADLINE_SECONDS",
    "MAX_MESSAGES_PER_PUBLISH",
    "MAX_PUBLISH_REQUEST_BYTES",
    "InProcessEmulator",
]

DEFAULT_ACK_DEADLINE_SECONDS = 10
MAX_ACK_DEADLINE_SECONDS = 600
MAX_MESSAGES_PER_PUBLISH = 1000
MAX_PUBLISH_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
# An empty long-polling Pull answers this long before the caller's deadline (Google's emulator:
# timeout 3 s -> 2.06 s, 8 s -> 7.03 s, 30 s -> 29.1 s), and waits at most this long (Google's
# emulator answered a pull without a deadline after 89 s).
_PULL_DEADLINE_MARGIN = 1.0
_PULL_MAX_WAIT = 89.0
# Waiters re-check their RPC and the clock at least this often, whatever else happens.
_MAX_WAIT_SLICE = 0.5
_MAX_MESSAGES_PER_RESPONSE = 1000
_DELETED_TOPIC = "_deleted-topic_"
_RETENTION_SECONDS = 7 * 24 * 3600
_RESOURCE_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")

_PubsubMessage: Any = pubsub.PubsubMessage.pb()
_ReceivedMessage: Any = pubsub.ReceivedMessage.pb()
_Topic: Any = pubsub.Topic.pb()
_Subscription: Any = pubsub.Subscription.pb()

_Handler = Callable[[Any, Any], Any]


class _Abort(Exception):
    """Ends the current RPC with a gRPC status (turned into ``context.abort`` by the wrapper)."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclasses.dataclass(eq=False)
class _Stream:
    """One open StreamingPull: its ack deadline, flow control and what it has outstanding."""

    subscription: _SubscriptionState
    ack_deadline: int
    max_messages: int
    max_bytes: int
    outstanding_messages: int = 0
    outstanding_bytes: int = 0
    closed: bool = False
    error: _Abort | None = None


@dataclasses.dataclass(eq=False)
class _Entry:
    """A message in one subscription: pending (``ack_id`` None) or outstanding."""

    seq: int
    message: Any  # PubsubMessage (raw protobuf), shared by every subscription, never mutated
    size: int
    ordering_key: str
    delivery_count: int = 0
    ack_id: str | None = None
    deadline: float = 0.0
    stream: _Stream | None = None


def _entry_seq(entry: _Entry) -> int:
    return entry.seq


class _SubscriptionState:
    def __init__(self, pb: Any) -> None:
        self.pb = pb
        self.name: str = pb.name
        self.pending: list[_Entry] = []  # sorted by seq (publish order)
        self.outstanding: dict[str, _Entry] = {}
        self.deadlines: list[tuple[float, str]] = []  # heap; stale items are skipped
        # Ordered subscriptions: per key, the outstanding entries in seq order.
        self.key_outstanding: dict[str, list[_Entry]] = {}
        self.next_seq = itertools.count()

    @property
    def ordered(self) -> bool:
        return bool(self.pb.enable_message_ordering)

    @property
    def ack_deadline(self) -> int:
        return int(self.pb.ack_deadline_seconds)


class InProcessEmulator:
    """A Pub/Sub emulator served by a gRPC thread-pool server on ``127.0.0.1``.

    Thread-safe: one lock guards all state; waiting pulls and streams sleep on its condition.
    """

    def __init__(self, *, max_workers: int = 64, host: str = "127.0.0.1") -> None:
        self._bind_host = host
        self._max_workers = max_workers
        self._cond = threading.Condition(threading.Lock())
        self._topics: dict[str, Any] = {}
        self._topic_subscriptions: dict[str, set[str]] = {}
        self._subscriptions: dict[str, _SubscriptionState] = {}
        self._streams: set[_Stream] = set()
        self._readers: set[threading.Thread] = set()
        self._message_ids = itertools.count(1)
        self._ack_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._server: Any = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._port: int | None = None
        # Fault injection and counters.
        self._fail_publishes = 0
        self._fail_share = 0.0
        self._fail_rng = random.Random(0)
        self._failed_by_share = 0
        self._fail_code: Any = grpc.StatusCode.UNAVAILABLE
        self._publish_delay = 0.0
        self._drop_acks = False
        self._published_count = 0
        self._acked_count = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> InProcessEmulator:
        """Start serving on a free port (idempotent). Returns ``self``."""
        if self._server is not None:
            return self
        if self._stopping.is_set():
            raise RuntimeError("a stopped InProcessEmulator cannot be started again")
        self._executor = futures.ThreadPoolExecutor(
            max_workers=self._max_workers, thread_name_prefix="pubsub-emulator"
        )
        server = grpc.server(
            self._executor,
            handlers=[self._publisher_handler(), self._subscriber_handler()],
            options=[
                # Oversized publishes must reach Publish to get INVALID_ARGUMENT, as from Google.
                ("grpc.max_receive_message_length", 8 * MAX_PUBLISH_REQUEST_BYTES),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        port = server.add_insecure_port(f"{self._bind_host}:0")
        if not port:
            self._executor.shutdown(wait=False)
            raise RuntimeError(f"cannot bind a port on {self._bind_host}")
        server.start()
        self._server = server
        self._port = port
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: open streams end at once (UNAVAILABLE), long polls return empty, and
        this returns once the server, its threads and the stream readers are done."""
        if self._server is None or self._stopping.is_set():
            self._stopping.set()
            return
        with self._cond:
            self._stopping.set()
            self._cond.notify_all()
        self._server.stop(grace=min(1.0, timeout)).wait(timeout)
        with self._cond:
            readers = list(self._readers)
        for reader in readers:
            reader.join(timeout)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> InProcessEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def host(self) -> str:
        """``host:port`` for ``PUBSUB_EMULATOR_HOST`` or an insecure channel."""
        return f"{self._bind_host}:{self.port}"

    # -- fault injection and counters ---------------------------------------------------------

    def fail_next_publishes(self, n: int, code: Any = grpc.StatusCode.UNAVAILABLE) -> None:
        """Make the next ``n`` Publish calls fail with ``code`` (nothing is stored)."""
        with self._cond:
            self._fail_publishes = n
            self._fail_code = code

    def fail_share(self, share: float, *, seed: int = 0) -> None:
        """Make each Publish call fail with UNAVAILABLE with probability ``share`` (0 turns it
        off; ``seed`` fixes which calls)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be between 0 and 1, not {share!r}")
        with self._cond:
            self._fail_share = share
            self._fail_rng = random.Random(seed)

    def set_publish_delay(self, seconds: float) -> None:
        """Delay every Publish call by ``seconds`` before it is handled (0 turns it off)."""
        with self._cond:
            self._publish_delay = max(0.0, seconds)

    def drop_acks(self, enabled: bool) -> None:
        """When on, acknowledgements are accepted and ignored: messages come back after their
        ack deadline. Negative acknowledgements (deadline 0) still work."""
        with self._cond:
            self._drop_acks = enabled

    def reset_faults(self) -> None:
        """Turn every injected fault off."""
        with self._cond:
            self._fail_publishes = 0
            self._fail_share = 0.0
            self._publish_delay = 0.0
            self._drop_acks = False

    @property
    def failed_by_share(self) -> int:
        """Publish calls failed by :meth:`fail_share` since start."""
        with self._cond:
            return self._failed_by_share

    @property
    def published_count(self) -> int:
        """Messages accepted by Publish since start."""
        with self._cond:
            return self._published_count

    @property
    def acked_count(self) -> int:
        """Messages removed by an acknowledgement since start (dropped acks are not counted)."""
        with self._cond:
            return self._acked_count

    # -- gRPC wiring --------------------------------------------------------------------------

    def _unary(self, behavior: _Handler, request_type: Any, response_type: Any) -> Any:
        def handle(request: Any, context: Any) -> Any:
            try:
                return response_type.wrap(behavior(request_type.pb(request), context))
            except _Abort as abort:
                context.abort(abort.code, abort.details)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request_type.deserialize,
            response_serializer=response_type.serialize,
        )

    def _publisher_handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Publisher",
            {
                "CreateTopic": self._unary(self._create_topic, pubsub.Topic, pubsub.Topic),
                "UpdateTopic": self._unary(
                    self._update_topic, pubsub.UpdateTopicRequest, pubsub.Topic
                ),
                "Publish": self._unary(
                    self._publish, pubsub.PublishRequest, pubsub.PublishResponse
                ),
                "GetTopic": self._unary(self._get_topic, pubsub.GetTopicRequest, pubsub.Topic),
                "ListTopics": self._unary(
                    self._list_topics, pubsub.ListTopicsRequest, pubsub.ListTopicsResponse
                ),
                "ListTopicSubscriptions": self._unary(
                    self._list_topic_subscriptions,
                    pubsub.ListTopicSubscriptionsRequest,
                    pubsub.ListTopicSubscriptionsResponse,
                ),
                "DeleteTopic": self._unary(self._delete_topic, pubsub.DeleteTopicRequest, _Empty),
            },
        )

    def _subscriber_handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Subscriber",
            {
                "CreateSubscription": self._unary(
                    self._create_subscription, pubsub.Subscription, pubsub.Subscription
                ),
                "GetSubscription": self._unary(
                    self._get_subscription, pubsub.GetSubscriptionRequest, pubsub.Subscription
                ),
                "ListSubscriptions": self._unary(
                    self._list_subscriptions,
                    pubsub.ListSubscriptionsRequest,
                    pubsub.ListSubscriptionsResponse,
                ),
                "DeleteSubscription": self._unary(
                    self._delete_subscription, pubsub.DeleteSubscriptionRequest, _Empty
                ),
                "Pull": self._unary(self._pull, pubsub.PullRequest, pubsub.PullResponse),
                "Acknowledge": self._unary(self._acknowledge, pubsub.AcknowledgeRequest, _Empty),
                "ModifyAckDeadline": self._unary(
                    self._modify_ack_deadline, pubsub.ModifyAckDeadlineRequest, _Empty
                ),
                "StreamingPull": grpc.stream_stream_rpc_method_handler(
                    self._streaming_pull,
                    request_deserializer=pubsub.StreamingPullRequest.deserialize,
                    response_serializer=pubsub.StreamingPullResponse.serialize,
                ),
            },
        )

    # -- Publisher ----------------------------------------------------------------------------

    def _create_topic(self, request: Any, context: Any) -> Any:
        _check_name(request.name, "topics")
        with self._cond:
            if request.name in self._topics:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
            topic = _Topic()
            topic.CopyFrom(request)
            self._topics[topic.name] = topic
            self._topic_subscriptions[topic.name] = set()
            return _copy(topic)

    def _get_topic(self, request: Any, context: Any) -> Any:
        with self._cond:
            return _copy(self._topic_locked(request.topic))

    def _update_topic(self, request: Any, context: Any) -> Any:
        paths = list(request.update_mask.paths)
        if not paths:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "The update_mask in the UpdateTopicRequest must be set, and must contain a "
                "non-empty paths list.",
            )
        fields = _Topic.DESCRIPTOR.fields_by_name
        for path in paths:
            if path == "name" or path.split(".")[0] not in fields:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Invalid update_mask provided in the UpdateTopicRequest: {path} is not a "
                    "known Topic field.",
                )
        with self._cond:
            if request.topic.name not in self._topics:
                raise _Abort(grpc.StatusCode.NOT_FOUND, "Topic not found.")
            topic = self._topics[request.topic.name]
            request.update_mask.MergeMessage(
                request.topic, topic, replace_message_field=True, replace_repeated_field=True
            )
            return _copy(topic)

    def _list_topics(self, request: Any, context: Any) -> Any:
        prefix = f"{request.project}/topics/"
        with self._cond:
            names = sorted(name for name in self._topics if name.startswith(prefix))
            page, token = _page(names, request.page_size, request.page_token)
            return pubsub.ListTopicsResponse.pb()(
                topics=[self._topics[name] for name in page], next_page_token=token
            )

    def _list_topic_subscriptions(self, request: Any, context: Any) -> Any:
        with self._cond:
            names = sorted(self._topic_subscriptions.get(request.topic, ()))
        page, token = _page(names, request.page_size, request.page_token)
        return pubsub.ListTopicSubscriptionsResponse.pb()(subscriptions=page, next_page_token=token)

    def _delete_topic(self, request: Any, context: Any) -> Any:
        with self._cond:
            self._topic_locked(request.topic)
            del self._topics[request.topic]
            for name in self._topic_subscriptions.pop(request.topic):
                self._subscriptions[name].pb.topic = _DELETED_TOPIC
            return None

    def _publish(self, request: Any, context: Any) -> Any:
        with self._cond:
            delay = self._publish_delay
        if delay and self._stopping.wait(delay):
            raise _Abort(grpc.StatusCode.UNAVAILABLE, "the emulator is shutting down")
        with self._cond:
            if self._fail_publishes > 0:
                self._fail_publishes -= 1
                raise _Abort(self._fail_code, "injected failure (fail_next_publishes)")
            if self._fail_share and self._fail_rng.random() < self._fail_share:
                self._failed_by_share += 1
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "injected failure (fail_share)")
        messages = request.messages
        if not messages:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "No messages to publish")
        if len(messages) > MAX_MESSAGES_PER_PUBLISH:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Too many messages to publish")
        size = request.ByteSize()
        if size > MAX_PUBLISH_REQUEST_BYTES:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Request payload size exceeds the limit: {MAX_PUBLISH_REQUEST_BYTES} bytes.",
            )
        if any(not message.data and not message.attributes for message in messages):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Some messages are empty")
        with self._cond:
            if request.topic not in self._topics:
                raise _Abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            ids = self._publish_locked(request.topic, messages)
            self._published_count += len(ids)
            self._cond.notify_all()
        return pubsub.PublishResponse.pb()(message_ids=ids)

    def _publish_locked(self, topic: str, messages: Any) -> list[str]:
        subscriptions = [self._subscriptions[name] for name in self._topic_subscriptions[topic]]
        publish_ns = time.time_ns()
        ids: list[str] = []
        for source in messages:
            message = _PubsubMessage()
            message.CopyFrom(source)
            message_id = str(next(self._message_ids))
            message.message_id = message_id
            message.publish_time.FromNanoseconds(publish_ns)
            ids.append(message_id)
            size = message.ByteSize()
            for subscription in subscriptions:
                entry = _Entry(next(subscription.next_seq), message, size, message.ordering_key)
                subscription.pending.append(entry)
        return ids

    # -- Subscriber: administration ------------------------------------------------------------

    def _create_subscription(self, request: Any, context: Any) -> Any:
        _check_name(request.name, "subscriptions")
        if request.push_config.push_endpoint or request.HasField("bigquery_config"):
            raise _Abort(grpc.StatusCode.UNIMPLEMENTED, "push delivery is not emulated")
        if request.filter:
            raise _Abort(grpc.StatusCode.UNIMPLEMENTED, "subscription filters are not emulated")
        if request.enable_exactly_once_delivery:
            raise _Abort(grpc.StatusCode.UNIMPLEMENTED, "exactly-once delivery is not emulated")
        if not 0 <= request.ack_deadline_seconds <= MAX_ACK_DEADLINE_SECONDS:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "ack_deadline_secs out of bounds")
        subscription = _Subscription()
        subscription.CopyFrom(request)
        if not subscription.ack_deadline_seconds:
            subscription.ack_deadline_seconds = DEFAULT_ACK_DEADLINE_SECONDS
        if not subscription.HasField("message_retention_duration"):
            subscription.message_retention_duration.seconds = _RETENTION_SECONDS
        if subscription.HasField("dead_letter_policy"):
            policy = subscription.dead_letter_policy
            if not policy.max_delivery_attempts:
                policy.max_delivery_attempts = DEFAULT_MAX_DELIVERY_ATTEMPTS
            if not 5 <= policy.max_delivery_attempts <= 100:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "max_delivery_attempts must be between 5 and 100",
                )
        with self._cond:
            if request.topic not in self._topics:
                raise _Abort(grpc.StatusCode.NOT_FOUND, "Subscription topic does not exist")
            if request.name in self._subscriptions:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
            self._subscriptions[request.name] = _SubscriptionState(subscription)
            self._topic_subscriptions[request.topic].add(request.name)
            return _copy(subscription)

    def _get_subscription(self, request: Any, context: Any) -> Any:
        with self._cond:
            return _copy(self._subscription_locked(request.subscription).pb)

    def _list_subscriptions(self, request: Any, context: Any) -> Any:
        prefix = f"{request.project}/subscriptions/"
        with self._cond:
            names = sorted(name for name in self._subscriptions if name.startswith(prefix))
            page, token = _page(names, request.page_size, request.page_token)
            return pubsub.ListSubscriptionsResponse.pb()(
                subscriptions=[self._subscriptions[name].pb for name in page],
                next_page_token=token,
            )

    def _delete_subscription(self, request: Any, context: Any) -> Any:
        with self._cond:
            subscription = self._subscription_locked(request.subscription)
            del self._subscriptions[subscription.name]
            topic = subscription.pb.topic
            if topic in self._topic_subscriptions:
                self._topic_subscriptions[topic].discard(subscription.name)
            for stream in self._streams:
                if stream.subscription is subscription:
                    stream.error = _Abort(grpc.StatusCode.NOT_FOUND, "Subscription does not exist")
            self._cond.notify_all()
            return None

    # -- Subscriber: delivery -------------------------------------------------------------------

    def _pull(self, request: Any, context: Any) -> Any:
        if request.max_messages <= 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "No max_messages specified")
        started = time.monotonic()
        if request.return_immediately:
            wait_until = started
        else:
            remaining = context.time_remaining()
            wait = _PULL_MAX_WAIT if remaining is None else remaining - _PULL_DEADLINE_MARGIN
            wait_until = started + min(max(0.0, wait), _PULL_MAX_WAIT)
        context.add_callback(self._wake)
        with self._cond:
            while True:
                subscription = self._subscription_locked(request.subscription)
                now = time.monotonic()
                received = self._take_locked(
                    subscription, request.max_messages, 0, None, subscription.ack_deadline, now
                )
                if (
                    received
                    or now >= wait_until
                    or self._stopping.is_set()
                    or not context.is_active()
                ):
                    return pubsub.PullResponse.pb()(received_messages=received)
                self._cond.wait(self._wait_time_locked(subscription, now, wait_until))

    def _acknowledge(self, request: Any, context: Any) -> Any:
        if not request.ack_ids:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "No ack ids specified.")
        with self._cond:
            subscription = self._subscription_locked(request.subscription)
            self._ack_locked(subscription, request.ack_ids)
        return None

    def _modify_ack_deadline(self, request: Any, context: Any) -> Any:
        if not request.ack_ids:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "No ack ids specified")
        with self._cond:
            subscription = self._subscription_locked(request.subscription)
            self._modify_locked(
                subscription, request.ack_ids, [request.ack_deadline_seconds] * len(request.ack_ids)
            )
        return None

    def _streaming_pull(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        try:
            first = pubsub.StreamingPullRequest.pb(next(request_iterator))
        except StopIteration:
            return
        try:
            stream = self._open_stream(first)
        except _Abort as abort:
            context.abort(abort.code, abort.details)
            return
        reader = threading.Thread(
            target=self._read_stream,
            args=(request_iterator, stream),
            name="pubsub-emulator-stream-reader",
            daemon=True,
        )
        context.add_callback(lambda: self._close_stream(stream))
        with self._cond:
            self._readers.add(reader)
        reader.start()
        properties = pubsub.StreamingPullResponse.pb().SubscriptionProperties(
            message_ordering_enabled=stream.subscription.ordered
        )
        try:
            while True:
                received = self._next_stream_batch(stream)
                if received is None:
                    if stream.error is not None:
                        context.abort(stream.error.code, stream.error.details)
                    return
                yield pubsub.StreamingPullResponse.wrap(
                    pubsub.StreamingPullResponse.pb()(
                        received_messages=received, subscription_properties=properties
                    )
                )
        finally:
            self._close_stream(stream)

    def _open_stream(self, first: Any) -> _Stream:
        if not first.subscription:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must set subscription")
        if not 10 <= first.stream_ack_deadline_seconds <= MAX_ACK_DEADLINE_SECONDS:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "stream_ack_deadline_seconds must be between 10 and 600 seconds",
            )
        with self._cond:
            subscription = self._subscriptions.get(first.subscription)
            if subscription is None:
                short_name = first.subscription.rsplit("/", 1)[-1]
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"Subscription does not exist (resource={short_name})",
                )
            stream = _Stream(
                subscription,
                first.stream_ack_deadline_seconds,
                first.max_outstanding_messages,
                first.max_outstanding_bytes,
            )
            self._apply_stream_request_locked(stream, first)
            self._streams.add(stream)
            return stream

    def _next_stream_batch(self, stream: _Stream) -> list[Any] | None:
        """The next messages for ``stream``; None when the stream is over."""
        with self._cond:
            while True:
                if self._stopping.is_set():
                    stream.error = _Abort(
                        grpc.StatusCode.UNAVAILABLE, "the emulator is shutting down"
                    )
                if stream.closed or stream.error is not None:
                    return None
                now = time.monotonic()
                limit = _MAX_MESSAGES_PER_RESPONSE
                if stream.max_messages > 0:
                    limit = min(limit, stream.max_messages - stream.outstanding_messages)
                byte_budget = 0
                if stream.max_bytes > 0:
                    byte_budget = stream.max_bytes - stream.outstanding_bytes
                    if byte_budget <= 0:
                        limit = 0
                received: list[Any] = []
                if limit > 0:
                    received = self._take_locked(
                        stream.subscription, limit, byte_budget, stream, stream.ack_deadline, now
                    )
                else:
                    self._expire_locked(stream.subscription, now)
                if received:
                    return received
                self._cond.wait(self._wait_time_locked(stream.subscription, now, None))

    def _read_stream(self, request_iterator: Iterator[Any], stream: _Stream) -> None:
        """Applies the acks and deadline changes a client sends on its stream."""
        try:
            for request in request_iterator:
                with self._cond:
                    if stream.closed:
                        break
                    try:
                        self._apply_stream_request_locked(
                            stream, pubsub.StreamingPullRequest.pb(request)
                        )
                    except _Abort as abort:
                        stream.error = abort
                        self._cond.notify_all()
                        break
        except Exception:
            pass  # the RPC ended (cancelled, or the server is stopping): nothing to do
        finally:
            # A client half-close ends the stream, as on Google's emulator.
            self._close_stream(stream)
            with self._cond:
                self._readers.discard(threading.current_thread())

    def _apply_stream_request_locked(self, stream: _Stream, request: Any) -> None:
        if len(request.modify_deadline_ack_ids) != len(request.modify_deadline_seconds):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "modify_deadline_ack_ids and modify_deadline_seconds must have the same length",
            )
        if request.stream_ack_deadline_seconds:
            if not 10 <= request.stream_ack_deadline_seconds <= MAX_ACK_DEADLINE_SECONDS:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "stream_ack_deadline_seconds must be between 10 and 600 seconds",
                )
            stream.ack_deadline = request.stream_ack_deadline_seconds
        if self._subscriptions.get(stream.subscription.name) is not stream.subscription:
            return  # deleted (the stream is ending with NOT_FOUND)
        if request.ack_ids:
            self._ack_locked(stream.subscription, request.ack_ids)
        if request.modify_deadline_ack_ids:
            self._modify_locked(
                stream.subscription,
                request.modify_deadline_ack_ids,
                request.modify_deadline_seconds,
            )

    def _close_stream(self, stream: _Stream) -> None:
        with self._cond:
            stream.closed = True
            self._streams.discard(stream)
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- state changes (lock held) -------------------------------------------------------------

    def _topic_locked(self, name: str) -> Any:
        topic = self._topics.get(name)
        if topic is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
        return topic

    def _subscription_locked(self, name: str) -> _SubscriptionState:
        subscription = self._subscriptions.get(name)
        if subscription is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, "Subscription does not exist")
        return subscription

    def _wait_time_locked(
        self, subscription: _SubscriptionState, now: float, wait_until: float | None
    ) -> float:
        wait = _MAX_WAIT_SLICE
        if subscription.deadlines:
            wait = min(wait, subscription.deadlines[0][0] - now)
        if wait_until is not None:
            wait = min(wait, wait_until - now)
        return max(wait, 0.001)

    def _take_locked(
        self,
        subscription: _SubscriptionState,
        limit: int,
        byte_budget: int,
        stream: _Stream | None,
        ack_deadline: int,
        now: float,
    ) -> list[Any]:
        """Deliver up to ``limit`` pending messages (and, when ``byte_budget`` > 0, until that
        many bytes are out: the last message may cross it, as on Pub/Sub)."""
        self._expire_locked(subscription, now)
        pending = subscription.pending
        if not pending or limit <= 0:
            return []
        chosen: list[_Entry] = []
        used = 0
        if subscription.ordered:
            # A key is free when none of its messages is outstanding; a free key delivers its
            # pending messages in order, and no more of it until all of those are settled.
            blocked = {key for key, entries in subscription.key_outstanding.items() if entries}
            remaining: list[_Entry] = []
            for entry in pending:
                full = len(chosen) >= limit or (byte_budget > 0 and used >= byte_budget)
                if full or (entry.ordering_key and entry.ordering_key in blocked):
                    if entry.ordering_key:
                        blocked.add(entry.ordering_key)  # keep the key's order
                    remaining.append(entry)
                else:
                    chosen.append(entry)
                    used += entry.size
            subscription.pending = remaining
        else:
            count = 0
            for entry in pending:
                if count >= limit or (byte_budget > 0 and used >= byte_budget):
                    break
                count += 1
                used += entry.size
            chosen = pending[:count]
            del pending[:count]
        deadline = now + ack_deadline
        with_attempts = subscription.pb.HasField("dead_letter_policy")
        received = []
        for entry in chosen:
            entry.delivery_count += 1
            entry.ack_id = f"{subscription.name}:{next(self._ack_ids)}"
            entry.deadline = deadline
            entry.stream = stream
            subscription.outstanding[entry.ack_id] = entry
            heapq.heappush(subscription.deadlines, (deadline, entry.ack_id))
            if subscription.ordered and entry.ordering_key:
                subscription.key_outstanding.setdefault(entry.ordering_key, []).append(entry)
            if stream is not None:
                stream.outstanding_messages += 1
                stream.outstanding_bytes += entry.size
            received.append(
                _ReceivedMessage(
                    ack_id=entry.ack_id,
                    message=entry.message,
                    delivery_attempt=entry.delivery_count if with_attempts else 0,
                )
            )
        return received

    def _settle_locked(self, subscription: _SubscriptionState, entry: _Entry) -> None:
        """Take ``entry`` out of the outstanding set (acked, nacked or expired)."""
        assert entry.ack_id is not None
        del subscription.outstanding[entry.ack_id]
        entry.ack_id = None
        if subscription.ordered and entry.ordering_key:
            entries = subscription.key_outstanding[entry.ordering_key]
            entries.remove(entry)
            if not entries:
                del subscription.key_outstanding[entry.ordering_key]
        if entry.stream is not None:
            entry.stream.outstanding_messages -= 1
            entry.stream.outstanding_bytes -= entry.size
            entry.stream = None

    def _redeliver_locked(self, subscription: _SubscriptionState, entry: _Entry) -> None:
        """Put a nacked or expired message back. On an ordered subscription the key's later
        outstanding messages go back with it, so the key is redelivered in order."""
        entries = [entry]
        if subscription.ordered and entry.ordering_key:
            entries = [
                later
                for later in subscription.key_outstanding[entry.ordering_key]
                if later.seq >= entry.seq
            ]
        policy = subscription.pb.dead_letter_policy
        for item in entries:
            self._settle_locked(subscription, item)
            dead_letter_topic = policy.dead_letter_topic
            if dead_letter_topic and item.delivery_count >= policy.max_delivery_attempts:
                if dead_letter_topic in self._topics:
                    self._publish_locked(dead_letter_topic, [item.message])
                continue
            bisect.insort(subscription.pending, item, key=_entry_seq)

    def _expire_locked(self, subscription: _SubscriptionState, now: float) -> None:
        deadlines = subscription.deadlines
        while deadlines and deadlines[0][0] <= now:
            _, ack_id = heapq.heappop(deadlines)
            entry = subscription.outstanding.get(ack_id)
            if entry is not None and entry.deadline <= now:
                self._redeliver_locked(subscription, entry)

    def _resolve_ack_ids_locked(
        self, subscription: _SubscriptionState, ack_ids: Any
    ) -> list[_Entry | None]:
        """The outstanding entry of each ack id (None for a stale one, which is ignored, as by
        Google's emulator); a malformed id or one of another subscription is INVALID_ARGUMENT."""
        self._expire_locked(subscription, time.monotonic())
        resolved: list[_Entry | None] = []
        for ack_id in ack_ids:
            owner, _, number = ack_id.rpartition(":")
            if not owner or not number.isdigit():
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid ack id (ack_id={ack_id})")
            if owner != subscription.name:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Subscription {subscription.name} received an invalid ack ID {ack_id}, "
                    f"meant for subscription: {owner}",
                )
            resolved.append(subscription.outstanding.get(ack_id))
        return resolved

    def _ack_locked(self, subscription: _SubscriptionState, ack_ids: Any) -> None:
        entries = self._resolve_ack_ids_locked(subscription, ack_ids)
        if self._drop_acks:
            return
        for entry in entries:
            if entry is not None and entry.ack_id is not None:
                self._settle_locked(subscription, entry)
                self._acked_count += 1
        self._cond.notify_all()

    def _modify_locked(self, subscription: _SubscriptionState, ack_ids: Any, seconds: Any) -> None:
        if any(value < 0 for value in seconds):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Ack deadline cannot be negative")
        entries = self._resolve_ack_ids_locked(subscription, ack_ids)
        now = time.monotonic()
        for entry, value in zip(entries, seconds, strict=True):
            if entry is None or entry.ack_id is None:
                continue  # stale, or already put back with an earlier message of its key
            if value == 0:
                self._redeliver_locked(subscription, entry)
            else:
                # Google's emulator accepts more than the maximum; it is capped here.
                entry.deadline = now + min(value, MAX_ACK_DEADLINE_SECONDS)
                heapq.heappush(subscription.deadlines, (entry.deadline, entry.ack_id))
        self._cond.notify_all()


class _Empty:
    """``google.protobuf.Empty`` as a response: it has no fields, so its wire form is empty."""

    @staticmethod
    def wrap(pb: Any) -> None:
        return None

    @staticmethod
    def serialize(message: Any) -> bytes:
        return b""


def _copy(message: Any) -> Any:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _check_name(name: str, collection: str) -> None:
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "projects"
        or not parts[1]
        or parts[2] != collection
        or not _RESOURCE_ID.fullmatch(parts[3])
        or parts[3].startswith("goog")
    ):
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"Invalid [{collection}] name: (name={name})"
        )


def _page(names: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    """One page of sorted ``names``; the token is the next name (as Google's emulator does)."""
    start = bisect.bisect_left(names, page_token) if page_token else 0
    if page_size <= 0:
        return names[start:], ""
    end = start + page_size
    return names[start:end], names[end] if end < len(names) else ""
