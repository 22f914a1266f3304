"""One typed configuration for every stage, loaded from DVC's ``params.yaml``.

Each section of ``params.yaml`` is a dataclass defined, documented and checked in its own module
here (``data.py``: data, augment, tokenizer; ``model.py``; ``train.py``: pretrain, finetune;
``evaluate.py``; ``registry.py``: register, tracking; ``launch.py``: launch, kubeflow). Every
field's text and range (``schema.setting``) is what ``lmforge <step> --help`` and
``docs/params.md`` show. ``load_config`` builds the whole tree, checking every key, type and
range, then applies ``--set section.key=value`` overrides. Model sizes come from presets
(``src/lmforge/presets/models.yaml``): ``model.preset`` selects one and keys written next to it
override the preset's values.

Only the standard library and PyYAML are imported here: the CLI loads the config on every call.
"""

from lmforge.config.data import AugmentConfig, DataConfig, TokenizerConfig
from lmforge.config.evaluate import EvaluateConfig
from lmforge.config.launch import KubeflowConfig, LaunchConfig
from lmforge.config.loader import load_config, load_config_text, parse_override
from lmforge.config.model import PRESETS_FILE, ModelConfig, load_presets
from lmforge.config.registry import RegisterConfig, TrackingConfig
from lmforge.config.root import SECTIONS, Config
from lmforge.config.train import FinetuneConfig, PretrainConfig, TrainConfig
from lmforge.errors import ConfigError

__all__ = [
    "PRESETS_FILE",
    "SECTIONS",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvaluateConfig",
    "FinetuneConfig",
    "KubeflowConfig",
    "LaunchConfig",
    "ModelConfig",
    "PretrainConfig",
    "RegisterConfig",
    "TokenizerConfig",
    "TrackingConfig",
    "TrainConfig",
    "load_config",
    "load_config_text",
    "load_presets",
    "parse_override",
]
