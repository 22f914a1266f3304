"""The steps of the KFP ``sweep`` pipeline: ``plan`` the trials, run each (``sweep_trial``) as
its own task in parallel, and ``pick_best`` from their results.

Trials that run at once cannot learn from each other, so the plan is fixed before any runs:
a grid's points in order, or for ``sampler: tpe`` ``n_trials`` points drawn at random from the
space with ``sweep.seed`` (what TPE itself does for its first trials). A trial is pretrain,
inline in its task, with the point as ``--set`` overrides (``space.trial_config``, as the local
sweep); its result says COMPLETE with the objective, or FAIL with the error, so one failed
trial does not fail the pipeline. ``pick_best`` writes what ``lmforge sweep`` writes from the
same rows: ``best.yaml``, ``trials.csv``, ``plots/objective.png``, ``summary.json``.

With ``ladder`` (the pipeline's ``ladder`` parameter) the same three tasks run the scaling
study of ``lmforge.sweep.scaling`` instead: the plan is its rungs (``sweep.scaling_sizes`` x
``sweep.scaling_tokens``, planned on the tokenized data), each task runs one rung
(``scaling.run_rung``, its MLflow run nested under the pipeline run's parent), and the final
task fits L(N, D) to their rows and writes what ``lmforge sweep --scaling`` writes
(``scaling_report.conclude``: ``rungs.csv``, ``report.json``, ``report.md``, ``plots/``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lmforge.config import Config
from lmforge.errors import ConfigError, TrainingError
from lmforge.outputs import atomic_output_dir, write_json
from lmforge.sweep import report, space


def plan(cfg: Config, tokenized_dir: Path | None = None, ladder: bool = False) -> list[dict]:
    """``[{"number": 0, "params": '{"pretrain.lr": ...}'}, ...]``: the pipeline's trials (with
    ``ladder``: ``[{"number": 0, "rung": '{...}'}, ...]``, the scaling study's rungs)."""
    if ladder:
        return plan_ladder(cfg, Path(tokenized_dir))
    sw = cfg.sweep
    if sw.step != "pretrain":
        raise ConfigError(
            f"sweep.step: {sw.step!r}; the sweep pipeline's trials are pretrain (sweep "
            "finetune locally with `lmforge sweep`)"
        )
    if sw.sampler == "grid":
        points = space.grid(sw)[: sw.n_trials]
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sw.seed))
        dists = space.distributions(sw)
        points = [study.ask(dists).params for _ in range(sw.n_trials)]
    return [{"number": i, "params": json.dumps(p)} for i, p in enumerate(points)]


def _params(value: str | dict[str, Any]) -> dict[str, Any]:
    """A trial's values travel as JSON text: KFP's loop items and Structs would turn ints into
    floats (and large floats into strings)."""
    return json.loads(value) if isinstance(value, str) else dict(value)


