"""Registration and promotion against a real MLflow registry: the embedded sqlite store, and
``mlflow server`` on sqlite and on PostgreSQL (production's backend) for the registry-state tests
(``STORES``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from serve_fixtures import *  # noqa: F403  (`registry`: the deploy step after a rollback)

from lmforge import tracking
from lmforge.errors import RegistryError
from lmforge.registry import (
    LOCK_SUFFIX,
    METRIC_TAG,
    gate,
    promote,
    promotion_lock,
    provenance,
    register,
)

LMFORGE = shutil.which("lmforge") or str(Path(sys.executable).parent / "lmforge")
# The registry's state under each backend (mlflow_fixtures): every alias, tag, lock and
# transition test runs on each; the PostgreSQL server is production's.
STORES = ["embedded_store", "server_store", "server_store_pg"]
SQLITE_AND_PG = ["embedded_store", "server_store_pg"]
# Servers on a loaded 2-core CI machine can take longer than the 5 s default to answer.
PATIENT = "tracking.request_timeout_s=60"


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


def _add_version(
    cfg, name: str, metrics: dict[str, float], challenger: bool = True, from_folder=False
) -> str:
    """A new version of ``name`` on the files of version 1 with other evaluation numbers (tags,
    as lmforge registered them before lineage). ``from_folder``: from version 1's artifact
    folder, not its LoggedModel (no model, so no model metrics either)."""
    client = tracking.client(cfg)
    first = client.get_model_version(name, "1")
    source = first.source
    if from_folder:
        source = client.get_logged_model(provenance.version_model_id(first)).artifact_location
    tags = {METRIC_TAG + k: repr(v) for k, v in metrics.items()}
    mv = client.create_model_version(name, source, run_id=first.run_id, tags=tags)
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
        version = client.get_model_version(name, entry.version)
        # Lineage in MLflow's fields (lmforge.registry.provenance), not copied into version tags.
        lineage = provenance.version_lineage(client, version)
        for key in (
            "lmforge.git_commit",
            "lmforge.data_version",
            "lmforge.params_hash",
            "lmforge.pipeline_run_id",
            "lmforge.parent_run_id",
        ):
            assert lineage[key], key
        section = "lm" if metric == "perplexity" else "classifier"
        numbers = provenance.version_metrics(client, version)  # the LoggedModel's test_* metrics
        assert numbers[metric] == pytest.approx(report[section][metric])
        assert not any(k.startswith(METRIC_TAG) for k in version.tags)
        assert version.description  # the model card
    run = client.get_run(result.run_id)
    assert run.data.tags["mlflow.parentRunId"] == lineage["lmforge.parent_run_id"]
    assert run.data.tags["lmforge.stage"] == "register"
    assert run.data.metrics["classifier.macro_f1"] == pytest.approx(
        report["classifier"]["macro_f1"]
    )
    # The LM predicts through the registry too (text generation, greedy).
    lm = mlflow.pyfunc.load_model(f"models:/{cfg.register.lm_model_name}@challenger")
    text = lm.predict(["The king"], params={"max_new_tokens": 4})
    assert isinstance(text[0], str) and text[0].startswith("The king")


def _cli_promote(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [LMFORGE, "promote", "--set", PATIENT, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_promotion_gate_idempotence_rollback_and_loading(embedded_store, trained_stages, tmp_path):
    cfg = embedded_store
    name = cfg.register.classifier_model_name
    _register(cfg, trained_stages, tmp_path / "register")
    client = tracking.client(cfg)
    first = provenance.version_metrics(client, client.get_model_version(name, "1"))["macro_f1"]

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
    bare = _add_version(cfg, name, {}, from_folder=True)
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
    """Locks and takeover markers of ``cfg``'s models (a shared server holds other tests')."""
    own = (cfg.register.classifier_model_name, cfg.register.lm_model_name)
    models = tracking.client(cfg).search_registered_models()
    return [m.name for m in models if LOCK_SUFFIX in m.name and m.name.startswith(own)]


RACER = """
import sys, time
from pathlib import Path
from lmforge.config import load_config
from lmforge.errors import RegistryError
from lmforge.registry import promote
cfg = load_config(None, ["tracking.request_timeout_s=60"])  # see PATIENT
barrier, me, n, name = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
(barrier / me).touch()  # imports done: wait for the others, then promote together
while len(list(barrier.iterdir())) < n:
    time.sleep(0.002)
