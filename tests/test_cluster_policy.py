"""The offline cluster check: what a cluster enforces, applied to everything lmforge ships or
renders (``k8s_policy.sources``), since no API server can run here.

(2) Pod Security ``restricted`` for every pod the operators make of it (``k8s_policy.workloads``:
the pods' real labels and containers, injected ones included), by the upstream rules
(``k8s_policy.pod_security``, Kubernetes v1.33); (3) NetworkPolicy reachability of the intended
flows and of the forbidden ones, with those labels (``k8s_policy.network``); (4) RBAC: each
service account is granted exactly the requests its code makes, recorded against the fake API
server (``k8s_policy.recording``); (5) nothing applied from k8s/ starts a training job.
(1), the CRD schemas, is test_k8s_manifests / test_trainjob_manifests / test_launch_render.
"""

from __future__ import annotations

import copy
import functools

import pytest
import yaml
from k8s_policy import pod_security, rbac, recording, sources
from k8s_policy.network import Cluster, Endpoint
from k8s_policy.workloads import pods_of

from lmforge.config import load_config

pytestmark = pytest.mark.timeout(120)
SOURCES = sources.everything()
NAMESPACE_LABELS = yaml.safe_load((sources.K8S / "base" / "namespace.yaml").read_text())


def pods(source: str) -> list:
    installed = sources.installed("gpu" if "gpu" in source else "cpu")
    return [p for obj in SOURCES[source] for p in pods_of(obj, installed)]


# -- (2) Pod Security Standards, restricted -------------------------------------------------


@pytest.mark.parametrize("source", [s for s in SOURCES if pods(s)])
def test_every_pod_passes_pod_security_restricted(source):
    refused = {p.name: pod_security.violations(p.metadata, p.spec) for p in pods(source)}
    assert {name: found for name, found in refused.items() if found} == {}, source


