"""``lmforge sweep --render``: the sweep as a Katib ``Experiment`` (``kubeflow.org/v1beta1``).

The trial template is the pretrain job the launcher renders (``launch.api``: the PyTorchJob or
the TrainJob), with three changes: no name or namespace (Katib names each trial's job after the
trial), ``--set KEY=${trialParameters.KEY}`` appended to the trainer's arguments for each
dimension of ``sweep.space``, and ``--out`` under ``trials/<trial name>``. Every trial mounts the
one params ConfigMap rendered beside the Experiment, so trials differ only by their ``--set``.

The objective comes from the trainer's output through Katib's StdOut collector: with
``LMFORGE_METRICS_STDOUT=1`` (set in the template) the tracker prints each logged row as
``name=value`` (``lmforge.train.tracker``), which the collector's default regex parses;
``metricStrategies`` takes the latest value, the final evaluation (what ``metrics.json`` says).
A NaN final evaluation prints as ``unavailable``, which the Experiment's filter reads too: the
trial then ends MetricsUnavailable instead of reporting its last finite value.

The CRD has no schema, so ``check`` runs the Experiment through the typed models of
``kubeflow-katib`` (a misspelt field is dropped by them, so the round trip differs) and the
rules of Katib's admission webhook that can be checked offline.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from lmforge.config import Config
from lmforge.errors import ConfigError, LaunchError
from lmforge.launch import pytorchjob, trainjob
from lmforge.train.tracker import METRICS_STDOUT_ENV as METRICS_ENV
from lmforge.train.tracker import UNAVAILABLE

API_VERSION = "kubeflow.org/v1beta1"
TRIAL_NAME = "trialName"  # the trial parameter that names a trial's output folder
# Katib allows 40; a trial is "<experiment>-<8 chars>" and its JobSet pods add ~17 more.
MAX_NAME = 32
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# A categorical value goes into `sh -c` (Katib's StdOut wrapper) and back through YAML.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_PARAM_REF = re.compile(r"\$\{trialParameters\..+?\}")
# How the collector reads ``name=value`` (RE2; two groups, the name and the value): the
# tracker's ``unavailable`` for a NaN evaluation (first: the number may match nothing), else a
# number as Katib's default filter reads it. With the default alone a NaN final evaluation reads
# as no value, and a diverged trial reports its last finite one as its result.
METRICS_FILTER = rf"([\w|-]+)\s*=\s*({UNAVAILABLE}|[+-]?\d*(?:\.\d+)?(?:[Ee][+-]?\d+)?)"


def param_ref(name: str) -> str:
    return f"${{trialParameters.{name}}}"


def experiment_name(study: str) -> str:
    """A Katib Experiment name (DNS-1035, at most ``MAX_NAME``) for ``sweep.study_name``."""
    name = pytorchjob.job_name(study)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(study.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def _text(key: str, value: Any) -> str:
    """A choice value as Katib passes it (a string), refused unless it reads back unchanged."""
    text = value if isinstance(value, str) else json.dumps(value)
    if not _SAFE_VALUE.match(text) or yaml.safe_load(text) != value:
        raise ConfigError(
            f"sweep.space.{key}.values: {value!r} cannot be a Katib trial parameter (it goes "
            "through a shell and back through YAML); use letters, digits and . _ + - only"
        )
    return text


def parameter(key: str, spec: dict[str, Any], sampler: str) -> dict[str, Any]:
    """One dimension of ``sweep.space`` as a Katib ``ParameterSpec``."""
    kind = spec["type"]
    if kind == "choice":
        values = [_text(key, v) for v in spec["values"]]
        if len(set(values)) != len(values):
            raise ConfigError(f"sweep.space.{key}.values: a value is repeated; Katib needs a set")
        return {"name": key, "parameterType": "categorical", "feasibleSpace": {"list": values}}
    if kind == "int":
        space = {"min": str(spec["low"]), "max": str(spec["high"])}
        if sampler == "grid":
            space["step"] = "1"
        return {"name": key, "parameterType": "int", "feasibleSpace": space}
    distribution = "logUniform" if kind == "loguniform" else "uniform"
    space = {"min": repr(float(spec["low"])), "max": repr(float(spec["high"]))}
    return {
        "name": key,
        "parameterType": "double",
        "feasibleSpace": {**space, "distribution": distribution},
    }


def _trainer_container(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The dicts holding the trainer's ``args`` and ``env``: each replica's container of a
    PyTorchJob, the ``trainer`` of a TrainJob."""
    if job["kind"] == "TrainJob":
        return [job["spec"]["trainer"]]
    replicas = job["spec"]["pytorchReplicaSpecs"].values()
    return [r["template"]["spec"]["containers"][0] for r in replicas]


