"""The scaling study: the L(N, D) fit on losses from a known law, the compute-optimal N and D
against a brute-force search, bad ladders refused, and a micro ladder of real pretrain runs end
to end (3 sizes x 2 budgets, a few steps each, one MLflow parent with a nested run per rung)."""

from __future__ import annotations

import csv
import json
import shutil

import mlflow
import numpy as np
import pytest

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import ConfigError, TrainingError
from lmforge.outputs import write_json
from lmforge.sweep.scaling import (
    RungResult,
    finished,
    plan,
    rung_dir,
    rung_result,
    rung_row,
    scaling_study,
)
from lmforge.sweep.scaling_law import CHINCHILLA, ScalingLaw, fit_scaling_law
from lmforge.train.synthetic import write_synthetic_tokenized

KNOWN = ScalingLaw(E=2.0, A=80.0, B=600.0, alpha=0.45, beta=0.35)
GRID_N, GRID_D = np.geomspace(1e5, 1e7, 5), np.geomspace(1e6, 1e8, 3)  # a 5 x 3 ladder


def ladder(law: ScalingLaw, noise: float = 0.0, seed: int = 0) -> list[tuple[float, ...]]:
    rng = np.random.default_rng(seed)
    return [
        (n, d, float(law.loss(n, d)) * float(np.exp(rng.normal(0, noise)) if noise else 1.0))
        for n in GRID_N
        for d in GRID_D
    ]


@pytest.mark.parametrize("use_scipy", [True, False], ids=["scipy", "numpy"])
def test_fit_recovers_the_law_that_made_the_losses(use_scipy):
    for law in (KNOWN, ScalingLaw(**CHINCHILLA)):
        fit = fit_scaling_law(ladder(law), n_starts=4, use_scipy=use_scipy)
        assert fit.law.alpha == pytest.approx(law.alpha, abs=1e-3)
        assert fit.law.beta == pytest.approx(law.beta, abs=1e-3)
        assert abs(fit.law.E / law.E - 1) < 1e-3
        assert fit.rmse_log < 1e-5 and fit.at_bounds == []
    # With 0.3% noise on each loss, the exponents are still close, and the fit says how close.
    fit = fit_scaling_law(
        ladder(KNOWN, noise=0.003), n_starts=4, n_bootstrap=4, use_scipy=use_scipy
    )
    assert fit.law.alpha == pytest.approx(0.45, abs=0.05)
    assert fit.law.beta == pytest.approx(0.35, abs=0.05)
    low, high = fit.bootstrap["beta"]  # 5-95% of 4 refits: a range, and a narrow one here
    assert 0 < high - low < 0.1 and fit.n_bootstrap == 4


def test_fit_refuses_too_few_points():
    with pytest.raises(TrainingError, match="at least 5 points"):
        fit_scaling_law(ladder(KNOWN)[:4])
    same_d = [(n, 1e6, float(KNOWN.loss(n, 1e6))) for n in GRID_N]
    with pytest.raises(TrainingError, match="2 distinct N and 2 distinct D"):
        fit_scaling_law(same_d)


@pytest.mark.parametrize("flops", [1e15, 1e18, 1e21])
def test_compute_optimal_is_the_minimum_along_the_iso_flop_line(flops):
    for law in (KNOWN, ScalingLaw(**CHINCHILLA)):
        n_opt, d_opt = law.compute_optimal(flops)
        assert 6 * n_opt * d_opt == pytest.approx(flops)
        n = np.geomspace(n_opt / 100, n_opt * 100, 200_001)
        brute = n[np.argmin(law.loss(n, flops / (6 * n)))]
        assert n_opt == pytest.approx(brute, rel=1e-3)
    # 10x the compute: N grows by 10^(beta / (alpha + beta)), D by the rest.
    (n_1, d_1), (n_10, d_10) = KNOWN.compute_optimal(flops), KNOWN.compute_optimal(10 * flops)
    assert n_10 / n_1 == pytest.approx(10 ** (0.35 / 0.8))
    assert d_10 / d_1 == pytest.approx(10 ** (0.45 / 0.8))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ('sweep.scaling_sizes=["cpu-tiny"]', "scaling_sizes: needs at least 2 sizes"),
        ('sweep.scaling_sizes=["cpu-tiny", "cpu-huge"]', "scaling_sizes[1]: unknown preset"),
        ('sweep.scaling_sizes=["cpu-tiny", {"width": 64}]', "scaling_sizes[1].width: not a shape"),
        ('sweep.scaling_sizes=["cpu-tiny", {"n_layers": 0}]', "n_layers: 0 must be >= 1"),
        ("sweep.scaling_tokens=[1000, 1000]", "at least 2 different token budgets"),
        ('sweep.scaling_sizes=["cpu-tiny", "cpu-small"];sweep.scaling_tokens=[9, 99]', "5 rungs"),
        ('sweep.scaling_sizes="cpu-tiny"', "sweep.scaling_sizes: expected list"),
        ("sweep.scaling_flops=0", "sweep.scaling_flops: 0.0 is out of range"),
    ],
)
def test_bad_ladder_is_a_config_error_naming_the_key(item, message):
    with pytest.raises(ConfigError, match=r"sweep\.scaling") as err:
        load_config(None, item.split(";"))
    assert message in str(err.value)


