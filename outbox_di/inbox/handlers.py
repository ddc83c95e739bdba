"""``InboxHandlers``: which coroutine handles which event type.

```python
handlers = InboxHandlers()

@handlers.on("item.created")
async def record_item(event: InboxEvent) -> None: ...

@handlers.on("item.deleted")
async def forget_item(event: InboxEvent, session: Any) -> None:   # transactional
    await session.execute("DELETE FROM ...", (...,))

container = OutboxContainer(config=settings.outbox, inbox_handlers=handlers)
```

It is a read-only mapping for the worker; registration happens before the worker starts.
``"*"`` registers the default for event types that have no handler of their own.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

Handler = Callable[..., Awaitable[None]]
HandlerT = TypeVar("HandlerT", bound=Handler)
DEFAULT_HANDLER = "*"


class InboxHandlers(Mapping[str, Handler]):
    """Handlers by event type; one handler per type, ``"*"`` for the rest."""

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        for event_type, handler in (handlers or {}).items():
            self.register(event_type, handler)

    def register(self, event_type: str, handler: Handler) -> None:
        """Handle ``event_type`` with ``handler``; a second handler for one type is an error."""
        if not isinstance(event_type, str) or not event_type:
            raise ValueError(f"an event type must be a non-empty string, got {event_type!r}")
        if not callable(handler):
            raise TypeError(f"the handler for {event_type!r} is not callable: {handler!r}")
        existing = self._handlers.get(event_type)
        if existing is not None and existing is not handler:
            raise ValueError(
                f"{event_type!r} already has a handler ({_name(existing)}); one handler per "
                "event type: call the others from it"
            )
        self._handlers[event_type] = handler

    def on(self, *event_types: str) -> Callable[[HandlerT], HandlerT]:
        """Decorator: ``@handlers.on("item.created", "item.updated")``."""
        if not event_types:
            raise ValueError('name at least one event type (or "*" for the default)')

        def decorate(handler: HandlerT) -> HandlerT:
            for event_type in event_types:
                self.register(event_type, handler)
            return handler

        return decorate

    def __getitem__(self, event_type: str) -> Handler:
        return self._handlers[event_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)

    def __repr__(self) -> str:
        inner = ", ".join(f"{key!r}: {_name(value)}" for key, value in self._handlers.items())
        return f"InboxHandlers({{{inner}}})"


def resolve(value: object) -> InboxHandlers:
    """The handlers that ``value`` names: an ``InboxHandlers``, a mapping of event type to
    handler, or the import path of either (``"pkg.module:handlers"`` or
    ``"pkg.module.handlers"``). ``ValueError`` says what is wrong; callers put their own key in
    front (``--handlers``, ``OUTBOX.inbox_handlers``)."""
    found = _import(value) if isinstance(value, str) else value
    if isinstance(found, InboxHandlers):
        return found
    if isinstance(found, Mapping):
        try:
            return InboxHandlers(found)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from exc
    raise ValueError(
        f"must be an InboxHandlers (or the dotted path of one), got {type(found).__name__}; "
        "a mapping of event type to handler works too"
    )


def _import(path: str) -> object:
    module_name, colon, attribute = path.partition(":")
    if not colon:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"expected 'package.module:attribute', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from exc
    try:
        return getattr(module, attribute)
    except AttributeError as exc:
        raise ValueError(
            f"cannot import {path!r}: module {module_name!r} has no attribute {attribute!r}"
        ) from exc


def _name(handler: Any) -> str:
    return str(getattr(handler, "__qualname__", None) or repr(handler))
