"""The components, each on the configured image, as the pipelines' DAG segments take them."""

from __future__ import annotations

from dataclasses import dataclass

from kfp.dsl.python_component import PythonComponent

from lmforge_components import (
    augment,
    deploy,
    evaluate,
    finetune,
    pretrain,
    register,
    tokenize,
    validate,
)


@dataclass
class Ops:
    """The components, each built on ``kubeflow.image``."""

    validate: PythonComponent
    augment: PythonComponent
    tokenize: PythonComponent
    pretrain: PythonComponent
    finetune: PythonComponent
    evaluate: PythonComponent
    register: PythonComponent
    deploy: PythonComponent

    @classmethod
    def on_image(cls, image: str) -> Ops:
        return cls(
            validate=validate.build(image),
            augment=augment.build(image),
            tokenize=tokenize.build(image),
            pretrain=pretrain.build(image),
            finetune=finetune.build(image),
            evaluate=evaluate.build(image),
            register=register.build(image),
            deploy=deploy.build(image),
        )