try:
    print(promote(cfg, name, version=sys.argv[1]).action)
except RegistryError as exc:
    print("refused", exc)
"""


def _race(name: str, versions: list[str], barrier: Path) -> list[str]:
    """Promote each of ``versions`` from its own process, all released at the same moment."""
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, v, str(barrier), str(i), str(len(versions)), name],
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
    client = tracking.client(cfg)
    first = provenance.version_metrics(client, client.get_model_version(name, "1"))["macro_f1"]
    good = _add_version(cfg, name, {"macro_f1": first + 0.1}, challenger=False)
    best = _add_version(cfg, name, {"macro_f1": first + 0.2}, challenger=False)

    # Two different challengers at once: serialised by the lock, the best one always wins,
    # and the loser is judged against the winner, never against the stale champion.
    outcome = dict(zip([good, best], _race(name, [good, best], tmp_path / "race1"), strict=True))
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
    outcome = _race(name, [top, top], tmp_path / "race2")
    assert sorted(outcome) == ["promoted", "unchanged"]
    history = json.loads(
        tracking.client(cfg).get_registered_model(name).tags["lmforge.champion_history"]
    )
    assert history.count(top) == 1
    assert _aliases(cfg, name)["champion"] == top
    assert not _lock_models(cfg)


@pytest.mark.parametrize("store", STORES)
def test_two_promotes_racing_on_one_model_leave_one_winner_and_consistent_aliases(
    store, request, tmp_path
):
    cfg = request.getfixturevalue(store)
    name = cfg.register.classifier_model_name
    v1, v2 = _bare_model(cfg, 0.80, 0.90)
    promote(cfg, name, version=v1)
    # Two processes promote the challenger at the same moment: one moves it, one finds it done.
    assert sorted(_race(name, [v2, v2], tmp_path / "race")) == ["promoted", "unchanged"]
    assert _aliases(cfg, name) == {"champion": v2, "previous": v1, "challenger": v2}
    tags = _model_tags(cfg, name)
    assert json.loads(tags["lmforge.champion_history"]) == [v1, v2]
    assert "lmforge.transition" not in tags
    assert "lmforge.promoted_at" in tracking.client(cfg).get_model_version(name, v2).tags
    assert not _lock_models(cfg)


@pytest.mark.slow
def test_promotion_waits_for_the_lock_then_says_who_holds_it(
    embedded_store, trained_stages, tmp_path
):
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


# --------------------------------------------------------------------------------------------
# Faults: transient errors, crashes between writes, dead lock holders, a dead server
# --------------------------------------------------------------------------------------------


def _bare_model(cfg, *f1s: float) -> list[str]:
    """Versions of the classifier carrying only their evaluation tag (no model files needed:
    promotion reads tags and aliases); the last one is the challenger."""
    client = tracking.client(cfg)
    name = cfg.register.classifier_model_name
    client.create_registered_model(name)
    run = client.create_run("0")  # a server accepts a version's source only from a run
    versions = []
    for f1 in f1s:
        tags = {METRIC_TAG + "macro_f1": repr(f1)}
        source = f"runs:/{run.info.run_id}/model"
        mv = client.create_model_version(name, source, run_id=run.info.run_id, tags=tags)
        versions.append(str(mv.version))
    client.set_registered_model_alias(name, cfg.register.challenger_alias, versions[-1])
    return versions


def _model_tags(cfg, name: str) -> dict[str, str]:
    return tracking.client(cfg).get_registered_model(name).tags


@pytest.mark.parametrize("store", STORES)
def test_a_transient_error_reading_the_champion_refuses_and_changes_nothing(
    store, request, monkeypatch
):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    cfg = request.getfixturevalue(store)
    name = cfg.register.classifier_model_name
    v1, v2 = _bare_model(cfg, 0.80, 0.90)
    assert promote(cfg, name, version=v1).action == "promoted"  # no champion: absent, not error
    assert promote(cfg, name, version=v2).previous == v1
    worse = _add_version(cfg, name, {"macro_f1": 0.70})
    before = _aliases(cfg, name)
    assert before == {"champion": v2, "previous": v1, "challenger": worse}

    original = mlflow.MlflowClient.get_model_version_by_alias
    failures = []

    def flaky(self, model, alias):
        if alias == cfg.register.champion_alias and not failures:
            failures.append(alias)
            raise MlflowException("the database is busy", error_code=TEMPORARILY_UNAVAILABLE)
        return original(self, model, alias)

    monkeypatch.setattr(mlflow.MlflowClient, "get_model_version_by_alias", flaky)
    with pytest.raises(
        RegistryError, match=r"could not read alias 'champion'.*TEMPORARILY_UNAVAIL"
    ):
        promote(cfg, name)
    assert failures == ["champion"]  # the injected error was hit, once
    assert _aliases(cfg, name) == before
    assert "lmforge.transition" not in _model_tags(cfg, name)
    assert not _lock_models(cfg)
    # Once the registry answers, the real gate refuses the worse challenger.
    with pytest.raises(RegistryError, match=r"0\.7000 vs champion 0\.9000"):
        promote(cfg, name)
    assert _aliases(cfg, name) == before


def _short_lease(cfg):
    """``cfg`` whose promotions take over a killed holder's lock after 1 s."""
    return _with(cfg, "register.lock_lease_s=1", "register.lock_timeout_s=60")


