"""Whether this process serves the project, and so should start the outbox workers.

``ready()`` runs in every process that sets Django up: web servers, but also ``migrate``,
``shell``, the test runner, and the autoreloader's parent process of ``runserver`` (which only
watches files and restarts a child). The decision reads the command line and the environment,
which are passed in so that it can be tested without starting anything.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

__all__ = ["SERVING_COMMANDS", "Decision", "decide"]

SERVING_COMMANDS = frozenset({"runserver"})
"""Management commands that serve the project (every other command is left alone)."""

_MANAGEMENT_PROGRAMS = frozenset({"manage.py", "django-admin", "django-admin.py"})
_TEST_PROGRAMS = frozenset({"pytest", "py.test"})
_RELOADER_CHILD = "RUN_MAIN"
"""Set to ``"true"`` by Django's autoreloader in the child process that serves."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """Start or not, and why (the reason is logged)."""

    start: bool
    reason: str


def _program(argv: Sequence[str]) -> tuple[str, str]:
    """The program's file name and its folder's name (``python -m pkg`` runs pkg/__main__.py)."""
    if not argv:
        return "", ""
    path = argv[0]
    return os.path.basename(path), os.path.basename(os.path.dirname(path))


def decide(argv: Sequence[str], environ: Mapping[str, str]) -> Decision:
    """Serve-or-not for a process started with ``argv`` in ``environ``.

    * a management command (``manage.py``, ``django-admin``, ``python -m django``) starts the
      workers only when it is ``runserver``: with ``--noreload``, or in the autoreloader's child
      (``RUN_MAIN=true``), never in the autoreloader's parent;
    * pytest (``pytest``, ``python -m pytest``, an xdist worker) does not start them;
    * any other program (gunicorn, uvicorn, daphne, mod_wsgi, a script of yours) is taken to
      serve, and does.
    """
    program, folder = _program(argv)
    if program in _TEST_PROGRAMS or (program == "__main__.py" and folder == "pytest"):
        return Decision(False, "running under pytest")
    if "PYTEST_XDIST_WORKER" in environ:
        return Decision(False, "running in a pytest-xdist worker")
    management = program in _MANAGEMENT_PROGRAMS or (
        program == "__main__.py" and folder == "django"
    )
    if not management:
        launcher = folder if program == "__main__.py" else program
        return Decision(True, f"serving through {launcher or 'an embedded interpreter'}")
    command = argv[1] if len(argv) > 1 else "help"
    if command not in SERVING_COMMANDS:
        return Decision(False, f"management command {command!r}")
    if "--noreload" in argv[2:]:
        return Decision(True, f"{command} --noreload")
    if environ.get(_RELOADER_CHILD) == "true":
        return Decision(True, f"{command}, the autoreloader's serving child")
    return Decision(False, f"{command}, the autoreloader's parent process (it serves nothing)")
