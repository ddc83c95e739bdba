"""The shell commands of README.md and docs/*.md, as a reader would copy them, and what the tests
do with each: run it (``tests/integration/test_docs_commands.py``) or say, in :data:`EXCEPTIONS`,
why it cannot run here and check what can be checked of it (``tests/unit/test_docs.py``).

A command is a line of a fenced ``sh``/``bash``/``shell``/``console`` block, or a ``$ `` line of
a ``text`` (or unlabelled) block; in a ``console`` or ``text`` block the lines after a ``$ ``
line, up to the next one, are its documented output.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", *(f"docs/{page.name}" for page in sorted((ROOT / "docs").glob("*.md"))))

FENCE = re.compile(
    r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "zsh", "console"})
OUTPUT_LANGUAGES = frozenset({"text", ""})
PROMPT = "$ "
# A line of a text/unlabelled block starting with one of these is a command written as output:
# the block must be labelled sh (or the line given a "$ " prompt) so that the tests see it.
PROGRAMS = re.compile(
    r"(outbox-di|python3?|\.venv/bin/\S+|pip|pytest|make|uvicorn|curl|psql|export|cd|docker|"
    r"gcloud|tox)( |$)"
)
# "outbox-di worker: error: ..." is a program's message, not a command.
_MESSAGE = re.compile(r"\S+( \S+)?: ")
_COMMENT = re.compile(r"\s+#(\s.*)?$")


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of a page, where it is, and the output documented after it."""

    page: str
    line: int
    block: int
    text: str
    output: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The command without its trailing comment, whitespace collapsed: the tables' key."""
        return " ".join(_COMMENT.sub("", self.text).split())

    @property
    def program(self) -> str:
        return self.key.split()[0]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.key}"


def _blocks(page: str, text: str | None = None) -> Iterator[tuple[int, int, str, list[str]]]:
    """``(index, first body line number, language, body lines)`` of each fenced block."""
    if text is None:
        text = (ROOT / page).read_text(encoding="utf-8")
    for index, match in enumerate(FENCE.finditer(text)):
        first = text.count("\n", 0, match.start("body")) + 1
        yield index, first, match["lang"], match["body"].splitlines()


def commands(page: str, text: str | None = None) -> list[Command]:
    """Every command of ``page`` (or of ``text``, read as that page), in page order."""
    found: list[Command] = []
    for index, first, lang, lines in _blocks(page, text):
        prompted = any(line.startswith(PROMPT) for line in lines)
        if lang in SHELL_LANGUAGES and not prompted and lang != "console":
            for number, line in enumerate(lines, first):
                if line.strip() and not line.lstrip().startswith("#"):
                    found.append(Command(page, number, index, line.strip()))
        elif (lang in SHELL_LANGUAGES or lang in OUTPUT_LANGUAGES) and prompted:
            current: tuple[int, str] | None = None
            output: list[str] = []
            for number, line in enumerate(lines, first):
                if line.startswith(PROMPT):
                    if current is not None:
                        found.append(Command(page, *_at(current, index), tuple(output)))
                    current, output = (number, line[len(PROMPT) :].strip()), []
                elif current is not None:
                    output.append(line)
            if current is not None:
                found.append(Command(page, *_at(current, index), tuple(output)))
    return found


def _at(current: tuple[int, str], block: int) -> tuple[int, int, str]:
    return current[0], block, current[1]


def all_commands() -> list[Command]:
    return [command for page in PAGES for command in commands(page)]


def unmarked_commands(pages: dict[str, str | None] | None = None) -> list[str]:
    """Lines of text/unlabelled blocks without a ``$ `` prompt that look like commands (of
    ``pages``, page to text, default every page as it is on disk)."""
    found: list[str] = []
    for page, text in (pages or dict.fromkeys(PAGES)).items():
        for _, first, lang, lines in _blocks(page, text):
            if lang not in OUTPUT_LANGUAGES or any(line.startswith(PROMPT) for line in lines):
                continue
            found.extend(
                f"{page}:{number}: {line}"
                for number, line in enumerate(lines, first)
                if PROGRAMS.match(line) and not _MESSAGE.match(line)
            )
    return found


# --- what runs, and what cannot ----------------------------------------------------------------

RUN_PROGRAMS = frozenset({"outbox-di", "cd", "export", "psql"})
"""Programs whose commands ``tests/integration/test_docs_commands.py`` runs, every one of them."""

RUN_COMMANDS = frozenset({"python manage.py migrate"})
"""Other commands that test runs (by their key)."""


def _makefile_has(*targets: str) -> Callable[[], None]:
    def check() -> None:
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
        for target in targets:
            assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"no make target {target}"

    return check


