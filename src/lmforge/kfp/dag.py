"""The pieces the pipelines in ``pipelines/`` (package ``lmforge_pipelines``) are built from.

``schedule`` applies the cluster settings of ``params.yaml``'s ``kubeflow`` section to a task
(MLflow secret as env, caching of heavy steps, GPU node selector/toleration/limit, the shared
volume); ``form_args`` puts the run form's ``settings`` task (``lmforge.kfp.form``) before the
steps; ``prepare_data``, ``data_to_pretrained`` and ``finetune_evaluate_register`` are the DAG
segments the pipelines share. They take the components as ``ops`` (an ``lmforge_pipelines.ops.Ops``,
typed ``Any`` here): the library never imports the component or pipeline packages, which import
it.
"""

from __future__ import annotations

import json
from typing import Any

from kfp import dsl, kubernetes
from kfp.dsl import Dataset

from lmforge.config import Config, load_config_text
from lmforge.kfp.form import settings_task

HEAVY_STEPS = ("pretrain", "finetune", "evaluate")


def _changed(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict) and key in Config.__annotations__:
            value = _changed(value, default)
            if value:
                out[key] = value
        elif value != default:
            out[key] = value
    return out


def params_text(cfg: Config) -> str:
    """The config a pipeline is compiled with (every step's ``params``): the values of ``cfg``
    that differ from the typed defaults, the model's from its preset's (the image's
    ``lmforge.config`` supplies the rest).

    Written as one-line JSON, which is YAML too: KFP copies defaults into the compiled file's
    header comment, and a multi-line default would break out of the comment.
    """
    # The model's shape is its preset's unless set beside it: values equal to the preset's are
    # left to it, so a run that changes the preset (the form's model_preset) gets its shape.
    defaults = Config().to_dict()
    shaped = load_config_text(json.dumps({"model": {"preset": cfg.model.preset}}))
    defaults["model"] = shaped.to_dict()["model"]
    changed = _changed(cfg.to_dict(), defaults)
    if cfg.model.preset != Config().model.preset:
        changed.setdefault("model", {})["preset"] = cfg.model.preset
    return json.dumps(changed)


def common_args(params: Any, overrides: Any) -> dict[str, Any]:
    """Arguments every component takes: the config and the KFP ids for MLflow's tags."""
    return {
        "params": params,
        "overrides": overrides,
        "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        "task_name": dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
    }


def form_args(cfg: Config, form: dict[str, Any], overrides: Any) -> dict[str, Any]:
    """``common_args`` of a pipeline with a run form (``lmforge.kfp.form``): ``params`` is
    ``cfg`` baked in at compile time, not a parameter (nobody edits JSON in the form), and the
    overrides are the ``settings`` task's merge of the form's ``form`` and ``overrides``.

    A form without fields has nothing to merge: its ``overrides`` go straight to the steps (the
    first step checks them). The sweep's form is such, and must be: KFP's local runner hands a
    ``ParallelFor`` the loop item in place of any task output it takes (kfp 2.17,
    ``create_parameter_loop_iteration_task_spec``), so its trials cannot take ``settings``'s
    output."""
    params = params_text(cfg)
    if not form:
        return common_args(params, overrides)
    return common_args(params, settings_task(cfg.kubeflow.image, params, form, overrides).output)


def schedule(task: dsl.PipelineTask, cfg: Config, step: str) -> dsl.PipelineTask:
    """Apply the ``kubeflow`` section's cluster settings to ``task`` (the ``step`` component)."""
    kf = cfg.kubeflow
    task.set_display_name(step)
    kubernetes.use_secret_as_env(
        task,
        secret_name=kf.mlflow_secret,
        secret_key_to_env={key: key for key in kf.mlflow_secret_keys},
        optional=True,
    )
    if step in HEAVY_STEPS:
        task.set_caching_options(kf.cache_heavy_steps)
    if step in ("register", "deploy"):  # side effects (registry, cluster): never from cache
        task.set_caching_options(False)
    if step == "pretrain" or step in base_model_steps(cfg):
        # pretrain stages data on the volume the PyTorchJob mounts, at the same path; a user's
        # base model (pretrain.init_from, finetune.base_model) is read from it too
        kubernetes.mount_pvc(task, pvc_name=cfg.launch.pvc_name, mount_path=cfg.launch.mount_path)
    if step in kf.gpu_steps and kf.gpus_per_step > 0:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(kf.gpus_per_step)
        for key, value in kf.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        kubernetes.add_toleration(
            task, key=kf.gpu_toleration_key, operator="Exists", effect="NoSchedule"
        )
    return task


