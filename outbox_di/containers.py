"""``OutboxContainer``: the library wired with dependency-injector.

```python
container = OutboxContainer(config=settings.outbox)      # a dynaconf section or a dict
container.wire(modules=[__name__])

@inject
async def create_item(outbox: Outbox = Provide[OutboxContainer.outbox]) -> None: ...
```

Construction validates the configuration (every problem at once, with key paths) and raises
:class:`~outbox_di.errors.ConfigError`. Long-lived things are ``Resource`` providers built from
async context managers, created inside the running event loop and closed by
``shutdown_resources()``. Two kinds of process share one container class: a web process starts
only the pool (``await start(container, workers=False)``), a worker process also starts the
publisher task (``await start(container)``, or ``outbox-di worker``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers
from opentelemetry.metrics import Meter

from outbox_di import brokers, database, errors, idle, observability, outbox, repository, retention
from outbox_di import config as config_module
from outbox_di import settings as settings_module
from outbox_di.inbox import handlers as handlers_module
from outbox_di.inbox import worker as worker_module
from outbox_di.publishing import base, task

if TYPE_CHECKING:
    from outbox_di.inbox import receiver as receiver_module


class WorkerResource(providers.Resource[Any]):
    """A resource that runs background work; web processes leave these uninitialized."""


def build_settings(raw: Any) -> config_module.OutboxConfig:
    """The validated configuration from the container's ``config`` provider value."""
    if isinstance(raw, config_module.OutboxConfig):
        return raw
    return config_module.OutboxConfig.from_mapping(raw or {})


@contextlib.asynccontextmanager
async def pool_resource(settings: config_module.OutboxConfig) -> AsyncIterator[Any]:
    """The aiopg pool of the library (claims, marks, and enqueue without a session).

    Every process starts it first, so it is where a missing or outdated schema is found:
    :class:`~outbox_di.errors.SchemaNotReadyError` names the migrate command (and the pool is
    closed again)."""
    async with database.open_pool(
        settings.dsn,
        min_size=settings.pool.min_size,
        max_size=settings.pool.max_size,
        connect_timeout=settings.pool.connect_timeout,
    ) as pool:
        await database.require_schema(pool, settings.schema, settings.dsn)
        async with idle.trimming(
            pool, keep=settings.pool.min_size, interval=settings.pool.idle_timeout
        ):
            yield pool


@contextlib.asynccontextmanager
async def relay_pool_resource(settings: config_module.OutboxConfig) -> AsyncIterator[Any]:
    """The publisher task's own small pool, with :data:`database.RELAY_SETTINGS` (no waiting
    for commit flushes, the claim's index scan kept): only worker processes open it."""
    async with database.open_pool(
        settings.dsn,
        min_size=1,
        # A connection per relay loop, the LISTEN connection and the backlog gauge's.
        max_size=settings.publisher.workers + 2,
        connect_timeout=settings.pool.connect_timeout,
        application_name="outbox_di relay",
        settings=database.RELAY_SETTINGS,
    ) as pool:
        yield pool


@contextlib.asynccontextmanager
async def publisher_resource(settings: config_module.OutboxConfig) -> AsyncIterator[base.Publisher]:
    """The publisher of ``broker``, its client created in the running loop; topics checked at
    start (within the broker's ``connect_timeout``). A start that fails or is cancelled closes
    the client."""
    # The broker's client (for Pub/Sub, grpc and the GAPIC modules: most of the import time of
    # a process) is loaded by the processes that publish, not by those that only enqueue.
    publisher = brokers.make_publisher(settings)
    try:
        await publisher.start()
        yield publisher
    finally:
        await publisher.close()


@contextlib.asynccontextmanager
async def publisher_task_resource(
    settings: config_module.OutboxConfig,
    relay_pool: Any,
    publisher: base.Publisher,
    logger: logging.Logger,
    meter: Meter,
) -> AsyncIterator[task.PublisherTask | None]:
    """The relay loops, on the relay pool; ``None`` when ``publisher.enabled`` is false.
    Drains on shutdown."""
    if not settings.publisher.enabled:
        yield None
        return
    relay_repository = repository.OutboxRepository(
        relay_pool, settings.schema, ordering=settings.publisher.ordering
    )
    publisher_task = task.PublisherTask(settings, relay_repository, publisher, logger, meter)
    await publisher_task.start()
    try:
        yield publisher_task
    finally:
        await publisher_task.stop()


