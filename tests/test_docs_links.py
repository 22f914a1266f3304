"""The front door stays honest: what README.md and docs/ point at exists.

Every relative link (and image) in README.md and docs/**/*.md resolves to a file of the
repository, and a ``#fragment`` to a heading of its target (GitHub's anchor rule); every
``lmforge COMMAND [SUBCOMMAND]`` the README and docs show in code is a command of the CLI's own
parser (imported, not run); the README names the test command CI runs.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import typer

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# A command line's first word (at a line's start, after && | ; $( or VAR=value): `lmforge
# pretrain`, `.venv/bin/lmforge ui`, `lmforge pipeline submit full`; not lmforge.train, nor the
# namespace in `kubectl -n lmforge create`.
COMMAND = re.compile(
    r"(?:^|&&|\|\||[|;]|\$\()[ \t]*(?:\w+=\S*[ \t]+)*(?:[\w.~/-]*/)?lmforge"
    r"[ \t]+([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?",
    re.MULTILINE,
)


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def prose(text: str) -> str:
    """The page without its fenced code blocks (a link-like string there is code, not a link)."""
    return FENCE.sub("", text)


def code(text: str) -> str:
    """The page's fenced blocks and inline code spans: where a command line is written."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    return "\n".join(blocks + CODE_SPAN.findall(prose(text)))


@cache
def anchors(page: Path) -> frozenset[str]:
    """The ids GitHub gives the page's headings: lower case, punctuation dropped, spaces to -,
    a repeated heading suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in HEADING.findall(prose(page.read_text())):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(ids)


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not a file
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == [], f"{relative(page)}: broken links"


def test_the_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# Here it is\n\n## Data (`lmforge.data`)\n")
    page.write_text(
        "[ok](there.md#data-lmforgedata) [gone](nowhere.md) [bad](there.md#missing)\n"
        "[web](https://example.com/x.md) ![img](there.md)\n```\n[code](not-a-link.md)\n```\n"
    )
    assert [b.split(" ")[0] for b in broken_links(page)] == ["nowhere.md", "there.md#missing"]


@cache
def cli_commands() -> dict[str, set[str]]:
    """Each command of ``lmforge`` with its subcommands (empty for a plain command)."""
    from lmforge.cli import app

    group = typer.main.get_command(app)
    return {name: set(getattr(cmd, "commands", {})) for name, cmd in group.commands.items()}


def unknown_commands(text: str) -> list[str]:
    commands = cli_commands()
    unknown = []
    for name, sub in COMMAND.findall(code(text)):
        if name not in commands:
            unknown.append(f"lmforge {name}")
        elif commands[name] and sub and sub not in commands[name]:
            unknown.append(f"lmforge {name} {sub}")
    return unknown


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_every_lmforge_command_shown_is_one_the_cli_has(page):
    assert unknown_commands(page.read_text()) == [], f"{relative(page)}: commands the CLI lacks"


def test_the_command_check_catches_an_unknown_command_and_subcommand():
    text = (
        "`lmforge pretrain --render`, `lmforge.train.loop`, the `lmforge` CLI\n"
        "```bash\n.venv/bin/lmforge trian\nlmforge pipeline compile && lmforge pipeline sumbit\n"
        "kubectl -n lmforge create secret generic x  # a namespace, not a command\n```"
    )
    assert unknown_commands(text) == ["lmforge trian", "lmforge pipeline sumbit"]


def test_the_readme_shows_the_test_command_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci  # .ci/run: "run the README's test command"
    assert "make test" in code((REPO / "README.md").read_text())
