"""Registration and promotion against a real MLflow registry (embedded sqlite and a server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from lmforge import tracking
from lmforge.errors import RegistryError
from lmforge.registry import (
    LOCK_SUFFIX,
    METRIC_TAG,
    gate,
    promote,
    promotion_lock,
    register,
)

LMFORGE = shutil.which("lmforge") or str(Path(sys.executable).parent / "lmforge")


# --------------------------------------------------------------------------------------------
# The gate, case by case
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "passed", "failing"),
    [
        ({"macro_f1": 0.80}, {"macro_f1": 0.70}, 0.0, True, []),  # better
        ({"macro_f1": 0.65}, {"macro_f1": 0.70}, 0.0, False, ["margin"]),  # worse
        ({"macro_f1": 0.71}, {"macro_f1": 0.70}, 0.02, False, ["margin"]),  # equal within margin
        ({"macro_f1": 0.70}, {"macro_f1": 0.70}, 0.0, False, ["margin"]),  # a tie is no gain
        ({"macro_f1": 0.80}, None, 0.0, True, []),  # missing champion: threshold only
        ({"macro_f1": 0.50}, None, 0.0, False, ["threshold"]),  # below the absolute threshold
        ({"accuracy": 0.90}, {"macro_f1": 0.70}, 0.0, False, ["metric"]),  # missing metric
        ({"macro_f1": 0.80}, {"accuracy": 0.9}, 0.0, False, ["champion"]),  # champion lacks it
    ],
)
def test_gate_cases(challenger, champion, margin, passed, failing):
    checks = gate("macro_f1", challenger, champion, threshold=0.6, margin=margin)
    assert all(c.passed for c in checks) is passed
    assert [c.name for c in checks if not c.passed] == failing


def test_gate_lower_is_better_for_perplexity():
    better = gate("perplexity", {"perplexity": 40.0}, {"perplexity": 50.0}, 100.0, 1.0)
    worse = gate("perplexity", {"perplexity": 60.0}, {"perplexity": 50.0}, 100.0, 1.0)
    too_high = gate("perplexity", {"perplexity": 140.0}, None, 100.0, 0.0)
    assert all(c.passed for c in better)
    assert [c.name for c in worse if not c.passed] == ["margin"]
    assert "40.0000 vs champion 50.0000" in better[-1].detail
    assert [c.name for c in too_high if not c.passed] == ["threshold"]


# --------------------------------------------------------------------------------------------
# Against the registry
# --------------------------------------------------------------------------------------------


def _register(cfg, stages, out: Path):
    return register(cfg, stages["pretrain"], stages["finetune"], stages["evaluate"], out)


def _add_version(cfg, name: str, metrics: dict[str, float], challenger: bool = True) -> str:
    """A new version of ``name`` on the files of version 1 with other evaluation numbers."""
    client = tracking.client(cfg)
    first = client.get_model_version(name, "1")
    tags = {METRIC_TAG + k: repr(v) for k, v in metrics.items()}
    mv = client.create_model_version(name, first.source, run_id=first.run_id, tags=tags)
    if challenger:
        client.set_registered_model_alias(name, cfg.register.challenger_alias, mv.version)
    return str(mv.version)


def _aliases(cfg, name: str) -> dict[str, str]:
    aliases = tracking.client(cfg).get_registered_model(name).aliases
    return {alias: str(version) for alias, version in aliases.items()}


def _predicts_through_alias(name: str, alias: str) -> None:
    uri = f"models:/{name}@{alias}"
    texts = ["claim your free cash prize now", "lunch meeting tomorrow with the family"]
    out = mlflow.pyfunc.load_model(uri).predict(texts)
    assert list(out["label"]) and set(out["label"]) <= {"ham", "spam"}
    assert len(out) == len(texts)
    pipe = mlflow.transformers.load_model(uri)
    assert pipe(texts[0])[0]["label"] in {"ham", "spam"}


@pytest.mark.slow
def test_register_tags_versions_with_lineage_metrics_and_challenger(
    embedded_store, trained_stages, tmp_path
):
    cfg = embedded_store
    result = _register(cfg, trained_stages, tmp_path / "register")

    saved = json.loads((tmp_path / "register" / "registered.json").read_text())
    assert saved["classifier"]["version"] == result.classifier.version == "1"
    client = tracking.client(cfg)
    report = json.loads((trained_stages["evaluate"] / "report.json").read_text())
    for entry, name, metric in (
        (result.lm, cfg.register.lm_model_name, "perplexity"),
        (result.classifier, cfg.register.classifier_model_name, "macro_f1"),
    ):
        assert _aliases(cfg, name) == {"challenger": entry.version}
        tags = client.get_model_version(name, entry.version).tags
        for key in ("lmforge.git_commit", "lmforge.data_version", "lmforge.params_hash",
                    "lmforge.pipeline_run_id", "lmforge.parent_run_id"):  # fmt: skip
            assert tags[key], key
        section = "lm" if metric == "perplexity" else "classifier"
        assert float(tags[METRIC_TAG + metric]) == pytest.approx(report[section][metric])
    run = client.get_run(result.run_id)
    assert run.data.tags["mlflow.parentRunId"] == tags["lmforge.parent_run_id"]
    assert run.data.tags["lmforge.stage"] == "register"
    assert run.data.metrics["classifier.macro_f1"] == pytest.approx(report["classifier"]["macro_f1"])  # fmt: skip
    # The LM predicts through the registry too (text generation, greedy).
    lm = mlflow.pyfunc.load_model(f"models:/{cfg.register.lm_model_name}@challenger")
    text = lm.predict(["The king"], params={"max_new_tokens": 4})
    assert isinstance(text[0], str) and text[0].startswith("The king")


def _cli_promote(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [LMFORGE, "promote", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.slow
def test_promotion_gate_idempotence_rollback_and_loading(embedded_store, trained_stages, tmp_path):
    cfg = embedded_store
    name = cfg.register.classifier_model_name
    _register(cfg, trained_stages, tmp_path / "register")
    first = float(tracking.client(cfg).get_model_version(name, "1").tags[METRIC_TAG + "macro_f1"])

    # No champion yet: the threshold alone decides.
    assert promote(cfg, name).action == "promoted"
    assert _aliases(cfg, name)["champion"] == "1"
    # Promoting the champion again changes nothing.
    again = promote(cfg, name)
    assert (again.action, again.champion) == ("unchanged", "1")

    # Better: the champion moves, the old one keeps `previous`.
    v2 = _add_version(cfg, name, {"macro_f1": min(first + 0.05, 1.5), "accuracy": 0.9})
    result = promote(cfg, name)
    assert (result.action, result.champion, result.previous) == ("promoted", v2, "1")
    assert _aliases(cfg, name) == {"champion": v2, "previous": "1", "challenger": v2}

    # Worse, equal within margin, missing metric: refused with the numbers; nothing moves.
    worse = _add_version(cfg, name, {"macro_f1": first - 0.2})
    proc = _cli_promote("--model", name)  # the CLI as users run it: exit 1, one message
    assert proc.returncode == 1
    assert f"version {worse} not promoted" in proc.stderr
    assert f"vs champion {first + 0.05:.4f}" in proc.stderr

    close = _add_version(cfg, name, {"macro_f1": first + 0.06})
    with pytest.raises(RegistryError, match=r"margin.*must exceed margin 0\.0500"):
        promote(_with(cfg, "register.promote_margin=0.05"), name)
    bare = _add_version(cfg, name, {})
    with pytest.raises(RegistryError, match="challenger has no 'macro_f1'"):
        promote(cfg, name, version=bare)
    assert _aliases(cfg, name)["champion"] == v2
    assert close != v2

    # models:/NAME@champion predicts through both loaders.
    _predicts_through_alias(name, "champion")

    # Rollback restores `previous`; with nothing further back, a second rollback refuses.
    back = promote(cfg, name, rollback=True)
    assert (back.action, back.champion, back.previous) == ("rolled_back", "1", None)
    assert "previous" not in _aliases(cfg, name)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        promote(cfg, name, rollback=True)
    assert not _lock_models(cfg)


def _with(cfg, *overrides: str):
    from dataclasses import replace

    from lmforge.config import parse_override

    reg = cfg.register
    for item in overrides:
        keys, value = parse_override(item)
        reg = replace(reg, **{keys[1]: value})
    return replace(cfg, register=reg)


def _lock_models(cfg) -> list[str]:
    models = tracking.client(cfg).search_registered_models()
    return [m.name for m in models if m.name.endswith(LOCK_SUFFIX)]


RACER = """
import sys, time
from pathlib import Path
from lmforge.config import load_config
from lmforge.errors import RegistryError
from lmforge.registry import promote
cfg = load_config(None)
barrier, me, n = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
(barrier / me).touch()  # imports done: wait for the others, then promote together
while len(list(barrier.iterdir())) < n:
    time.sleep(0.002)