@contextlib.asynccontextmanager
async def inbox_receiver_resource(
    settings: config_module.OutboxConfig,
    inbox_repository: repository.InboxRepository,
    logger: logging.Logger,
    meter: Meter,
) -> AsyncIterator[receiver_module.InboxReceiver | None]:
    """The broker → inbox receiver; ``None`` when ``inbox.enabled`` is false."""
    if not settings.inbox.enabled:
        yield None
        return
    from outbox_di.inbox import receiver as receiver_module

    subscriber = brokers.make_subscriber(settings)
    inbox_receiver = receiver_module.InboxReceiver(
        settings, inbox_repository, subscriber, logger, meter
    )
    await inbox_receiver.start()
    try:
        yield inbox_receiver
    finally:
        await inbox_receiver.stop(settings.inbox.shutdown_timeout)


@contextlib.asynccontextmanager
async def inbox_worker_resource(
    settings: config_module.OutboxConfig,
    inbox_repository: repository.InboxRepository,
    inbox_handlers: Mapping[str, handlers_module.Handler],
    logger: logging.Logger,
    meter: Meter,
) -> AsyncIterator[worker_module.InboxWorker | None]:
    """The loops that run the handlers; ``None`` when ``inbox.enabled`` is false.

    An enabled inbox without handlers is a configuration error: the worker would park every
    event it receives as having no handler.
    """
    if not settings.inbox.enabled:
        yield None
        return
    if not inbox_handlers:
        raise errors.ConfigError(
            [
                "inbox.enabled: true, but no handler is registered: pass "
                "OutboxContainer(..., inbox_handlers=handlers), register them on "
                "container.inbox_handlers() before start, give them to the FastAPI lifespan "
                "(lifespan.with_handlers(handlers)), or keep a module-level InboxHandlers in a "
                "module the container is wired to (or set inbox.enabled = false)"
            ]
        )
    inbox_worker = worker_module.InboxWorker(
        settings,
        inbox_repository,
        inbox_handlers,
        logger,
        meter,
        shutdown_timeout=settings.inbox.shutdown_timeout,
        # The retention resource deletes processed rows in worker processes (or nothing, when
        # retention.enabled is false).
        purge_interval=None,
    )
    await inbox_worker.start()
    try:
        yield inbox_worker
    finally:
        await inbox_worker.stop()


@contextlib.asynccontextmanager
async def retention_resource(
    settings: config_module.OutboxConfig,
    outbox_repository: repository.OutboxRepository,
    inbox_repository: repository.InboxRepository,
    logger: logging.Logger,
) -> AsyncIterator[retention.Retention | None]:
    """The periodic deletion of old published and processed rows; ``None`` when
    ``retention.enabled`` is false."""
    if not settings.retention.enabled:
        yield None
        return
    runner = retention.Retention(settings, outbox_repository, inbox_repository, logger)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


_DeclarativeMeta: Any = type(containers.DeclarativeContainer)


class _OutboxContainerMeta(_DeclarativeMeta):  # type: ignore[misc]
    # dependency-injector returns a DynamicContainer from OutboxContainer(...): make
    # isinstance(container, OutboxContainer) true for it all the same.
    def __instancecheck__(cls, instance: object) -> bool:
        parent = getattr(instance, "declarative_parent", None)
        if isinstance(parent, type) and issubclass(parent, cls):
            return True
        return type.__instancecheck__(cls, instance)


class OutboxContainer(containers.DeclarativeContainer, metaclass=_OutboxContainerMeta):
    """Providers for the pool, repositories, publisher, publisher task, inbox receiver, worker
    and handlers, retention, meter, logger and the ``outbox`` enqueue facade (a stable set of
    names)."""

    config = providers.Configuration(strict=True)
    settings = providers.Singleton(build_settings, config)

    logger = providers.Object(observability.logger)
    meter = providers.Singleton(observability.get_meter)

    pool = providers.Resource(pool_resource, settings)

    outbox_repository = providers.Singleton(
        repository.OutboxRepository,
        pool,
        settings.provided.schema,
        ordering=settings.provided.publisher.ordering,
    )
    inbox_repository = providers.Singleton(
        repository.InboxRepository, pool, settings.provided.schema
    )

    publisher = providers.Resource(publisher_resource, settings)
    relay_pool = WorkerResource(relay_pool_resource, settings)
    publisher_task = WorkerResource(
        publisher_task_resource, settings, relay_pool, publisher, logger, meter
    )

    inbox_handlers = providers.Singleton(handlers_module.InboxHandlers)
    inbox_receiver = WorkerResource(
        inbox_receiver_resource, settings, inbox_repository, logger, meter
    )
    inbox_worker = WorkerResource(
        inbox_worker_resource, settings, inbox_repository, inbox_handlers, logger, meter
    )

    retention = WorkerResource(
        retention_resource, settings, outbox_repository, inbox_repository, logger
    )

    outbox = providers.Singleton(outbox.Outbox, outbox_repository, pool)

    def __new__(cls, **overriding: Any) -> Any:
        raw = overriding.pop("config", _UNSET)
        if isinstance(raw, providers.Provider):
            overriding["config"] = raw
            raw = _UNSET
        container = super().__new__(cls, **overriding)
        if raw is not _UNSET:
            # The configuration given here, with the OUTBOX_* variables on top, becomes the
            # config provider's default: config.override() layers over it and
            # config.reset_override() comes back to it.
            try:
                base = settings_module.with_environment(raw)
            except errors.ConfigError:
                raise
            except Exception as exc:  # a dynaconf object that cannot be read, say
                raise errors.ConfigError([f"<root>: cannot read the configuration: {exc}"]) from exc
            container.config.set_default(base)
            container.settings()
        # container.override_config(...): see override_config() below.
        container.override_config = functools.partial(override_config, container)
        _CONTAINERS.add(container)
        return container


