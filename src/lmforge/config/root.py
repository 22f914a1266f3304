"""The whole configuration: one section per stage of ``params.yaml``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from lmforge.config.data import AugmentConfig, DataConfig, TokenizerConfig
from lmforge.config.evaluate import EvaluateConfig
from lmforge.config.launch import KubeflowConfig, LaunchConfig
from lmforge.config.model import ModelConfig
from lmforge.config.multimodal import MultimodalConfig
from lmforge.config.registry import RegisterConfig, TrackingConfig
from lmforge.config.serve import ServeConfig
from lmforge.config.sweep import SweepConfig
from lmforge.config.train import FinetuneConfig, PretrainConfig


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    kubeflow: KubeflowConfig = field(default_factory=KubeflowConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    multimodal: MultimodalConfig = field(default_factory=MultimodalConfig)

    def to_dict(self) -> dict[str, Any]:
        from lmforge.config.record import paused

        with paused():  # every value, for hashing or shipping: not what a step reads
            return dataclasses.asdict(self)

    def params_hash(self) -> str:
        """A short, stable hash of every value: the lineage tag of a run and a model version."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_HINTS = typing.get_type_hints(Config)
SECTIONS: dict[str, type] = {f.name: _HINTS[f.name] for f in dataclasses.fields(Config)}
