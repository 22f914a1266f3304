"""The deploy component through KFP's local runner: promote, then create the InferenceServices on
the project's fake Kubernetes API (recorded KServe responses), reached through a kubeconfig:
both applied by server-side apply."""

import json
import sys
from pathlib import Path

from kfp.dsl import Artifact

from lmforge_components.deploy import build
from lmforge_components.testing import REPO, micro_config, run_one

sys.path.insert(0, str(REPO / "tests"))  # the fake API server and its recorded responses
from k8s_fake import RESPONSES, Reply, recorded, start

ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/lmforge/inferenceservices"


def test_deploy_promotes_the_challengers_and_applies_the_champions(
    upstream, kfp_workdir, tmp_path, monkeypatch
):
    import mlflow

    from lmforge.registry import register

    store = micro_config("register.min_primary=0.0", store=kfp_workdir)
    register(
        store, upstream["pretrain"], upstream["finetune"], upstream["evaluate"], tmp_path / "r"
    )
    pvc = {f"file://{store.tracking.artifact_location}/": "pvc://lmforge-work/mlartifacts/"}
    cfg = micro_config(
        "register.min_primary=0.0",
        f"serve.storage_prefixes={json.dumps(pvc)}",
        "serve.poll_s=0.01",
        store=kfp_workdir,
    )
    created = Reply(201, (RESPONSES / "isvc_created.json").read_bytes())
    server, _ = start(
        {
            # Server-side apply: a dry run, then the apply itself, each a PATCH of the object.
            ("PATCH", f"{ISVCS}/lmforge-lm"): [created],
            ("PATCH", f"{ISVCS}/lmforge-classifier"): [created],
            ("GET", f"{ISVCS}/lmforge-lm"): [recorded("isvc_ready.json")],
            ("GET", f"{ISVCS}/lmforge-classifier"): [recorded("isvc_ready.json")],
        }
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "fake",
                        "cluster": {"server": f"http://127.0.0.1:{server.server_port}"},
                    }
                ],
                "users": [{"name": "test", "user": {"token": "recorded"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "test"}}],
                "current-context": "fake",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    task = run_one(build(), cfg, kfp_workdir, {"registered": (tmp_path / "r", Artifact)})

    deployed = json.loads((task / "deployed" / "deployed.json").read_text())
    assert [(s["name"], s["action"]) for s in deployed["services"]] == [
        ("lmforge-lm", "created"),
        ("lmforge-classifier", "created"),
    ]
    client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
    for name in ("lmforge-lm", "lmforge-classifier"):
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    bodies = [call[3] for call in server.called("PATCH") if "dryRun" not in call[2]]
    assert [b["metadata"]["annotations"]["lmforge.io/model-version"] for b in bodies] == ["1", "1"]
    assert all(b["spec"]["predictor"]["model"]["storageUri"].startswith("pvc://") for b in bodies)
    assert Path(task / "deployed" / "inferenceservices.yaml").is_file()
