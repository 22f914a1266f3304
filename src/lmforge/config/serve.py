"""Config of serving the champion (``serve``): locally with MLflow, on the cluster with KServe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.schema import Section, setting

# KServe's storage initializer reads these schemes; anything else must be mapped to one of them.
KSERVE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "hdfs://", "webhdfs://", "oci://")


@dataclass
class ServeConfig(Section):
    """Serving registered models: `lmforge serve` (local), `lmforge deploy` (KServe)."""

    name = "serve"

    namespace: str = setting("lmforge", "Namespace of the InferenceServices.")
    runtime: str = setting(
        "kserve-huggingfaceserver",
        "ServingRuntime of the predictors (KServe's Hugging Face server); empty: KServe picks "
        "one for the model format.",
    )
    hf_backend: Literal["huggingface", "vllm"] = setting(
        "huggingface",
        "Backend of the Hugging Face server: huggingface (CPU or GPU, any size) or vllm (GPU).",
    )
    min_replicas: int = setting(1, "Fewest predictor pods; 0 lets KServe scale to zero.", ge=0)
    max_replicas: int = setting(1, "Most predictor pods (autoscaling ceiling).", ge=1)
    scale_metric: Literal["concurrency", "rps", "cpu", "memory"] = setting(
        "concurrency", "What the autoscaler tracks."
    )
    scale_target: int = setting(
        4, "Autoscaling target per pod (requests in flight, rps, or percent).", ge=1
    )
    cpu: str = setting("1", "CPU request and limit per predictor pod (Kubernetes quantity).")
    memory: str = setting("4Gi", "Memory request and limit per predictor pod.")
    gpus: int = setting(0, "GPUs (nvidia.com/gpu) per predictor pod; 0 on CPU.", ge=0)
    service_account: str = setting(
        "lmforge-serve",
        "ServiceAccount of the predictors: it carries the object-store credentials the storage "
        "initializer uses; empty: the namespace's default.",
    )
    storage_prefixes: dict[str, str] = setting(
        {"mlflow-artifacts:/": "s3://mlflow/artifacts/"},
        "Rewrites of artifact locations KServe cannot read (the MLflow server's proxied "
        "mlflow-artifacts:/ URIs) to where the bytes are (k8s/base/mlflow.yaml's bucket).",
    )
    ready_timeout_s: float = setting(
        900.0, "deploy --apply: wait this long for the InferenceService to be Ready.", gt=0
    )
    poll_s: float = setting(5.0, "deploy --apply: seconds between status reads.", gt=0)
    start_timeout_s: float = setting(
        180.0, "lmforge serve: wait this long for the local scoring server to answer.", gt=0
    )

    def check(self) -> None:
        if self.max_replicas < self.min_replicas:
            self.fail(
                "max_replicas",
                f"{self.max_replicas} < serve.min_replicas={self.min_replicas}: the ceiling must "
                "be at least the floor",
            )
        if self.hf_backend == "vllm" and not self.gpus:
            self.fail("hf_backend", "vllm needs GPUs: set serve.gpus >= 1 or use huggingface")
        for source, target in self.storage_prefixes.items():
            if not target.startswith(KSERVE_SCHEMES):
                self.fail(
                    "storage_prefixes",
                    f"{source!r} -> {target!r}: the target must start with one of "
                    f"{', '.join(KSERVE_SCHEMES)} (what KServe's storage initializer reads)",
                )
