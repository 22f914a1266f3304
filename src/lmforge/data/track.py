"""MLflow for the data stages: a nested run per stage (``lmforge.tracking.stage_run``) with the
stage's params, its metrics flattened, its reports as artifacts, and on a refusal the one-paragraph
error as the tag ``lmforge.error`` (the run ends FAILED). Strict: these stages need the store."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import LmforgeError


@contextlib.contextmanager
def tracked(
    cfg: Config, stage: str, sections: tuple[str, ...], inputs: dict[str, Path] | None = None
) -> Iterator[Any]:
    """The stage's run; ``inputs`` (name: file or folder) are logged as its MLflow datasets,
    digested as DVC digests them, so a run leads to the exact data it read."""
    import mlflow

    from lmforge.lineage import dataset_input
    from lmforge.tracking import client, dataset, stage_run

    with stage_run(cfg, stage, sections=sections) as run:
        if inputs:
            client(cfg).log_inputs(
                run.info.run_id,
                datasets=[dataset_input(dataset(p, n, "source")) for n, p in inputs.items()],
            )
        try:
            yield run
        except LmforgeError as exc:
            mlflow.set_tag("lmforge.error", str(exc)[:5000])
            raise


def log_outputs(metrics: dict[str, Any], files: list[Path]) -> None:
    import mlflow

    from lmforge.tracking import flat_metrics

    mlflow.log_metrics(flat_metrics(metrics))
    for path in files:
        mlflow.log_artifact(str(path))