CRASHER = """
import os, signal, sys
import mlflow
from lmforge.config import load_config
from lmforge.registry import promote
op, nth, when, name, version = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
original = mlflow.MlflowClient.set_registered_model_alias
calls = []
def crashing(self, *args, **kwargs):  # SIGKILL around the nth alias write: no cleanup runs
    calls.append(args)
    if len(calls) == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(self, *args, **kwargs)
    if len(calls) == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
mlflow.MlflowClient.set_registered_model_alias = crashing
cfg = load_config(None, ["tracking.request_timeout_s=60"])  # see PATIENT
version = None if version == "-" else version
forced = {"force": True} if op == "force" else {}
promote(cfg, name, version=version, rollback=op == "rollback", **forced)
"""


def _crash(name: str, op: str, nth: int, when: str, version: str = "-") -> None:
    """``op`` (promote, rollback, force: promote --force) of ``name`` (``version``, default the
    challenger) in a process SIGKILLed before or after its ``nth`` alias write."""
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, op, str(nth), when, name, version],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr


@pytest.mark.parametrize("store", SQLITE_AND_PG)
def test_a_crash_between_alias_writes_is_completed_by_the_next_promote_or_rollback(store, request):
    cfg = _short_lease(request.getfixturevalue(store))
    name = cfg.register.classifier_model_name
    v1, v2 = _bare_model(cfg, 0.70, 0.80)
    promote(cfg, name, version=v1)

    # Killed after `champion` moved, before `previous` and the history were written.
    _crash(name, "promote", 1, "after")
    assert _aliases(cfg, name) == {"champion": v2, "challenger": v2}  # half done
    assert "lmforge.transition" in _model_tags(cfg, name)
    # The next promote waits out the dead holder's lease and completes the move first.
    result = promote(cfg, name)
    assert (result.action, result.champion) == ("unchanged", v2)
    assert (
        result.checks[0].name == "repair"
        and "completed an interrupted promote" in result.checks[0].detail
    )
    assert _aliases(cfg, name) == {"champion": v2, "previous": v1, "challenger": v2}
    tags = _model_tags(cfg, name)
    assert json.loads(tags["lmforge.champion_history"]) == [v1, v2]
    assert "lmforge.transition" not in tags
    assert "lmforge.promoted_at" in tracking.client(cfg).get_model_version(name, v2).tags

    # Killed during a rollback, after it was recorded and before any alias moved.
    _crash(name, "rollback", 1, "before")
    assert _aliases(cfg, name) == {"champion": v2, "previous": v1, "challenger": v2}
    back = promote(cfg, name, rollback=True)  # completes that rollback; does not roll back twice
    assert (back.action, back.champion, back.previous) == ("rolled_back", v1, None)
    assert _aliases(cfg, name) == {"champion": v1, "challenger": v2}
    tags = _model_tags(cfg, name)
    assert json.loads(tags["lmforge.champion_history"]) == [v1]
    assert "lmforge.transition" not in tags
    assert not _lock_models(cfg)


# --------------------------------------------------------------------------------------------
# Rollback sticks (docs/reliability.md, "Promotion state machine")
# --------------------------------------------------------------------------------------------


def _version_tags(cfg, name: str, version: str) -> dict[str, str]:
    return tracking.client(cfg).get_model_version(name, version).tags


def _cli_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout[proc.stdout.index("{") :])  # the step's result, printed last