def _extras_exist(*extras: str) -> Callable[[], None]:
    def check() -> None:
        project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        section = project.split("[project.optional-dependencies]\n", 1)[1].split("\n[", 1)[0]
        for extra in extras:
            declared = re.search(rf"^{extra} = \[", section, re.MULTILINE)
            assert declared, f"pyproject.toml declares no extra {extra!r}"

    return check


def _script_takes(script: str, *flags: str) -> Callable[[], None]:
    def check() -> None:
        source = (ROOT / script).read_text(encoding="utf-8")
        for flag in flags:
            assert f'"{flag}"' in source, f"{script} has no {flag} option"

    return check


def _defined(directory: str, reference: str) -> Callable[[], None]:
    """``module:attribute`` is a module file under ``directory`` that binds ``attribute`` at its
    top level. Read, not imported: importing the example's ASGI module starts the service (its
    pool and workers, which need the example's database and Pub/Sub)."""

    def check() -> None:
        module, _, attribute = reference.partition(":")
        path = ROOT / directory / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"{reference}: no module file {path.relative_to(ROOT)}"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound = {
            target.id
            for node in tree.body
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        } | {
            node.name
            for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
        assert attribute in bound, f"{reference}: {path.name} does not define {attribute}"

    return check


def _management_command(name: str) -> Callable[[], None]:
    def check() -> None:
        path = ROOT / "outbox_di/integrations/django/management/commands" / f"{name}.py"
        assert path.is_file(), f"no Django management command {name}"

    return check


DJANGO_EXAMPLE = "integrations/catalog_django"

EXCEPTIONS: dict[str, tuple[str, Callable[[], None]]] = {
    "make demo": (
        "runs the whole example service for minutes; tests/e2e/test_demo.py covers it",
        _makefile_has("demo"),
    ),
    "make test": ("is this test suite itself", _makefile_has("test")),
    "pip install 'outbox_di[asyncpg]'": (
        "installs the published package from the network",
        _extras_exist("asyncpg", "psycopg", "sqlalchemy", "django", "fastapi", "aiohttp"),
    ),
    ".venv/bin/python bench/enqueue.py": (
        "a benchmark: minutes of both shared cores (make bench runs it)",
        _script_takes("bench/enqueue.py"),
    ),
    ".venv/bin/python bench/relay.py --rounds 5": (
        "a benchmark: minutes of both shared cores (make bench runs it)",
        _script_takes("bench/relay.py", "--rounds"),
    ),
    ".venv/bin/python bench/inbox.py": (
        "a benchmark, with Google's emulator: minutes of both shared cores",
        _script_takes("bench/inbox.py"),
    ),
    ".venv/bin/python bench/inbox.py --emulator in-process": (
        "a benchmark: minutes of both shared cores (make bench runs it)",
        _script_takes("bench/inbox.py", "--emulator"),
    ),
    ".venv/bin/python bench/fleet.py --rounds 5": (
        "a benchmark: minutes of both shared cores (make bench runs it)",
        _script_takes("bench/fleet.py", "--rounds", "--backlog", "--schemas"),
    ),
    ".venv/bin/python bench/brokers.py --rows 20000 --rounds 3": (
        "a benchmark on three brokers: minutes of both shared cores (make bench runs it)",
        _script_takes("bench/brokers.py", "--broker", "--rows", "--rounds"),
    ),
    ".venv/bin/python bench/retention.py": (
        "a benchmark: minutes of both shared cores (make bench runs it)",
        _script_takes("bench/retention.py", "--events", "--window"),
    ),
    "outbox-di worker --schema catalog,billing,orders": (
        "relays until SIGTERM; tests/integration/test_fleet.py runs worker processes like it",
        _script_takes("outbox_di/cli.py", "--schema", "--all-schemas"),
    ),
    "outbox-di worker --all-schemas": (
        "relays until SIGTERM; tests/integration/test_fleet.py runs worker processes like it",
        _script_takes("outbox_di/cli.py", "--all-schemas"),
    ),
    'outbox-di dashboard --dsn "$DATABASE_URL" --all-schemas': (
        "serves until stopped; tests/integration/test_dashboard.py serves the dashboard",
        _script_takes("outbox_di/cli.py", "--all-schemas"),
    ),
    "make chaos": (
        "the fault-injection run: 10 minutes of both shared cores (docs/reliability.md: its table)",
        _makefile_has("chaos"),
    ),
    "make chaos-breaks": (
        "three fault-injection runs on broken builds, minutes each (docs/reliability.md)",
        _makefile_has("chaos-breaks"),
    ),
    ".venv/bin/python -m tests.chaos.run --events 10000 --seconds 60": (
        "the short fault-injection run: tests/integration/test_chaos_run.py runs this command",
        _script_takes("tests/chaos/run.py", "--events", "--seconds"),
    ),
    ".venv/bin/python -m tests.chaos.run --help": (
        "prints the run's options; the unit test of tests/chaos/run.py parses them",
        _script_takes("tests/chaos/run.py", "--events", "--seconds", "--kill-every", "--seed"),
    ),
    "python manage.py outbox_worker": (
        "runs the workers until SIGTERM; tests/integration/test_django_integration.py runs it",
        _management_command("outbox_worker"),
    ),
    "uvicorn catalog_site.asgi:application": (
        "serves until stopped; tests/e2e/test_catalog_django.py serves it",
        _defined(DJANGO_EXAMPLE, "catalog_site.asgi:application"),
    ),
    """curl -X POST localhost:8000/items -d '{"sku": "a-1", "name": "first"}'""": (
        "needs the server of the uvicorn line above; tests/e2e/test_catalog_django.py posts items",
        _defined(DJANGO_EXAMPLE, "catalog_site.urls:urlpatterns"),
    ),
    "curl localhost:8000/received": (
        "needs the server of the uvicorn line above; tests/e2e/test_catalog_django.py reads it",
        _defined(DJANGO_EXAMPLE, "catalog_site.urls:urlpatterns"),
    ),
    "pip install 'outbox_di[aiohttp]'": (
        "installs the published package from the network",
        _extras_exist("aiohttp"),
    ),
    'outbox-di dashboard --dsn "$DATABASE_URL" --schema catalog,billing': (
        "serves until stopped; tests/integration/test_dashboard.py serves the dashboard",
        _script_takes("outbox_di/cli.py", "--schema", "--host", "--port"),
    ),
    'outbox-di dashboard --dsn "$DATABASE_URL" --all-schemas --allow-actions --port 8090': (
        "serves until stopped; tests/integration/test_dashboard.py serves the dashboard",
        _script_takes("outbox_di/cli.py", "--all-schemas", "--allow-actions", "--port"),
    ),
    **{
        f"pip install 'outbox_di[{extra}]'": (
            "installs the published package from the network",
            _extras_exist(extra),
        )
        for extra in ("rabbitmq", "nats", "redis")
    },
    "nats stream add ORDERS --subjects orders.events --storage file --defaults": (
        "needs the nats command-line tool, not installed here; "
        "tests/integration/test_broker_recipes.py runs the page's nats-py recipe for it",
        _script_takes("tests/integration/test_broker_recipes.py", "add_stream"),
    ),
    "nats consumer add ORDERS billing --pull --ack explicit --defaults": (
        "needs the nats command-line tool, not installed here; "
        "tests/integration/test_broker_recipes.py runs the page's nats-py recipe for it",
        _script_takes("tests/integration/test_broker_recipes.py", "add_stream"),
    ),
    **{
        command: (
            "needs RabbitMQ's management plugin, which this machine's server does not enable; "
            "tests/integration/test_broker_recipes.py runs the page's aio-pika recipe for it",
            _script_takes("tests/integration/test_broker_recipes.py", "declare_exchange"),
        )
        for command in (
            "rabbitmqadmin declare exchange name=orders.events type=topic durable=true",
            "rabbitmqadmin declare queue name=billing.orders durable=true",
            "rabbitmqadmin declare binding source=orders.events destination=billing.orders "
            "routing_key='order.#'",
        )
    },
    "redis-cli -u redis://127.0.0.1:6379/0 XGROUP CREATE payments:events orders '$' MKSTREAM": (
        "changes the shared Redis server; tests/integration/test_broker_recipes.py runs it "
        "(and deletes what it made)",
        _script_takes("tests/integration/test_broker_recipes.py", "XGROUP CREATE"),
    ),
    "redis-cli XGROUP DELCONSUMER payments:events orders <consumer name>": (
        "a template (<consumer name> is a dead instance's); "
        "tests/integration/test_broker_redis.py checks that a stopped instance removes its own",
        _script_takes("tests/integration/test_broker_redis.py"),
    ),
}
"""Commands that cannot run in a test, keyed like :attr:`Command.key`: why, and a check of
what they name (a make target, an extra, a script's option, an importable ``module:attribute``)."""


def is_run(command: Command) -> bool:
    if command.key in EXCEPTIONS:  # outbox-di dashboard serves until stopped
        return False
    return command.program in RUN_PROGRAMS or command.key in RUN_COMMANDS
