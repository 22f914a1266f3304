"""KFP v2 pipelines chaining the components; ``lmforge pipeline compile`` writes their YAML.

Installed as ``lmforge_pipelines`` (pyproject.toml maps ``pipelines/`` to that name): each
``lmforge_pipelines.<name>.pipeline.build(cfg)`` is the ``@dsl.pipeline`` on a config. Above the
pipelines sit the commands on them (``compile``, ``submit``, ``run_local``); below, the library's
``lmforge.kfp`` (the components' factory and runtime, the scheduling of a task), which never
imports this package.
"""

import importlib.util
import pkgutil

# Every pipeline is a subpackage with a ``pipeline`` module: the one list of them, read from the
# folder, so a new pipeline is one new folder (the CLI, compile and submit all take it from here).
NAMES = tuple(
    sorted(
        m.name
        for m in pkgutil.iter_modules(__path__)
        if m.ispkg and importlib.util.find_spec(f"{__name__}.{m.name}.pipeline")
    )
)
