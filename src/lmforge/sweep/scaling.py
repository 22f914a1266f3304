"""``scaling_study(cfg, out_dir, tokenized)``: a ladder of model sizes x token budgets, the
scaling law L(N, D) fitted to it, and the compute-optimal N and D for a FLOPs budget.

Each rung is a real pretrain run (``lmforge.train.pretrain.pretrain``, inline, as a sweep's
trials are) on the same tokenized data and the same validation blocks, into
``out_dir/rungs/rung-NN``: the shape of ``sweep.scaling_sizes[i]`` over the model section, and
``sweep.scaling_tokens[j]`` tokens, i.e. that many tokens / pretrain's global batch steps, with
the learning-rate schedule of the section stretched to the rung (warmup the same share of the
steps; cosine to the rung's own end, as Chinchilla matches the schedule to each budget) and one
evaluation, at the end. Its final validation loss is its point.

N is counted as Kaplan et al. count it, non-embedding: the blocks and the final norm, without
the token embedding and the output head (``sweep.scaling_n_count: total`` counts every unique
parameter, Chinchilla's convention). D is the tokens the rung trained on (``tokens_seen``).

MLflow: one parent run (``scaling-<study_name>``), each rung's pretrain run nested under it with
the rung's size, budget, N and D; the fit and the report on the parent. A rerun with the same
ladder keeps the rungs that finished (their ``rung.json`` matches) and runs the rest; rungs run
``sweep.parallelism`` at a time (``lmforge.sweep.workers``). A failed rung is recorded and the
study goes on; the fit needs 5 finished rungs with 2 sizes and 2 budgets among them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmforge.config import Config, load_config_text, load_presets
from lmforge.config.sweep import SHAPE_KEYS
from lmforge.errors import ConfigError, DataError, TrainingError
from lmforge.outputs import write_json
from lmforge.sweep import stopping, workers
from lmforge.sweep.runs import SweepRuns
from lmforge.sweep.scaling_report import ScalingResult, conclude
from lmforge.sweep.space import overrides

log = logging.getLogger(__name__)


@dataclass
class Rung:
    """One point of the ladder, planned: its shape, its budget, and its N."""

    index: int
    size: str  # the size's label: its preset name or ``LxW`` (layers x width)
    shape: dict[str, int | None]  # model keys set for this rung
    tokens_target: int
    steps: int
    warmup_steps: int
    n_non_embedding: int
    n_total: int
    tokens_per_step: int
    # What else makes a finished rung's point this plan's (a rerun reuses it only if all match):
    lr: float
    seed: int
    precision: str
    data_digest: str  # of the tokenized folder (lmforge.inputs.digest): re-tokenized, rerun

    @property
    def tokens(self) -> int:  # what it will train on (whole steps)
        return self.steps * self.tokens_per_step


@dataclass
class RungResult:
    """A rung as run: its plan, its state, its point (N, D, loss)."""

    rung: Rung
    state: str  # COMPLETE | FAIL
    val_loss: float | None = None
    tokens_seen: int | None = None
    seconds: float | None = None
    error: str = ""
    mlflow_run_id: str = ""
    reused: bool = False  # finished by an earlier call with the same ladder

    def n(self, count: str) -> int:
        return self.rung.n_non_embedding if count == "non_embedding" else self.rung.n_total


def size_shape(entry: str | dict[str, int | None], base: dict[str, Any]) -> dict[str, Any]:
    """The model keys of one ladder size: a preset's shape (keys it lacks are null) or the
    mapping given, over the model section's shape (``base``)."""
    if isinstance(entry, str):
        preset = load_presets()[entry]
        return {k: preset.get(k) for k in SHAPE_KEYS}
    return {**{k: base.get(k) for k in SHAPE_KEYS}, **entry}


def size_label(entry: str | dict[str, int | None], shape: dict[str, Any]) -> str:
    return entry if isinstance(entry, str) else f"{shape['n_layers']}x{shape['d_model']}"


