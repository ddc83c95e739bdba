from __future__ import annotations

pytest_plugins = ["outbox_di.testing"]

# A service of its own, with its own pytest.ini: test_orders_service.py runs it as its own session.
collect_ignore = ["services"]