def _primary(cfg: Config, job: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The container and pod labels of rank 0, where the metrics are printed and collected."""
    if job["kind"] == "TrainJob":
        return trainjob.CONTAINER, {
            "jobset.sigs.k8s.io/replicatedjob-name": trainjob.REPLICATED_JOB,
            "batch.kubernetes.io/job-completion-index": "0",
        }
    if pytorchjob.is_elastic(cfg):  # workers only: rank 0 is worker 0
        return pytorchjob.CONTAINER, {
            "training.kubeflow.org/replica-type": "worker",
            "training.kubeflow.org/replica-index": "0",
        }
    return pytorchjob.CONTAINER, {"training.kubeflow.org/replica-type": "master"}


def _conditions(kind: str) -> dict[str, str]:
    """Katib's own defaults for these kinds, written out so the manifest says what it waits on."""
    done = "Complete" if kind == "TrainJob" else "Succeeded"
    return {
        "successCondition": f'status.conditions.#(type=="{done}")#|#(status=="True")#',
        "failureCondition": 'status.conditions.#(type=="Failed")#|#(status=="True")#',
    }


def render(
    cfg: Config, tokenized_dir: Path, out_dir: Path, *, root: Path | None = None
) -> list[dict[str, Any]]:
    """The params ConfigMap and the Experiment (checked); ``out_dir`` holds ``trials/``."""
    sw, la = cfg.sweep, cfg.launch
    if sw.step != "pretrain":
        raise ConfigError(
            f"sweep.step: {sw.step!r} has no Katib trial; Katib trials run the pretrain job "
            "(sweep a finetune step locally with `lmforge sweep`)"
        )
    from lmforge.sweep.run import objective_keys

    if sw.objective not in objective_keys("pretrain"):
        raise ConfigError(
            f"sweep.objective: {sw.objective!r} is not in pretrain's metrics.json; choose one of "
            f"{', '.join(objective_keys('pretrain'))}"
        )
    if sw.objective.startswith("val_") and cfg.pretrain.eval_every == 0:
        raise ConfigError(
            f"sweep.objective: {sw.objective} is printed at evaluations, and pretrain.eval_every "
            "is 0; set pretrain.eval_every > 0 (the last step always evaluates)"
        )
    name = experiment_name(sw.study_name)
    trials = Path(out_dir) / "trials" / param_ref(TRIAL_NAME)
    backend = trainjob if la.api == "trainjob" else pytorchjob
    configmap, job = backend.render(cfg, tokenized_dir, trials, root=root, run_name=name)
    if "model.preset" in sw.space:  # the preset's shape keys written out would beat --set
        from lmforge.launch.pytorchjob import PARAMS_FILE
        from lmforge.sweep.space import without_preset_shape

        params = yaml.safe_load(configmap["data"][PARAMS_FILE])
        params["model"] = without_preset_shape(params["model"])
        configmap["data"][PARAMS_FILE] = yaml.safe_dump(params, sort_keys=False)
    job = json.loads(json.dumps(job))  # replicas share one template object: edit copies
    job["metadata"] = {"labels": job["metadata"]["labels"]}  # Katib names the trial's job
    context = {"lmforge.sweep.study": sw.study_name, "lmforge.sweep.trial": param_ref(TRIAL_NAME)}
    sets = [a for key in sw.space for a in ("--set", f"{key}={param_ref(key)}")]
    for holder in _trainer_container(job):
        holder["args"] = [*holder["args"], *sets]
        holder["env"] = [
            *holder.get("env", []),
            {"name": METRICS_ENV, "value": "1"},
            {"name": "MLFLOW_RUN_CONTEXT", "value": json.dumps(context)},  # tags each trial
        ]
    container, labels = _primary(cfg, job)
    trial_parameters = [
        {"name": TRIAL_NAME, "description": "the trial's name", "reference": "${trialSpec.Name}"},
        *({"name": k, "description": f"{k} (sweep.space)", "reference": k} for k in sw.space),
    ]
    n_trials = sw.n_trials
    parallel = min(int(getattr(sw, "parallelism", 1)), n_trials)
    spec: dict[str, Any] = {
        "maxTrialCount": n_trials,
        "parallelTrialCount": parallel,
        "maxFailedTrialCount": n_trials,  # as the local sweep: failed trials do not stop it
        "objective": {
            "type": sw.goal,
            "objectiveMetricName": sw.objective,
            "metricStrategies": [{"name": sw.objective, "value": "latest"}],
        },
        "algorithm": {"algorithmName": sw.sampler},
        "parameters": [parameter(k, s, sw.sampler) for k, s in sw.space.items()],
        "metricsCollectorSpec": {
            "collector": {"kind": "StdOut"},
            "source": {"filter": {"metricsFormat": [METRICS_FILTER]}},
        },
        "trialTemplate": {
            "primaryContainerName": container,
            "primaryPodLabels": labels,
            **_conditions(job["kind"]),
            "trialParameters": trial_parameters,
            "trialSpec": job,
        },
    }
    if sw.sampler == "tpe":  # hyperopt's TPE: the same seed, the same points
        spec["algorithm"]["algorithmSettings"] = [{"name": "random_state", "value": str(sw.seed)}]
    experiment = {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {
            "name": name,
            "namespace": la.namespace,
            "labels": configmap["metadata"]["labels"],
        },
        "spec": spec,
    }
    check(experiment)
    return [configmap, experiment]


def trial_job(
    experiment: dict[str, Any], values: dict[str, Any], trial: str | None = None
) -> dict[str, Any]:
    """The job Katib would create for one trial: the template with ``values`` (parameter name
    -> value) and the trial's name substituted, named and placed as Katib does."""
    trial = trial or f"{experiment['metadata']['name']}-sample00"
    template = experiment["spec"]["trialTemplate"]
    text = json.dumps(template["trialSpec"])
    for p in template["trialParameters"]:
        value = trial if p["reference"] == "${trialSpec.Name}" else values[p["reference"]]
        text = text.replace(param_ref(p["name"]), value if isinstance(value, str) else str(value))
    job = json.loads(text)
    job["metadata"].update(name=trial, namespace=experiment["metadata"]["namespace"])
    return job


def check(experiment: dict[str, Any]) -> None:
    """What Katib would refuse, said before sending (module doc)."""
    name = experiment["metadata"]["name"]
    where = f"Experiment {name}"
    if len(name) > 40 or not _NAME.match(name):
        raise LaunchError(f"{where}: not a DNS-1035 label of at most 40 characters")
    spec = experiment["spec"]
    if spec["parallelTrialCount"] > spec["maxTrialCount"]:
        raise LaunchError(f"{where}: parallelTrialCount above maxTrialCount")
    template = spec["trialTemplate"]
    if {"name", "namespace"} & set(template["trialSpec"].get("metadata", {})):
        raise LaunchError(f"{where}: the trial template may not set a name or namespace")
    text = json.dumps(template["trialSpec"])
    for p in template["trialParameters"]:
        if param_ref(p["name"]) not in text:
            raise LaunchError(f"{where}: trial parameter {p['name']} is not used by the template")
        text = text.replace(param_ref(p["name"]), "x")
    if _PARAM_REF.search(text):
        raise LaunchError(f"{where}: {_PARAM_REF.search(text)[0]} is not a trial parameter")
    model = _round_trip(experiment)
    if model != experiment:
        raise LaunchError(
            f"{where}: fields unknown to the kubeflow-katib models (a misspelt key?): "
            f"{_first_difference(experiment, model)}; `lmforge sweep --render` prints it"
        )


def _round_trip(obj: dict[str, Any]) -> dict[str, Any]:
    try:
        from kubeflow.katib import ApiClient
    except ImportError as exc:
        raise LaunchError(
            f"the kubeflow-katib models are not installed ({exc}); run `make install` or "
            "`pip install --no-deps kubeflow-katib==0.19.0` (its protobuf pin is older than kfp's)"
        ) from None

    class _Response:  # what ApiClient.deserialize reads: the body as JSON text
        data = json.dumps(obj)

    client = ApiClient()
    return client.sanitize_for_serialization(client.deserialize(_Response(), "V1beta1Experiment"))


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            if key not in b:
                return f"{path}.{key}".lstrip(".")
            found = _first_difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
    elif a != b:
        return path.lstrip(".") or "(root)"
    return ""


def render_yaml(cfg: Config, tokenized_dir: Path, out_dir: Path) -> str:
    """What ``lmforge sweep --render`` prints (``kubectl apply -f -`` ready)."""
    return pytorchjob.to_yaml(render(cfg, tokenized_dir, out_dir))
