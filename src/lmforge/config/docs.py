"""The parameters' documentation, from the fields themselves: ``--help`` and ``docs/params.md``."""

from __future__ import annotations

import functools
import json
import re
import textwrap
from typing import Any

from lmforge.config.loader import load_config
from lmforge.config.root import SECTIONS
from lmforge.config.schema import FieldDoc, field_docs


@functools.cache
def _run_defaults():
    return load_config(None)  # once a process: every command's help is built at import


def _docs(name: str):
    """A section's fields with the defaults a run gets when params.yaml sets nothing: through
    the default model preset, as the loader applies it (not the class's bare field values)."""
    return field_docs(SECTIONS[name], defaults=getattr(_run_defaults(), name))


def _default(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def plain(text: str) -> str:
    """Docstring markup out of text a person reads in a terminal: ``name`` becomes name."""
    return re.sub(r"``([^`]*)``", r"\1", text)


def section_help(sections: tuple[str, ...]) -> str:
    """Plain-text help of ``sections`` for a command's ``--help`` (click keeps ``\\b`` blocks)."""
    lines = ["Parameters (params.yaml; override with --set KEY=VALUE):", ""]
    for name in sections:
        lines += ["\b", f"{name}: {SECTIONS[name].__doc__.strip()}"]
        for doc in _docs(name):
            head = f"  {doc.key} ({doc.type}, default {_default(doc.default)}"
            head += f"; {doc.range})" if doc.range else ")"
            lines.append(head)
            lines += textwrap.wrap(doc.doc, 92, initial_indent="      ", subsequent_indent="      ")
        lines.append("")
    return plain("\n".join(lines))


def _row(doc: FieldDoc) -> str:
    cells = [f"`{doc.key}`", doc.type, f"`{_default(doc.default)}`", doc.range, doc.doc]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown() -> str:
    """``docs/params.md``: every section and key, generated (a test checks it is current)."""
    out = [
        "# Parameters",
        "",
        "Every key of `params.yaml`, generated from the config sections in `src/lmforge/config/`",
        "by `lmforge params --markdown > docs/params.md` (a test fails when this file is stale).",
        "A value outside its range, of the wrong type, or an unknown key stops the step with one",
        "line naming the file, the key, the value and what is allowed.",
        "",
    ]
    for name, cls in SECTIONS.items():
        out += [f"## `{name}`", "", cls.__doc__.strip(), ""]
        out += ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
        out += [_row(doc) for doc in _docs(name)]
        out.append("")
    return "\n".join(out)
