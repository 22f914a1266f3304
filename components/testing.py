"""What the component tests and the local pipeline test share: micro data, a micro config, and
a one-step pipeline around a component (KFP's local runner feeds input artifacts only from
upstream tasks, so each input is brought in by an importer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp import dsl

from lmforge.config import Config, load_config
from lmforge.kfp.dag import common_args, params_text
from lmforge.kfp.local import init_local, latest_run, task_output

# The checkout these tests run from: its params.yaml and its DVC-fetched data/. A test helper:
# the library and the pipelines never look for the repository.
REPO = Path(__file__).resolve().parents[1]

# Seconds, not minutes: a 1-layer width-32 decoder, a few optimizer steps, one local replica.
MICRO = [
    "data.validation_share=0.2",
    "data.test_share=0.2",
    "tokenizer.vocab_size=400",
    "tokenizer.block_size=32",
    "tokenizer.num_proc=1",
    "model.n_layers=1",
    "model.d_model=32",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "pretrain.max_steps=4",
    "pretrain.lr=0.001",  # the rate these micro runs were tuned at
    "pretrain.micro_batch_size=4",
    "pretrain.warmup_steps=1",
    "pretrain.eval_every=2",
    "pretrain.eval_batches=1",
    "pretrain.log_every=1",
    "pretrain.ckpt_every=4",
    "pretrain.precision=fp32",
    "pretrain.parallel=single",
    "launch.nnodes=1",
    "finetune.max_steps=12",
    "finetune.micro_batch_size=4",
    "finetune.warmup_steps=1",
    "finetune.eval_every=12",  # one evaluation, at the end: a few steps on 4-record batches are
    # too few for the best-evaluation rule to pick anything but noise
    "finetune.eval_batches=1",
    "finetune.log_every=1",
    "finetune.max_length=32",
    "finetune.precision=fp32",
    "finetune.lr=0.002",
    "evaluate.max_perplexity_batches=2",
    "evaluate.sample_max_new_tokens=4",
]
MICRO_RECORDS = {"corpus/brown.jsonl": 15, "corpus/kjv.jsonl": 40, "corpus/shakespeare.jsonl": 40}
MICRO_LABELLED_PER_CLASS = 60


def micro_config(*extra: str, store: Path | None = None) -> Config:
    """The repo's params with the micro overrides; MLflow in ``store`` (a sqlite file)."""
    overrides = [*MICRO, *extra]
    if store is not None:
        overrides += [
            f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
            f"tracking.artifact_location={store / 'mlartifacts'}",
        ]
    return load_config(REPO / "params.yaml", overrides)


def build_micro_data(out: Path, data_dir: Path = REPO / "data") -> Path:
    """A few records of each raw file of ``data/`` (``make data`` fetches it), same layout."""
    if not (data_dir / "labelled" / "spam.jsonl").exists():
        raise FileNotFoundError(f"{data_dir}: raw data missing; run `make data` (dvc pull)")
    for rel, n in MICRO_RECORDS.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        with (data_dir / rel).open() as src:
            (out / rel).write_text("".join(line for _, line in zip(range(n), src, strict=False)))
    picked: dict[str, list[str]] = {}
    with (data_dir / "labelled" / "spam.jsonl").open() as src:
        for line in src:
            bucket = picked.setdefault(json.loads(line)["label"], [])
            if len(bucket) < MICRO_LABELLED_PER_CLASS:
                bucket.append(line)
    (out / "labelled").mkdir(parents=True, exist_ok=True)
    (out / "labelled" / "spam.jsonl").write_text(
        "".join(line for lines in picked.values() for line in lines)
    )
    return out


def run_one(
    component: Any,
    cfg: Config,
    workdir: Path,
    artifacts: dict[str, tuple[Path, type]],
    **arguments: Any,
) -> Path:
    """Run ``component`` alone through the local runner; return its task folder.

    ``artifacts`` maps each input artifact to (folder, artifact class); the task's outputs are
    ``<task folder>/<output name>``.
    """
    name = component.component_spec.name.replace("_", "-")

    @dsl.pipeline(name=f"one-{name}")
    def one_step():
        imported = {
            key: dsl.importer(artifact_uri=str(path), artifact_class=cls).output
            for key, (path, cls) in artifacts.items()
        }
        component(**imported, **common_args(params_text(cfg), []), **arguments)

    init_local(workdir)
    one_step()
    return latest_run(workdir, f"one-{name}") / name


def logged_metrics(task_dir: Path, output: str = "metrics") -> dict[str, float]:
    """What a component logged to its ``Metrics`` artifact (the executor's output record)."""
    record = json.loads((task_dir / "executor_output.json").read_text())
    return record["artifacts"][output]["artifacts"][0]["metadata"]


def returned(task_dir: Path) -> Any:
    """A component's return value (its ``Output`` parameter)."""
    return task_output(task_dir)


def run_pipeline_cli(cwd: Path, *overrides: str, name: str = "full") -> subprocess.CompletedProcess:
    """``lmforge pipeline run-local NAME`` in ``cwd`` (its ``data/``, ``kfp/`` and ``mlflow.db``)
    with the micro config and ``overrides``, as a user runs it from the console script."""
    lmforge = Path(sys.executable).parent / "lmforge"
    sets = [a for o in [*MICRO, *overrides] for a in ("--set", o)]
    # mlflow.set_tracking_uri (in-process steps of other tests) exports MLFLOW_TRACKING_URI;
    # this run must use its own store, the config's mlflow.db in ``cwd``.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [str(lmforge), "pipeline", "run-local", name, "--workdir", "kfp"]
    cmd += ["--params", str(REPO / "params.yaml"), *sets]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@dataclass
class FullRun:
    """One local run of the full pipeline (``run_full_pipeline``): its folder, the CLI's
    process, and the gate at threshold 0 (``register.min_primary=0.0``: the micro model passes)."""

    root: Path
    proc: subprocess.CompletedProcess

    def result(self) -> dict[str, Any]:
        """The JSON the CLI printed last (the run folder, the gate, what was registered)."""
        out, err = self.proc.stdout, self.proc.stderr
        assert self.proc.returncode == 0, out[-3000:] + err[-3000:]
        return json.loads(out[out.rindex("\n{") :])

    def task(self, name: str) -> Path:
        """A task's folder: its outputs are ``<folder>/<output name>``."""
        return Path(self.result()["run_dir"]) / name

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"


def run_full_pipeline(root: Path) -> FullRun:
    """The full pipeline on the micro data in ``root`` through KFP's local runner: one run that
    the pipeline test and every component's test assert on (a run a component costs minutes)."""
    build_micro_data(root / "data")
    return FullRun(root, run_pipeline_cli(root, "register.min_primary=0.0"))
