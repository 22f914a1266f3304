"""What a scaling study concludes and leaves in its folder: ``rungs.csv``, ``report.json``,
``report.md``, ``plots/scaling.png`` (measured points and the fitted curve of each budget) and
``plots/isoflop.png`` (the law along lines of equal compute, and the compute-optimal frontier).

The report says how far the fit can be trusted from the numbers themselves: how many points for
five parameters, how many decades of N and D they span, how much the optima of the starts and
the bootstrap disagree, and how far the FLOPs budget lies beyond the largest rung.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import Config
from lmforge.errors import TrainingError
from lmforge.outputs import atomic_output_dir, write_json, write_text
from lmforge.sweep.scaling_law import CHINCHILLA, ScalingFit, ScalingLaw, fit_scaling_law

COLUMNS = [
    "rung", "size", "n_layers", "d_model", "n_heads", "n_non_embedding", "n_total",
    "tokens_target", "steps", "tokens_seen", "flops_6nd", "val_loss", "state", "seconds", "error",
]  # fmt: skip
# Chinchilla's ladder, for the trust section: over 400 runs, 70 M to 16 B parameters.
CHINCHILLA_RUNS, CHINCHILLA_N = 400, (70e6, 16e9)


@dataclass
class ScalingResult:
    """What a scaling study returns (``lmforge sweep --scaling`` prints it)."""

    rungs: list[dict[str, Any]]
    law: dict[str, float]
    compute_optimal: dict[str, float]
    n_count: str
    mlflow_parent_run_id: str
    out_dir: str
    ran_now: int
    failed: int
    report: dict[str, Any] = field(default_factory=dict)


def rows(results, count: str) -> list[dict[str, Any]]:
    out = []
    for r in results:
        d = r.tokens_seen
        out.append(
            {
                "rung": r.rung.index,
                "size": r.rung.size,
                "n_layers": r.rung.shape.get("n_layers"),
                "d_model": r.rung.shape.get("d_model"),
                "n_heads": r.rung.shape.get("n_heads"),
                "n_non_embedding": r.rung.n_non_embedding,
                "n_total": r.rung.n_total,
                "tokens_target": r.rung.tokens_target,
                "steps": r.rung.steps,
                "tokens_seen": d if d is not None else "",
                "flops_6nd": f"{6 * r.n(count) * d:.4g}" if d else "",
                "val_loss": "" if r.val_loss is None else f"{r.val_loss:.5f}",
                "state": r.state,
                "seconds": r.seconds,
                "error": r.error,
            }
        )
    return out


def write_csv(path: Path, table: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    write_text(path, buf.getvalue())


def conclude(cfg: Config, results, flops: float, out_dir: Path, runs, ran_now: int):
    """Fit, report and plot the finished rungs; log the fit to the MLflow parent run."""
    sw = cfg.sweep
    count = sw.scaling_n_count
    table = rows(results, count)
    write_csv(out_dir / "rungs.csv", table)
    done = [r for r in results if r.state == "COMPLETE"]
    points = [(r.n(count), r.tokens_seen, r.val_loss) for r in done]
    failed = len(results) - len(done)
    try:
        fit = fit_scaling_law(points, n_bootstrap=sw.scaling_bootstrap, seed=sw.seed)
    except TrainingError as exc:
        runs.finish(None)
        raise TrainingError(
            f"scaling study: {len(done)} of {len(results)} rungs finished, which cannot be "
            f"fitted: {exc}; see {out_dir / 'rungs.csv'} for each rung's error"
        ) from None
    n_opt, d_opt = fit.law.compute_optimal(flops)
    optimum = {
        "flops": flops,
        "n": n_opt,
        "d": d_opt,
        "tokens_per_parameter": d_opt / n_opt,
        "loss": float(fit.law.loss(n_opt, d_opt)),
    }
    ref = ScalingLaw(**CHINCHILLA)
    ref_n, ref_d = ref.compute_optimal(flops)
    report = {
        "law": dataclasses.asdict(fit.law),
        "fit": {k: v for k, v in fit.to_dict().items() if k != "law"},
        "n_count": count,
        "compute_optimal": optimum,
        "chinchilla": {
            "law": CHINCHILLA,
            "compute_optimal": {"n": ref_n, "d": ref_d, "tokens_per_parameter": ref_d / ref_n},
        },
        "trust": trust(fit, points, flops, count),
        "rungs": table,
    }
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", markdown(report, fit, flops))
    plot(out_dir / "plots", fit.law, done, count, flops, optimum)
    log_parent(runs, fit, optimum, out_dir)
    return ScalingResult(
        rungs=table,
        law=dataclasses.asdict(fit.law),
        compute_optimal=optimum,
        n_count=count,
        mlflow_parent_run_id=runs.parent_id,
        out_dir=str(out_dir),
        ran_now=ran_now,
        failed=failed,
        report={"trust": report["trust"]},
    )


def _decades(values) -> float:
    return math.log10(max(values) / min(values))


def trust(fit: ScalingFit, points, flops: float, count: str) -> dict[str, Any]:
    """The facts that bound how far the fit can be believed, and a plain verdict."""
    ns, ds = [p[0] for p in points], [p[1] for p in points]
    largest = max(6 * n * d for n, d, _ in points)
    facts: dict[str, Any] = {
        "points": len(points),
        "parameters": 5,
        "n_decades": round(_decades(ns), 2),
        "d_decades": round(_decades(ds), 2),
        "n_range": [min(ns), max(ns)],
        "d_range": [min(ds), max(ds)],
        "rmse_log": fit.rmse_log,
        "extrapolation": flops / largest,  # the budget over the largest rung's 6ND
        "at_bounds": fit.at_bounds,
    }
    notes = [
        f"{len(points)} points for 5 parameters (Chinchilla's approach 3 fitted over "
        f"{CHINCHILLA_RUNS} runs from {CHINCHILLA_N[0]:.0e} to {CHINCHILLA_N[1]:.0e} "
        f"parameters); N spans {facts['n_decades']:.2f} decades and D {facts['d_decades']:.2f}.",
    ]
    widths = {}
    for key in ("alpha", "beta"):
        low, high = fit.bootstrap.get(key, fit.spread.get(key, (math.nan, math.nan)))
        widths[key] = high - low
        source = "bootstrap 5-95%" if fit.bootstrap else "spread over starts"
        notes.append(f"{key} = {getattr(fit.law, key):.3f} ({source}: {low:.3f} to {high:.3f}).")
    if fit.at_bounds:
        notes.append(
            f"The best fit sits on the bound of {', '.join(fit.at_bounds)}: the points do not "
            "determine it, the bound does."
        )
    if facts["extrapolation"] > 1:
        notes.append(
            f"The budget of {flops:.3g} FLOPs is {facts['extrapolation']:.3g} x the largest "
            "rung: the compute-optimal N and D are an extrapolation of the law that far."
        )
    notes.append(
        f"N counts {count.replace('_', '-')} parameters; at these sizes the token embedding is a "
        "large share of every model, so counting it (Chinchilla) or not (Kaplan) moves the "
        "exponents (Pearce and Song 2024)."
    )
    notes.append(
        "Each rung is one seed with one learning rate for every size, and short runs (see "
        "the steps of each rung) are far from converged: optimisation, not only capacity and "
        "data, shapes the losses."
    )
    loose = max(widths.values()) > 0.2 or fit.at_bounds or len(points) < 10
    facts["verdict"] = (
        "Read the fitted law as a description of this ladder, not as a measurement of alpha "
        "and beta: " + ("the exponents are loosely pinned down." if loose else "the exponents "
                        "are pinned down for these points, but only over this small range.")
    )  # fmt: skip
    facts["notes"] = notes
    return facts


def markdown(report: dict[str, Any], fit: ScalingFit, flops: float) -> str:
    law, opt, ref = report["law"], report["compute_optimal"], report["chinchilla"]
    boot = fit.bootstrap or fit.spread
    label = "bootstrap 5-95%" if fit.bootstrap else "spread over starts"
    lines = [
        "# Scaling study",
        "",
        f"L(N, D) = {law['E']:.3f} + {law['A']:.4g} / N^{law['alpha']:.3f} + "
        f"{law['B']:.4g} / D^{law['beta']:.3f}  (N: {report['n_count'].replace('_', '-')} "
        f"parameters, D: tokens; {fit.n_points} rungs, {fit.optimizer}, "
        f"RMSE of log L {fit.rmse_log:.4f})",
        "",
        "| rung | size | N (non-emb.) | N (total) | D (tokens) | 6ND | val loss | state |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["rungs"]:
        lines.append(
            f"| {r['rung']} | {r['size']} | {r['n_non_embedding']:,} | {r['n_total']:,} | "
            f"{r['tokens_seen'] or '-'} | {r['flops_6nd'] or '-'} | {r['val_loss'] or '-'} | "
            f"{r['state']} |"
        )
    lines += [
        "",
        f"| parameter | fitted | {label} | Chinchilla |",
        "| --- | ---: | --- | ---: |",
    ]
    for key in ("alpha", "beta", "E", "A", "B"):
        low, high = boot.get(key, (math.nan, math.nan))
        lines.append(f"| {key} | {law[key]:.4g} | {low:.4g} to {high:.4g} | {CHINCHILLA[key]} |")
    lines += [
        "",
        "E, A and B are in nats of this tokenizer on this corpus: only the exponents, and the "
        "tokens per parameter they imply, compare with Chinchilla's.",
        "",
        f"Compute-optimal for C = {flops:.3g} FLOPs (C = 6ND): N = {opt['n']:.3g}, "
        f"D = {opt['d']:.3g} tokens ({opt['tokens_per_parameter']:.3g} tokens per parameter), "
        f"loss {opt['loss']:.3f}. Chinchilla's law at the same C: N = "
        f"{ref['compute_optimal']['n']:.3g}, D = {ref['compute_optimal']['d']:.3g} "
        f"({ref['compute_optimal']['tokens_per_parameter']:.3g} tokens per parameter).",
        "",
        "## How far to trust it",
        "",
        *[f"- {note}" for note in report["trust"]["notes"]],
        "",
        report["trust"]["verdict"],
        "",
        "![measured and fitted](plots/scaling.png)",
        "",
        "![iso-FLOP frontier](plots/isoflop.png)",
        "",
    ]
    return "\n".join(lines)


def plot(plots_dir: Path, law: ScalingLaw, done, count: str, flops: float, optimum) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = np.array([r.n(count) for r in done], float)
    n_axis = np.geomspace(ns.min() / 2, ns.max() * 2, 100)
    with atomic_output_dir(plots_dir) as tmp:
        fig, ax = plt.subplots(figsize=(6, 4))
        budgets = sorted({r.rung.tokens_target for r in done})
        colors = plt.cm.viridis(np.linspace(0, 0.85, len(budgets)))
        for budget, color in zip(budgets, colors, strict=True):
            mine = [r for r in done if r.rung.tokens_target == budget]
            d = float(np.mean([r.tokens_seen for r in mine]))
            ax.plot(n_axis, law.loss(n_axis, d), color=color, label=f"fit, D = {d:.3g}")
            ax.plot([r.n(count) for r in mine], [r.val_loss for r in mine], "o", color=color)
        ax.set_xscale("log")
        ax.set_xlabel(f"N ({count.replace('_', '-')} parameters)")
        ax.set_ylabel("final validation loss (nats/token)")
        ax.set_title("measured (points) and fitted L(N, D)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(tmp / "scaling.png", dpi=100)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        measured = [6 * r.n(count) * r.tokens_seen for r in done]
        top = max(max(measured), flops)
        budgets_c = np.geomspace(min(measured), top, 5)
        wide = np.geomspace(min(ns.min(), optimum["n"]) / 10, max(ns.max(), optimum["n"]) * 10, 200)
        frontier = []
        for c in budgets_c:
            loss = law.loss(wide, c / (6 * wide))
            ax.plot(wide, loss, color="0.6", lw=1)
            n_c, d_c = law.compute_optimal(c)
            frontier.append((n_c, float(law.loss(n_c, d_c))))
        ax.plot(*zip(*frontier, strict=True), "k--", label="compute-optimal frontier")
        ax.plot(ns, [r.val_loss for r in done], "o", color="tab:blue", label="rungs")
        ax.plot(optimum["n"], optimum["loss"], "*", ms=14, color="tab:red",
                label=f"optimum at C = {flops:.3g}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(f"N ({count.replace('_', '-')} parameters)")
        ax.set_ylabel("loss (nats/token)")
        lows = [f[1] for f in frontier] + [r.val_loss for r in done]
        ax.set_ylim(min(lows) - 0.2, max(r.val_loss for r in done) + 0.5)
        ax.set_title("iso-FLOP curves (grey): L(N, C / 6N)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(tmp / "isoflop.png", dpi=100)
        plt.close(fig)


def log_parent(runs, fit: ScalingFit, optimum: dict[str, float], out_dir: Path) -> None:
    """The fitted law and the optimum as the parent's metrics, the report as its artifacts."""
    client, parent = runs.client, runs.parent_id
    law = dataclasses.asdict(fit.law)
    for key, value in {**law, "rmse_log": fit.rmse_log}.items():
        client.log_metric(parent, f"scaling_{key}", float(value))
    client.log_metric(parent, "compute_optimal_n", optimum["n"])
    client.log_metric(parent, "compute_optimal_d", optimum["d"])
    for name in ("report.json", "report.md", "rungs.csv"):
        client.log_artifact(parent, str(out_dir / name))
    client.log_artifacts(parent, str(out_dir / "plots"), "plots")
    runs.finish(None)
