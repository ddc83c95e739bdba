"""The docs stay true to the code: excerpts of the example services are verbatim, every page the
README links to exists, and every shell command a reader would copy from README.md and docs/*.md
either runs in tests/integration/test_docs_commands.py or is an exception of
tests/doc_commands.py, with its reason and a check of what it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import doc_commands

ROOT = Path(__file__).resolve().parents[2]
# <!-- example: integrations/... --> right before a fenced block marks that block as an excerpt.
EXCERPT = re.compile(r"<!-- example: (?P<path>\S+) -->\n```[a-z]*\n(?P<code>.*?)\n```", re.DOTALL)
PAGES = sorted((ROOT / "docs").glob("*.md"))


def _excerpts() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for match in EXCERPT.finditer(page.read_text()):
            found.append((page.name, match["path"], match["code"]))
    return found


@pytest.mark.parametrize(("page", "path", "code"), _excerpts())
def test_example_excerpts_are_verbatim(page: str, path: str, code: str) -> None:
    source = (ROOT / path).read_text()
    assert code in source, f"{page}: an excerpt of {path} no longer matches the file"


def test_the_example_pages_quote_the_examples() -> None:
    quoted = {path for _, path, _ in _excerpts()}
    for example in sorted((ROOT / "integrations").glob("catalog_*/*_catalog.py")):
        assert str(example.relative_to(ROOT)) in quoted, f"no docs page quotes {example}"


def test_readme_links_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|integrations)/[^)#]+)", readme):
        assert (ROOT / target).exists(), f"README links to a missing {target}"


def test_every_command_runs_or_is_an_exception() -> None:
    commands = doc_commands.all_commands()
    assert any(command.program == "outbox-di" for command in commands), "no command found"
    neither = [
        str(command)
        for command in commands
        if not doc_commands.is_run(command) and command.key not in doc_commands.EXCEPTIONS
    ]
    assert not neither, (
        "these commands neither run in tests/integration/test_docs_commands.py nor are listed "
        f"in EXCEPTIONS of tests/doc_commands.py (add a runner or the reason): {neither}"
    )


def test_command_blocks_are_marked_as_such() -> None:
    unmarked = doc_commands.unmarked_commands()
    assert not unmarked, (
        "commands in a text or unlabelled block without a `$ ` prompt are invisible to the "
        f"docs-commands test; label the block sh or prompt the line with `$ `: {unmarked}"
    )


def test_the_exceptions_are_still_documented() -> None:
    keys = {command.key for command in doc_commands.all_commands()}
    stale = sorted(set(doc_commands.EXCEPTIONS) - keys) + sorted(doc_commands.RUN_COMMANDS - keys)
    assert not stale, f"no page has these commands any more; drop them from the tables: {stale}"


@pytest.mark.parametrize("key", sorted(doc_commands.EXCEPTIONS))
def test_what_an_excepted_command_names_exists(key: str) -> None:
    reason, check = doc_commands.EXCEPTIONS[key]
    assert reason
    check()


def test_commands_are_read_with_their_prompt_output_and_comments() -> None:
    found = {command.key: command for command in doc_commands.commands("docs/migration.md")}
    failing = found["outbox-di migrate --schema orders"]
    assert failing.output[0].startswith("outbox-di migrate: error: migrating schema 'orders'")
    render = found["outbox-di render-ddl --schema orders > migrations/0042_outbox_di.sql"]
    assert render.text.endswith("# commit it unchanged")
    assert render.output == ()


def test_a_new_command_block_is_caught() -> None:
    page = "docs/new.md"
    text = "Run:\n\n```sh\nnewtool serve --port 1\n```\n\n```\nmake lint\n```\n"
    (command,) = doc_commands.commands(page, text)
    assert (command.line, command.key) == (4, "newtool serve --port 1")
    assert not doc_commands.is_run(command) and command.key not in doc_commands.EXCEPTIONS
    assert doc_commands.unmarked_commands({page: text}) == ["docs/new.md:8: make lint"]


def test_the_fleet_page_settings_are_a_valid_configuration() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from outbox_di import config

    page = (doc_commands.ROOT / "docs/fleet.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", page, re.MULTILINE | re.DOTALL)
    assert blocks, "docs/fleet.md shows its settings in a toml block"
    for block in blocks:
        settings = config.OutboxConfig.from_mapping(tomllib.loads(block)["outbox"])
        assert settings.schemas == ("catalog", "billing", "orders")
        assert config.topic_for_schema(settings.publisher.topic or "", "billing", "topic") == (
            "billing-events"
        )


@pytest.mark.parametrize(
    ("page", "broker"),
    [
        ("docs/brokers.md", "rabbitmq"),
        ("docs/broker-rabbitmq.md", "rabbitmq"),
        ("docs/broker-nats.md", "nats"),
        ("docs/broker-redis.md", "redis"),
    ],
)
def test_the_broker_pages_settings_are_valid_configurations(page: str, broker: str) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from outbox_di import config

    text = (doc_commands.ROOT / page).read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert blocks, f"{page} shows its settings in a toml block"
    checked = 0
    for block in blocks:
        data = tomllib.loads(block)
        if "outbox" in data:
            settings = config.OutboxConfig.from_mapping(data["outbox"])
            assert settings.broker == broker
            checked += 1
    assert checked, f"{page} has no [outbox] settings in its toml blocks"