def read_blocks_meta(tokenized: Path) -> dict[str, Any]:
    path = Path(tokenized) / "blocks" / "meta.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the tokenized blocks ({exc}); run tokenize") from None


def rung_config(cfg: Config, shape: dict[str, Any], steps: int, warmup: int, extra=()) -> Config:
    """The pretrain config of one rung, checked like any params file."""
    items = [
        "launch.backend=inline",
        "pretrain.parallel=single",
        f"pretrain.max_steps={steps}",
        f"pretrain.warmup_steps={warmup}",
        "pretrain.eval_every=0",  # one evaluation, at the end: the rung's point
        "pretrain.ckpt_every=0",
        *extra,
        *overrides({f"model.{k}": v for k, v in shape.items()}),
    ]
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    return load_config_text(text, items, source=f"scaling rung {shape}")


def plan(cfg: Config, tokenized: Path) -> list[Rung]:
    """Every rung of ``cfg.sweep``'s ladder, each config built and checked before any runs."""
    from lmforge.inputs import digest
    from lmforge.model import build_config, model_size

    sw, tcfg = cfg.sweep, cfg.pretrain
    meta = read_blocks_meta(tokenized)
    data_digest = digest(Path(tokenized), "--tokenized")["digest"]
    seq_len = min(cfg.model.max_seq_len, int(meta["block_size"]))
    per_step = tcfg.micro_batch_size * tcfg.grad_accum_steps * seq_len  # one process
    warmup_share = tcfg.warmup_steps / tcfg.max_steps
    base = dataclasses.asdict(cfg.model)
    rungs: list[Rung] = []
    for i, entry in enumerate(sw.scaling_sizes):
        shape = size_shape(entry, base)
        for tokens in sw.scaling_tokens:
            steps = max(1, round(tokens / per_step))
            warmup = min(steps - 1, round(steps * warmup_share))
            try:
                rcfg = rung_config(cfg, shape, steps, warmup)
            except ConfigError as exc:
                raise ConfigError(f"sweep.scaling_sizes[{i}]: {exc}") from None
            size = model_size(build_config(rcfg.model, int(meta["vocab_size"])), seq_len)
            hf_vocab_d = size.n_embedding  # the embedding; an untied head is as large again
            head = 0 if rcfg.model.tie_embeddings else hf_vocab_d
            rungs.append(
                Rung(
                    index=len(rungs),
                    size=size_label(entry, shape),
                    shape=shape,
                    tokens_target=tokens,
                    steps=steps,
                    warmup_steps=warmup,
                    n_non_embedding=size.n_params - size.n_embedding - head,
                    n_total=size.n_params,
                    tokens_per_step=per_step,
                    lr=rcfg.pretrain.lr,
                    seed=rcfg.pretrain.seed,
                    precision=rcfg.pretrain.precision,
                    data_digest=data_digest,
                )
            )
    return rungs


def scaling_study(
    cfg: Config, out_dir: Path, tokenized: Path, flops: float | None = None
) -> ScalingResult:
    """Run the ladder into ``out_dir``, fit the law, write the report (module doc)."""
    sw, out_dir, tokenized = cfg.sweep, Path(out_dir), Path(tokenized)
    flops = sw.scaling_flops if flops is None else flops
    if not (isinstance(flops, int | float) and math.isfinite(flops) and flops > 0):
        raise ConfigError(f"--flops: {flops!r}; give a FLOPs budget > 0, e.g. 1e18")
    rungs = plan(cfg, tokenized)
    out_dir.mkdir(parents=True, exist_ok=True)
    with stopping.on_signals():  # Ctrl-C, SIGTERM: ``stopped``
        run_key = study_run_key(out_dir, sw.study_name)
        runs = SweepRuns(cfg, run_key, name=f"scaling-{sw.study_name}")
        results: dict[int, RungResult] = {}
        todo = []
        for rung in rungs:
            done = finished(out_dir, rung)
            if done is not None:
                results[rung.index] = done
            else:
                todo.append(rung)
        try:
            results |= run_rungs(cfg, todo, out_dir, tokenized, runs)
        except KeyboardInterrupt as exc:
            raise stopped(cfg, todo, out_dir, runs, exc) from None
        ordered = [results[r.index] for r in rungs]
        return conclude(cfg, ordered, flops, out_dir, runs, ran_now=len(todo))


