"""A self-contained HTML page for a validation report (GX's data docs pull CSS from CDNs;
this renders offline, in a browser or an MLflow/KFP artifact viewer)."""

from __future__ import annotations

import html
from typing import Any

from lmforge.data.expectations import describe

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.ok{color:#17702d;font-weight:600}.fail{color:#b00020;font-weight:600}
code{font-size:12px}.muted{color:#666}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value)) if value is not None else ""


def render(report: dict[str, Any], title: str) -> str:
    status = "passed" if report["success"] else "FAILED"
    cls = "ok" if report["success"] else "fail"
    out = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}: <span class='{cls}' id='status'>{status}</span></h1>",
        "<table><tr><th>dataset</th><th>records</th><th>characters</th>"
        "<th>expectations</th><th>failed</th></tr>",
    ]
    for name, ds in report["datasets"].items():
        out.append(
            f"<tr><td>{html.escape(name)}</td><td>{ds['records']}</td><td>{ds['chars']}</td>"
            f"<td>{ds['evaluated']}</td><td class='{'fail' if ds['failed'] else 'ok'}'>"
            f"{ds['failed']}</td></tr>"
        )
    out.append("</table>")
    if "curation" in report:
        out += _curation_section(report["curation"])
    if "pii" in report:
        out += _pii_section(report["pii"])
    for name, ds in report["datasets"].items():
        out.append(
            f"<h2>{html.escape(name)}</h2><table><tr><th>expectation</th><th>result</th>"
            "<th>observed / unexpected</th><th>examples</th></tr>"
        )
        for item in ds["expectations"]:
            ok = item["success"]
            observed = (
                f"{item['unexpected_count']} ({item['unexpected_percent']:.2f}%)"
                if item["unexpected_count"] is not None
                else _fmt(item["observed"])
            )
            examples = "<br>".join(
                f"<code>{_fmt(e['id'])}</code> = {_fmt(e['value'])} "
                f"<span class='muted'>{_fmt(e.get('text'))}</span>"
                for e in item["examples"]
            )
            out.append(
                f"<tr><td><code>{html.escape(describe(item))}</code></td>"
                f"<td class='{'ok' if ok else 'fail'}'>{'pass' if ok else 'FAIL'}</td>"
                f"<td>{observed}</td><td>{examples}</td></tr>"
            )
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


_PII_MODES = {
    "mask": "each match replaced by its typed placeholder",
    "drop": "records with a match removed",
    "keep": "<span class='fail'>left in the text (data.pii: keep)</span>",
}


def _pii_section(pii: dict[str, Any]) -> list[str]:
    """Matches per dataset, split and type, and what was done with them."""
    types = pii["types"]
    out = [
        f"<h2>Personal data</h2><p id='pii-mode'>data.pii: <code>{html.escape(pii['mode'])}"
        f"</code>: {_PII_MODES[pii['mode']]}.</p>",
        "<table><tr><th>dataset</th><th>split</th>"
        + "".join(f"<th>{html.escape(t)}</th>" for t in types)
        + "<th>records with a match</th><th>dropped</th></tr>",
    ]
    for name, splits in pii["datasets"].items():
        for split, row in splits.items():
            out.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(split)}</td>"
                + "".join(f"<td>{row[t]}</td>" for t in types)
                + f"<td>{row['records']}</td><td>{row['dropped']}</td></tr>"
            )
    out.append("</table>")
    return out


def _curation_section(cur: dict[str, Any]) -> list[str]:
    """What curation changed and removed (``lmforge.data.curate``), with examples."""
    out = [
        "<h2>Curation (corpus)</h2>",
        f"<p id='curation'>{cur['documents_in']} documents ({cur['chars_in']} characters) read, "
        f"{cur['records_out']} records ({cur['chars_out']} characters) written; "
        f"{cur['split']['documents']} long documents split into {cur['split']['pieces']} "
        f"pieces, {cur['removed_total']} documents removed.</p>",
        "<table><tr><th>rule</th><th>documents</th><th>examples</th></tr>",
    ]
    counts = {**cur["normalised"], **cur["removed"]}
    for rule, n in counts.items():
        shown = "<br>".join(_fmt(e.get("where")) + _why(e) for e in cur["examples"].get(rule, []))
        out.append(f"<tr><td>{html.escape(rule)}</td><td>{n}</td><td>{shown}</td></tr>")
    out.append("</table>")
    by_file = cur.get("by_file", {})
    if by_file:
        out += [
            "<p>Documents removed, per input file:</p>",
            "<table><tr><th>file</th><th>removed (per rule)</th></tr>",
        ]
        for path, per in by_file.items():
            rules = ", ".join(f"{html.escape(r)}: {k}" for r, k in per.items())
            out.append(f"<tr><td>{_fmt(path)}</td><td>{rules}</td></tr>")
        out.append("</table>")
    return out


def _why(example: dict[str, Any]) -> str:
    """Why an example was removed: the kept copy, the value measured, the language found."""
    if "kept_where" in example:
        why = f"first: {_fmt(example['kept_where'])}"
    else:
        skip = ("where", "id")
        why = ", ".join(f"{k} {_fmt(v)}" for k, v in example.items() if k not in skip)
    return f" <span class='muted'>({why})</span>" if why else ""