def sweep_trial(
    cfg: Config, tokenized_dir: Path, out_dir: Path, trial: dict[str, Any], ladder: bool = False
) -> dict:
    """Run one planned trial (with ``ladder``: one rung) into ``out_dir``; its result row (never
    raises for the trial's own failure: the row says FAIL and why)."""
    if ladder:
        return ladder_rung(cfg, Path(tokenized_dir), Path(out_dir), trial)
    from lmforge.sweep.run import StepInputs, run_step
    from lmforge.sweep.runs import STUDY_TAG, TRIAL_TAG, env

    number, params = int(trial["number"]), _params(trial["params"])
    row: dict[str, Any] = {"number": number, "params": json.dumps(params), "state": "COMPLETE"}
    row |= {"error": "", "out_dir": str(out_dir), "seconds": 0.0}  # "objective" once known
    start = time.monotonic()
    context = json.dumps({TRIAL_TAG: str(number), STUDY_TAG: cfg.sweep.study_name})
    try:
        trial_cfg = space.trial_config(cfg, params, number)
        with env(MLFLOW_RUN_CONTEXT=context):  # the trial's MLflow run carries its number
            inputs = StepInputs(tokenized=Path(tokenized_dir))
            metrics = run_step(trial_cfg, Path(out_dir), inputs, None)
        value = metrics.get(cfg.sweep.objective)
        if not report.finite(value):
            raise TrainingError(f"{cfg.sweep.objective} = {value!r} in {out_dir}/metrics.json")
        row["objective"] = float(value)
    except Exception as exc:  # the sweep goes on; the error stays with the trial
        row |= {"state": "FAIL", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        row["traceback"] = traceback.format_exc()[-4000:]
    row["seconds"] = round(time.monotonic() - start, 1)
    return row


def pick_best(
    cfg: Config, results: list[dict[str, Any]], out_dir: Path, ladder: bool = False
) -> dict[str, Any]:
    """The best completed trial of ``results`` (``sweep_trial`` rows); writes ``out_dir``.
    With ``ladder``: the scaling law fitted to the rungs' rows (``fit_ladder``)."""
    if ladder:
        return fit_ladder(cfg, results, Path(out_dir))
    sw = cfg.sweep
    keys = list(sw.space)
    results = sorted(
        ({**r, "params": _params(r["params"])} for r in results), key=lambda r: int(r["number"])
    )
    rows = [
        {
            "number": int(r["number"]),
            "state": r["state"],
            "objective": repr(float(r["objective"])) if "objective" in r else "",
            **{k: r["params"].get(k, "") for k in keys},
            "seconds": f"{float(r.get('seconds', 0)):.1f}",
            "out_dir": r.get("out_dir", ""),
            "error": r.get("error", ""),
        }
        for r in results
    ]
    done = [r for r in results if r["state"] == "COMPLETE"]
    if not done:
        raise TrainingError(
            f"sweep {sw.study_name!r}: no trial completed ({len(results)} failed); first error: "
            f"{results[0]['error'] if results else 'no trials'}"
        )
    pick = min if sw.goal == "minimize" else max
    best = pick(done, key=lambda r: float(r["objective"]))
    summary = SweepSummary(
        study_name=sw.study_name,
        objective=sw.objective,
        direction=sw.goal,
        n_trials=len(results),
        complete=len(done),
        failed=len(results) - len(done),
        best_trial=int(best["number"]),
        best_value=float(best["objective"]),
        best_params=dict(best["params"]),
    )
    with atomic_output_dir(Path(out_dir)) as tmp:
        report.write_trials_csv(tmp / "trials.csv", rows, keys)
        number, value, params = best["number"], best["objective"], best["params"]
        winner = SimpleNamespace(number=number, value=value, params=params)
        report.write_best(tmp / "best.yaml", sw, winner)
        report.plot(tmp / "plots", sw, rows)
        write_json(tmp / "summary.json", dataclasses.asdict(summary))
    return dataclasses.asdict(summary)


@dataclasses.dataclass
class SweepSummary:
    study_name: str
    objective: str
    direction: str
    n_trials: int
    complete: int
    failed: int
    best_trial: int
    best_value: float
    best_params: dict[str, Any]


def _run_key() -> str:
    """The MLflow run key every task of one pipeline run shares: the KFP run id (which
    ``step_config`` exports), so the rungs and the fit meet under one parent run."""
    key = os.environ.get("LMFORGE_PIPELINE_RUN_ID", "")
    if not key:
        raise ConfigError("LMFORGE_PIPELINE_RUN_ID: unset; the ladder's tasks need the KFP run id")
    return key


def plan_ladder(cfg: Config, tokenized_dir: Path) -> list[dict[str, Any]]:
    """The scaling study's rungs, each as JSON text (KFP's loop items would make ints floats)."""
    from lmforge.sweep import scaling

    rungs = scaling.plan(cfg, tokenized_dir)
    return [{"number": r.index, "rung": json.dumps(dataclasses.asdict(r))} for r in rungs]


def ladder_rung(cfg: Config, tokenized_dir: Path, out_dir: Path, item: dict[str, Any]) -> dict:
    """One rung (``scaling.run_rung``) into ``out_dir/rungs/rung-NN``; its row (``rung_row``,
    the rung as JSON text), which says FAIL and why rather than raising."""
    from lmforge.sweep import scaling

    rung = scaling.load_rung(item["rung"])
    result = scaling.run_rung(cfg, rung, out_dir, tokenized_dir, _run_key(), ())
    row = scaling.rung_row(result)
    return {**row, "number": rung.index, "rung": json.dumps(row["rung"]), "out_dir": str(out_dir)}


def fit_ladder(cfg: Config, rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """Fit L(N, D) to the rung tasks' rows; the report of ``lmforge sweep --scaling`` in
    ``out_dir`` (whole or not at all) and the fit on the pipeline run's MLflow parent."""
    from lmforge.sweep import scaling, scaling_report
    from lmforge.sweep.runs import SweepRuns

    results = sorted((scaling.rung_result(r) for r in rows), key=lambda r: r.rung.index)
    runs = SweepRuns(cfg, _run_key(), name=f"scaling-{cfg.sweep.study_name}")
    flops = cfg.sweep.scaling_flops
    with atomic_output_dir(Path(out_dir)) as tmp:
        result = scaling_report.conclude(cfg, results, flops, tmp, runs, ran_now=len(results))
    result.out_dir = str(out_dir)
    summary = dataclasses.asdict(result)
    del summary["rungs"]  # in rungs.csv and report.json; the summary stays small
    return summary