def run_rungs(cfg: Config, todo: list[Rung], out_dir: Path, tokenized: Path, runs) -> dict:
    """Run ``todo``, ``sweep.parallelism`` at a time; their results by rung index."""
    from concurrent.futures import wait

    sw = cfg.sweep
    if sw.parallelism > 1 and len(todo) > 1:
        extra = workers.with_threads(cfg, "pretrain", workers.trial_threads(sw.parallelism))
        with workers.pool(min(sw.parallelism, len(todo))) as pool:
            futures = [
                pool.submit(rung_in_worker, cfg, r, out_dir, tokenized, runs.run_key, extra)
                for r in todo
            ]
            wait(futures)  # in the pool's block: a signal meanwhile stops the workers
        return {result.rung.index: result for result in workers.results(futures)}
    return {r.index: run_rung(cfg, r, out_dir, tokenized, runs.run_key, (), runs) for r in todo}


def rung_in_worker(cfg: Config, rung: Rung, out_dir: Path, tokenized: Path, run_key, extra):
    """``run_rung`` in a worker process; a stopped rung (SIGTERM from the main process, which
    then cleans up after it) ends the worker."""
    try:
        with stopping.interruptible():
            return run_rung(cfg, rung, out_dir, tokenized, run_key, extra)
    except KeyboardInterrupt as exc:
        stopping.exit_worker(stopping.signum_of(exc))


def stopped(cfg: Config, todo: list[Rung], out_dir: Path, runs, exc: BaseException) -> Exception:
    """After Ctrl-C or SIGTERM (the workers are gone by now): each rung of ``todo`` with no
    ``rung.json`` loses its folder (a rerun runs it again) and its MLflow run is KILLED; the
    rungs that finished are kept; the parent run KILLED. The error to exit with."""
    left = [r for r in todo if not recorded(out_dir, r)]
    for rung in left:
        runs.stop(rung.index)
        shutil.rmtree(rung_dir(out_dir, rung), ignore_errors=True)
    runs.kill()
    return stopping.SweepStopped(
        f"scaling study {cfg.sweep.study_name!r} stopped by {stopping.signal_name(exc)}: "
        f"rung(s) {', '.join(str(r.index) for r in left) or 'none'} not finished (their folders "
        f"removed), finished rungs kept; rerun the same command to run the rest in {out_dir}",
        stopping.signum_of(exc),
    )


def study_run_key(out_dir: Path, study_name: str) -> str:
    """The MLflow run key of this output folder's study, made once and kept in ``study.json``."""
    path = out_dir / "study.json"
    if path.exists():
        return json.loads(path.read_text())["run_key"]
    key = f"scaling-{study_name}-{uuid.uuid4().hex[:8]}"
    write_json(path, {"run_key": key, "study_name": study_name})
    return key


def rung_dir(out_dir: Path, rung: Rung) -> Path:
    return out_dir / "rungs" / f"rung-{rung.index:02d}"


def _saved(out_dir: Path, rung: Rung) -> dict[str, Any] | None:
    """This very rung's ``rung.json`` (same plan: shape, budget, lr, seed, precision, data)."""
    path = rung_dir(out_dir, rung) / "rung.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("rung") == dataclasses.asdict(rung) else None


def recorded(out_dir: Path, rung: Rung) -> bool:
    """Whether this rung ran to its end (COMPLETE or FAIL) into ``out_dir``."""
    return _saved(out_dir, rung) is not None


