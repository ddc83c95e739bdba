"""Pub/Sub's names: full topic and subscription paths, the project, and where the clients
connect (the emulator or Google Cloud). Nothing here loads grpc."""

from __future__ import annotations

import os

from outbox_di import config as config_module
from outbox_di import errors

__all__ = [
    "GOOGLE_ENDPOINT",
    "describe_endpoint",
    "endpoint",
    "project",
    "resolve_subscription",
    "resolve_topic",
]


def resolve_topic(name: str, project: str | None, key: str) -> str:
    """``projects/P/topics/T`` from a full name, or from a bare name and the project."""
    if name.startswith("projects/"):
        return name
    if not project:
        raise errors.ConfigError(
            [
                f"{key}: topic {name!r} is a bare name but no project is known; set "
                "pubsub.project (or GOOGLE_CLOUD_PROJECT), or give projects/P/topics/T"
            ]
        )
    return f"projects/{project}/topics/{name}"


def project(settings: config_module.OutboxConfig) -> str | None:
    """``pubsub.project``, else ``GOOGLE_CLOUD_PROJECT`` or ``GCLOUD_PROJECT``."""
    return (
        settings.pubsub.project
        or os.environ.get("GOOGLE_CLOUD_PROJECT")
        or os.environ.get("GCLOUD_PROJECT")
    )


def resolve_subscription(name: str, project: str | None) -> str:
    """``projects/P/subscriptions/S`` from a full name, or from a bare name and the project."""
    if name.startswith("projects/"):
        return name
    if not project:
        raise errors.ConfigError(
            [
                f"inbox.subscription: {name!r} is a bare name but no project is known; set "
                "pubsub.project (or GOOGLE_CLOUD_PROJECT), or give projects/P/subscriptions/S"
            ]
        )
    return f"projects/{project}/subscriptions/{name}"


GOOGLE_ENDPOINT = "pubsub.googleapis.com"


def endpoint(settings: config_module.OutboxConfig) -> tuple[str, str | None]:
    """Where the clients connect, and the setting that chose it: ``pubsub.emulator_host``,
    ``PUBSUB_EMULATOR_HOST``, or ``None`` for Google Cloud (``pubsub.googleapis.com``)."""
    if settings.pubsub.emulator_host:
        return settings.pubsub.emulator_host, "pubsub.emulator_host"
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if host:
        return host, "PUBSUB_EMULATOR_HOST"
    return GOOGLE_ENDPOINT, None


def describe_endpoint(settings: config_module.OutboxConfig) -> str:
    """``"127.0.0.1:8085 (the emulator of pubsub.emulator_host)"`` or the Google endpoint."""
    host, source = endpoint(settings)
    return f"{host} (the emulator of {source})" if source else f"{host} (Google Cloud)"
