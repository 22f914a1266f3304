"""``sweep(cfg, out_dir, ...)``: trials of one training step with Optuna, in this process.

Each trial asks Optuna for a point of ``sweep.space``, builds the trial's config from the sweep's
(the point as ``--set`` overrides, checked like any params file) and runs the real step function
(``lmforge.train.pretrain.pretrain`` inline, or ``lmforge.train.finetune.finetune``) into
``out_dir/trials/trial-NNNN``. The objective is ``sweep.objective`` read from the trial's
``metrics.json``. Pruning (``sweep.pruning``): each validation loss the loop reports goes to
Optuna's median pruner, which may stop the trial (``optuna.TrialPruned`` out of the loop's
``on_log``). A trial whose step raises is recorded FAIL with its error, and the sweep goes on.

Resuming: the study lives in ``out_dir/optuna.db`` (``sweep.study_name``); a rerun loads it and
runs only the trials still missing from ``sweep.n_trials``. A trial left RUNNING by a killed
sweep is marked FAIL (``interrupted``) and its point is queued again, so it is redone once.

Parallelism (``sweep.parallelism`` > 1): the trials run in spawned worker processes, each with
its share of the cores as torch threads, sharing the study through ``optuna.db``
(``lmforge.sweep.workers``).

Output folder: ``optuna.db``, ``trials/``, ``trials.csv``, ``best.yaml`` (the best trial's params
as a params.yaml fragment), ``plots/objective.png``, ``summary.json``; MLflow: one parent run per
sweep, each trial's step run nested under it (``lmforge.sweep.runs``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import ConfigError, TrainingError
from lmforge.outputs import write_json
from lmforge.sweep import report, space, stopping, workers
from lmforge.sweep.runs import INTERRUPTED, SweepRuns

log = logging.getLogger(__name__)
RUN_KEY_ATTR = "lmforge.run_key"  # the study's MLflow run key, kept in the study itself


@dataclass
class SweepResult:
    study_name: str
    objective: str
    direction: str
    n_trials: int  # in the study, all states
    complete: int
    pruned: int
    failed: int
    ran_now: int  # trials this call ran (a resumed sweep skips the finished ones)
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] = field(default_factory=dict)
    mlflow_parent_run_id: str = ""
    out_dir: str = ""


@dataclass
class StepInputs:
    """The folders a trial's step reads (the same for every trial)."""

    tokenized: Path = Path("outputs/tokenized")  # pretrain
    pretrained: Path = Path("outputs/pretrain")  # finetune
    augmented: Path = Path("outputs/augmented")  # finetune


def objective_keys(step: str) -> list[str]:
    """The keys of the step's ``metrics.json`` (its result's fields)."""
    if step == "pretrain":
        from lmforge.train.result import PretrainResult as result
    else:
        from lmforge.train.finetune import FinetuneResult as result
    return [f.name for f in dataclasses.fields(result)]


def sweep(cfg: Config, out_dir: Path, inputs: StepInputs | None = None) -> SweepResult:
    """Run the sweep ``cfg.sweep`` describes into ``out_dir`` (module doc); resumable."""
    sw, out_dir, inputs = cfg.sweep, Path(out_dir), inputs or StepInputs()
    keys = objective_keys(sw.step)
    if sw.objective not in keys:
        raise ConfigError(
            f"sweep.objective: {sw.objective!r} is not in {sw.step}'s metrics.json; "
            f"choose one of {', '.join(keys)}"
        )
    for key, spec in sw.space.items():  # the bounds themselves must make a valid config
        for value in [spec["low"], spec["high"]] if "low" in spec else spec["values"]:
            try:
                space.trial_config(cfg, {key: value}, -1)
            except ConfigError as exc:
                raise ConfigError(f"sweep.space.{key}: {value!r} is not allowed: {exc}") from None

    out_dir.mkdir(parents=True, exist_ok=True)
    with stopping.on_signals():  # Ctrl-C, SIGTERM: ``stopped``
        study = open_study(sw, out_dir)
        if study.direction.name.lower() != sw.goal:  # an older lmforge's, or another objective
            raise ConfigError(
                f"sweep.study_name: study {sw.study_name!r} in {out_dir / 'optuna.db'} was made "
                f"to {study.direction.name.lower()}, but {sw.objective} must be {sw.goal}d; use "
                "another sweep.study_name or another --out"
            )
        run_key = study.user_attrs.get(RUN_KEY_ATTR)
        if run_key is None:
            run_key = f"sweep-{sw.study_name}-{uuid.uuid4().hex[:8]}"
            study.set_user_attr(RUN_KEY_ATTR, run_key)
        runs = SweepRuns(cfg, run_key)
        requeue_interrupted(study, runs)
        before = interrupted(study)
        try:
            ran = run_trials(cfg, study, runs, out_dir, inputs)
        except KeyboardInterrupt as exc:
            raise stopped(study, sw, runs, out_dir, before, exc) from None
        return finish(study, sw, runs, out_dir, ran)


