from __future__ import annotations

pytest_plugins = ["outbox_di.testing"]
