"""Sweep pipeline: the trials of ``sweep`` as parallel pretrain tasks (``dsl.ParallelFor`` over
the plan), then one task that picks the best (``best.yaml``). With ``ladder=True`` the same tasks
run the scaling study: the plan is the rungs of ``sweep.scaling_sizes`` x ``sweep.scaling_tokens``,
each task pretrains one rung, and the last fits L(N, D) (``report.md``, ``plots/``).

The plan is made at run time from the run's config, so a run submitted with other ``sweep.*``
overrides (the run form's ``overrides``, ``lmforge.kfp.form``) plans its own trials. The trials
train on a tokenize output (``tokenized_uri``: a pretrain pipeline's or ``dvc repro``'s
``outputs/tokenized``).
"""

from kfp import dsl
from kfp.dsl import Dataset

from lmforge.config import Config
from lmforge.kfp import form
from lmforge.kfp.dag import form_args, import_artifact, schedule
from lmforge_components import sweep


def build(cfg: Config) -> dsl.graph_component.GraphComponent:
    """The pipeline with its parameters' defaults taken from ``cfg`` (``params.yaml``)."""
    plan_op, trial_op, best_op = sweep.build(cfg.kubeflow.image)
    # Trials at once: a compile-time number in KFP (sweep.parallelism, 1 until that key exists).
    parallelism = int(getattr(cfg.sweep, "parallelism", 1))

    def sweep_run(tokenized_uri, ladder, fields, overrides):
        args = {**form_args(cfg, fields, overrides), "ladder": ladder}
        tokenized = import_artifact(tokenized_uri, Dataset, "tokenized-data")
        planned = schedule(plan_op(tokenized=tokenized.output, **args), cfg, "sweep-plan")
        with dsl.ParallelFor(planned.output, parallelism=parallelism) as trial:
            ran = schedule(
                trial_op(tokenized=tokenized.output, trial=trial, **args), cfg, "sweep-trial"
            )
        schedule(best_op(results=dsl.Collected(ran.outputs["Output"]), **args), cfg, "sweep-best")

    ladder = ("ladder", bool, False, "Run the scaling study (sweep.scaling_sizes x "
              "sweep.scaling_tokens, then the fit of L(N, D)) instead of the trials.")  # fmt: skip
    return form.form_pipeline(
        cfg,
        "sweep",
        "Pretrain trials of the sweep section in parallel; pick the best (best.yaml), or with "
        "ladder: the scaling study's rungs, then the fit of L(N, D).",
        [*form.inputs(cfg, "tokenized_uri"), ladder],
        (),
        sweep_run,
    )