_CONTAINERS: weakref.WeakSet[Any] = weakref.WeakSet()


def wired_containers() -> list[Any]:
    """The live ``OutboxContainer`` instances that were ``wire()``-d (and not unwired)."""
    return [c for c in list(_CONTAINERS) if c.wired_to_modules or c.wired_to_packages]


_UNSET: Any = object()

# The singletons built from the settings: reset when the configuration changes. (Not the inbox
# handlers: they are registered by the application, whatever the configuration.)
_CONFIGURED = ("settings", "outbox_repository", "inbox_repository", "outbox")


def _reset_configured(container: Any) -> None:
    for name in _CONFIGURED:
        getattr(container, name).reset()


def is_running(container: Any) -> bool:
    """Whether :func:`start` has opened the container's pool (and not :func:`stop` closed it)."""
    return bool(getattr(container.pool, "initialized", False))


@contextlib.contextmanager
def override_config(
    container: Any, changes: Mapping[str, Any] | None = None, **keys: Any
) -> Iterator[config_module.OutboxConfig]:
    """Run the block with ``changes`` deep-merged over the container's configuration.

    ``with override_config(container, schema=test_schema, publisher={"batch_size": 10}):``
    validates the result at once (a :class:`~outbox_di.errors.ConfigError` leaves the container
    untouched), resets what was built from the old settings (repositories, the ``outbox``
    facade), and yields the new settings; on exit the previous configuration comes back.
    Overrides win over ``OUTBOX_*`` variables, so a test never reaches the database a developer's
    shell points at. The container must not be running: start it inside the block (a test
    client's lifespan does).
    """
    if is_running(container):
        raise errors.OutboxError(
            "override_config: the container is running; override its configuration before "
            "start (before the application's lifespan starts it), or stop it first"
        )
    layer: dict[str, Any] = dict(changes or {})
    layer.update(keys)
    merged = copy.deepcopy(container.config())
    settings_module.merge_into(merged, layer)
    checked = build_settings(merged)
    container.config.override(merged)
    _reset_configured(container)
    try:
        yield checked
    finally:
        container.config.reset_last_overriding()
        if not is_running(container):
            _reset_configured(container)


async def start(container: Any, *, workers: bool | None = None) -> None:
    """Initialize the container's resources for this process.

    The pool always; with ``workers`` (default: the ``run_workers`` setting) also the
    publisher task and, when ``inbox.enabled``, the inbox receiver and worker. Stop with
    :func:`stop`; a start that fails half-way has already stopped what it opened.
    """
    settings: config_module.OutboxConfig = container.settings()
    if settings != build_settings(container.config()):
        # config.override() since the settings were built: build them (and what uses them) anew.
        _reset_configured(container)
        settings = container.settings()
    run_workers = settings.run_workers if workers is None else workers
    try:
        await container.pool.init()
        if run_workers:
            await container.init_resources(resource_type=WorkerResource)
    except BaseException:
        # A failure half-way (a missing topic, say) closes what was opened before it.
        await stop(container)
        raise


async def stop(container: Any) -> None:
    """Drain the workers (within their ``shutdown_timeout``), then close the pool.

    Use this rather than a bare ``shutdown_resources()``: dependency-injector orders a shutdown
    by direct dependencies only, and the publisher task reaches the pool through the
    repository, so one call may close the pool under a draining worker (its last batch would
    then be published again, or its handlers run again). The singletons built on the pool
    (repositories, the ``outbox`` facade) are reset afterwards, so the same container can be
    started again.
    """
    try:
        await _maybe_await(container.shutdown_resources(resource_type=WorkerResource))
        await _maybe_await(container.shutdown_resources())
    finally:
        container.reset_singletons()


async def _maybe_await(result: object) -> None:
    # shutdown_resources() returns None when no resource of the kind runs in async mode.
    if inspect.isawaitable(result):
        await result
