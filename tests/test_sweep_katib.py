"""``lmforge sweep --render``: the Katib Experiment, checked through the kubeflow-katib models,
and each trial's job (sample values substituted as Katib would) against its CRD schema; the
trainer's ``name=value`` lines read with Katib's own StdOut filter."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from k8s_schema import errors

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.model import load_presets
from lmforge.errors import ConfigError, LaunchError
from lmforge.launch import trainjob
from lmforge.sweep import katib

# Katib v0.19.0, pkg/metricscollector/v1beta1/common/const.go: DefaultFilter.
KATIB_FILTER = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")
SPACE = {
    "pretrain.lr": {"type": "loguniform", "low": 5e-4, "high": 8e-3},
    "pretrain.weight_decay": {"type": "uniform", "low": 0.0, "high": 0.2},
    "pretrain.warmup_steps": {"type": "int", "low": 0, "high": 112},
    "pretrain.precision": {"type": "choice", "values": ["fp32", "bf16"]},
}
SAMPLE = {
    "pretrain.lr": "0.0012",
    "pretrain.weight_decay": "0.05",
    "pretrain.warmup_steps": "7",
    "pretrain.precision": "bf16",
}
SHAPES = {
    "pytorchjob": ["launch.api=pytorchjob"],
    "pytorchjob-elastic": [
        "launch.api=pytorchjob",
        "launch.nnodes=2",
        "launch.elastic_min_nodes=1",
        "launch.elastic_max_nodes=3",
    ],
    "trainjob": ["launch.api=trainjob"],
    "gpu-trainjob": [
        "launch.api=trainjob",
        "model.preset=gpu-125m",
        "launch.gpus_per_node=8",
        "launch.nproc_per_node=8",
    ],
    "gpu-pytorchjob": [
        "model.preset=gpu-1b",
        "launch.gpus_per_node=8",
        "launch.nproc_per_node=8",
        "launch.nnodes=4",
    ],
}


def experiment(*extra: str, space=SPACE):
    cfg = load_config(None, [f"sweep.space={json.dumps(space)}", *extra])
    configmap, exp = katib.render(
        cfg, Path("outputs/tokenized"), Path("outputs/sweep"), root=Path.cwd()
    )
    return cfg, configmap, exp


def trainer_args(job) -> list[str]:
    if job["kind"] == "TrainJob":
        return job["spec"]["trainer"]["args"]
    master = next(iter(job["spec"]["pytorchReplicaSpecs"].values()))
    return master["template"]["spec"]["containers"][0]["args"]


def test_parameters_objective_and_algorithm_come_from_the_sweep_section():
    _, configmap, exp = experiment("sweep.n_trials=12", "sweep.seed=5", "launch.api=pytorchjob")
    spec = exp["spec"]
    assert exp["apiVersion"] == "kubeflow.org/v1beta1" and exp["kind"] == "Experiment"
    assert {p["name"]: (p["parameterType"], p["feasibleSpace"]) for p in spec["parameters"]} == {
        "pretrain.lr": ("double", {"min": "0.0005", "max": "0.008", "distribution": "logUniform"}),
        "pretrain.weight_decay": (
            "double",
            {"min": "0.0", "max": "0.2", "distribution": "uniform"},
        ),
        "pretrain.warmup_steps": ("int", {"min": "0", "max": "112"}),
        "pretrain.precision": ("categorical", {"list": ["fp32", "bf16"]}),
    }
    assert spec["algorithm"] == {
        "algorithmName": "tpe",
        "algorithmSettings": [{"name": "random_state", "value": "5"}],
    }
    assert (spec["maxTrialCount"], spec["parallelTrialCount"]) == (12, 1)
    assert spec["objective"]["type"] == "minimize"
    assert spec["objective"]["objectiveMetricName"] == "val_loss"
    assert spec["metricsCollectorSpec"] == {
        "collector": {"kind": "StdOut"},
        "source": {"filter": {"metricsFormat": [katib.METRICS_FILTER]}},
    }
    # every trial mounts the ConfigMap rendered beside the Experiment
    job = spec["trialTemplate"]["trialSpec"]
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    (params,) = [v for v in master["volumes"] if v["name"] == "params"]
    assert params["configMap"]["name"] == configmap["metadata"]["name"]
    assert errors(configmap) == []
    grid = experiment(
        "sweep.sampler=grid", space={"pretrain.warmup_steps": SPACE["pretrain.warmup_steps"]}
    )[2]["spec"]
    assert grid["algorithm"] == {"algorithmName": "grid"}
    assert grid["parameters"][0]["feasibleSpace"]["step"] == "1"


@pytest.mark.parametrize("shape", SHAPES)
def test_each_trial_job_validates_against_its_crd(shape):
    _, _, exp = experiment(*SHAPES[shape])
    katib.check(exp)  # the kubeflow-katib models and Katib's webhook rules
    job = katib.trial_job(exp, SAMPLE, "lmforge-sweep-x7k2p9qd")
    assert errors(job) == [], shape
    if job["kind"] == "TrainJob":
        trainjob.check(job)
    assert "${" not in json.dumps(job)
    args = trainer_args(job)
    assert args[args.index("--out") + 1].endswith("/outputs/sweep/trials/lmforge-sweep-x7k2p9qd")
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert sets == [f"{k}={v}" for k, v in SAMPLE.items()]
    trial_cfg = load_config(None, [*SHAPES[shape], *sets])  # what the trial trains with
    assert trial_cfg.pretrain.lr == 0.0012 and trial_cfg.pretrain.warmup_steps == 7
    assert trial_cfg.pretrain.precision == "bf16"
    template = exp["spec"]["trialTemplate"]
    assert template["primaryContainerName"] == ("node" if job["kind"] == "TrainJob" else "pytorch")


def test_gpu_preset_experiment_keeps_the_preset_and_the_gpus():
    gpu = ["model.preset=gpu-125m", "launch.gpus_per_node=8", "launch.nproc_per_node=8"]
    gpu.append("launch.api=pytorchjob")  # its trial's Master is read below
    _, configmap, exp = experiment(*gpu, space={"pretrain.lr": SPACE["pretrain.lr"]})
    assert yaml.safe_load(configmap["data"]["params.yaml"])["model"]["preset"] == "gpu-125m"
    job = katib.trial_job(exp, {"pretrain.lr": "0.001"})
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert master["command"] == ["torchrun"]  # 8 processes per node
    assert errors(job) == []


def test_a_ladder_of_gpu_presets_trains_each_trials_own_shape(tmp_path):
    gpu = ["launch.gpus_per_node=8", "launch.nproc_per_node=8"]
    ladder = {"model.preset": {"type": "choice", "values": ["gpu-125m", "gpu-1b"]}}
    _, configmap, exp = experiment(*gpu, "sweep.sampler=grid", space=ladder)
    params = tmp_path / "params.yaml"  # the ConfigMap, as the trial's pod mounts it
    params.write_text(configmap["data"]["params.yaml"])
    for preset in ("gpu-125m", "gpu-1b"):
        job = katib.trial_job(exp, {"model.preset": preset})
        assert errors(job) == []
        trial = load_config(params, [f"model.preset={preset}"])
        shape = load_presets()[preset]
        assert (trial.model.n_layers, trial.model.d_model) == (shape["n_layers"], shape["d_model"])


def test_a_misspelt_field_is_caught_by_the_katib_models():
    _, _, exp = experiment()
    exp["spec"]["objective"]["objectivMetricName"] = "val_loss"
    with pytest.raises(LaunchError, match=r"spec\.objective\.objectivMetricName"):
        katib.check(exp)
    _, _, exp = experiment()
    exp["spec"]["trialTemplate"]["trialSpec"]["metadata"]["name"] = "fixed"
    with pytest.raises(LaunchError, match="may not set a name"):
        katib.check(exp)


@pytest.mark.parametrize(
    ("space", "extra", "message"),
    [
        (
            {"pretrain.precision": {"type": "choice", "values": ["fp32", "a b"]}},
            [],
            r"sweep\.space\.pretrain\.precision\.values: 'a b' cannot be a Katib trial parameter",
        ),
        (
            {"model.init_std": {"type": "choice", "values": [0.02, 0.02]}},
            [],
            r"sweep\.space\.model\.init_std\.values: a value is repeated",
        ),
        (SPACE, ["sweep.step=finetune", "sweep.objective=val_macro_f1"], r"sweep\.step"),
        (SPACE, ["sweep.objective=macro_f1"], r"sweep\.objective: 'macro_f1' is not in"),
        (SPACE, ["pretrain.eval_every=0"], r"pretrain\.eval_every > 0"),
    ],
)
def test_a_space_katib_cannot_run_is_refused_naming_the_key(space, extra, message):
    with pytest.raises(ConfigError, match=message):
        experiment(*extra, space=space)


def test_long_study_names_give_valid_experiment_names():
    name = katib.experiment_name("My Very Long Study Name For The Width-384 Ladder, take 2")
    assert len(name) <= katib.MAX_NAME and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)


def test_cli_render_prints_the_configmap_and_the_experiment(capsys):
    try:
        main(["sweep", "--render", "--api", "trainjob", "--set", "sweep.n_trials=3"])
    except SystemExit as exc:
        assert exc.code == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Experiment"]
    assert docs[1]["spec"]["trialTemplate"]["trialSpec"]["kind"] == "TrainJob"
    assert docs[1]["spec"]["maxTrialCount"] == 3


def _katib_reads(log: str, metric: str, pattern=KATIB_FILTER) -> list[float]:
    """What Katib's text-format parser keeps: lines naming the metric, pairs by the filter."""
    return [float(v) for v in _katib_values(log, metric, pattern)]


