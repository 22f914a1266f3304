"""``lmforge deploy``: the champions as KServe InferenceServices, rendered or applied.

``render`` resolves each model's alias once (``lmforge.serve.kserve``). ``apply`` sends each
InferenceService by server-side apply (field manager ``lmforge``, forced): the API server
creates it, or makes the fields lmforge owns equal the render, removing those the new render
omits (a merge patch kept the old version's lineage annotations, GPU limits, ``runtime``), while
fields other managers own (KServe's finalizer and status) stay. A dry run of the apply comes
first: spec fields another writer owns and the render lacks (an apply cannot remove them: an
InferenceService made by an older lmforge, a ``kubectl edit``) refuse the deploy, naming them,
before anything changes. It then waits until KServe
reports it Ready for this generation of the spec (a Ready left over from the previous version
does not count). A failure is explained from the resource's conditions and its model status;
every call is retried through transient API failures (``lmforge.launch.retry``). The Role
``lmforge-deployer`` (``k8s/base/deploy-rbac.yaml``) allows exactly the calls made here: create
(an apply that creates), get and patch on inferenceservices.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import LaunchError
from lmforge.launch.retry import CALL_ATTEMPTS, RETRY_BASE_S, Backoff, describe, is_transient
from lmforge.serve.field_owners import foreign_spec_fields
from lmforge.serve.kserve import GROUP, PLURAL, VERSION, inference_service, resolve, to_yaml

TIMEOUTS = (15.0, 60.0)  # connect, read: a half-open connection must not stall the wait
FIELD_MANAGER = "lmforge"  # owns every field of the render; one name across versions
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the client sends the dict as JSON
# KServe's model status when loading cannot succeed without a change of spec or model.
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


@dataclass
class Deployed:
    name: str  # the InferenceService
    model: str  # models:/NAME/VERSION
    storage_uri: str
    action: str = "rendered"  # rendered | created | patched
    url: str | None = None


@dataclass
class DeployResult:
    namespace: str
    services: list[Deployed] = field(default_factory=list)


def model_names(cfg: Config, models: list[str] | None) -> list[str]:
    """``models``, else the LM (unless this config pretrains none: ``finetune.base_model``) and
    the model ``finetune.task`` trains (classifier or SFT)."""
    from lmforge.train.skipped import skip_reason

    if models:
        return list(models)
    tuned = cfg.register.sft_model_name if cfg.finetune.task == "sft" else None
    lm = [] if skip_reason(cfg) else [cfg.register.lm_model_name]
    return [*lm, tuned or cfg.register.classifier_model_name]


def registered_names(registered_dir: Path) -> list[str]:
    """The models register's ``registered.json`` names (a classifier run: the LM and the
    classifier; an SFT run: the SFT model): what this run made challengers of."""
    path = Path(registered_dir) / "registered.json"
    try:
        result = json.loads(path.read_text())
        names = [v["name"] for v in result.values() if isinstance(v, dict) and "name" in v]
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise LaunchError(
            f"{path}: unreadable ({exc}); the register step wrote no result"
        ) from None
    if not names:
        raise LaunchError(f"{path}: no registered model in it; nothing to promote or deploy")
    return names


def render(cfg: Config, models: list[str] | None = None) -> list[tuple[Deployed, dict]]:
    """(what, manifest) for the champion of each model (default: the LM and the classifier)."""
    from lmforge import tracking

    client = tracking.client(cfg)
    out = []
    for name in model_names(cfg, models):
        served = resolve(cfg, client, name, cfg.register.champion_alias)
        deployed = Deployed(
            name=served.service_name,
            model=f"models:/{served.name}/{served.version}",
            storage_uri=served.storage_uri,
        )
        out.append((deployed, inference_service(cfg, served)))
    return out


def render_yaml(cfg: Config, models: list[str] | None = None) -> str:
    return to_yaml([manifest for _, manifest in render(cfg, models)])


class InferenceServices:
    """The InferenceServices of one namespace, through ``CustomObjectsApi``."""

    def __init__(
        self,
        api,
        namespace: str,
        echo: Callable[[str], None] = print,
        retry_base_s: float = RETRY_BASE_S,
    ):
        from kubernetes import client

        self.custom, self.namespace, self.echo = client.CustomObjectsApi(api), namespace, echo
        self.retry_base_s = retry_base_s
        self.host = getattr(getattr(api, "configuration", None), "host", "the API server")

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` retried ``CALL_ATTEMPTS`` times through transient failures; a refusal (4xx)
        is raised at once."""
        backoff = Backoff(self.retry_base_s)
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay(exc)
                if backoff.failures >= CALL_ATTEMPTS:
                    raise LaunchError(
                        f"could not {what} in {self.namespace}: {describe(exc)} from {self.host} "
                        f"({backoff.failures} tries); check that the API server is reachable "
                        "(kubectl cluster-info)"
                    ) from None
                self.echo(
                    f"Kubernetes API: {describe(exc)} while trying to {what}; retrying in "
                    f"{delay:.1f}s"
                )
                time.sleep(delay)

    def _refused(self, what: str, exc) -> LaunchError:
        try:
            message = json.loads(exc.body).get("message") or exc.reason
        except (TypeError, ValueError, AttributeError):
            message = exc.reason
        hint = {
            401: "the credentials were refused: check the kubeconfig",
            403: "grant the Role lmforge-deployer (k8s/base/deploy-rbac.yaml) to this account",
            404: f"is KServe installed and does namespace {self.namespace} exist?",
            422: "the manifest was rejected: check it with `lmforge deploy --render`",
        }.get(exc.status, "see the message")
        return LaunchError(f"could not {what}: HTTP {exc.status} ({message}); {hint}")

    def apply(self, manifest: dict[str, Any]) -> str:
        """Server-side apply ``manifest``: "created" (HTTP 201) or "patched" (200).

        An apply, not a create then a merge patch: only an apply removes what the previous
        render had and this one omits. Forced: a field another manager changed (``kubectl
        edit``) becomes lmforge's again, as the render is what should run.
        """
        from kubernetes.client.exceptions import ApiException

        name = manifest["metadata"]["name"]
        what = f"apply InferenceService {name}"
        try:  # first as a dry run: what the apply would leave that the render lacks
            preview, _, _ = self._call(
                what, lambda: self._server_side_apply(name, manifest, dry_run=True)
            )
            self._refuse_foreign_fields(name, preview, manifest)
            _, code, _ = self._call(what, lambda: self._server_side_apply(name, manifest))
        except ApiException as exc:
            raise self._refused(what, exc) from None
        return "created" if code == 201 else "patched"

    def _refuse_foreign_fields(self, name: str, preview: dict, manifest: dict) -> None:
        stale = foreign_spec_fields(preview, manifest, FIELD_MANAGER)
        if stale:
            ns = self.namespace
            raise LaunchError(
                f"InferenceService {ns}/{name} has spec fields this render does not, written "
                f"by another field manager, which an apply cannot remove: {', '.join(stale)}. "
                f"Nothing was changed. Remove them (`kubectl -n {ns} edit inferenceservice "
                f"{name}`), or delete it (`kubectl -n {ns} delete inferenceservice {name}`) "
                "and deploy again; lmforge owns every field it sends from then on"
            )

    def _server_side_apply(self, name: str, manifest: dict[str, Any], dry_run: bool = False):
        # kubernetes<31 (the cap kfp sets) has no content-type argument on
        # patch_namespaced_custom_object: the same call, with the apply content type.
        query = [("fieldManager", FIELD_MANAGER), ("force", True)]
        return self.custom.api_client.call_api(
            f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}",
            "PATCH",
            path_params={"namespace": self.namespace, "name": name},
            query_params=[*query, ("dryRun", "All")] if dry_run else query,
            header_params={"Accept": "application/json", "Content-Type": APPLY_PATCH},
            body=manifest,
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=False,
            _request_timeout=TIMEOUTS,
        )

    def get(self, name: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(
                f"read InferenceService {name}",
                lambda: self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=TIMEOUTS
                ),
            )
        except ApiException as exc:
            raise self._refused(f"read InferenceService {name}", exc) from None

    def wait_ready(self, name: str, timeout_s: float, poll_s: float) -> dict[str, Any]:
        """The InferenceService once Ready for its current spec; a failure explained."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            isvc = self.get(name)
            state, detail = readiness(isvc)
            if state == "Ready":
                return isvc
            if state == "Failed":
                raise LaunchError(
                    f"InferenceService {self.namespace}/{name} failed: {detail}. Inspect it: "
                    f"`kubectl -n {self.namespace} describe inferenceservice {name}` and the "
                    f"predictor's logs (`kubectl -n {self.namespace} logs -l "
                    f"serving.kserve.io/inferenceservice={name} --all-containers`)"
                )
            if detail != last:
                self.echo(f"InferenceService {name}: {detail}")
                last = detail
            if time.monotonic() + poll_s > deadline:
                raise LaunchError(
                    f"InferenceService {self.namespace}/{name} not Ready after {timeout_s:.0f}s "
                    f"(serve.ready_timeout_s): {detail}. It was left as it is: `kubectl -n "
                    f"{self.namespace} describe inferenceservice {name}`"
                )
            time.sleep(poll_s)


def _conditions(isvc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in (isvc.get("status") or {}).get("conditions") or []}


def readiness(isvc: dict[str, Any]) -> tuple[str, str]:
    """("Ready" | "Failed" | "Waiting", one line on why) for the spec's current generation."""
    status = isvc.get("status") or {}
    generation = (isvc.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return "Waiting", f"KServe has not yet seen generation {generation} of the spec"
    conditions = _conditions(isvc)
    if (conditions.get("Ready") or {}).get("status") == "True":
        return "Ready", "Ready"
    model_status = status.get("modelStatus") or {}
    not_true = [
        f"{t}: {c.get('reason') or c.get('status')}"
        + (f" ({c['message']})" if c.get("message") else "")
        for t, c in sorted(conditions.items())
        if c.get("status") != "True"
    ]
    detail = "; ".join(not_true) or "no conditions yet"
    if model_status.get("transitionStatus") in FAILED_TRANSITIONS:
        info = model_status.get("lastFailureInfo") or {}
        cause = ", ".join(
            f"{k} {info[k]}" for k in ("reason", "message", "exitCode") if info.get(k) is not None
        )
        return (
            "Failed",
            f"{model_status['transitionStatus']} ({cause or 'no failure info'}); {detail}",
        )
    return "Waiting", detail


def deploy(
    cfg: Config,
    models: list[str] | None = None,
    *,
    apply: bool = False,
    out_dir: Path | None = None,
    api=None,
    echo: Callable[[str], None] = print,
) -> DeployResult:
    """Render the champions' InferenceServices; with ``apply``, create or patch them and wait
    until each is Ready. ``out_dir``: ``inferenceservices.yaml`` and ``deployed.json``."""
    rendered = render(cfg, models)
    result = DeployResult(namespace=cfg.serve.namespace)
    if apply:
        from lmforge.launch.kube import api_client

        services = InferenceServices(api or api_client(), cfg.serve.namespace, echo=echo)
        for deployed, manifest in rendered:
            deployed.action = services.apply(manifest)
            echo(
                f"{deployed.action} InferenceService {cfg.serve.namespace}/{deployed.name} "
                f"({deployed.model})"
            )
        for deployed, _ in rendered:
            isvc = services.wait_ready(deployed.name, cfg.serve.ready_timeout_s, cfg.serve.poll_s)
            deployed.url = (isvc.get("status") or {}).get("url")
            echo(f"InferenceService {deployed.name} is Ready at {deployed.url}")
    result.services = [deployed for deployed, _ in rendered]
    if out_dir is not None:
        from lmforge.outputs import atomic_output_dir

        with atomic_output_dir(Path(out_dir)) as tmp:
            (tmp / "inferenceservices.yaml").write_text(to_yaml([m for _, m in rendered]))
            (tmp / "deployed.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def promote_and_deploy(
    cfg: Config,
    out_dir: Path,
    registered_dir: Path | None = None,
    api=None,
    echo: Callable[[str], None] = print,
) -> DeployResult:
    """The pipeline's deploy step: promote the challengers register made (``registered_dir``;
    without it, those of ``model_names``): the gate decides, a refusal fails the step with its
    numbers and deploys nothing. Then apply the champions."""
    from lmforge.registry import promote

    models = registered_names(registered_dir) if registered_dir else model_names(cfg, None)
    for name in models:
        echo(f"promote {name}: {promote(cfg, name).summary()}")  # says why when unchanged
    return deploy(cfg, models, apply=True, out_dir=out_dir, api=api, echo=echo)