def test_a_shape_the_model_refuses_stops_the_study_before_any_rung(tmp_path):
    data = write_synthetic_tokenized(tmp_path / "tok", n_blocks={"train": 8, "validation": 4})
    bad = '[{"n_layers": 1, "d_model": 32, "n_heads": 2}, {"n_layers": 1, "d_model": 30}]'
    cfg = load_config(None, [f"sweep.scaling_sizes={bad}"])
    with pytest.raises(ConfigError, match=r"sweep\.scaling_sizes\[1\]: .*model.n_heads"):
        plan(cfg, data)
    with pytest.raises(ConfigError, match="--flops"):
        scaling_study(load_config(None, []), tmp_path / "out", data, flops=-1.0)
    assert not (tmp_path / "out").exists()


MICRO = [
    "model.max_seq_len=32",
    "pretrain.micro_batch_size=4",  # 128 tokens a step
    "pretrain.max_steps=10",
    "pretrain.warmup_steps=1",  # warmup: a tenth of each rung's steps
    "pretrain.eval_batches=1",
    "pretrain.precision=fp32",
    "pretrain.lr=0.01",
    'sweep.scaling_sizes=[{"n_layers": 1, "d_model": 16, "n_heads": 2}, '
    '{"n_layers": 1, "d_model": 32, "n_heads": 2}, {"n_layers": 2, "d_model": 48, "n_heads": 2}]',
    "sweep.scaling_tokens=[640, 1280]",  # 5 and 10 steps
    "sweep.scaling_bootstrap=4",
    "sweep.scaling_flops=1e9",
]


