"""The ``lmforge`` command: one thin subcommand per pipeline step.

Every subcommand loads the typed config (``--params``, ``--set``) and calls one function in
``src/lmforge/`` (``_step`` names it as ``module:function``); ``dvc.yaml`` runs these commands
and the KFP components call the same functions. A command's ``--help`` lists every parameter
of the sections its step reads, from the fields' own documentation. Heavy libraries (torch,
mlflow, great_expectations, kfp) are imported inside the steps, so ``lmforge --help`` stays fast.

Errors: :func:`main` is the one handler. Any exception ends the command with one paragraph on
stderr (the step, the cause, the fix) and a non-zero exit; ``LMFORGE_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lmforge.config import Config, load_config
from lmforge.config.docs import plain, section_help
from lmforge.errors import failure_paragraph
from lmforge.machine import enter as enter_machine
from lmforge_pipelines import NAMES as PIPELINES

app = typer.Typer(
    help="Train transformer language models: validate, augment, tokenize, pretrain, finetune, "
    "evaluate, register, promote; as DVC stages, Kubeflow pipelines or plain commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
pipeline_app = typer.Typer(
    help="Compile, submit or locally run the Kubeflow pipelines.", rich_markup_mode=None
)
app.add_typer(pipeline_app, name="pipeline")

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="DVC params file with one section per stage.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a value: SECTION.KEY=VALUE (repeatable)."),
]


def _dir(help_text: str, *flags: str) -> Any:
    return typer.Option(*flags, help=help_text)


def _config(params: Path, overrides: list[str] | None, step: str) -> Config:
    from lmforge.config.record import record_reads

    cfg = load_config(params, overrides or [])
    record_reads(cfg, step)
    return cfg


# How results print: JSON (for machines: the default when the output is not a terminal, so
# DVC's logs, the launchers and scripts reading a command's output get JSON) or a short summary
# (the default at a terminal). ``lmforge --json ...`` / ``--summary`` choose.
_OUTPUT = {"json": None}
SUMMARY_LINES = 20


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"lmforge {version('lmforge')}")
        raise typer.Exit()


@app.callback()
def _root(
    as_json: Annotated[
        bool | None,
        typer.Option(
            "--json/--summary",
            help="Print results as JSON, or as a short summary. Default: a summary at a "
            "terminal, JSON when the output goes to a file, a pipe or another program.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    _OUTPUT["json"] = as_json


def summary(result: Any) -> str:
    """A result as a few lines a person reads: ``key: value``, nested keys dotted, long lists
    counted; cut at SUMMARY_LINES lines, with the way to get everything."""
    lines: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) and len(value) > 3:
            lines.append(f"{key}: {len(value)} items")
        elif isinstance(value, float):
            lines.append(f"{key}: {value:.6g}")
        else:
            lines.append(f"{key}: {value}" if key else str(value))

    walk(result, "")
    if len(lines) > SUMMARY_LINES:
        more = len(lines) - SUMMARY_LINES
        lines = [*lines[:SUMMARY_LINES], f"... {more} more (lmforge --json ... prints everything)"]
    return "\n".join(lines)


def _step(target: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``module:function`` (imported only now) and print its small result (``_OUTPUT``)."""
    module, _, name = target.partition(":")
    result = getattr(importlib.import_module(module), name)(*args, **kwargs)
    if dataclasses.is_dataclass(result):
        result = dataclasses.asdict(result)
    if result is not None:
        as_json = _OUTPUT["json"]
        if as_json is None:
            as_json = not sys.stdout.isatty()
        typer.echo(json.dumps(result, indent=2, default=str) if as_json else summary(result))
    return result


def _command(*sections: str, app_: typer.Typer = app, name: str | None = None):
    """Register a command whose ``--help`` documents the parameters of ``sections``; its help
    text is the function's docstring in plain words."""

    def register(func):
        return app_.command(
            name=name,
            help=plain(func.__doc__ or ""),
            epilog=section_help(sections) if sections else None,
        )(func)

    return register


