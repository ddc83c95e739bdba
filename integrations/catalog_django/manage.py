#!/usr/bin/env python
# mypy: disable-error-code="import-untyped"
"""Django's command line for the catalog service (``migrate``, ``runserver``, ``outbox_worker``)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
