"""Kubeflow Pipelines: compile the pipelines in ``pipelines/``, submit them, run them locally.

``runtime`` is what the components import inside their function bodies (it runs in the pipeline's
container); ``compile``, ``submit`` and ``local`` are the user-facing commands behind
``lmforge pipeline ...``.
"""
