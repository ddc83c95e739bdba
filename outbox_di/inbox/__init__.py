"""The inbox: :mod:`receiver` (Pub/Sub → inbox rows) and :mod:`worker` (rows → handlers)."""

from __future__ import annotations
