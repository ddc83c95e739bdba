"""``InboxHandlers``: which coroutine handles which event type.

```python
handlers = InboxHandlers()

@handlers.on("item.created")
async def record_item(event: InboxEvent) -> None: ...

@handlers.on("item.deleted", transactional=True)
async def forget_item(event: InboxEvent, session: Any) -> None:
    await session.execute("DELETE FROM ...", (...,))

container = OutboxContainer(config=settings.outbox, inbox_handlers=handlers)
```

A handler is *transactional* (it runs in a transaction of the inbox's, gets that transaction's
cursor as its second argument, and the row is marked processed in the same transaction) only
when declared so: ``transactional=True``, the :func:`transactional` decorator, or a second
parameter annotated :data:`Session`. A handler with a second required parameter and no
declaration is refused at registration, since it would be called with one argument; parameters
with defaults (an ``@inject``-ed ``service = Provide[...]``) are left to their defaults.

It is a read-only mapping for the worker; registration happens before the worker starts.
``"*"`` registers the default for event types that have no handler of their own.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Annotated, Any, TypeVar

Handler = Callable[..., Awaitable[None]]
HandlerT = TypeVar("HandlerT", bound=Handler)
DEFAULT_HANDLER = "*"


class _SessionMarker:
    def __repr__(self) -> str:
        return "outbox_di.inbox.handlers.Session"


_SESSION = _SessionMarker()
_DECLARED = "__outbox_transactional__"

Session = Annotated[Any, _SESSION]
"""Annotate a handler's second parameter with it (``session: Session``) to declare the handler
transactional; the value is the aiopg cursor of the inbox's transaction."""


def transactional(handler: HandlerT) -> HandlerT:
    """Declare ``handler`` transactional (for registration by mapping:
    ``InboxHandlers({"order.paid": transactional(record_payment)})``)."""
    setattr(handler, _DECLARED, True)
    return handler


def is_transactional(handler: Handler, declared: bool | None = None) -> bool:
    """Whether ``handler`` runs transactionally: ``declared`` when given, else its
    :func:`transactional` mark or a :data:`Session` annotation.

    ``TypeError`` for a signature that does not fit: declared transactional but unable to take
    the session, or a second required parameter without the declaration (it would be called
    with the event alone).
    """
    name = _name(handler)
    if declared is None:
        declared = bool(getattr(handler, _DECLARED, False)) or _annotated_session(handler) or None
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # a builtin or C callable: take the declaration as it is
        return bool(declared)
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    takes_more = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    required = [p for p in positional if p.default is p.empty]
    if declared:
        if len(positional) < 2 and not takes_more:
            raise TypeError(
                f"handler {name} is declared transactional but takes no session: give it a "
                "second parameter, async def handler(event, session), or drop the declaration"
            )
        return True
    if len(required) >= 2:
        second = required[1].name
        raise TypeError(
            f"handler {name} has a second required parameter {second!r} but is not declared "
            f"transactional, so it would be called with the event alone: register it with "
            f"transactional=True (it then gets the transaction's cursor as {second!r}), "
            f"annotate it '{second}: Session', or give {second!r} a default"
        )
    return False


def _annotated_session(handler: Handler) -> bool:
    target = getattr(handler, "__func__", handler)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # names the annotations use that cannot be resolved here
        return False
    return any(_SESSION in getattr(hint, "__metadata__", ()) for hint in hints.values())


class InboxHandlers(Mapping[str, Handler]):
    """Handlers by event type; one handler per type, ``"*"`` for the rest."""

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        self._transactional: dict[str, bool] = {}
        if isinstance(handlers, InboxHandlers):
            for event_type in handlers:
                self.register(
                    event_type, handlers[event_type], handlers.is_transactional(event_type)
                )
            return
        for event_type, handler in (handlers or {}).items():
            self.register(event_type, handler)

    def register(
        self, event_type: str, handler: Handler, transactional: bool | None = None
    ) -> None:
        """Handle ``event_type`` with ``handler``; a second handler for one type is an error.

        ``transactional`` declares whether it gets the inbox transaction's session (default:
        the handler's own declaration, see :func:`is_transactional`)."""
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
        flag = is_transactional(handler, transactional)
        self._handlers[event_type] = handler
        self._transactional[event_type] = flag

    def on(
        self, *event_types: str, transactional: bool | None = None
    ) -> Callable[[HandlerT], HandlerT]:
        """Decorator: ``@handlers.on("item.created", "item.updated")``;
        ``transactional=True`` for a handler that takes the session."""
        if not event_types:
            raise ValueError('name at least one event type (or "*" for the default)')

        def decorate(handler: HandlerT) -> HandlerT:
            for event_type in event_types:
                self.register(event_type, handler, transactional)
            return handler

        return decorate

    def is_transactional(self, event_type: str) -> bool:
        """Whether the handler of ``event_type`` gets the inbox transaction's session."""
        return self._transactional[event_type]

    def __getitem__(self, event_type: str) -> Handler:
        return self._handlers[event_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)

    def __repr__(self) -> str:
        inner = ", ".join(f"{key!r}: {_name(value)}" for key, value in self._handlers.items())
        return f"InboxHandlers({{{inner}}})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, InboxHandlers):
            return self._handlers == other._handlers and self._transactional == other._transactional
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]


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