def test_the_namespace_enforces_the_version_the_rules_implement():
    labels = NAMESPACE_LABELS["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == pod_security.VERSION


GOOD_POD = (
    {"annotations": {}},
    {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                },
                "ports": [{"containerPort": 80}],
            }
        ],
        "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "x"}}],
    },
)
C = ("containers", 0, "securityContext")
ps = pod_security
# One breach of each upstream check: (the check, path in the pod, value).
BREACHES = [
    (ps.host_process, ("securityContext", "windowsOptions"), {"hostProcess": True}),
    (ps.host_namespaces, ("hostNetwork",), True),
    (ps.privileged, (*C, "privileged"), True),
    (ps.host_ports, ("containers", 0, "ports", 0, "hostPort"), 80),
    (ps.app_armor, (*C, "appArmorProfile"), {"type": "Unconfined"}),
    (ps.se_linux, ("securityContext", "seLinuxOptions"), {"type": "spc_t"}),
    (ps.proc_mount, (*C, "procMount"), "Unmasked"),
    (ps.sysctls, ("securityContext", "sysctls"), [{"name": "kernel.msgmax", "value": "1"}]),
    (ps.restricted_volumes, ("volumes", 0), {"name": "v", "hostPath": {"path": "/"}}),
    (ps.allow_privilege_escalation, (*C, "allowPrivilegeEscalation"), True),
    (ps.run_as_non_root, ("securityContext", "runAsNonRoot"), False),
    (ps.run_as_user, (*C, "runAsUser"), 0),
    (ps.seccomp, ("securityContext", "seccompProfile"), {"type": "Unconfined"}),
    (ps.seccomp, ("securityContext",), {"runAsNonRoot": True}),  # set by neither pod nor container
    (ps.capabilities, (*C, "capabilities"), {"drop": ["NET_RAW"]}),
    (ps.capabilities, (*C, "capabilities"), {"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
]


def _with(path, value):
    meta, spec = copy.deepcopy(GOOD_POD)
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    return meta, spec


def test_a_restricted_pod_passes_and_each_upstream_check_refuses_its_breach():
    assert pod_security.violations(*GOOD_POD) == []
    assert {check for check, _, _ in BREACHES} == set(pod_security.CHECKS)  # each one tried
    for check, path, value in BREACHES:
        assert check(*_with(path, value)), (check.__name__, path, value)


# -- (3) NetworkPolicy reachability ----------------------------------------------------------

OUTSIDE = {
    "kfp-step": Endpoint("kfp-step", "kubeflow", {"pipelines.kubeflow.org/v2_component": "true"}),
    "minio": Endpoint("minio", "kubeflow", {"app": "minio"}, {"http": 9000}),
    "activator": Endpoint("activator", "knative-serving", {"app": "activator"}),
    "autoscaler": Endpoint("autoscaler", "knative-serving", {"app": "autoscaler"}),
    "gateway": Endpoint(
        "gateway", "istio-system", {"app": "istio-ingressgateway", "istio": "ingressgateway"}
    ),
    # Another namespace's pod that copies lmforge's labels: labels alone must not let it in.
    "impostor": Endpoint(
        "impostor",
        "elsewhere",
        {"app.kubernetes.io/name": "lmforge", "app.kubernetes.io/component": "pretrain"},
    ),
    "s3": Endpoint("s3", None, ip="52.216.0.10"),  # an object store outside the cluster
}


@functools.cache
def endpoints(env: str) -> dict[str, Endpoint]:
    """Every pod of a deployment (env's sizes), named by role."""
    found = dict(OUTSIDE)

    def add(role: str, source: str, name: str | None = None, index: int = 0):
        matching = [p for p in pods(source) if name is None or p.name == name]
        pod = matching[index]
        found[role] = Endpoint(pod.name, pod.namespace, pod.labels, pod.ports)

    add("mlflow", f"k8s/{sources.RUNTIME_OVERLAY[env]}", "mlflow-0")
    add("postgres", f"k8s/{sources.RUNTIME_OVERLAY[env]}", "mlflow-postgres-0")
    for api in sources.APIS:
        for i in (0, 1):
            add(f"{api}-{i}", f"pretrain --render ({env}, {api})", index=i)
            add(f"trial-{api}-{i}", f"sweep --render trial ({env}, {api})", index=i)
    add("predictor", "deploy --render")
    return found


# (source, destination, port, allowed): every flow lmforge needs, and ones it must not allow.
RENDEZVOUS = {"pytorchjob": 23456, "trainjob": 29500}  # launch.master_port; the Trainer's
NCCL_PORT = 45123  # a port NCCL or gloo picks at run time
STEPS = ("pytorchjob-0", "trainjob-1", "trial-pytorchjob-0", "trial-trainjob-1", "kfp-step")
OUTSIDERS = ("kfp-step", "impostor", "predictor", "mlflow", "activator", "gateway")
FLOWS = [
    *[
        (f"{trial}{api}-1", f"{trial}{api}-0", port, True)
        for api, port in RENDEZVOUS.items()
        for trial in ("", "trial-")
    ],
    *[(f"{api}-0", f"{api}-1", NCCL_PORT, True) for api in RENDEZVOUS],  # collectives
    *[(step, "mlflow", 5000, True) for step in STEPS],
    ("mlflow", "postgres", 5432, True),
    ("activator", "predictor", 8012, True),
    ("gateway", "predictor", 8012, True),
    ("gateway", "predictor", 8080, True),
    ("autoscaler", "predictor", 9090, True),
    ("predictor", "s3", 443, True),
    ("predictor", "minio", 9000, True),
    ("mlflow", "s3", 443, True),
    ("predictor", "postgres", 5432, False),
    ("predictor", "mlflow", 5000, False),
    ("kfp-step", "postgres", 5432, False),
    ("impostor", "mlflow", 5000, False),
    ("activator", "predictor", 5432, False),
    *[
        (outsider, f"{api}-0", port, False)
        for outsider in OUTSIDERS
        for api in RENDEZVOUS
        for port in (RENDEZVOUS[api], NCCL_PORT)
    ],
]


OVERLAYS = [o for o in sources.applied_sets() if o.startswith("overlays/")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_the_intended_flows_and_nothing_else(overlay):
    objs = sources.shipped(overlay)
    cluster = Cluster(
        [o for o in objs if o["kind"] == "NetworkPolicy"],
        {ns: {} for ns in ("kubeflow", "knative-serving", "istio-system", "elsewhere")}
        | {"lmforge": NAMESPACE_LABELS["metadata"]["labels"]},
    )
    for env in sources.ENVS:
        pods_by_role = endpoints(env)
        wrong = [
            f"{src} -> {dst}:{port} should be {'allowed' if ok else 'denied'}"
            for src, dst, port, ok in FLOWS
            if cluster.allowed(pods_by_role[src], pods_by_role[dst], port) != ok
        ]
        assert wrong == [], f"{overlay} ({env} pods)"


def test_the_reachability_model_follows_networkpolicy_semantics():
    a = Endpoint("a", "ns", {"app": "a"}, {"web": 8080})
    b = Endpoint("b", "ns", {"app": "b"}, {"web": 8080})
    other = Endpoint("c", "other", {"app": "a"})
    assert Cluster([], {"ns": {}}).allowed(a, b, 1)  # no policy: open

    def policy(spec):
        return {"metadata": {"namespace": "ns"}, "spec": spec}

    to_b = policy(
        {
            "podSelector": {"matchLabels": {"app": "b"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "a"}}}],
                    "ports": [{"port": "web"}],
                }
            ],
        }
    )
    cluster = Cluster([to_b], {"ns": {}, "other": {}})
    assert cluster.allowed(a, b, 8080) and not cluster.allowed(a, b, 8081)  # named port
    assert not cluster.allowed(other, b, 8080)  # a podSelector alone: the policy's namespace
    deny_egress = policy({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"]})
    assert not Cluster([to_b, deny_egress], {"ns": {}}).allowed(a, b, 8080)  # both sides count
    from_other = policy(
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "other"}
                            },
                            "podSelector": {"matchLabels": {"app": "x"}},
                        }
                    ]
                }
            ],
        }
    )
    assert not Cluster([from_other], {"ns": {}, "other": {}}).allowed(other, b, 1)  # AND