def run_trials(cfg: Config, study, runs: SweepRuns, out_dir: Path, inputs) -> int:
    """The trials still missing from ``sweep.n_trials``; how many ran."""
    sw = cfg.sweep
    dists = space.distributions(sw)
    todo = sw.n_trials - counted(study)
    if sw.sampler == "grid":  # each point once: those already tried are not queued again
        for point in space.grid(sw):
            study.enqueue_trial(point, skip_if_exists=True)
        todo = min(todo, waiting(study))
    ran = 0
    if sw.parallelism > 1 and todo > 1:
        ran = run_parallel(cfg, study, out_dir, inputs, runs.run_key, todo)
    for _ in range(max(0, todo - ran)):
        trial = study.ask(dists)
        run_trial(cfg, study, trial, runs, out_dir, inputs)
        ran += 1
        write_reports(study, sw, out_dir)  # after each trial: a killed sweep leaves them current
    return ran


def stopped(study, sw, runs, out_dir: Path, before: set[int], exc: BaseException) -> Exception:
    """After Ctrl-C or SIGTERM (the workers are gone by now): every unfinished trial FAIL and
    queued again, its MLflow run KILLED (``interrupt``), its folder removed (a redone trial
    gets a new number: nothing would resume from it); the parent run KILLED. The error to
    exit with."""
    requeue_interrupted(study, runs)  # those whose worker had to be killed
    now = sorted(interrupted(study) - before)
    for number in now:
        shutil.rmtree(out_dir / "trials" / f"trial-{number:04d}", ignore_errors=True)
    write_reports(study, sw, out_dir, plot=False)  # a stop must be quick; the next run plots
    runs.kill()
    return stopping.SweepStopped(
        f"sweep {sw.study_name!r} stopped by {stopping.signal_name(exc)}: trial(s) "
        f"{', '.join(map(str, now)) or 'none'} stopped, marked FAIL (interrupted) and queued "
        f"again, queued ones not started; rerun the same command to resume the study in "
        f"{out_dir}",
        stopping.signum_of(exc),
    )


def interrupted(study) -> set[int]:
    """The numbers of the trials that were stopped rather than finished."""
    from optuna.trial import TrialState

    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return {t.number for t in failed if t.user_attrs.get("interrupted")}


def open_study(sw, out_dir: Path, seed_offset: int = 0):
    """The study in ``out_dir/optuna.db``, made or loaded (``seed_offset``: concurrent workers
    must not draw the same points from the same sampler state)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=sw.study_name,
        storage=f"sqlite:///{(out_dir / 'optuna.db').resolve()}",
        sampler=space.sampler(sw, sw.seed + seed_offset),
        pruner=space.pruner(sw),
        direction=sw.goal,
        load_if_exists=True,
    )


def run_parallel(cfg: Config, study, out_dir: Path, inputs, run_key: str, todo: int) -> int:
    """``todo`` trials, ``sweep.parallelism`` at a time, each in a worker process with its share
    of the cores (``lmforge.sweep.workers``); the reports are rewritten as each one ends."""
    from concurrent.futures import as_completed

    sw = cfg.sweep
    extra = workers.with_threads(cfg, sw.step, workers.trial_threads(sw.parallelism))
    start = counted(study)
    with workers.pool(min(sw.parallelism, todo)) as pool:
        futures = [
            pool.submit(worker_trial, cfg, out_dir, inputs, run_key, extra, start + i)
            for i in range(todo)
        ]
        for _ in as_completed(futures):
            write_reports(study, sw, out_dir)
    workers.results(futures)
    return todo


def worker_trial(cfg: Config, out_dir: Path, inputs, run_key: str, extra, seed_offset: int):
    """One trial in a worker process: the study and the MLflow parent are found on disk. A
    stopped trial (SIGTERM from the main process) ends the worker."""
    import os

    try:
        with stopping.interruptible():
            study = open_study(cfg.sweep, out_dir, seed_offset)
            trial = study.ask(space.distributions(cfg.sweep))
            trial.set_user_attr("worker_pid", os.getpid())
            run_trial(cfg, study, trial, SweepRuns(cfg, run_key), out_dir, inputs, extra)
    except KeyboardInterrupt as exc:  # stopped (the trial says so): this worker is done
        stopping.exit_worker(stopping.signum_of(exc))
    return trial.number


def counted(study) -> int:
    """Trials that count towards ``n_trials``: finished ones, not the interrupted (a queued
    retry of an interrupted one runs first, as one of the trials still to run)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False, states=done)
    return sum(1 for t in trials if not t.user_attrs.get("interrupted"))


