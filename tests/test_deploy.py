"""lmforge deploy: the champions' InferenceServices, rendered from the registry and applied to
the project's fake Kubernetes API (recorded KServe responses)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from k8s_fake import RESPONSES, Reply, recorded, server_error, start
from k8s_live import APPLY, LiveObjects
from k8s_schema import REPO, errors, kustomize
from mlflow_fixtures import tiny_config
from serve_fixtures import *  # noqa: F403  (fixtures listed in its __all__)
from serve_fixtures import add_version

from lmforge.errors import LaunchError, RegistryError
from lmforge.registry import promote
from lmforge.serve.deploy import InferenceServices, deploy, render, render_yaml
from lmforge.serve.kserve import Served, inference_service

ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/lmforge/inferenceservices"
LM = f"{ISVCS}/lmforge-lm"
APPLY_HEADERS = {"Content-Type": APPLY}


def _mapped(cfg, **serve):
    """``cfg`` with the test store's file:// artifacts mapped onto a PVC (as on a cluster)."""
    root = f"file://{cfg.tracking.artifact_location}/"
    changes = {"storage_prefixes": {root: "pvc://lmforge-work/mlartifacts/"}, **serve}
    return dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, **changes))


# --------------------------------------------------------------------------------------------
# --render
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_render_resolves_the_champions_and_validates_against_the_kserve_crd(registry):
    cfg = _mapped(registry)
    (lm, lm_isvc), (_, clf_isvc) = render(cfg)
    assert (lm.name, lm.model) == ("lmforge-lm", "models:/lmforge-lm/1")
    for isvc in (lm_isvc, clf_isvc):
        assert errors(isvc) == [], isvc["metadata"]["name"]
        model = isvc["spec"]["predictor"]["model"]
        assert model["modelFormat"] == {"name": "huggingface"}
        assert model["runtime"] == "kserve-huggingfaceserver"
        assert model["storageUri"].startswith("pvc://lmforge-work/mlartifacts/models/m-")
        assert model["storageUri"].endswith("/artifacts/model")  # config, weights, tokenizer
        notes = isvc["metadata"]["annotations"]
        assert notes["lmforge.io/model-version"] == "1"
        assert notes["lmforge.io/model-alias"] == "champion"
        for lineage in ("git_commit", "data_version", "params_hash", "pipeline_run_id"):
            assert notes[f"lmforge.io/{lineage}"], lineage
        assert notes["lmforge.io/artifact-location"].startswith("file://")
    assert "--task=text_generation" in lm_isvc["spec"]["predictor"]["model"]["args"]
    assert "--task=sequence_classification" in clf_isvc["spec"]["predictor"]["model"]["args"]
    assert "lmforge.io/metric.macro_f1" in clf_isvc["metadata"]["annotations"]
    assert clf_isvc["spec"]["predictor"]["model"]["resources"]["limits"] == {
        "cpu": "1",
        "memory": "4Gi",
    }
    # The validation can fail: a misspelt field, a wrong enum.
    bad = json.loads(json.dumps(lm_isvc))
    bad["spec"]["predictor"]["model"]["storageURI"] = bad["spec"]["predictor"]["model"][
        "storageUri"
    ]
    bad["spec"]["predictor"]["scaleMetric"] = "latency"
    assert len(errors(bad)) == 2


@pytest.mark.slow
def test_render_is_byte_identical_and_follows_promotion_and_rollback(registry):
    cfg = _mapped(registry)
    name = cfg.register.classifier_model_name
    first = render_yaml(cfg)
    assert render_yaml(cfg) == first
    v2 = add_version(cfg, name, {"macro_f1": 1.05, "accuracy": 1.0})
    promote(cfg, name)
    promoted = yaml.safe_load_all(render_yaml(cfg, [name]))
    assert next(promoted)["metadata"]["annotations"]["lmforge.io/model-version"] == v2
    promote(cfg, name, rollback=True)  # champion goes back to `previous`: version 1
    assert render_yaml(cfg) == first


@pytest.mark.slow
def test_render_refuses_what_kserve_could_not_load(registry):
    cfg = registry
    with pytest.raises(RegistryError, match=r"KServe cannot read.*serve\.storage_prefixes"):
        render(cfg)  # file:// artifacts, no mapping
    from lmforge import tracking

    tracking.client(cfg).delete_registered_model_alias(cfg.register.lm_model_name, "champion")
    with pytest.raises(RegistryError, match="no 'champion' version to deploy; run `lmforge pro"):
        render(_mapped(cfg))
    with pytest.raises(RegistryError, match="not in the registry"):
        render(_mapped(cfg), ["no-such-model"])


def _cli(*args: str) -> int:
    from lmforge.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code


