"""A shim between MLflow 3.17 and transformers 5, applied only while a model is logged."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def transformers5_checkpoint_compat() -> Iterator[None]:
    """Let MLflow log a model from a local directory under transformers 5.

    MLflow 3.17 reads ``check_task(task)[1]["impl"].__name__`` for the flavour's instance type;
    transformers 5 now stores that ``impl`` as a dotted-path string. For the duration of the
    call only, hand MLflow an object whose ``__name__`` is the class name it wants.
    """
    import types

    import transformers.pipelines as pipelines

    original = pipelines.check_task

    def check_task(task: str):
        name, meta, options = original(task)
        impl = meta.get("impl")
        if isinstance(impl, str):
            meta = {**meta, "impl": types.SimpleNamespace(__name__=impl.rsplit(".", 1)[-1])}
        return name, meta, options

    pipelines.check_task = check_task
    try:
        yield
    finally:
        pipelines.check_task = original
