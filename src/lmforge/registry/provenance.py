"""A registered version's provenance as MLflow's own fields give it (the gate and deploy read it).

- ``version_metrics(client, version)``: the evaluation's numbers of a version: the
  ``lmforge.metric.*`` tags of a version registered before models were logged where trained (or
  tagged by hand), else its LoggedModel's latest ``test_*`` metrics (what evaluate measured on
  that model), named without the prefix;
- ``version_lineage(client, version)``: where it came from: its ``run_id`` (the training run, whose
  tags hold the commit, raw-data version, params hash and pipeline run), its LoggedModel id and
  its numbers, as ``lmforge.*`` keys; a version registered before keeps its own tags.
"""

from __future__ import annotations

from lmforge.lineage import TEST_PREFIX, existing_model, version_model_id
from lmforge.registry.aliases import METRIC_TAG
from lmforge.registry.aliases import version_metrics as tagged_metrics

# Deploy's lineage keys -> the training run's tags that hold them (the first one present wins).
RUN_LINEAGE = {
    "lmforge.git_commit": ("lmforge.git_commit", "mlflow.source.git.commit"),
    "lmforge.data_version": ("lmforge.data_version",),
    "lmforge.params_hash": ("lmforge.params_hash",),
    "lmforge.pipeline_run_id": ("lmforge.pipeline_run_id",),
    "lmforge.parent_run_id": ("lmforge.parent_run_id", "mlflow.parentRunId"),
}


def version_metrics(client, version) -> dict[str, float]:
    found = tagged_metrics(version)
    model_id = None if found else version_model_id(version)
    model = existing_model(client, model_id) if model_id else None
    if model is None:
        return found
    latest = sorted(model.metrics or [], key=lambda m: (m.timestamp, m.step))
    return {m.key[len(TEST_PREFIX) :]: m.value for m in latest if m.key.startswith(TEST_PREFIX)}


def version_lineage(client, version) -> dict[str, str]:
    out = {k: v for k, v in (version.tags or {}).items() if k.startswith("lmforge.")}
    model_id = version_model_id(version)
    if model_id is None or not getattr(version, "run_id", None):
        return out
    run = client.get_run(version.run_id)
    for key, sources in RUN_LINEAGE.items():
        value = next((run.data.tags[s] for s in sources if run.data.tags.get(s)), None)
        if value and key not in out:
            out[key] = value
    out.setdefault("lmforge.run_id", version.run_id)
    out.setdefault("lmforge.model_id", model_id)
    for key, value in version_metrics(client, version).items():
        out.setdefault(METRIC_TAG + key, repr(float(value)))
    return out