def finished(out_dir: Path, rung: Rung) -> RungResult | None:
    """The result of an earlier call's run of this very rung (same plan, metrics written)."""
    saved = _saved(out_dir, rung)
    if saved is None or saved.get("state") != "COMPLETE":
        return None
    return dataclasses.replace(rung_result(saved), rung=rung, reused=True)


def rung_row(result: RungResult) -> dict[str, Any]:
    """A rung's result as plain data: its ``rung.json``, and a KFP rung task's output row."""
    return {
        "rung": dataclasses.asdict(result.rung),
        "state": result.state,
        "val_loss": result.val_loss,
        "tokens_seen": result.tokens_seen,
        "seconds": result.seconds,
        "error": result.error,
        "mlflow_run_id": result.mlflow_run_id,
    }


def load_rung(value: str | dict[str, Any]) -> Rung:
    """A planned rung from ``dataclasses.asdict`` data or its JSON text; float ints made ints."""
    data = json.loads(value) if isinstance(value, str) else dict(value)
    ints = {f.name for f in dataclasses.fields(Rung) if f.type in ("int", int)}
    data = {k: int(v) if k in ints else v for k, v in data.items()}
    data["shape"] = {k: None if v is None else int(v) for k, v in data["shape"].items()}
    return Rung(**data)


def rung_result(row: dict[str, Any]) -> RungResult:
    """``rung_row``'s inverse. The rung may come as JSON text, and numbers as floats (KFP
    passes task outputs as protobuf Structs, whose numbers are all doubles)."""
    tokens, loss = row.get("tokens_seen"), row.get("val_loss")
    return RungResult(
        rung=load_rung(row["rung"]),
        state=row["state"],
        val_loss=None if loss is None else float(loss),
        tokens_seen=None if tokens is None else int(tokens),
        seconds=row.get("seconds"),
        error=row.get("error", ""),
        mlflow_run_id=row.get("mlflow_run_id", ""),
    )


def run_rung(
    cfg: Config, rung: Rung, out_dir: Path, tokenized: Path, run_key: str, extra, runs=None
) -> RungResult:
    """One rung's pretrain run, recorded in MLflow (nested) and in ``rung.json``; a failure is
    recorded, not raised. Runs in this process or in a worker (``runs`` is then made here)."""
    from lmforge.train.pretrain import pretrain

    runs = runs or SweepRuns(cfg, run_key, name=f"scaling-{cfg.sweep.study_name}")
    where = rung_dir(out_dir, rung)
    shutil.rmtree(where, ignore_errors=True)  # a rung that did not finish starts again
    result = RungResult(rung=rung, state="COMPLETE")
    start = time.perf_counter()
    log.info("scaling: rung %d: %s, %d steps", rung.index, rung.size, rung.steps)
    try:
        with runs.trial(rung.index):
            rcfg = rung_config(cfg, rung.shape, rung.steps, rung.warmup_steps, extra)
            outcome = pretrain(rcfg, tokenized, where, log_weights=False)  # recorded, not uploaded
        result.val_loss, result.tokens_seen = float(outcome.val_loss), int(outcome.tokens_seen)
        if not math.isfinite(result.val_loss):
            raise TrainingError(f"rung {rung.index}: val_loss = {result.val_loss!r}")
    except Exception as exc:  # the study goes on; the error stays with the rung
        result.state, result.error = "FAIL", f"{type(exc).__name__}: {exc}"[:2000]
        log.warning("scaling: rung %d failed: %s", rung.index, result.error)
        log.debug("%s", traceback.format_exc())
    result.seconds = round(time.perf_counter() - start, 2)
    params = {
        "scaling.size": rung.size,
        "scaling.tokens_target": rung.tokens_target,
        "scaling.n_non_embedding": rung.n_non_embedding,
        "scaling.n_total": rung.n_total,
    }
    with stopping.deferred():  # the rung's record, whole: a signal waits for it
        result.mlflow_run_id = runs.record(
            rung.index, params, result.state, result.val_loss, result.error
        )
        write_json(where / "rung.json", rung_row(result))
    return result