def base_model_steps(cfg: Config) -> set[str]:
    """The steps that read a base-model folder from the work volume: tokenize (the tokenizer of
    ``pretrain.init_from``) and finetune (``finetune.base_model``). A folder outside
    ``launch.mount_path`` exists in no pod: refused when the pipeline is built."""
    from pathlib import PurePosixPath

    from lmforge.errors import PipelineError

    steps = set()
    for field, path, step in (
        ("pretrain.init_from", cfg.pretrain.init_from, "tokenize"),
        ("finetune.base_model", cfg.finetune.base_model, "finetune"),
    ):
        if path is None:
            continue
        mount = PurePosixPath(cfg.launch.mount_path)
        if not PurePosixPath(path).is_relative_to(mount):
            raise PipelineError(
                f"{field}: {path} is not on the work volume the pipeline's pods mount "
                f"(launch.mount_path {mount}); copy the model folder onto the volume "
                f"{cfg.launch.pvc_name} and set {field} to its path under {mount}"
            )
        steps.add(step)
    return steps


def import_artifact(uri: Any, artifact_class: type, name: str) -> dsl.PipelineTask:
    task = dsl.importer(artifact_uri=uri, artifact_class=artifact_class, reimport=False)
    task.set_display_name(name)
    return task


def prepare_data(ops: Any, cfg: Config, data_uri: Any, args: dict[str, Any]) -> dsl.PipelineTask:
    """Raw data -> validate -> augment; returns the augment task."""
    raw = import_artifact(data_uri, Dataset, "raw-data")
    validated = schedule(ops.validate(raw_data=raw.output, **args), cfg, "validate")
    return schedule(ops.augment(validated=validated.outputs["validated"], **args), cfg, "augment")


def data_to_pretrained(
    ops: Any,
    cfg: Config,
    data_uri: Any,
    backend: Any,
    args: dict[str, Any],
) -> tuple[dsl.PipelineTask, dsl.PipelineTask, dsl.PipelineTask]:
    """Raw data -> validate -> augment -> tokenize -> pretrain; returns those last three tasks.
    The PyTorchJob or the TrainJob: ``launch.api``, which the run form's ``launch_api`` sets."""
    augmented = prepare_data(ops, cfg, data_uri, args)
    tokenized = schedule(
        ops.tokenize(augmented=augmented.outputs["augmented"], **args), cfg, "tokenize"
    )
    pretrained = schedule(
        ops.pretrain(tokenized=tokenized.outputs["tokenized"], backend=backend, **args),
        cfg,
        "pretrain",
    )
    return augmented, tokenized, pretrained


def finetune_evaluate_register(
    ops: Any,
    cfg: Config,
    pretrained: Any,
    tokenized: Any,
    augmented: Any,
    args: dict[str, Any],
    deploy: bool = False,
) -> dsl.PipelineTask:
    """Finetune -> evaluate -> register when the evaluation gate passed (then, with ``deploy``,
    promote and deploy to KServe); returns evaluate."""
    finetuned = schedule(
        ops.finetune(pretrained=pretrained, augmented=augmented, **args), cfg, "finetune"
    )
    evaluated = schedule(
        ops.evaluate(
            pretrained=pretrained,
            finetuned=finetuned.outputs["finetuned"],
            tokenized=tokenized,
            augmented=augmented,
            **args,
        ),
        cfg,
        "evaluate",
    )
    with dsl.If(evaluated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP expression)
        registered = schedule(
            ops.register(
                pretrained=pretrained,
                finetuned=finetuned.outputs["finetuned"],
                evaluation=evaluated.outputs["evaluation"],
                **args,
            ),
            cfg,
            "register",
        )
        if deploy:
            schedule(ops.deploy(registered=registered.outputs["registered"], **args), cfg, "deploy")
    return evaluated