@pytest.mark.slow
def test_micro_ladder_end_to_end_through_the_cli(tmp_path, blank_store_db, monkeypatch, capsys):
    shutil.copyfile(blank_store_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = write_synthetic_tokenized(tmp_path / "tok", n_blocks={"train": 64, "validation": 8})
    args = ["sweep", "--scaling", "--out", str(tmp_path / "out"), "--tokenized", str(data)]
    for item in [*MICRO, f"tracking.artifact_location={tmp_path / 'a'}"]:
        args += ["--set", item]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    result = json.loads(capsys.readouterr().out)
    out = tmp_path / "out" / "scaling"

    table = list(csv.DictReader((out / "rungs.csv").open()))
    assert [r["state"] for r in table] == ["COMPLETE"] * 6
    assert [int(r["tokens_seen"]) for r in table] == [640, 1280] * 3  # D: tokens trained on
    n = [int(r["n_non_embedding"]) for r in table]
    assert n[0] == n[1] < n[2] == n[3] < n[4] == n[5]
    # non-embedding: one layer of width 16 = attention 4*16^2 + SwiGLU 3*16*64 + 2 norms, + norm
    assert n[0] == 4 * 16**2 + 3 * 16 * 64 + 2 * 16 + 16
    assert int(table[0]["n_total"]) == n[0] + 128 * 16  # + the tied embedding (vocabulary 128)
    for row in table:  # each rung's point is its own pretrain run's final validation loss
        metrics = json.loads(
            (out / "rungs" / f"rung-{int(row['rung']):02d}" / "metrics.json").read_text()
        )
        assert float(row["val_loss"]) == pytest.approx(metrics["val_loss"], abs=1e-5)

    report = json.loads((out / "report.json").read_text())
    law = ScalingLaw(**report["law"])
    n_opt, d_opt = law.compute_optimal(1e9)
    assert result["compute_optimal"]["n"] == pytest.approx(n_opt)
    assert 6 * n_opt * d_opt == pytest.approx(1e9)
    assert report["n_count"] == "non_embedding" and report["trust"]["points"] == 6
    assert report["fit"]["n_bootstrap"] == 4
    text = (out / "report.md").read_text()
    assert "| alpha |" in text and "0.34" in text and "How far to trust it" in text
    for plot in ("scaling.png", "isoflop.png"):
        assert (out / "plots" / plot).stat().st_size > 5000

    client = mlflow.MlflowClient()
    parent = client.get_run(result["mlflow_parent_run_id"])
    assert parent.info.run_name == "scaling-lmforge-sweep"
    assert parent.data.metrics["scaling_alpha"] == pytest.approx(law.alpha)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_rung = {int(r.data.tags["lmforge.sweep.trial"]): r for r in runs}
    assert sorted(by_rung) == list(range(6))
    assert by_rung[4].data.params["scaling.n_non_embedding"] == str(n[4])
    assert by_rung[4].data.params["model.d_model"] == "48"
    assert by_rung[5].data.params["pretrain.max_steps"] == "10"

    # A rerun with the same ladder reuses every finished rung and refits.
    again = scaling_study(
        load_config(None, [*MICRO, f"tracking.artifact_location={tmp_path / 'a'}"]), out, data
    )
    assert again.ran_now == 0 and again.law == report["law"]


def test_a_rung_row_survives_kfp_numbers(tmp_path):
    """A KFP rung task's row comes back with every number a double (protobuf Struct) and the
    rung as JSON text; ``rung_result`` rebuilds the very rung, so the report prints ints."""
    data = write_synthetic_tokenized(tmp_path / "tok", n_blocks={"train": 8, "validation": 2})
    rung = plan(load_config(None, MICRO), data)[3]
    row = rung_row(RungResult(rung=rung, state="COMPLETE", val_loss=4.5, tokens_seen=1280))
    as_kfp = json.loads(json.dumps(row), parse_int=float)  # what a Struct gives back
    assert isinstance(as_kfp["rung"]["steps"], float)
    for sent in (as_kfp, {**as_kfp, "rung": json.dumps(row["rung"])}):
        back = rung_result(sent)
        assert back.rung == rung and isinstance(back.rung.shape["d_model"], int)
        assert (back.tokens_seen, back.val_loss, back.state) == (1280, 4.5, "COMPLETE")


@pytest.mark.parametrize(
    "change",
    ["pretrain.lr=0.02", "pretrain.seed=7", "pretrain.precision=bf16", "re-tokenized"],
)
def test_a_finished_rung_is_reused_only_for_the_same_data_and_training(tmp_path, change):
    """Issue 27, finding 8: the plan had no data digest, lr, seed or precision, so a rerun after
    re-tokenizing (or with another lr) reused the old rungs and the fit mixed old and new points."""
    data = write_synthetic_tokenized(tmp_path / "tok", n_blocks={"train": 8, "validation": 4})
    cfg = load_config(None, MICRO)
    out = tmp_path / "out"
    rung = plan(cfg, data)[0]
    rung_dir(out, rung).mkdir(parents=True)
    done = RungResult(rung=rung, state="COMPLETE", val_loss=3.25, tokens_seen=rung.tokens)
    write_json(rung_dir(out, rung) / "rung.json", rung_row(done))
    assert finished(out, plan(cfg, data)[0]).val_loss == 3.25  # the same plan: reused

    if change == "re-tokenized":  # same shapes and sizes, other tokens
        data = write_synthetic_tokenized(data, n_blocks={"train": 8, "validation": 4}, seed=1)
    else:
        cfg = load_config(None, [*MICRO, change])
    again = plan(cfg, data)[0]
    assert (again.size, again.steps, again.n_total) == (rung.size, rung.steps, rung.n_total)
    assert finished(out, again) is None  # run again, not reused