def _promoted_then_rolled_back(cfg, name: str) -> tuple[str, str]:
    """v1 champion, v2 promoted over it, then rolled back: champion v1, challenger still v2."""
    v1, v2 = _bare_model(cfg, 0.80, 0.90)
    promote(cfg, name, version=v1)
    assert promote(cfg, name).champion == v2
    back = promote(cfg, name, rollback=True)
    assert back.champion == v1
    assert f"version {v2} is not promoted again unless forced" in back.checks[-1].detail
    return v1, v2


@pytest.mark.parametrize("store", SQLITE_AND_PG)
def test_a_rolled_back_version_is_not_promoted_again_until_a_newer_one_is_registered(
    store, request
):
    from lmforge.registry.lock import who

    cfg = request.getfixturevalue(store)
    name = cfg.register.classifier_model_name
    v1, v2 = _promoted_then_rolled_back(cfg, name)
    tags = _version_tags(cfg, name, v2)
    assert tags["lmforge.rolled_back_at"] and tags["lmforge.rolled_back_by"] == who()

    # The pipeline's promote again (the challenger is still v2): nothing moves, and it says why.
    result = _cli_json(_cli_promote("--model", name))
    assert (result["action"], result["champion"]) == ("unchanged", v1)
    why = result["checks"][0]["detail"]
    assert f"version {v2} was rolled back at {tags['lmforge.rolled_back_at']} by {who()}" in why
    assert f"lmforge promote --model {name} --version {v2} --force" in why
    assert _aliases(cfg, name) == {"champion": v1, "challenger": v2}
    # Asked for by number: refused, in one line that says how to force it.
    proc = _cli_promote("--model", name, "--version", v2)
    assert proc.returncode == 1
    assert f"version {v2} was rolled back" in proc.stderr and "--force" in proc.stderr
    assert _aliases(cfg, name) == {"champion": v1, "challenger": v2}

    # A newer registration supersedes it: v3 goes through the gate as usual.
    v3 = _add_version(cfg, name, {"macro_f1": 0.85})
    result = promote(cfg, name)
    assert (result.action, result.champion, result.previous) == ("promoted", v3, v1)
    assert _aliases(cfg, name) == {"champion": v3, "previous": v1, "challenger": v3}
    assert json.loads(_model_tags(cfg, name)["lmforge.champion_history"]) == [v1, v3]


@pytest.mark.parametrize("store", SQLITE_AND_PG)
def test_a_crashed_rollback_completed_by_the_next_promote_does_not_promote_again(store, request):
    cfg = _short_lease(request.getfixturevalue(store))
    name = cfg.register.classifier_model_name
    v1, v2 = _bare_model(cfg, 0.70, 0.80)
    promote(cfg, name, version=v1)
    promote(cfg, name)
    # Killed after the rollback was recorded, before any alias moved.
    _crash(name, "rollback", 1, "before")
    assert _aliases(cfg, name) == {"champion": v2, "previous": v1, "challenger": v2}
    assert json.loads(_model_tags(cfg, name)["lmforge.transition"])["op"] == "rollback"

    result = promote(cfg, name)  # a pipeline rerun: completes the rollback, then stops there
    assert (result.action, result.champion) == ("unchanged", v1)
    assert [c.name for c in result.checks] == ["repair", "rolled_back"]
    assert "completed an interrupted rollback" in result.checks[0].detail
    assert _aliases(cfg, name) == {"champion": v1, "challenger": v2}
    tags = _model_tags(cfg, name)
    assert "lmforge.transition" not in tags
    assert json.loads(tags["lmforge.champion_history"]) == [v1]
    assert "lmforge.rolled_back_at" in _version_tags(cfg, name, v2)
    assert not _lock_models(cfg)