def waiting(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def requeue_interrupted(study, runs: SweepRuns) -> None:
    """A RUNNING trial here is one a killed sweep (or worker) left behind: ``interrupt`` it."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        interrupt(study, t, runs)


def interrupt(study, trial, runs: SweepRuns) -> None:
    """A trial that was stopped, not finished: FAIL (``interrupted``, not counted towards
    ``n_trials``) with its point queued again, and its MLflow run KILLED."""
    from optuna.trial import TrialState

    storage = study._storage  # the trial's own storage: Study has no public "fail" for it
    storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
    storage.set_trial_user_attr(trial._trial_id, "error", INTERRUPTED)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    if trial.params:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    runs.stop(trial.number)
    log.warning("sweep: trial %d was interrupted; it runs again", trial.number)


def run_trial(
    cfg: Config, study, trial, runs: SweepRuns, out_dir: Path, inputs, extra: list[str] = ()
) -> None:
    """One trial: its config, its step, its objective; recorded in Optuna and MLflow.

    ``extra``: ``--set`` items under the trial's values (a concurrent trial's thread cap)."""
    import optuna
    from optuna.trial import TrialState

    sw = cfg.sweep
    trial_dir = out_dir / "trials" / f"trial-{trial.number:04d}"
    trial.set_user_attr("out_dir", str(trial_dir))
    shutil.rmtree(trial_dir, ignore_errors=True)  # a new trial number: nothing to resume
    value, state, error = None, TrialState.COMPLETE, ""
    log.info("sweep: trial %d: %s", trial.number, trial.params)
    try:
        with runs.trial(trial.number):
            trial_cfg = space.trial_config(cfg, trial.params, trial.number, extra)
            metrics = run_step(trial_cfg, trial_dir, inputs, pruning_hook(trial, sw))
        value = metrics.get(sw.objective)
        if not report.finite(value):
            raise TrainingError(f"{sw.objective} = {value!r} in {trial_dir}/metrics.json")
    except optuna.TrialPruned as exc:
        state, error = TrialState.PRUNED, str(exc)
    except Exception as exc:  # the sweep goes on; the error stays with the trial
        state = TrialState.FAIL
        error = f"{type(exc).__name__}: {exc}"
        log.warning("sweep: trial %d failed: %s", trial.number, error)
        log.debug("%s", traceback.format_exc())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the trial did not finish; it runs again
        interrupt(study, trial, runs)
        raise
    with stopping.deferred():  # the trial's result, whole: a signal waits for it
        if error:
            trial.set_user_attr("error", error[:2000])
        run_id = runs.record(trial.number, trial.params, state.name, value, error)
        trial.set_user_attr("mlflow_run_id", run_id)
        if state == TrialState.COMPLETE:
            study.tell(trial, float(value))
        else:
            study.tell(trial, state=state)


def pruning_hook(trial, sw):
    """``on_log`` for the loop: report each validation value; raise TrialPruned when told to.

    The value reported is the objective when the loop logs it (finetune's ``val_macro_f1``),
    else the validation loss, negated for a maximised objective so "better" agrees."""
    if not sw.pruning:
        return None
    import optuna

    def on_log(step: int, row: dict[str, float]) -> None:
        if sw.objective in row:
            value = row[sw.objective]
        elif "val_loss" in row:
            value = row["val_loss"] if sw.goal == "minimize" else -row["val_loss"]
        else:
            return
        if not math.isfinite(value):
            return
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {value:.6g}")

    return on_log


def run_step(cfg: Config, trial_dir: Path, inputs: StepInputs, on_log) -> dict[str, Any]:
    """The step itself, as its CLI command runs it inline; returns its metrics.json."""
    import json

    if cfg.sweep.step == "pretrain":
        from lmforge.train.pretrain import pretrain

        # A trial's model is recorded (ranked in MLflow) but its weights are not uploaded.
        pretrain(cfg, inputs.tokenized, trial_dir, on_log=on_log, log_weights=False)
    else:
        from lmforge.train.finetune import finetune

        finetune(
            cfg, inputs.pretrained, inputs.augmented, trial_dir, on_log=on_log, log_weights=False
        )
    return json.loads((trial_dir / "metrics.json").read_text())


def write_reports(study, sw, out_dir: Path, plot: bool = True) -> None:
    """``trials.csv`` and (with ``plot``) ``plots/objective.png``."""
    keys = list(sw.space)
    rows = report.trial_rows(study, keys)
    report.write_trials_csv(out_dir / "trials.csv", rows, keys)
    if plot:
        report.plot(out_dir / "plots", sw, rows)


def finish(study, sw, runs: SweepRuns, out_dir: Path, ran: int) -> SweepResult:
    from optuna.trial import TrialState

    write_reports(study, sw, out_dir)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    result = SweepResult(
        study_name=sw.study_name,
        objective=sw.objective,
        direction=sw.goal,
        n_trials=len(trials),
        complete=len(complete),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        ran_now=ran,
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        mlflow_parent_run_id=runs.parent_id,
        out_dir=str(out_dir),
    )
    runs.finish({"number": best.number, "value": best.value} if best else None)
    write_json(out_dir / "summary.json", dataclasses.asdict(result))
    if best is None:
        raise TrainingError(
            f"sweep {sw.study_name!r}: no trial completed ({result.failed} failed, "
            f"{result.pruned} pruned); see {out_dir / 'trials.csv'} for each trial's error"
        )
    report.write_best(out_dir / "best.yaml", sw, best)
    return result
