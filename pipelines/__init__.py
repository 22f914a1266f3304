"""KFP v2 pipelines chaining the components; ``lmforge pipeline compile`` writes their YAML.

Installed as ``lmforge_pipelines`` (pyproject.toml maps ``pipelines/`` to that name): each
``lmforge_pipelines.<name>.pipeline.build(cfg)`` is the ``@dsl.pipeline`` on a config.
"""
