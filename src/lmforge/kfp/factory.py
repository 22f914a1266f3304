"""Turn a typed Python function into a KFP component that runs on the lmforge image.

The image has lmforge (and kfp) installed, so nothing is pip-installed at run time: no
``packages_to_install`` and no KFP package install. Under KFP's local ``SubprocessRunner`` the same
component runs in this interpreter, where lmforge is installed too.
"""

from __future__ import annotations

from collections.abc import Callable

from kfp import dsl
from kfp.dsl.python_component import PythonComponent

from lmforge.config import KubeflowConfig

DEFAULT_IMAGE = KubeflowConfig().image


def lmforge_component(fn: Callable, image: str = DEFAULT_IMAGE) -> PythonComponent:
    """A lightweight Python component of ``fn`` on ``image`` (``kubeflow.image`` in params).

    Used bare as the decorator of each ``lmforge_components.<step>`` function (the default
    image); ``on_image`` rebuilds it on the configured one.
    """
    return dsl.component(fn, base_image=image, install_kfp_package=False)


def on_image(component: PythonComponent, image: str) -> PythonComponent:
    """``component`` (a module-level ``@lmforge_component``) on ``image`` instead."""
    if component.component_spec.implementation.container.image == image:
        return component
    return lmforge_component(component.python_func, image)
