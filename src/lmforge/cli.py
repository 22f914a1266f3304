"""The ``lmforge`` command: one thin subcommand per pipeline step.

Every subcommand loads the typed config (``--params``, ``--set``) and calls one function in
``src/lmforge/``; ``dvc.yaml`` runs these commands and the KFP components call the same
functions. Heavy libraries (torch, mlflow, great_expectations, kfp) are imported inside the
commands, so ``lmforge --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lmforge.config import Config, ConfigError, load_config
from lmforge.errors import LmforgeError

app = typer.Typer(
    help="Train transformer language models: validate, augment, tokenize, pretrain, finetune, "
    "evaluate, register, promote; as DVC stages, Kubeflow pipelines or plain commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
pipeline_app = typer.Typer(help="Compile, submit or locally run the Kubeflow pipelines.")
app.add_typer(pipeline_app, name="pipeline")

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="DVC params file with one section per stage.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a value: SECTION.KEY=VALUE (repeatable)."),
]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _config(params: Path, overrides: list[str] | None) -> Config:
    try:
        return load_config(params, overrides or [])
    except ConfigError as exc:
        _fail(str(exc), 2)
        raise  # unreachable; keeps type checkers calm


def _report(result: Any) -> None:
    """Print a step's small result (its metrics) as JSON on stdout."""
    if result is None:
        return
    if dataclasses.is_dataclass(result):
        result = dataclasses.asdict(result)
    typer.echo(json.dumps(result, indent=2, default=str))


def _run(fn, *args, **kwargs) -> Any:
    """Call a step; turn its user-facing errors into a one-paragraph message and exit 1."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except LmforgeError as exc:
        _fail(str(exc), exc.exit_code)


@app.command()
def validate(
    data_dir: Annotated[Path, typer.Option(help="Raw data (DVC-tracked).")] = Path("data"),
    out: Annotated[Path, typer.Option(help="Validated, split data.")] = Path("outputs/validated"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Check the raw data with Great Expectations, then split it by a hash of the record id."""
    from lmforge.data.validate import validate as step

    _report(_run(step, _config(params, set_), data_dir, out))


