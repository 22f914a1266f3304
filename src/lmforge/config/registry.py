"""Config of MLflow: where runs go (``tracking``), registration and promotion (``register``)."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config.schema import Section, setting

SFT_METRICS = ("rouge_l", "exact_match", "response_perplexity")  # evaluate_sft's numbers


@dataclass
class RegisterConfig(Section):
    """MLflow model registration and the promotion gate."""

    name = "register"

    lm_model_name: str = setting("lmforge-lm", "Registered model name of the language model.")
    classifier_model_name: str = setting(
        "lmforge-classifier", "Registered model name of the classifier."
    )
    challenger_alias: str = setting("challenger", "Alias of each newly registered version.")
    champion_alias: str = setting("champion", "Alias of the version in production.")
    previous_alias: str = setting("previous", "Alias of the champion before; --rollback's target.")
    primary_metric: str = setting("macro_f1", "The classifier's gate metric (higher is better).")
    min_primary: float = setting(0.6, "Absolute threshold the classifier challenger must reach.")
    lm_primary_metric: str = setting("perplexity", "The LM's gate metric (lower is better).")
    lm_max_primary: float = setting(1000.0, "Highest LM perplexity that may be promoted.", gt=0)
    sft_model_name: str = setting(
        "lmforge-sft", "Registered model name of the instruction-tuned LM (finetune.task sft)."
    )
    sft_primary_metric: str = setting(
        "rouge_l",
        "The SFT model's gate metric: rouge_l or exact_match (higher is better) or "
        "response_perplexity (lower is better).",
    )
    sft_min_primary: float = setting(
        0.0, "Threshold the SFT challenger must reach (a maximum for response_perplexity)."
    )
    promote_margin: float = setting(
        0.0, "The challenger must beat the champion by more than this.", ge=0
    )
    lock_timeout_s: float = setting(
        60.0, "Wait this long for a concurrent promotion to finish.", ge=0
    )
    lock_lease_s: float = setting(
        300.0, "A promotion lock older than this is a dead holder's and is taken over.", gt=0
    )

    def check(self) -> None:
        aliases = [self.challenger_alias, self.champion_alias, self.previous_alias]
        if len(set(aliases)) != 3:
            self.fail("champion_alias", f"the three aliases must differ, got {aliases}")
        if self.lm_model_name == self.classifier_model_name:
            self.fail("classifier_model_name", "must differ from register.lm_model_name")
        if self.sft_model_name in (self.lm_model_name, self.classifier_model_name):
            self.fail("sft_model_name", "must differ from the LM's and the classifier's names")
        if self.sft_primary_metric not in SFT_METRICS:
            self.fail("sft_primary_metric", f"choose one of {', '.join(SFT_METRICS)}")


@dataclass
class TrackingConfig(Section):
    """Where MLflow runs go. ``MLFLOW_TRACKING_URI`` wins; else the embedded store in the repo."""

    name = "tracking"

    tracking_uri: str = setting(
        "sqlite:///mlflow.db", "Tracking store when MLFLOW_TRACKING_URI is not set."
    )
    artifact_location: str = setting(
        "mlartifacts", "Artifact root of experiments created on the embedded store."
    )
    experiment: str = setting("lmforge", "MLflow experiment of the pipeline's runs.")
    request_timeout_s: float = setting(
        5.0,
        "Training path: timeout of each tracking request. An outage never kills training: "
        "what could not be sent is buffered and replayed.",
        gt=0,
    )
    max_retries: int = setting(1, "Training path: retries of a failed tracking request.", ge=0)
    connect_timeout_s: float = setting(
        15.0, "Stages that need the server (register, promote) give up after this long.", gt=0
    )
