# mypy: disable-error-code="import-untyped, import-not-found", allow-untyped-decorators
"""The catalog's HTTP API (see integrations/README.md)."""

from __future__ import annotations

import json
import uuid

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from catalog.models import Item, ReceivedEvent
from outbox_di import Message
from outbox_di.integrations import django as outbox_django


@require_POST
def create_item(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body)
        sku, name = body["sku"], body["name"]
    except (ValueError, TypeError, KeyError):
        return JsonResponse({"error": 'expected {"sku": "...", "name": "..."}'}, status=400)
    if not isinstance(sku, str) or not isinstance(name, str) or not sku or not name:
        return JsonResponse({"error": "sku and name must be non-empty strings"}, status=400)
    item_id = uuid.uuid4()
    try:
        with transaction.atomic():
            # The event first: a duplicate sku fails the insert below, and the rollback takes
            # the event with it.
            event_id = outbox_django.enqueue(
                Message(
                    aggregate_type="item",
                    aggregate_id=item_id,
                    event_type="item.created",
                    payload={"id": str(item_id), "sku": sku, "name": name},
                )
            )
            Item.objects.create(id=item_id, sku=sku, name=name)
    except IntegrityError:
        return JsonResponse({"error": f"an item with sku {sku!r} already exists"}, status=409)
    return JsonResponse({"id": str(item_id), "event_id": str(event_id)}, status=201)


@require_GET
def received(request: HttpRequest) -> JsonResponse:
    event_ids = list(
        ReceivedEvent.objects.order_by("received_at", "event_id").values_list("event_id", flat=True)
    )
    return JsonResponse({"count": len(event_ids), "event_ids": event_ids})


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})