@pytest.mark.parametrize("store", SQLITE_AND_PG)
def test_force_promotes_a_rolled_back_version_recording_who_and_when(store, request):
    from lmforge.registry.lock import who

    cfg = _short_lease(request.getfixturevalue(store))
    name = cfg.register.classifier_model_name
    v1, v2 = _promoted_then_rolled_back(cfg, name)
    rolled_back_at = _version_tags(cfg, name, v2)["lmforge.rolled_back_at"]

    result = _cli_json(_cli_promote("--model", name, "--version", v2, "--force"))
    assert (result["action"], result["champion"], result["previous"]) == ("promoted", v2, v1)
    assert result["forced_by"] == who()
    forced = next(c["detail"] for c in result["checks"] if c["name"] == "force")
    assert f"rolled back at {rolled_back_at} by {who()}; promoted with --force by {who()}" in forced
    tags = _version_tags(cfg, name, v2)
    assert tags["lmforge.forced_by"] == who()
    assert tags["lmforge.forced_at"] == tags["lmforge.promoted_at"]
    assert tags["lmforge.forced_over_rollback"] == f"rolled back at {rolled_back_at} by {who()}"
    assert "lmforge.rolled_back_at" not in tags  # overridden: a later rollback marks it afresh
    assert _aliases(cfg, name) == {"champion": v2, "previous": v1, "challenger": v2}

    # The force is in the transition record too: a forced promote killed before any alias moved
    # is completed, force included, by the next plain promote.
    promote(cfg, name, rollback=True)
    _crash(name, "force", 1, "before", version=v2)
    record = json.loads(_model_tags(cfg, name)["lmforge.transition"])
    assert (record["champion"], record["forced_by"]) == (v2, who())
    result = promote(cfg, name)
    assert (result.action, result.champion) == ("unchanged", v2)
    assert "completed an interrupted promote" in result.checks[0].detail
    assert f"forced by {who()}" in result.checks[0].detail
    assert "lmforge.rolled_back_at" not in _version_tags(cfg, name, v2)


def _mapped(cfg, **serve):
    """``cfg`` with the test store's file:// artifacts mapped onto a PVC (as on a cluster)."""
    from dataclasses import replace

    root = f"file://{cfg.tracking.artifact_location}/"
    changes = {"storage_prefixes": {root: "pvc://lmforge-work/mlartifacts/"}, **serve}
    return replace(cfg, serve=replace(cfg.serve, **changes))


@pytest.mark.slow
def test_the_deploy_step_after_a_rollback_deploys_the_restored_champion(registry, tmp_path):
    from k8s_fake import RESPONSES, Reply, recorded, start
    from serve_fixtures import add_version

    from lmforge.serve.deploy import promote_and_deploy

    cfg = _mapped(registry, poll_s=0.01)
    name = cfg.register.lm_model_name
    client = tracking.client(cfg)
    first = provenance.version_metrics(client, client.get_model_version(name, "1"))["perplexity"]
    v2 = add_version(cfg, name, {"perplexity": first / 2})
    assert promote(cfg, name).champion == v2
    assert promote(cfg, name, rollback=True).champion == "1"
    registered = tmp_path / "registered"
    registered.mkdir()
    (registered / "registered.json").write_text(json.dumps({"lm": {"name": name}}))
    isvcs = "/apis/serving.kserve.io/v1beta1/namespaces/lmforge/inferenceservices"
    created = Reply(201, (RESPONSES / "isvc_created.json").read_bytes())
    server, api = start(
        {  # a create, or a server-side apply: either is answered "created"
            ("POST", isvcs): [created],
            ("PATCH", f"{isvcs}/{name}"): [created],
            ("GET", f"{isvcs}/{name}"): [recorded("isvc_ready.json")],
        }
    )
    try:
        lines: list[str] = []
        result = promote_and_deploy(cfg, tmp_path / "out", registered, api=api, echo=lines.append)
    finally:
        server.shutdown()
        server.server_close()
    said = [line for line in lines if line.startswith(f"promote {name}:")]
    assert len(said) == 1 and f"unchanged, champion 1; version {v2} was rolled back" in said[0]
    assert [s.model for s in result.services] == [f"models:/{name}/1"]
    assert _aliases(cfg, name) == {"champion": "1", "challenger": v2}


HOLDER = """
import sys, time
from lmforge import tracking
from lmforge.config import load_config
from lmforge.registry import promotion_lock
cfg = load_config(None, ["tracking.request_timeout_s=60"])  # see PATIENT
with promotion_lock(tracking.client(cfg), sys.argv[1], timeout_s=60):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("store", SQLITE_AND_PG)
def test_a_killed_lock_holder_loses_the_lock_when_its_lease_ends(store, request):
    cfg = request.getfixturevalue(store)
    name = cfg.register.classifier_model_name
    _bare_model(cfg, 0.80)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()  # SIGKILL: the holder cannot release anything
        holder.wait(timeout=30)
    lock = tracking.client(cfg).get_registered_model(name + LOCK_SUFFIX)
    assert lock.tags["lmforge.lock_pid"] == str(holder.pid)

    # Within the lease (300 s by default) the lock still counts: refused, naming the holder.
    with pytest.raises(RegistryError, match=rf"another promotion holds the lock.*:{holder.pid} "):
        promote(_with(cfg, "register.lock_timeout_s=0.5"), name)
    assert "champion" not in _aliases(cfg, name)
    # With a short lease the next promotion waits it out, takes the lock over and promotes.
    short = _with(cfg, "register.lock_lease_s=1", "register.lock_timeout_s=60")
    assert promote(short, name).action == "promoted"
    assert _aliases(cfg, name)["champion"] == "1"
    assert not _lock_models(cfg)


CONTENDER = """
import sys, time
from pathlib import Path
from lmforge import tracking
from lmforge.config import load_config
from lmforge.registry import promotion_lock
cfg = load_config(None, ["tracking.request_timeout_s=60"])  # see PATIENT
name, log = sys.argv[1], Path(sys.argv[2])
barrier, me, n = Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
(barrier / me).touch()
while len(list(barrier.iterdir())) < n:
    time.sleep(0.002)