@app.command()
def augment(
    in_dir: Annotated[Path, typer.Option("--in", help="Output of validate.")] = Path(
        "outputs/validated"
    ),
    out: Annotated[Path, typer.Option(help="Augmented training split.")] = Path(
        "outputs/augmented"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Augment the training split (seeded, provenance kept), then validate it again."""
    from lmforge.data.augment import augment as step

    _report(_run(step, _config(params, set_), in_dir, out))


@app.command()
def tokenize(
    in_dir: Annotated[Path, typer.Option("--in", help="Output of augment.")] = Path(
        "outputs/augmented"
    ),
    out: Annotated[Path, typer.Option(help="Tokenizer and packed blocks.")] = Path(
        "outputs/tokenized"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Train the byte-level BPE tokenizer on the training split and pack every split."""
    from lmforge.data.tokenize import tokenize as step

    _report(_run(step, _config(params, set_), in_dir, out))


@app.command()
def pretrain(
    data: Annotated[Path, typer.Option(help="Output of tokenize.")] = Path("outputs/tokenized"),
    out: Annotated[Path, typer.Option(help="Model directory, checkpoints, metrics.")] = Path(
        "outputs/pretrain"
    ),
    backend: Annotated[
        str | None,
        typer.Option(
            help="local: the PyTorchJob on local processes; kubernetes: on the cluster; "
            "inline: train in this process (what each replica runs). Default: launch.backend."
        ),
    ] = None,
    nproc: Annotated[
        int, typer.Option(help="With --backend inline: start torchrun with N processes.")
    ] = 1,
    render: Annotated[bool, typer.Option(help="Print the PyTorchJob manifest and exit.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Pretrain the decoder LM: as a Kubeflow PyTorchJob (cluster or local runner) or inline."""
    cfg = _config(params, set_)
    backend = backend or cfg.launch.backend
    if render:
        from lmforge.launch.pytorchjob import render_yaml

        typer.echo(_run(render_yaml, cfg, data, out))
        return
    if backend == "inline":
        if nproc > 1:
            from lmforge.train.distributed import run_torchrun

            raise typer.Exit(_run(run_torchrun, nproc, sys.argv[1:]))
        from lmforge.train.pretrain import pretrain as step

        _report(_run(step, cfg, data, out))
        return
    if backend not in ("local", "kubernetes"):
        _fail(f"--backend {backend!r}: expected local, kubernetes or inline", 2)
    from lmforge.launch.launcher import launch_pretrain

    _report(_run(launch_pretrain, cfg, data, out, backend=backend))


@app.command()
def finetune(
    pretrained: Annotated[Path, typer.Option(help="Output of pretrain.")] = Path(
        "outputs/pretrain"
    ),
    data: Annotated[Path, typer.Option(help="Output of augment (labelled splits).")] = Path(
        "outputs/augmented"
    ),
    out: Annotated[Path, typer.Option(help="Fine-tuned classifier and baseline.")] = Path(
        "outputs/finetune"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Fine-tune a classifier from the pretrained model (full or LoRA), plus a scratch baseline."""
    from lmforge.train.finetune import finetune as step

    _report(_run(step, _config(params, set_), pretrained, data, out))


@app.command()
def evaluate(
    pretrained: Annotated[Path, typer.Option(help="Output of pretrain.")] = Path(
        "outputs/pretrain"
    ),
    finetuned: Annotated[Path, typer.Option(help="Output of finetune.")] = Path("outputs/finetune"),
    tokenized: Annotated[Path, typer.Option(help="Output of tokenize.")] = Path(
        "outputs/tokenized"
    ),
    data: Annotated[Path, typer.Option(help="Output of augment (labelled test split).")] = Path(
        "outputs/augmented"
    ),
    out: Annotated[Path, typer.Option(help="Report, metrics, plots.")] = Path("outputs/evaluate"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Perplexity, accuracy, macro-F1, samples; compared with the champion and the baseline."""
    from lmforge.evaluate import evaluate as step

    _report(_run(step, _config(params, set_), pretrained, finetuned, tokenized, data, out))


@app.command()
def register(
    pretrained: Annotated[Path, typer.Option(help="Output of pretrain.")] = Path(
        "outputs/pretrain"
    ),
    finetuned: Annotated[Path, typer.Option(help="Output of finetune.")] = Path("outputs/finetune"),
    evaluation: Annotated[Path, typer.Option(help="Output of evaluate.")] = Path(
        "outputs/evaluate"
    ),
    out: Annotated[Path, typer.Option(help="What was registered (names, versions).")] = Path(
        "outputs/register"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Log both models to MLflow, register new versions and set the alias ``challenger``."""
    from lmforge.registry import register as step

    _report(_run(step, _config(params, set_), pretrained, finetuned, evaluation, out))


@app.command()
def promote(
    model: Annotated[str | None, typer.Option(help="Registered model name.")] = None,
    version: Annotated[
        str | None, typer.Option(help="Version to promote (default: the challenger).")
    ] = None,
    rollback: Annotated[bool, typer.Option(help="Restore the previous champion instead.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Move the ``champion`` alias to the challenger if it passes the gate (or roll back)."""
    from lmforge.registry import promote as step

    cfg = _config(params, set_)
    name = model or cfg.register.classifier_model_name
    _report(_run(step, cfg, name, version=version, rollback=rollback))


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Serve MLflow's UI over the project's tracking store (the one ``dvc repro`` writes)."""
    from lmforge.tracking import serve_ui

    raise typer.Exit(_run(serve_ui, _config(params, set_), host=host, port=port))


@pipeline_app.command("compile")
def pipeline_compile(
    out_dir: Annotated[Path, typer.Option(help="Where the compiled YAML goes.")] = Path(
        "pipelines"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Compile every pipeline to KFP v2 YAML (defaults taken from params.yaml)."""
    from lmforge.kfp.compile import compile_all

    _report(_run(compile_all, _config(params, set_), out_dir))


@pipeline_app.command("submit")
def pipeline_submit(
    name: Annotated[str, typer.Argument(help="Pipeline: pretrain, finetune or full.")] = "full",
    host: Annotated[str | None, typer.Option(help="Kubeflow Pipelines API URL.")] = None,
    force: Annotated[bool, typer.Option(help="Submit from a dirty git tree.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Upload the pipeline as a version named from the git commit and start a run."""
    from lmforge.kfp.submit import submit

    _report(_run(submit, _config(params, set_), name, host=host, force=force))


@pipeline_app.command("run-local")
def pipeline_run_local(
    name: Annotated[str, typer.Argument(help="Pipeline: pretrain, finetune or full.")] = "full",
    workdir: Annotated[Path, typer.Option(help="KFP local pipeline root.")] = Path(
        "outputs/kfp-local"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run a pipeline through KFP's local SubprocessRunner on this machine."""
    from lmforge.kfp.local import run_local

    _report(_run(run_local, _config(params, set_), name, workdir))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
