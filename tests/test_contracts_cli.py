"""The command line as a person meets it: a version, help in plain words, results as a short
summary at a terminal and JSON for programs (``--json`` / ``--summary`` choose)."""

from __future__ import annotations

import json
from importlib.metadata import version

from typer.main import get_command
from typer.testing import CliRunner

from lmforge.cli import app, summary

runner = CliRunner()


def test_version():
    out = runner.invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"lmforge {version('lmforge')}"


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


def test_help_is_plain_words():
    """No reStructuredText markup (``name``) in any help: the docstrings' markup is taken out."""
    marked = [
        " ".join(words) or "lmforge"
        for words in [(), *_commands(get_command(app))]
        if "``" in runner.invoke(app, [*words, "--help"], terminal_width=200).output
    ]
    assert not marked, f"help with ``markup``: {marked}"


def test_results_are_json_for_programs_and_a_summary_on_request(tmp_path):
    args = ["inputs", "--out", str(tmp_path / "inputs"), "--params", str(tmp_path / "none.yaml")]
    (tmp_path / "none.yaml").write_text("{}\n")
    piped = runner.invoke(app, args)  # the output is not a terminal: JSON, as before
    assert piped.exit_code == 0, piped.output
    result = json.loads(piped.output)
    shown = runner.invoke(app, ["--summary", *args])
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == summary(result)
    assert runner.invoke(app, ["--json", *args]).output == piped.output


def test_summary_is_short_and_flat():
    text = summary({"val_loss": 1.234567891, "lm": {"version": "3"}, "ids": list(range(50))})
    assert text.splitlines() == ["val_loss: 1.23457", "lm.version: 3", "ids: 50 items"]
    long = summary({f"k{i}": i for i in range(40)}).splitlines()
    assert len(long) == 21 and long[-1].startswith("... 20 more (lmforge --json")