@_command()
def inputs(
    out: Annotated[Path, _dir("Where fingerprint.json goes.")] = Path("outputs/inputs"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Fingerprint the files params.yaml points at (pretrain.init_from, finetune.base_model,
    finetune.sft_data): the DVC dependency that reruns the stages reading them when they change.
    """
    _step("lmforge.inputs:fingerprint_inputs", _config(params, set_, "inputs"), out)


@_command("data")
def validate(
    data_dir: Annotated[Path, _dir("Raw data (DVC-tracked).")] = Path("data"),
    out: Annotated[Path, _dir("Validated, split data.")] = Path("outputs/validated"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Check the raw data with Great Expectations, then split it by a hash of the record id."""
    _step("lmforge.data.validate:validate", _config(params, set_, "validate"), data_dir, out)


@_command("data", "augment")
def augment(
    in_dir: Annotated[Path, _dir("Output of validate.", "--in")] = Path("outputs/validated"),
    out: Annotated[Path, _dir("Augmented training split.")] = Path("outputs/augmented"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Augment the training split (seeded, provenance kept), then validate it again."""
    _step("lmforge.data.augment:augment", _config(params, set_, "augment"), in_dir, out)


@_command(name="image-validate")
def image_validate(
    data_dir: Annotated[Path, _dir("Raw data (DVC-tracked).")] = Path("data"),
    out: Annotated[Path, _dir("Validated image-text splits.")] = Path("outputs/images/validated"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Check captioned images (multimodal.data), strip their metadata, mask captions, resize,
    and split them by a hash of the image."""
    cfg = _config(params, set_, "image-validate")
    _step("lmforge.data.images.steps:image_validate", cfg, data_dir, out)


@_command(name="image-augment")
def image_augment(
    in_dir: Annotated[Path, _dir("Output of image-validate.", "--in")] = Path(
        "outputs/images/validated"
    ),
    out: Annotated[Path, _dir("Augmented image-text splits.")] = Path("outputs/images/augmented"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Seeded crops, caption-safe flips and colour jitter of the training images (provenance
    kept); validation and test pass through."""
    cfg = _config(params, set_, "image-augment")
    _step("lmforge.data.images.steps:image_augment", cfg, in_dir, out)


@_command("tokenizer")
def tokenize(
    in_dir: Annotated[Path, _dir("Output of augment.", "--in")] = Path("outputs/augmented"),
    out: Annotated[Path, _dir("Tokenizer and packed blocks.")] = Path("outputs/tokenized"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Train the byte-level BPE tokenizer on the training split and pack every split."""
    _step("lmforge.data.tokenize:tokenize", _config(params, set_, "tokenize"), in_dir, out)


@_command("model", "pretrain", "launch")
def pretrain(
    data: Annotated[Path, _dir("Output of tokenize.")] = Path("outputs/tokenized"),
    out: Annotated[Path, _dir("Model directory, checkpoints, metrics.")] = Path("outputs/pretrain"),
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
    render: Annotated[
        bool, typer.Option(help="Print the PyTorchJob (or TrainJob: launch.api) and exit.")
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Pretrain the decoder LM: as a Kubeflow PyTorchJob (cluster or local runner) or inline.

    With finetune.base_model set (and pretrain.init_from not) there is nothing to pretrain:
    the output says it was skipped, and evaluate and register leave the LM out."""
    cfg = _config(params, set_, "pretrain")
    backend = backend or cfg.launch.backend
    if render and cfg.launch.api == "trainjob":
        from lmforge.launch.trainjob import render_yaml

        typer.echo(render_yaml(cfg, data, out))
    elif render:
        from lmforge.launch.pytorchjob import render_yaml

        typer.echo(render_yaml(cfg, data, out))
    elif _pretrain_skipped(cfg, out):
        return
    elif backend == "inline" and nproc > 1:
        from lmforge.train.distributed import run_torchrun

        raise typer.Exit(run_torchrun(nproc, sys.argv[1:]))
    elif backend == "inline":
        _step("lmforge.train.pretrain:pretrain", cfg, data, out)
    elif backend in ("local", "kubernetes"):
        _step("lmforge.launch.launcher:launch_pretrain", cfg, data, out, backend=backend)
    else:
        from lmforge.errors import ConfigError

        raise ConfigError(f"--backend {backend!r}: expected local, kubernetes or inline")


def _pretrain_skipped(cfg: Config, out: Path) -> bool:
    """With finetune.base_model set, the stage writes what it skipped (lmforge.train.skipped)."""
    from lmforge.train.skipped import skip_pretrain

    skipped = skip_pretrain(cfg, out)
    if skipped is not None:
        typer.echo(f"pretrain skipped: {skipped.reason}", err=True)
    return skipped is not None


@_command("finetune", "data")
def finetune(
    pretrained: Annotated[Path, _dir("Output of pretrain.")] = Path("outputs/pretrain"),
    data: Annotated[Path, _dir("Output of augment (labelled splits).")] = Path("outputs/augmented"),
    out: Annotated[Path, _dir("Fine-tuned classifier and baseline.")] = Path("outputs/finetune"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Fine-tune a classifier from the pretrained model (full or LoRA), plus a scratch baseline."""
    cfg = _config(params, set_, "finetune")
    _step("lmforge.train.finetune:finetune", cfg, pretrained, data, out)


@_command("evaluate", "register")
def evaluate(
    pretrained: Annotated[Path, _dir("Output of pretrain.")] = Path("outputs/pretrain"),
    finetuned: Annotated[Path, _dir("Output of finetune.")] = Path("outputs/finetune"),
    tokenized: Annotated[Path, _dir("Output of tokenize.")] = Path("outputs/tokenized"),
    data: Annotated[Path, _dir("Output of augment (labelled test split).")] = Path(
        "outputs/augmented"
    ),
    out: Annotated[Path, _dir("Report, metrics, plots.")] = Path("outputs/evaluate"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Perplexity, accuracy, macro-F1, samples; compared with the champion and the baseline."""
    cfg = _config(params, set_, "evaluate")
    _step("lmforge.evaluate:evaluate", cfg, pretrained, finetuned, tokenized, data, out)


@_command("register", "tracking")
def register(
    pretrained: Annotated[Path, _dir("Output of pretrain.")] = Path("outputs/pretrain"),
    finetuned: Annotated[Path, _dir("Output of finetune.")] = Path("outputs/finetune"),
    evaluation: Annotated[Path, _dir("Output of evaluate.")] = Path("outputs/evaluate"),
    out: Annotated[Path, _dir("What was registered (names, versions).")] = Path("outputs/register"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Log both models to MLflow, register new versions and set the alias ``challenger``."""
    cfg = _config(params, set_, "register")
    _step("lmforge.registry:register", cfg, pretrained, finetuned, evaluation, out)


@_command("register", "tracking")
def promote(
    model: Annotated[str | None, typer.Option(help="Registered model name.")] = None,
    version: Annotated[
        str | None, typer.Option(help="Version to promote (default: the challenger).")
    ] = None,
    rollback: Annotated[bool, typer.Option(help="Restore the previous champion instead.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Promote a version that was rolled back (recorded with who and when on the "
            "version); the gate still applies."
        ),
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Move the ``champion`` alias to the challenger if it passes the gate (or roll back)."""
    cfg = _config(params, set_, "promote")
    name = model or cfg.register.classifier_model_name
    _step("lmforge.registry:promote", cfg, name, version=version, rollback=rollback, force=force)


@_command("multimodal", name="image-align")
def image_align(
    data_dir: Annotated[Path, _dir("Image-text splits (train, val).", "--data")] = Path(
        "outputs/images/augmented"
    ),
    pretrained: Annotated[Path, _dir("Output of pretrain (the decoder).")] = Path(
        "outputs/pretrain"
    ),
    out: Annotated[Path, _dir("The aligned model.")] = Path("outputs/images/align"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Stage 1 of the image-text model: the vision encoder and projector learn to caption in
    front of the frozen decoder (multimodal.decoder, else the pretrain output)."""
    cfg = _config(params, set_, "image-align")
    _step("lmforge.multimodal.train:align", cfg, pretrained, data_dir, out)


@_command("multimodal", name="image-instruct")
def image_instruct(
    data_dir: Annotated[Path, _dir("Image-text splits (train, val).", "--data")] = Path(
        "outputs/images/augmented"
    ),
    aligned: Annotated[Path, _dir("Output of image-align.")] = Path("outputs/images/align"),
    out: Annotated[Path, _dir("The instruction-tuned model.")] = Path("outputs/images/instruct"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Stage 2: instruction tuning on question/answer pairs made from the captions (full or
    LoRA, multimodal.instruct)."""
    cfg = _config(params, set_, "image-instruct")
    _step("lmforge.multimodal.train:instruct", cfg, aligned, data_dir, out)


@_command("multimodal", name="image-evaluate")
def image_evaluate(
    model_dir: Annotated[Path, _dir("The model folder to score.", "--model")] = Path(
        "outputs/images/instruct/model"
    ),
    test_dir: Annotated[Path, _dir("The test split.", "--test")] = Path(
        "outputs/images/validated/test"
    ),
    out: Annotated[Path, _dir("report.json, report.html, captions.jsonl.")] = Path(
        "outputs/images/evaluate"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Caption perplexity, ROUGE-L, CIDEr-D and retrieval recall@1/5 on the test split, against
    the same model without the image (text-only) and chance; exits 1 when the gate fails."""
    cfg = _config(params, set_, "image-evaluate")
    report = _step("lmforge.multimodal.evaluate:evaluate_multimodal", cfg, model_dir, test_dir, out)
    if not report["gate"]["passed"]:
        typer.echo(f"gate failed: {report['gate']}", err=True)
        raise typer.Exit(1)


@_command("multimodal", "register", "tracking", name="image-register")
def image_register(
    model_dir: Annotated[Path, _dir("The model folder to register.", "--model")] = Path(
        "outputs/images/instruct/model"
    ),
    evaluation: Annotated[Path, _dir("Output of image-evaluate (its gate).")] = Path(
        "outputs/images/evaluate"
    ),
    out: Annotated[Path, _dir("What was registered.")] = Path("outputs/images/register"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Register the image-text model (multimodal.model_name, alias challenger) when its
    evaluation passed the gate."""
    cfg = _config(params, set_, "image-register")
    _step("lmforge.multimodal.register:register_multimodal", cfg, model_dir, evaluation, out)


@_command("evaluate", "register", "tracking")
def generate(
    prompts: Annotated[
        list[str] | None, typer.Argument(help="Prompts (default: --file, else stdin).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="A model folder or a registry URI (models:/NAME@ALIAS, models:/NAME/VERSION). "
            "Default: models:/<register.lm_model_name>@<register.champion_alias>."
        ),
    ] = None,
    file: Annotated[Path | None, typer.Option(help="Prompts, one per line ('-': stdin).")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Default: evaluate.sample_max_new_tokens.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="0: greedy. Default: evaluate.sample_temperature.")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Sample from the k likeliest; 0: off.")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling; 1: off.")] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(help="1: off.")] = 1.0,
    seed: Annotated[
        int | None, typer.Option(help="Prompt i uses seed + i. Default: evaluate.sample_seed.")
    ] = None,
    chat: Annotated[
        bool,
        typer.Option(
            help="Put each prompt in the model's chat template first: an instruction-tuned "
            "model (finetune.task sft, e.g. models:/lmforge-sft@champion)."
        ),
    ] = False,
    image: Annotated[
        Path | None,
        typer.Option(
            help="A picture the prompts ask about; --model is then an image-text model: a "
            "folder (outputs/images/instruct/model) or models:/NAME@ALIAS (default: "
            "models:/<multimodal.model_name>@<register.champion_alias>)."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Sample from the language model, streaming tokens; the evaluate stage's code path."""
    from lmforge.serve.generate import Sampling, generate, read_prompts

    cfg = _config(params, set_, "generate")
    texts = read_prompts(prompts or [], file)
    sampling = Sampling.of_evaluate(
        cfg,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    if image is not None:
        from lmforge.multimodal.generate import answer

        source = model or f"models:/{cfg.multimodal.model_name}@{cfg.register.champion_alias}"
        for reply in answer(cfg, source, image, texts, sampling):
            typer.echo(reply.text)
        return
    source = model or f"models:/{cfg.register.lm_model_name}@{cfg.register.champion_alias}"
    result = generate(cfg, source, texts, sampling, stream=sys.stdout, chat=chat)
    tokens = sum(c.new_tokens for c in result.completions)
    typer.echo(f"{result.model}: {tokens} tokens, {result.tokens_per_s:.1f} tokens/s", err=True)


@_command("serve", "register", "tracking")
def deploy(
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Registered model (repeatable). Default: the LM (none when "
            "finetune.base_model skips pretraining) and the classifier (finetune.task sft: "
            "the SFT model)."
        ),
    ] = None,
    render: Annotated[
        bool, typer.Option(help="Print their champions' InferenceServices and exit.")
    ] = False,
    apply: Annotated[
        bool, typer.Option(help="Create or patch them on the cluster; wait until Ready.")
    ] = False,
    out: Annotated[
        Path | None, _dir("Also write inferenceservices.yaml and deployed.json here.")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Deploy the champions to KServe: InferenceServices on the Hugging Face runtime."""
    from lmforge.errors import ConfigError

    cfg = _config(params, set_, "deploy")
    if render == apply:
        raise ConfigError("pass exactly one of --render (print) and --apply (create or patch)")
    if render:
        from lmforge.serve.deploy import render_yaml

        typer.echo(render_yaml(cfg, model), nl=False)
        return
    echo = lambda line: typer.echo(line, err=True)  # noqa: E731 (progress on stderr)
    _step("lmforge.serve.deploy:deploy", cfg, model, apply=True, out_dir=out, echo=echo)


@_command("serve", "register", "tracking")
def serve(
    model: Annotated[
        str | None, typer.Option(help="Registered model. Default: register.classifier_model_name.")
    ] = None,
    alias: Annotated[
        str | None, typer.Option(help="Alias to serve. Default: register.champion_alias.")
    ] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1; 0: a free one.")] = 0,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Serve a registered model locally with MLflow's scoring server until Ctrl-C."""
    from lmforge.serve.server import serve as serve_model

    cfg = _config(params, set_, "serve")
    name = model or cfg.register.classifier_model_name
    raise typer.Exit(serve_model(cfg, name, alias, port, echo=typer.echo))


@_command("tracking")
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Serve MLflow's UI over the project's tracking store (the one ``dvc repro`` writes)."""
    from lmforge.tracking import serve_ui

    raise typer.Exit(serve_ui(_config(params, set_, "ui"), host=host, port=port))


@_command("tracking")
def replay(
    out: Annotated[Path, _dir("Output folder of a training step.")] = Path("outputs/pretrain"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Send what a training step could not log to MLflow (its tracking-buffer.jsonl) now."""
    _step("lmforge.tracking:replay", _config(params, set_, "replay"), out)


@_command("sweep", "pretrain", "finetune")
def sweep(
    out: Annotated[Path, _dir("Study, trials, best.yaml, plots.")] = Path("outputs/sweep"),
    tokenized: Annotated[Path, _dir("Output of tokenize (pretrain trials).")] = Path(
        "outputs/tokenized"
    ),
    pretrained: Annotated[Path, _dir("Output of pretrain (finetune trials).")] = Path(
        "outputs/pretrain"
    ),
    augmented: Annotated[Path, _dir("Output of augment (finetune trials).")] = Path(
        "outputs/augmented"
    ),
    render: Annotated[
        bool,
        typer.Option(
            help="Print the sweep as a Katib Experiment (trials: the pretrain job, under "
            "OUT/trials on the volume) and its params ConfigMap, and exit."
        ),
    ] = False,
    api: Annotated[
        str | None,
        typer.Option(help="With --render: pytorchjob or trainjob trials. Default: launch.api."),
    ] = None,
    scaling: Annotated[
        bool,
        typer.Option(
            help="Run the scaling study instead (sweep.scaling_*: sizes x token budgets, the "
            "L(N, D) fit, the compute-optimal N and D) into OUT/scaling."
        ),
    ] = False,
    flops: Annotated[
        float | None,
        typer.Option(
            help="With --scaling: the FLOPs budget C = 6ND. Default: sweep.scaling_flops."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Search hyper-parameters: trials of pretrain or finetune with Optuna (resumable)."""
    from lmforge.sweep.run import StepInputs

    if render:
        from lmforge.sweep.katib import render_yaml

        extra = [f"launch.api={api}"] if api else []
        typer.echo(render_yaml(_config(params, [*(set_ or []), *extra], "sweep"), tokenized, out))
        return
    if scaling:
        cfg = _config(params, set_, "sweep")
        _step("lmforge.sweep.scaling:scaling_study", cfg, out / "scaling", tokenized, flops)
        return
    inputs = StepInputs(tokenized=tokenized, pretrained=pretrained, augmented=augmented)
    _step("lmforge.sweep.run:sweep", _config(params, set_, "sweep"), out, inputs)


@app.command()
def params(
    section: Annotated[str | None, typer.Argument(help="One section (default: all).")] = None,
    markdown: Annotated[bool, typer.Option(help="docs/params.md, as Markdown.")] = False,
) -> None:
    """Document every parameter of params.yaml: type, default, allowed range, meaning."""
    from lmforge.config import SECTIONS
    from lmforge.config import docs as config_docs
    from lmforge.errors import ConfigError

    if section is not None and section not in SECTIONS:
        raise ConfigError(f"{section!r}: unknown section; sections are {', '.join(SECTIONS)}")
    if markdown:
        typer.echo(config_docs.markdown())
    else:
        typer.echo(section_help((section,) if section else tuple(SECTIONS)).replace("\b\n", ""))


@_command("kubeflow", app_=pipeline_app, name="compile")
def pipeline_compile(
    out_dir: Annotated[Path, _dir("Where the compiled YAML goes.")] = Path("pipelines"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Compile every pipeline to KFP v2 YAML (defaults taken from params.yaml)."""
    cfg = _config(params, set_, "pipeline compile")
    _step("lmforge_pipelines.compile:compile_all", cfg, out_dir)


@_command("kubeflow", app_=pipeline_app, name="submit")
def pipeline_submit(
    name: Annotated[str, typer.Argument(help=f"Pipeline: {', '.join(PIPELINES)}.")] = "full",
    host: Annotated[str | None, typer.Option(help="Kubeflow Pipelines API URL.")] = None,
    force: Annotated[bool, typer.Option(help="Submit from a dirty git tree.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Upload the pipeline as a version named from the git commit and start a run."""
    cfg = _config(params, set_, "pipeline submit")
    _step("lmforge_pipelines.submit:submit", cfg, name, host=host, force=force)


@_command("kubeflow", app_=pipeline_app, name="run-local")
def pipeline_run_local(
    name: Annotated[str, typer.Argument(help=f"Pipeline: {', '.join(PIPELINES)}.")] = "full",
    workdir: Annotated[Path, _dir("KFP local pipeline root.")] = Path("outputs/kfp-local"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run a pipeline through KFP's local SubprocessRunner on this machine."""
    cfg = _config(params, set_, "pipeline run-local")
    _step("lmforge_pipelines.run_local:run_local", cfg, name, workdir)


def _step_name(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")][:2]
    if words[:1] == ["pipeline"]:
        return " ".join(words)
    return words[0] if words else "lmforge"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the command; any exception becomes one paragraph and an exit."""
    # A process of its own (not a test calling main) that will compute: the machine tweaks
    # every face applies (lmforge.machine: MKL's fast path on AMD).
    if argv is None and sys.argv[1:] and not {"--help", "-h"} & set(sys.argv[1:]):
        enter_machine()
    argv = sys.argv[1:] if argv is None else argv
    try:
        app(args=argv, prog_name="lmforge", standalone_mode=True)
    except SystemExit:
        raise
    except BaseException as exc:  # the one place every failure is explained
        message, code = failure_paragraph(exc, f"lmforge {_step_name(argv)}")
        typer.echo(message, err=True)
        raise SystemExit(code) from None


if __name__ == "__main__":  # pragma: no cover
    main()