with promotion_lock(tracking.client(cfg), name, timeout_s=120, lease_s=float(sys.argv[6])):
    with log.open("a") as fh:
        fh.write(f"enter {me}\\n")
    time.sleep(0.2)
    with log.open("a") as fh:
        fh.write(f"exit {me}\\n")
"""


@pytest.mark.parametrize("store", SQLITE_AND_PG)
def test_contenders_for_a_stale_lock_take_it_over_one_at_a_time(store, request, tmp_path):
    import time

    cfg = request.getfixturevalue(store)
    name = cfg.register.classifier_model_name
    client = tracking.client(cfg)
    stale = {
        "lmforge.lock_token": "dead",
        "lmforge.lock_owner": "gone@nowhere:1",
        "lmforge.lock_acquired_at": repr(time.time() - 3600),
    }
    client.create_registered_model(name + LOCK_SUFFIX, tags=stale)
    log, barrier, n = tmp_path / "critical.log", tmp_path / "barrier", 3
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, name, str(log), str(barrier), str(i), str(n), "30"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    lines = log.read_text().split()
    events = list(zip(lines[::2], lines[1::2], strict=True))
    # Strictly enter/exit pairs of one holder at a time, each contender exactly once.
    assert [kind for kind, _ in events] == ["enter", "exit"] * n
    assert all(events[i][1] == events[i + 1][1] for i in range(0, 2 * n, 2))
    assert sorted({who for _, who in events}) == [str(i) for i in range(n)]
    assert not _lock_models(cfg)


def test_a_database_outage_under_the_server_refuses_promote_and_changes_nothing(
    server_store_pg, postgres
):
    """PostgreSQL stops under a live `mlflow server` (its /health still answers): promote
    refuses, naming the registry, and nothing moves; once the database is back, it promotes."""
    cfg = server_store_pg
    name = cfg.register.classifier_model_name
    v1, v2 = _bare_model(cfg, 0.80, 0.90)
    promote(cfg, name, version=v1)
    postgres.stop()
    try:
        with pytest.raises(RegistryError, match=r"registry at http://127\.0\.0\.1:.*nothing was"):
            promote(cfg, name)
    finally:
        postgres.start()
    assert _aliases(cfg, name) == {"champion": v1, "challenger": v2}
    assert "lmforge.transition" not in _model_tags(cfg, name)
    assert not _lock_models(cfg)
    assert promote(cfg, name).champion == v2


def _dead_server(monkeypatch) -> str:
    from mlflow_fixtures import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # bound once, then closed: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_an_unreachable_server_fails_promote_fast_in_one_line_naming_it(monkeypatch):
    uri = _dead_server(monkeypatch)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [LMFORGE, "promote", "--set", "tracking.connect_timeout_s=2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert uri in lines[0] and "cannot be reached" in lines[0]
    assert "lmforge register" not in lines[0]  # not mistaken for a missing model


def test_an_unreachable_server_fails_register_fast_naming_it(monkeypatch, tiny_stages, tmp_path):
    from mlflow_fixtures import tiny_config

    uri = _dead_server(monkeypatch)
    evaluation = tmp_path / "evaluate"
    evaluation.mkdir()
    (evaluation / "report.json").write_text(json.dumps({"lm": {}, "classifier": {}}))
    cfg = tiny_config("tracking.connect_timeout_s=2")
    with pytest.raises(RegistryError, match=rf"{uri} cannot be reached"):
        register(cfg, tiny_stages["pretrain"], tiny_stages["pretrain"], evaluation, tmp_path / "r")
    assert not (tmp_path / "r").exists()
