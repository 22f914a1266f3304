"""Kubeflow Pipelines, the library's part: what the components and pipelines are built from.

``factory`` makes a step function a component on the lmforge image; ``runtime`` is what the
components import inside their function bodies (it runs in the pipeline's container); ``dag``
schedules a task as the ``kubeflow`` section says and holds the DAG segments the pipelines share;
``local`` sets up KFP's local runner. The commands on whole pipelines (compile, submit, run
locally) live in ``lmforge_pipelines``, above the pipelines, which import this package.
"""
