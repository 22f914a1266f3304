"""What a sweep leaves in its folder: ``trials.csv``, ``best.yaml``, ``plots/objective.png``.

Each file is written whole (``lmforge.outputs``): a reader sees the previous sweep's or this one's.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import yaml

from lmforge.config.sweep import SweepConfig
from lmforge.outputs import atomic_output_dir, write_text
from lmforge.sweep.space import nested


def trial_rows(study, keys: list[str]) -> list[dict[str, Any]]:
    """One row per trial of the study, in order: number, state, objective, params, time, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = ""
        if t.datetime_start and t.datetime_complete:
            seconds = f"{(t.datetime_complete - t.datetime_start).total_seconds():.1f}"
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "objective": "" if t.value is None else repr(float(t.value)),
                **{k: t.params.get(k, "") for k in keys},
                "seconds": seconds,
                "out_dir": t.user_attrs.get("out_dir", ""),
                "error": t.user_attrs.get("error", ""),
            }
        )
    return rows


def write_trials_csv(path: Path, rows: list[dict[str, Any]], keys: list[str]) -> None:
    buf = io.StringIO()
    columns = ["number", "state", "objective", *keys, "seconds", "out_dir", "error"]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_best(path: Path, sweep: SweepConfig, best) -> None:
    """The best trial's params as a params.yaml fragment, with where they came from."""
    head = (
        f"# Best trial {best.number} of sweep {sweep.study_name!r}: "
        f"{sweep.objective} = {best.value:.6g} ({sweep.goal}).\n"
        "# A params.yaml fragment: merge these keys into params.yaml to train with them.\n"
    )
    body = yaml.safe_dump(nested(best.params), sort_keys=True, default_flow_style=False)
    write_text(path, head + body)


def plot(plots_dir: Path, sweep: SweepConfig, rows: list[dict[str, Any]]) -> None:
    """``objective.png``: the objective over trials (with the best so far) and against each
    parameter (a log axis for log-uniform ones); only completed trials have a value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter

    keys = list(sweep.space)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(4 * (1 + len(keys)), 3.5), squeeze=False)
    ax = axes[0][0]
    xs, ys = [r["number"] for r in done], [float(r["objective"]) for r in done]
    ax.plot(xs, ys, "o", label="trial")
    pick = min if sweep.goal == "minimize" else max
    best = [pick(ys[: i + 1]) for i in range(len(ys))]
    ax.step(xs, best, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(sweep.objective)
    ax.legend()
    for ax, key in zip(axes[0][1:], keys, strict=True):
        points = [(r[key], float(r["objective"])) for r in done if r[key] != ""]
        numeric = all(isinstance(p, int | float) for p, _ in points)
        if points:
            ax.plot([p if numeric else str(p) for p, _ in points], [v for _, v in points], "o")
        spec = sweep.space[key]
        if spec["type"] == "loguniform":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow range: labels overlap
        if spec["type"] != "choice":
            ax.set_xlim(spec["low"], spec["high"])  # the whole range searched, not just the hits
        ax.set_xlabel(key)
        ax.set_ylabel(sweep.objective)
    fig.tight_layout()
    with atomic_output_dir(plots_dir) as tmp:
        fig.savefig(tmp / "objective.png", dpi=100)
    plt.close(fig)


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
