"""The inbox: :mod:`receiver` (broker → inbox rows) and :mod:`worker` (rows → handlers)."""

from __future__ import annotations