def _katib_values(log: str, metric: str, pattern) -> list[str]:
    """The values as Katib stores them (text): its parser's ``kevList[2]`` of each match."""
    found = []
    for line in log.splitlines():
        if metric in line:
            found += [m.group(2) for m in pattern.finditer(line) if m.group(1) == metric]
    return found


def test_a_nan_final_evaluation_is_the_trials_result_not_an_earlier_value(
    embedded_store, tmp_path, monkeypatch, capfd
):
    """The tracker prints a NaN final ``val_loss`` as Katib's ``unavailable``, and the filter of
    the rendered Experiment reads it: the latest value (metricStrategies: latest) is then
    ``unavailable`` and the trial ends MetricsUnavailable instead of reporting 3.5."""
    from lmforge.train.tracker import TrainingTracker

    monkeypatch.setenv(katib.METRICS_ENV, "1")
    tracker = TrainingTracker(embedded_store, "pretrain", ("pretrain",), tmp_path / "out")
    tracker.log_metrics({"val_loss": 3.5, "val_perplexity": 33.1}, step=2)
    tracker.log_metrics({"val_loss": float("nan"), "val_perplexity": float("inf")}, step=4)
    tracker.close("FINISHED")
    out = capfd.readouterr().out
    _, _, exp = experiment()
    (filter_,) = exp["spec"]["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]
    assert _katib_values(out, "val_loss", re.compile(filter_)) == ["3.5", "unavailable"]
    assert _katib_values(out, "val_perplexity", re.compile(filter_))[-1] == "unavailable"


@pytest.mark.slow
def test_the_trainer_prints_the_objective_as_katib_reads_it(
    tmp_path, monkeypatch, capfd, blank_store_db
):
    """A micro pretrain with the template's environment: the last ``val_loss`` Katib reads
    (metricStrategies: latest) is the one in metrics.json."""
    from lmforge.train.pretrain import pretrain
    from lmforge.train.synthetic import write_synthetic_tokenized

    shutil.copyfile(blank_store_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(katib.METRICS_ENV, "1")
    data = write_synthetic_tokenized(tmp_path / "tok", n_blocks={"train": 32, "validation": 8})
    cfg = load_config(
        None,
        [
            "model.n_layers=1",
            "model.d_model=32",
            "model.n_heads=2",
            "model.max_seq_len=32",
            "pretrain.max_steps=4",
            "pretrain.micro_batch_size=4",
            "pretrain.warmup_steps=1",
            "pretrain.eval_every=2",
            "pretrain.eval_batches=1",
            "pretrain.ckpt_every=0",
            "pretrain.precision=fp32",
            "pretrain.num_threads=1",
            f"tracking.artifact_location={tmp_path / 'a'}",
        ],
    )
    pretrain(cfg, data, tmp_path / "out")
    out = capfd.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    seen = _katib_reads(out, "val_loss")
    assert len(seen) == 2  # at step 2 and at the last step
    assert seen[-1] == pytest.approx(metrics["val_loss"])
    assert _katib_reads(out, "train_loss")  # the other rows' metrics too