try:
    print(promote(cfg, cfg.register.classifier_model_name, version=sys.argv[1]).action)
except RegistryError as exc:
    print("refused", exc)
"""


def _race(versions: list[str], barrier: Path) -> list[str]:
    """Promote each of ``versions`` from its own process, all released at the same moment."""
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, v, str(barrier), str(i), str(len(versions))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, v in enumerate(versions)
    ]
    outcome = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outcome.append(out.strip().splitlines()[-1])
    return outcome


@pytest.mark.slow
def test_two_concurrent_promotions_leave_exactly_one_champion(
    embedded_store, trained_stages, tmp_path
):
    cfg = embedded_store
    name = cfg.register.classifier_model_name
    _register(cfg, trained_stages, tmp_path / "register")
    promote(cfg, name, version="1")
    first = float(tracking.client(cfg).get_model_version(name, "1").tags[METRIC_TAG + "macro_f1"])
    good = _add_version(cfg, name, {"macro_f1": first + 0.1}, challenger=False)
    best = _add_version(cfg, name, {"macro_f1": first + 0.2}, challenger=False)

    # Two different challengers at once: serialised by the lock, the best one always wins,
    # and the loser is judged against the winner, never against the stale champion.
    outcome = dict(zip([good, best], _race([good, best], tmp_path / "race1"), strict=True))
    aliases = _aliases(cfg, name)
    assert aliases["champion"] == best
    assert outcome[best] == "promoted"
    if outcome[good] == "promoted":  # ran first: it became `previous`
        assert aliases["previous"] == good
    else:  # ran second: refused against the new champion
        assert outcome[good].startswith("refused") and "vs champion" in outcome[good]
        assert aliases["previous"] == "1"

    # The same version twice at once: one promotion, one no-op, history recorded once.
    top = _add_version(cfg, name, {"macro_f1": first + 0.3}, challenger=False)
    outcome = _race([top, top], tmp_path / "race2")
    assert sorted(outcome) == ["promoted", "unchanged"]
    history = json.loads(tracking.client(cfg).get_registered_model(name).tags["lmforge.champion_history"])  # fmt: skip
    assert history.count(top) == 1
    assert _aliases(cfg, name)["champion"] == top
    assert not _lock_models(cfg)


@pytest.mark.slow
def test_promotion_waits_for_the_lock_then_says_who_holds_it(embedded_store, trained_stages, tmp_path):  # fmt: skip
    cfg = embedded_store
    name = cfg.register.classifier_model_name
    _register(cfg, trained_stages, tmp_path / "register")
    with promotion_lock(tracking.client(cfg), name, timeout_s=5):
        with pytest.raises(RegistryError, match="another promotion holds the lock"):
            promote(_with(cfg, "register.lock_timeout_s=0.5"), name)
        assert "champion" not in _aliases(cfg, name)
    assert promote(cfg, name).action == "promoted"  # released on exit


def test_promote_unknown_model_names_it(embedded_store):
    with pytest.raises(RegistryError, match="'nope' is not in the registry"):
        promote(embedded_store, "nope")


@pytest.mark.slow
def test_register_and_promote_through_a_tracking_server(server_store, trained_stages, tmp_path):
    cfg = server_store
    assert tracking.tracking_uri(cfg).startswith("http://127.0.0.1:")
    result = _register(cfg, trained_stages, tmp_path / "register")
    name = cfg.register.classifier_model_name
    assert promote(cfg, name).champion == result.classifier.version
    # Artifacts went through the server (mlflow-artifacts), not to a local folder of ours.
    source = tracking.client(cfg).get_model_version(name, result.classifier.version).source
    assert source.startswith("models:/")
    _predicts_through_alias(name, "champion")
