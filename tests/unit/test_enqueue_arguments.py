"""Every enqueue form takes the session first; wrong arguments fail before anything is written."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import pytest

from outbox_di import models
from outbox_di.outbox import Outbox

MESSAGE = models.Message("order", "o-1", "order.created", {"n": 1})


class RecordingRepository:
    """Records what reached the repository (nothing may, when the arguments are wrong)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, object]] = []

    async def enqueue(self, session: object, message: models.Message) -> uuid.UUID:
        self.calls.append(("enqueue", session, message))
        return message.event_id

    async def enqueue_many(
        self, session: object, messages: Iterable[models.Message]
    ) -> list[uuid.UUID]:
        batch = list(messages)
        self.calls.append(("enqueue_many", session, batch))
        return [message.event_id for message in batch]


def make_outbox() -> tuple[Outbox, RecordingRepository]:
    recorder = RecordingRepository()
    facade = Outbox(recorder, pool=None)  # type: ignore[arg-type]
    return facade, recorder


async def test_session_first_reaches_the_repository_with_that_session() -> None:
    facade, recorder = make_outbox()
    session = object()
    assert await facade.enqueue(session, MESSAGE) == MESSAGE.event_id
    assert await facade.enqueue_many(session, [MESSAGE]) == [MESSAGE.event_id]
    assert recorder.calls == [("enqueue", session, MESSAGE), ("enqueue_many", session, [MESSAGE])]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda o: o.enqueue(MESSAGE, object()), "enqueue(session, message): expected a Message"),
        (lambda o: o.enqueue(object(), {"a": 1}), "build one: Message("),
        (lambda o: o.enqueue({"a": 1}), "enqueue(message): expected a Message, got dict"),
        (lambda o: o.enqueue(MESSAGE, session=object()), "the session is the first argument"),
        (lambda o: o.enqueue(object(), MESSAGE, sesion=1), "unexpected keyword argument(s) sesion"),
        (lambda o: o.enqueue_many(object(), MESSAGE), "expected an iterable of Message"),
        (lambda o: o.enqueue_many(object(), [MESSAGE, 3]), "item 1: expected a Message, got int"),
        (lambda o: o.enqueue_many([MESSAGE], session=object()), "write enqueue_many(session, "),
    ],
)
async def test_wrong_arguments_raise_type_error_naming_the_call(call: Any, expected: str) -> None:
    facade, recorder = make_outbox()
    with pytest.raises(TypeError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        await call(facade)
    assert recorder.calls == []


async def test_repository_refuses_the_message_first() -> None:
    from outbox_di.repository import OutboxRepository

    repo = OutboxRepository(None, "orders")
    with pytest.raises(TypeError, match=r"enqueue\(session, message\): expected a Message"):
        await repo.enqueue(MESSAGE, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"enqueue_sync\(session, message\)"):
        repo.enqueue_sync(MESSAGE, object())  # type: ignore[arg-type]
