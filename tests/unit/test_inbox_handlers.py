"""InboxHandlers: registration rules and the mapping the worker reads."""

from __future__ import annotations

import re
from typing import Any

import pytest

from outbox_di import models
from outbox_di.inbox.handlers import InboxHandlers, Session, resolve, transactional


async def _first(event: models.InboxEvent) -> None:
    return None


async def _second(event: models.InboxEvent) -> None:
    return None


def test_decorator_registers_each_named_type_and_returns_the_handler() -> None:
    handlers = InboxHandlers()
    decorated = handlers.on("item.created", "item.updated")(_first)
    assert decorated is _first
    assert dict(handlers) == {"item.created": _first, "item.updated": _first}
    assert len(handlers) == 2 and "item.created" in handlers
    assert "item.created" in repr(handlers) and "_first" in repr(handlers)


def test_built_from_a_mapping_with_a_default() -> None:
    handlers = InboxHandlers({"*": _first, "item.created": _second})
    assert handlers["*"] is _first and handlers["item.created"] is _second


def test_a_second_handler_for_one_type_is_an_error_naming_both() -> None:
    handlers = InboxHandlers({"item.created": _first})
    handlers.register("item.created", _first)  # the same one again is harmless
    with pytest.raises(ValueError, match=r"'item.created' already has a handler \(_first\)"):
        handlers.register("item.created", _second)


def test_bad_registrations_are_refused() -> None:
    handlers = InboxHandlers()
    with pytest.raises(ValueError, match="non-empty string"):
        handlers.register("", _first)
    with pytest.raises(TypeError, match="not callable"):
        handlers.register("item.created", "not a function")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one event type"):
        handlers.on()


HANDLERS = InboxHandlers({"item.created": _first})


@pytest.mark.parametrize(
    "reference",
    [
        HANDLERS,
        "tests.unit.test_inbox_handlers:HANDLERS",
        "tests.unit.test_inbox_handlers.HANDLERS",
    ],
)
def test_resolve_an_object_or_its_import_path(reference: object) -> None:
    assert resolve(reference) is HANDLERS


def test_resolve_wraps_a_mapping() -> None:
    assert dict(resolve({"item.created": _second})) == {"item.created": _second}


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("nothing", "expected 'package.module:attribute', got 'nothing'"),
        ("no_such_module:handlers", "cannot import 'no_such_module'"),
        ("tests.unit.test_inbox_handlers:MISSING", "has no attribute 'MISSING'"),
        (3, "must be an InboxHandlers (or the dotted path of one), got int"),
        ({"": _first}, "non-empty string"),
    ],
)
def test_resolve_says_what_is_wrong(reference: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve(reference)


# -- transactional only when declared -------------------------------------------------------


async def _takes_session(event: models.InboxEvent, session: Any) -> None:
    return None


async def _annotated(event: models.InboxEvent, session: Session) -> None:
    return None


class _Service:
    pass


_SERVICE = _Service()


async def _with_injected_default(event: models.InboxEvent, service: Any = _SERVICE) -> None:
    return None


class _Methods:
    @transactional
    async def with_session(self, event: models.InboxEvent, session: Any) -> None:
        return None

    async def plain(self, event: models.InboxEvent) -> None:
        return None


def test_a_second_required_parameter_without_a_declaration_is_refused() -> None:
    handlers = InboxHandlers()
    with pytest.raises(TypeError, match=r"second required parameter 'session'.*transactional=True"):
        handlers.register("order.paid", _takes_session)
    assert "order.paid" not in handlers
    with pytest.raises(ValueError, match="second required parameter"):
        resolve({"order.paid": _takes_session})


def test_the_ways_to_declare_a_transactional_handler() -> None:
    handlers = InboxHandlers()
    handlers.on("by.keyword", transactional=True)(_takes_session)
    handlers.register("by.annotation", _annotated)
    handlers.register("by.decorator", transactional(_copy(_takes_session)))
    handlers.register("plain", _first)
    handlers.register("method", _Methods().with_session)
    handlers.register("plain.method", _Methods().plain)
    flags = {event_type: handlers.is_transactional(event_type) for event_type in handlers}
    assert flags == {
        "by.keyword": True,
        "by.annotation": True,
        "by.decorator": True,
        "plain": False,
        "method": True,
        "plain.method": False,
    }
    # Copied into another InboxHandlers (the worker does), the declarations stay.
    assert InboxHandlers(handlers).is_transactional("by.keyword")


def test_a_parameter_with_a_default_is_left_to_its_default() -> None:
    handlers = InboxHandlers()
    handlers.register("order.paid", _with_injected_default)
    assert not handlers.is_transactional("order.paid")


def test_declared_transactional_without_a_session_parameter_is_refused() -> None:
    with pytest.raises(TypeError, match="declared transactional but takes no session"):
        InboxHandlers().register("order.paid", _first, transactional=True)
    with pytest.raises(TypeError, match="second required parameter"):
        InboxHandlers().register("order.paid", _takes_session, transactional=False)


def _copy(handler: Any) -> Any:
    async def copied(event: models.InboxEvent, session: Any) -> None:
        await handler(event, session)

    return copied
