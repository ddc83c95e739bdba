"""``outbox-di worker``: the workers of a service that deploys them apart from its web process,
or one relay for several schemas (``--schema a,b,c``, ``--all-schemas``, ``schemas``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

from dependency_injector import providers

from outbox_di import brokers, containers, database, errors, fleet, observability, settings
from outbox_di import config as config_module
from outbox_di.brokers import ports, startup
from outbox_di.inbox import handlers as handlers_module

HANDLERS_HELP = (
    "the inbox handlers: an InboxHandlers or a mapping of event type to handler "
    "(myservice.inbox:handlers), or a function that takes this worker's OutboxContainer and "
    "returns one (myservice.inbox:make_handlers)"
)
"""The help of ``outbox-di worker --handlers``."""


async def serve(container: containers.OutboxContainer, stop: asyncio.Event) -> None:
    """Start the pool and the workers, wait for ``stop``, then drain and close everything
    (also what a failed start had already opened).

    ``stop`` is watched during the start too: a start waiting for the broker (its checks take up
    to its ``connect_timeout``) gives up as soon as ``stop`` is set, and what it had opened is
    closed. A connection to PostgreSQL being opened ends within ``pool.connect_timeout``.
    """
    try:
        try:
            # Not a cancellation: dependency-injector starts resources in tasks of its own,
            # which cancelling this one would leave running (see stop_startup_on).
            with startup.stop_startup_on(stop):
                await containers.start(container, workers=True)
        except errors.StartAborted as exc:
            observability.logger.info("outbox-di worker: %s", exc)
            return
        settle_heap()
        await stop.wait()
    finally:
        await containers.stop(container)


def settle_heap() -> None:
    """Move what start-up allocated (modules, the gRPC and Pub/Sub clients, the pools) out of
    the garbage collector's sight, once the worker runs. Full collections then scan only what
    the loops allocate: measured beside a relay working through a backlog, the longest pauses
    of the event loop fell from about 45 ms to about 2 ms (and a quiet schema's lag p99 with
    them). Only ``outbox-di worker`` does this: its process is the library's own."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event that SIGINT or SIGTERM sets, for the block (in the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)


def describe(config: config_module.OutboxConfig) -> str:
    """What a worker process runs, for its start-up line."""
    loops = config.publisher.workers if config.publisher.enabled else 0
    inbox = (
        f"inbox of consumer {config.inbox_consumer!r} from {config.inbox.subscription!r}"
        if config.inbox.enabled
        else "no inbox"
    )
    return f"schema {config.schema!r}, {loops} publisher loop(s), {inbox}"


def load_handlers(
    reference: str, container: containers.OutboxContainer | None = None
) -> handlers_module.InboxHandlers:
    """The handlers named by ``"package.module:attribute"``: an ``InboxHandlers``, a mapping of
    event type to handler, or a function that takes ``container`` (the worker's
    ``OutboxContainer``, before it starts) and returns one of those, so handlers can close over
    the container's providers (``container.outbox()`` inside a handler, say)."""
    found = _find_handlers(reference)
    if isinstance(found, handlers_module.InboxHandlers):
        return found
    if container is None:
        raise errors.ConfigError(
            [f"--handlers: {reference} is a factory; give the container to call it with"]
        )
    return _call_factory(reference, found, container)


