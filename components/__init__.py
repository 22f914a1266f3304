"""KFP v2 components, one folder per pipeline step; each calls one function in ``lmforge``.

Installed as ``lmforge_components`` (pyproject.toml maps ``components/`` to that name):
``from lmforge_components.validate import validate`` is the component on the default image,
``build(image)`` in the same module the one on ``kubeflow.image``.
"""