@pytest.mark.slow
def test_cli_render_prints_the_manifests(registry, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the repository's params.yaml, as `lmforge deploy` reads it there
    mapping = json.dumps({f"file://{registry.tracking.artifact_location}/": "pvc://w/"})
    assert _cli("deploy", "--render", "--set", f"serve.storage_prefixes={mapping}") == 0
    objs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [o["metadata"]["name"] for o in objs] == ["lmforge-lm", "lmforge-classifier"]
    assert all(errors(o) == [] for o in objs)
    assert _cli("deploy") == 2
    assert "exactly one of --render" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# --apply, against recorded KServe responses
# --------------------------------------------------------------------------------------------


def _manifest(tags: dict | None = None, **serve) -> dict:
    cfg = tiny_config(*(f"serve.{k}={v}" for k, v in serve.items()))
    served = Served(
        name="lmforge-lm",
        version="3",
        alias="champion",
        artifact_location="s3://mlflow/artifacts/1/models/m-0/artifacts",
        storage_uri="s3://mlflow/artifacts/1/models/m-0/artifacts/model",
        task="text-generation",
        tags={"lmforge.git_commit": "abc123", "lmforge.data_version": "d1"}
        if tags is None
        else tags,
    )
    return inference_service(cfg, served)


def _services(routes, **kwargs):
    server, api = start(routes)
    lines: list[str] = []
    return server, InferenceServices(api, "lmforge", echo=lines.append, **kwargs), lines


def _body(name: str) -> bytes:
    return (RESPONSES / name).read_bytes()


def test_apply_creates_then_waits_until_ready():
    server, isvcs, lines = _services(
        {
            ("PATCH", LM): [Reply(201, _body("isvc_created.json"))],
            ("GET", LM): [
                recorded("isvc_created.json"),  # no status yet
                recorded("isvc_pending.json"),
                recorded("isvc_ready.json"),
            ],
        }
    )
    manifest = _manifest()
    assert isvcs.apply(manifest) == "created"
    dry_run, applied = server.called("PATCH", LM)  # what it would leave first, then the apply
    assert dry_run[3] == applied[3] == manifest
    assert dry_run[2] == {"fieldManager": ["lmforge"], "force": ["True"], "dryRun": ["All"]}
    assert applied[2] == {"fieldManager": ["lmforge"], "force": ["True"]}
    ready = isvcs.wait_ready("lmforge-lm", timeout_s=30, poll_s=0.01)
    assert ready["status"]["url"] == "http://lmforge-lm.lmforge.example.com"
    assert len(server.called("GET")) == 3
    assert any("RevisionMissing" in line for line in lines)


def test_apply_to_an_existing_service_ignores_the_previous_generations_ready():
    server, isvcs, _ = _services(
        {
            ("PATCH", LM): [recorded("isvc_patched.json")],
            ("GET", LM): [
                recorded("isvc_patched.json"),  # Ready, but of generation 1: stale
                recorded("isvc_ready_gen2.json"),
            ],
        }
    )
    manifest = _manifest()
    assert isvcs.apply(manifest) == "patched"
    assert server.called("PATCH")[0][3] == manifest
    isvcs.wait_ready("lmforge-lm", timeout_s=30, poll_s=0.01)
    assert len(server.called("GET")) == 2


def test_a_new_version_leaves_nothing_of_the_old_one_but_what_others_own():
    """v1 with GPU limits, lineage annotations and a runtime; v2 without them. The live object
    must equal v2's render (a merge patch kept all three); what KServe and a person own stays."""
    isvcs_live = LiveObjects(ISVCS, "InferenceService", "serving.kserve.io/v1beta1")
    _, api = start({}, [isvcs_live])
    isvcs = InferenceServices(api, "lmforge", echo=lambda _: None)
    v1 = _manifest(gpus=1)
    assert v1["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert v1["spec"]["predictor"]["model"]["runtime"] and "lmforge.io/git_commit" in str(v1)
    assert isvcs.apply(v1) == "created"
    # KServe's controller adds its finalizer and reports; a person annotates and edits.
    isvcs_live.update_as(
        "manager", "lmforge-lm", {"metadata": {"finalizers": ["inferenceservice.finalizers"]}}
    )
    isvcs_live.set_status("lmforge-lm", {"observedGeneration": 1, "url": "http://x"})
    isvcs_live.update_as(
        "kubectl-edit",
        "lmforge-lm",
        {
            "metadata": {"annotations": {"team": "nlp"}},
            "spec": {"predictor": {"scaleTarget": 99}},
        },
    )
    v2 = _manifest(runtime="", tags={})
    assert "runtime" not in v2["spec"]["predictor"]["model"]
    assert isvcs.apply(v2) == "patched"
    live = isvcs.get("lmforge-lm")
    assert live["spec"] == v2["spec"]  # no GPU limit, no runtime, scaleTarget the render's
    assert live["metadata"]["labels"] == v2["metadata"]["labels"]
    assert live["metadata"]["annotations"] == {**v2["metadata"]["annotations"], "team": "nlp"}
    assert live["metadata"]["finalizers"] == ["inferenceservice.finalizers"]
    assert live["status"]["url"] == "http://x" and live["metadata"]["generation"] == 3
    assert {m["manager"] for m in live["metadata"]["managedFields"]} == {
        "lmforge",
        "manager",
        "kubectl-edit",
    }


def test_fields_an_apply_cannot_remove_refuse_the_deploy_before_anything_changes():
    """An InferenceService an older lmforge made (a create by the client's default manager)
    keeps the fields that manager set whatever lmforge applies: refused, naming them."""
    from kubernetes import client

    isvcs_live = LiveObjects(ISVCS, "InferenceService", "serving.kserve.io/v1beta1")
    _, api = start({}, [isvcs_live])
    v1 = _manifest(gpus=1)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", "lmforge", "inferenceservices", v1
    )
    before = json.loads(json.dumps(isvcs_live.objects["lmforge-lm"]))
    with pytest.raises(LaunchError) as err:
        InferenceServices(api, "lmforge", echo=lambda _: None).apply(_manifest(runtime=""))
    message = str(err.value)
    assert "spec.predictor.model.runtime (by OpenAPI-Generator)" in message
    assert "spec.predictor.model.resources.limits.nvidia.com/gpu (by OpenAPI-Generator)" in message
    assert "lmforge.io/" not in message  # annotations an apply takes over: no refusal for them
    assert (
        "Nothing was changed" in message and "kubectl -n lmforge delete inferenceservice" in message
    )
    assert isvcs_live.objects["lmforge-lm"] == before


def test_the_fake_api_applies_as_the_api_server_does():
    """The fake's server-side apply: a conflict without force, a field given up but shared
    kept, a merge patch keeping what it omits (the behaviour that left stale fields)."""
    live = LiveObjects(ISVCS, "InferenceService", "serving.kserve.io/v1beta1")

    def apply(manager: str, body: dict) -> tuple[int, dict]:
        query = {"fieldManager": [manager]}
        return live.answer("PATCH", f"{ISVCS}/a", query, APPLY_HEADERS, body)

    assert (
        apply(
            "m", {"metadata": {"name": "a", "annotations": {"x": "1", "y": "2"}}, "spec": {"n": 1}}
        )[0]
        == 201
    )
    other = {"metadata": {"name": "a", "annotations": {"y": "2"}}, "spec": {"n": 2}}
    code, body = apply("o", other)
    assert code == 409 and 'conflict with "m"' in body["message"]
    del other["spec"]
    assert apply("o", other)[0] == 200  # the same value: shared, no conflict
    apply("m", {"metadata": {"name": "a"}, "spec": {"n": 1}})
    shown = live.answer("GET", f"{ISVCS}/a", {}, {}, None)[1]
    assert shown["metadata"]["annotations"] == {"y": "2"}  # o still owns y; x was m's alone
    live.answer("PATCH", f"{ISVCS}/a", {}, {}, {"spec": {"m": 3}})
    assert live.answer("GET", f"{ISVCS}/a", {}, {}, None)[1]["spec"] == {"n": 1, "m": 3}


def test_a_failed_load_is_explained_from_the_conditions_and_the_model_status():
    _, isvcs, _ = _services({("GET", LM): [recorded("isvc_failed.json")]})
    with pytest.raises(LaunchError) as info:
        isvcs.wait_ready("lmforge-lm", timeout_s=30, poll_s=0.01)
    message = str(info.value)
    assert "failed: BlockedByFailedLoad (reason ModelLoadFailed" in message
    assert "no file named config.json" in message and "exitCode 1" in message
    assert "kubectl -n lmforge describe inferenceservice lmforge-lm" in message


def test_not_ready_in_time_says_what_it_waits_for():
    _, isvcs, _ = _services({("GET", LM): [recorded("isvc_pending.json")]})
    with pytest.raises(LaunchError, match=r"not Ready after 0s.*RevisionMissing"):
        isvcs.wait_ready("lmforge-lm", timeout_s=0.05, poll_s=0.01)


def test_transient_errors_are_retried_and_refusals_are_not():
    server, isvcs, lines = _services(
        {
            ("PATCH", LM): [
                server_error(503),
                server_error(429, headers={"Retry-After": "0"}),
                Reply(201, _body("isvc_created.json")),
            ]
        },
        retry_base_s=0.01,
    )
    assert isvcs.apply(_manifest()) == "created"
    assert len(server.called("PATCH")) == 4 and len(lines) == 2  # 2 retried, dry run, apply
    _, refused, _ = _services({("PATCH", LM): [recorded("isvc_forbidden.json")]})
    with pytest.raises(LaunchError, match=r"HTTP 403.*cannot patch.*Role lmforge-deployer"):
        refused.apply(_manifest())


@pytest.mark.slow
def test_deploy_apply_end_to_end_writes_what_it_did(registry, tmp_path):
    cfg = _mapped(registry, poll_s=0.01)
    server, api = start(
        {
            ("PATCH", LM): [Reply(201, _body("isvc_created.json"))],
            ("GET", LM): [recorded("isvc_ready.json")],
        }
    )
    result = deploy(cfg, ["lmforge-lm"], apply=True, out_dir=tmp_path / "deployed", api=api)
    (done,) = result.services
    assert (done.action, done.model) == ("created", "models:/lmforge-lm/1")
    assert done.url == "http://lmforge-lm.lmforge.example.com"
    saved = json.loads((tmp_path / "deployed" / "deployed.json").read_text())
    assert saved["services"][0]["action"] == "created"
    written = yaml.safe_load((tmp_path / "deployed" / "inferenceservices.yaml").read_text())
    assert written == server.called("PATCH")[0][3]


def test_deployer_role_allows_exactly_what_deploy_calls():
    objs = kustomize(REPO / "k8s" / "base")
    role = next(
        o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == "lmforge-deployer"
    )
    granted = {
        (group, res, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("serving.kserve.io", "inferenceservices", v) for v in ("create", "get", "patch")
    }
    binding = next(
        o
        for o in objs
        if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "lmforge-deployer"
    )
    assert binding["roleRef"]["name"] == "lmforge-deployer"
    assert all(errors(o) == [] for o in (role, binding))


# --------------------------------------------------------------------------------------------
# The full pipeline's optional deploy step
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("on", [False, True])
def test_full_pipeline_deploys_after_register_only_when_asked(tmp_path, on):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from lmforge.config import load_config
    from lmforge_pipelines.compile import compile_all

    compile_all(load_config(REPO / "params.yaml", [f"kubeflow.deploy={str(on).lower()}"]), tmp_path)
    doc = next(yaml.safe_load_all((tmp_path / "full" / "pipeline.yaml").read_text()))
    spec = json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())
    branch = next(c for n, c in spec.components.items() if n.startswith("comp-condition"))
    assert set(branch.dag.tasks) == ({"register", "deploy"} if on else {"register"})
    if on:
        step = branch.dag.tasks["deploy"]
        assert list(step.dependent_tasks) == ["register"]
        assert not step.caching_options.enable_cache  # a side effect on the cluster


@pytest.mark.slow
def test_the_deploy_step_promotes_and_applies_what_register_registered(registry, tmp_path):
    """The pipeline's deploy step reads register's ``registered.json``: an SFT run registered
    only its SFT model, so only that is promoted and applied (here: the LM, standing in)."""
    from lmforge.serve.deploy import model_names, promote_and_deploy

    cfg = _mapped(registry, poll_s=0.01)
    registered = tmp_path / "registered"
    registered.mkdir()
    (registered / "registered.json").write_text(
        json.dumps({"run_id": "r", "pipeline_run_id": "p", "sft": {"name": "lmforge-lm"}})
    )
    server, api = start(
        {
            ("PATCH", LM): [Reply(201, _body("isvc_created.json"))],
            ("GET", LM): [recorded("isvc_ready.json")],
        }
    )
    lines: list[str] = []
    result = promote_and_deploy(cfg, tmp_path / "deployed", registered, api=api, echo=lines.append)
    assert [s.model for s in result.services] == ["models:/lmforge-lm/1"]
    assert [line.split(":")[0] for line in lines if line.startswith("promote")] == [
        "promote lmforge-lm"
    ]
    applied = [c for c in server.called("PATCH") if "dryRun" not in c[2]]
    assert [c[3]["metadata"]["name"] for c in applied] == ["lmforge-lm"]
    (registered / "registered.json").write_text("{}")
    with pytest.raises(LaunchError, match="no registered model"):
        promote_and_deploy(cfg, tmp_path / "again", registered, api=api)
    # without a register result (lmforge deploy): the LM and the model finetune.task trains
    sft = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, task="sft"))
    assert model_names(sft, None) == ["lmforge-lm", cfg.register.sft_model_name]
    assert model_names(cfg, None) == ["lmforge-lm", cfg.register.classifier_model_name]
    # a base model fine-tuned without pretraining: there is no LM of this project to deploy
    base = dataclasses.replace(cfg.finetune, base_model="/models/qwen")
    assert model_names(dataclasses.replace(cfg, finetune=base), None) == [
        cfg.register.classifier_model_name
    ]