def _find_handlers(
    reference: str,
) -> handlers_module.InboxHandlers | Callable[[containers.OutboxContainer], object]:
    """The handlers, or the factory that makes them (import errors name the flag).

    The module is looked for in the current directory first, as ``python -m`` and uvicorn do:
    ``outbox-di worker --handlers billing:handlers`` run beside ``billing.py`` finds it without
    a ``PYTHONPATH``."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        found = handlers_module._import(reference)
        if isinstance(found, (handlers_module.InboxHandlers, Mapping)) or not callable(found):
            return handlers_module.resolve(found)
    except ValueError as exc:
        raise errors.ConfigError([f"--handlers: {exc}"]) from exc
    return found


def _call_factory(
    reference: str,
    factory: Callable[[containers.OutboxContainer], object],
    container: containers.OutboxContainer,
) -> handlers_module.InboxHandlers:
    try:
        made = factory(container)
    except errors.OutboxError:
        raise
    except Exception as exc:
        raise errors.ConfigError(
            [f"--handlers: {reference}(container) raised {type(exc).__name__}: {exc}"]
        ) from exc
    if inspect.isawaitable(made):
        if inspect.iscoroutine(made):
            made.close()  # never awaited: no "coroutine was never awaited" warning
        raise errors.ConfigError(
            [
                f"--handlers: {reference}(container) returned an awaitable; the factory must be "
                "a plain function that returns the InboxHandlers (register coroutines on it)"
            ]
        )
    try:
        return handlers_module.resolve(made)
    except ValueError as exc:
        raise errors.ConfigError([f"--handlers: {reference}(container): {exc}"]) from exc


async def serve_fleet(config: config_module.OutboxConfig, stop: asyncio.Event) -> None:
    """Relay every schema of ``config.schemas`` from this process until ``stop``: one pool, one
    LISTEN connection, one Pub/Sub client, the loops shared (see :mod:`outbox_di.fleet`)."""
    async with database.open_pool(
        config.dsn,
        min_size=1,
        # The shared loops, the fresh lane, the LISTEN connection, the backlog gauges and a
        # retention batch.
        max_size=max(config.pool.max_size, config.publisher.workers + 4),
        connect_timeout=config.pool.connect_timeout,
        application_name="outbox_di relay",
        settings=database.RELAY_SETTINGS,
    ) as pool:
        make_publisher, close_client = _fleet_publishers(config)
        relay = fleet.FleetRelay(
            config, pool, make_publisher, observability.logger, observability.get_meter()
        )
        try:
            try:
                with startup.stop_startup_on(stop):
                    await relay.start()
            except errors.StartAborted as exc:
                observability.logger.info("outbox-di worker: %s", exc)
                return
            settle_heap()
            print(f"outbox-di worker: serving {', '.join(relay.schemas)}", flush=True)
            await stop.wait()
        finally:
            await relay.stop()
            await close_client()
            print(f"outbox-di worker: {relay.published} event(s) published", flush=True)


def _fleet_publishers(
    config: config_module.OutboxConfig,
) -> tuple[Callable[[config_module.OutboxConfig], ports.Publisher], Callable[[], Awaitable[None]]]:
    """How the fleet makes each schema's publisher, and what closes what they share: on
    Pub/Sub one gRPC client for all; on the other brokers each schema's own connection (which
    its publisher closes)."""
    if config.broker != "pubsub":

        async def nothing_shared() -> None:
            return None

        return brokers.make_publisher, nothing_shared
    from outbox_di.brokers.pubsub import PubSubPublisher, connection

    client = connection.make_client(config)

    def make(member: config_module.OutboxConfig) -> ports.Publisher:
        return PubSubPublisher(member, client=client)

    async def close() -> None:
        await client.transport.close()

    return make, close


def run(
    settings_files: Sequence[str | os.PathLike[str]] | None = None,
    *,
    handlers: str | None = None,
    schemas: Sequence[str] | None = None,
) -> int:
    """Run until SIGINT or SIGTERM; the in-flight batches drain within ``shutdown_timeout``.

    ``schemas`` (``--schema``, ``--all-schemas``: ``["*"]``) overrides the settings: one name
    runs that service's workers, several (or ``"*"``, or ``schemas`` in the settings) run one
    relay for all of them.
    """
    # The module is imported first: a wrong --handlers is reported before the settings are.
    found = _find_handlers(handlers) if handlers is not None else None
    mapping = settings.load_mapping(settings_files)
    if schemas is not None:
        if len(schemas) == 1 and schemas[0] != config_module.ALL_SCHEMAS:
            mapping["schema"] = schemas[0]
            mapping.pop("schemas", None)
        else:
            mapping["schemas"] = list(schemas)
    if mapping.get("schemas"):
        return _run_fleet(mapping, handlers)
    container = containers.OutboxContainer(config=mapping)
    if handlers is not None and found is not None:
        if not isinstance(found, handlers_module.InboxHandlers):
            found = _call_factory(handlers, found, container)
        container.inbox_handlers.override(providers.Object(found))
    config = container.settings()

    async def main() -> None:
        with stop_on_signals() as stop:
            observability.logger.info("outbox-di worker started for schema %r", config.schema)
            print(f"outbox-di worker: {describe(config)}; stop with Ctrl-C or SIGTERM", flush=True)
            await serve(container, stop)
        print("outbox-di worker: stopped", flush=True)

    asyncio.run(main())
    return 0


def _run_fleet(mapping: dict[str, object], handlers: str | None) -> int:
    if handlers is not None:
        raise errors.ConfigError(
            [
                "--handlers: a relay of several schemas runs no inbox; run each service's "
                "inbox handlers in a worker of its own (outbox-di worker --schema <one>)"
            ]
        )
    config = config_module.OutboxConfig.from_mapping(mapping)
    shown = fleet.describe(list(config.schemas), config)

    async def main() -> None:
        with stop_on_signals() as stop:
            observability.logger.info("outbox-di worker started: %s", shown)
            print(f"outbox-di worker: {shown}; stop with Ctrl-C or SIGTERM", flush=True)
            await serve_fleet(config, stop)
        print("outbox-di worker: stopped", flush=True)

    asyncio.run(main())
    return 0
