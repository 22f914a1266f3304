"""MLflow for a sweep: one parent run, and each trial's step run nested under it.

The trial's step logs its own run as always (``lmforge.train.tracker``: tolerant, buffered). Two
environment variables, set for the trial only, put that run where the sweep wants it:

- ``LMFORGE_PIPELINE_RUN_ID``: the sweep's run key, so the step's parent run (found by that tag,
  ``lmforge.tracking.parent_run_id``) is the sweep's parent run;
- ``MLFLOW_RUN_CONTEXT``: MLflow's own hook for extra run tags, here the trial number, by which
  the sweep finds the run afterwards to add the trial's params, objective and state.

A trial that fails before its step started a run (a config error) gets a run of its own here, so
every trial is in MLflow whatever became of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any

from lmforge import tracking
from lmforge.config import Config

log = logging.getLogger(__name__)
TRIAL_TAG = "lmforge.sweep.trial"
STUDY_TAG = "lmforge.sweep.study"
STATE_TAG = "lmforge.sweep.state"
ERROR_TAG = "lmforge.sweep.error"
INTERRUPTED = "interrupted (the sweep was stopped)"


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    """Set environment variables for the block; restore what was there before."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in before.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class SweepRuns:
    """The sweep's parent run (found by its run key, or created) and its trials' runs."""

    def __init__(self, cfg: Config, run_key: str, name: str = ""):
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        self.cfg, self.run_key = cfg, run_key
        self.client = tracking.client(cfg)  # strict: a sweep with no store stops here
        self.exp_id = tracking.experiment_id(cfg, self.client)
        with env(LMFORGE_PIPELINE_RUN_ID=run_key):
            self.parent_id = tracking.parent_run_id(cfg, self.client)
        study = cfg.sweep.study_name
        self.client.set_tag(self.parent_id, MLFLOW_RUN_NAME, name or f"sweep-{study}")
        self.client.set_tag(self.parent_id, STUDY_TAG, study)
        for key, value in tracking.section_params(cfg, ("sweep",)).items():
            self.client.set_tag(self.parent_id, f"lmforge.{key}", value)  # may change on resume

    @contextlib.contextmanager
    def trial(self, number: int) -> Iterator[None]:
        """The environment under which trial ``number``'s step logs its run."""
        context = json.loads(os.environ.get("MLFLOW_RUN_CONTEXT") or "{}")
        context.update({TRIAL_TAG: str(number), STUDY_TAG: self.cfg.sweep.study_name})
        with env(LMFORGE_PIPELINE_RUN_ID=self.run_key, MLFLOW_RUN_CONTEXT=json.dumps(context)):
            yield

    def find(self, number: int) -> str | None:
        found = self.client.search_runs(
            [self.exp_id],
            filter_string=(
                f"tags.`{tracking.PARENT_RUN_TAG}` = '{self.parent_id}' "
                f"and tags.`{TRIAL_TAG}` = '{number}'"
            ),
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def record(
        self, number: int, params: dict[str, Any], state: str, value: float | None, error: str
    ) -> str:
        """Add the trial's params, objective and state to its run (made here if the step made
        none); returns the run id."""
        from mlflow.entities import Metric, Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        run_id = self.find(number)
        if run_id is None:
            tags = {
                **tracking.stage_tags(self.cfg, self.cfg.sweep.step, self.parent_id),
                MLFLOW_PARENT_RUN_ID: self.parent_id,
                TRIAL_TAG: str(number),
            }
            run_id = self.client.create_run(self.exp_id, tags=tags).info.run_id
            self.client.set_terminated(run_id, "FAILED")
        logged = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        metrics = []
        if value is not None and math.isfinite(value):
            metrics = [Metric("objective", float(value), int(time.time() * 1000), 0)]
        self.client.log_batch(run_id, params=new, metrics=metrics, synchronous=True)
        self.client.set_tag(run_id, MLFLOW_RUN_NAME, f"trial-{number:04d}")
        self.client.set_tag(run_id, STATE_TAG, state)
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error[:4000])
        return run_id

    def stop(self, number: int) -> None:
        """Trial ``number`` was stopped (Ctrl-C, SIGTERM): its run, if it has one, KILLED and
        tagged so. Never raises: the sweep is on its way out and must not hang on the store."""
        try:
            run_id = self.find(number)
            if run_id is None:
                return
            self.client.set_tag(run_id, STATE_TAG, "FAIL")
            self.client.set_tag(run_id, ERROR_TAG, INTERRUPTED)
            self.client.set_terminated(run_id, "KILLED")
        except Exception as exc:  # the store's own problem; the run stays as the step left it
            log.warning("sweep: could not mark trial %d's MLflow run KILLED: %s", number, exc)

    def kill(self) -> None:
        """The parent run of a stopped sweep: KILLED (not FINISHED, not left RUNNING)."""
        try:
            self.client.set_terminated(self.parent_id, "KILLED")
        except Exception as exc:
            log.warning("sweep: could not mark the parent MLflow run KILLED: %s", exc)

    def finish(self, best: dict[str, Any] | None) -> None:
        """The parent's summary (each trial's step marks the parent with its own status)."""
        if best:
            self.client.log_metric(self.parent_id, "best_objective", best["value"])
            self.client.set_tag(self.parent_id, "lmforge.sweep.best_trial", str(best["number"]))
        self.client.set_terminated(self.parent_id, "FINISHED")