# -- (4) RBAC: each account may do exactly what its code calls -------------------------------

LMFORGE, KUBEFLOW = "lmforge", "kubeflow"
PIPELINE = (KUBEFLOW, "lmforge-pipeline")
# In the runs' own namespace the pipeline account needs what KFP v2's driver and launcher and
# Argo's executor do for every step (not lmforge's code): kfp-launcher ConfigMap, the artifact
# store's secret, WorkflowTaskResults (Argo >= 3.4).
KFP_RUNTIME = {
    ("argoproj.io", "workflowtaskresults", "create"),
    ("argoproj.io", "workflowtaskresults", "patch"),
    ("", "configmaps", "get"),
    ("", "secrets", "get"),
}


@functools.cache
def recorded_calls() -> dict[str, set]:
    return {
        "launcher": recording.launcher_requests(),
        "deployer": recording.deployer_requests(sources.predictor()),
    }


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("launch"))  # the launcher writes relative paths
        mp.setenv("LMFORGE_PIPELINE_RUN_ID", "recorded")  # the recorded job's name
        found = recorded_calls()
    for name, requests in found.items():
        assert {ns for ns, _ in requests} == {LMFORGE}, name  # launch/serve namespace only
    return {name: {perm for _, perm in requests} for name, requests in found.items()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_account_is_granted_exactly_what_its_code_calls(overlay, calls):
    objs = list(sources.shipped(overlay))
    assert rbac.granted(objs, (LMFORGE, "lmforge-launcher"), LMFORGE) == calls["launcher"]
    assert rbac.granted(objs, (LMFORGE, "lmforge-deployer"), LMFORGE) == calls["deployer"]
    # lmforge's pipeline steps launch (pretrain) and deploy (the full pipeline's deploy step).
    assert rbac.granted(objs, PIPELINE, LMFORGE) == calls["launcher"] | calls["deployer"]
    assert rbac.granted(objs, PIPELINE, KUBEFLOW) == KFP_RUNTIME
    kubeflow = load_config(None).kubeflow  # the account `lmforge pipeline submit` runs as
    assert (kubeflow.namespace, kubeflow.service_account) == PIPELINE
    # Nobody else gets anything here: not KFP's shared runner, not the predictors, not default.
    bound = {(ns, acct) for where, ns, acct in rbac.bound_accounts(objs) if where == LMFORGE}
    assert bound == {(LMFORGE, "lmforge-launcher"), (LMFORGE, "lmforge-deployer"), PIPELINE}


def test_requests_map_to_what_rbac_authorizes():
    core, isvc = "/api/v1/namespaces/lmforge", "/apis/serving.kserve.io/v1beta1/namespaces/lmforge"
    cases = [
        (("GET", f"{core}/pods", {}, 200), {("", "pods", "list")}),
        (("GET", f"{core}/pods", {"watch": ["true"]}, 200), {("", "pods", "watch")}),
        (("GET", f"{core}/pods/p/log", {}, 200), {("", "pods/log", "get")}),
        (
            ("PATCH", f"{isvc}/inferenceservices/m", {}, 200),
            {("serving.kserve.io", "inferenceservices", "patch")},
        ),
        (
            ("PATCH", f"{isvc}/inferenceservices/m", {}, 201),
            {
                ("serving.kserve.io", "inferenceservices", "patch"),
                ("serving.kserve.io", "inferenceservices", "create"),
            },
        ),
    ]
    for request, expected in cases:
        assert rbac.permissions(*request) == (LMFORGE, expected), request


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_predictors_hold_read_only_storage_keys_and_no_token(overlay):
    objs = list(sources.shipped(overlay))
    (serve,) = [
        o
        for o in objs
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "lmforge-serve"
    ]
    assert serve["automountServiceAccountToken"] is False
    secrets = {s["name"] for s in serve.get("secrets", [])}
    (mlflow,) = [o for o in objs if o["kind"] == "Deployment"]
    server_secrets = {
        ref["secretRef"]["name"]
        for c in mlflow["spec"]["template"]["spec"]["containers"]
        for ref in c.get("envFrom", [])
    }
    assert secrets == {"mlflow-s3-readonly"} and not secrets & server_secrets
    assert sources.predictor()["spec"]["predictor"]["serviceAccountName"] == "lmforge-serve"


# -- (5) applying k8s/ starts no training --------------------------------------------------

STARTS_WORK = {"PyTorchJob", "TrainJob", "Job", "JobSet", "CronJob", "Pod", "Experiment"}


def _suspended(obj) -> bool:
    spec = obj.get("spec") or {}
    return (spec.get("runPolicy") or {}).get("suspend") is True or spec.get("suspend") is True


@pytest.mark.parametrize("folder", sources.applied_sets())
def test_applying_k8s_starts_no_training_job(folder):
    running = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in sources.shipped(folder)
        if o["kind"] in STARTS_WORK and not _suspended(o)
    ]
    assert running == [], f"`kubectl apply -k k8s/{folder}` would start {running}"
